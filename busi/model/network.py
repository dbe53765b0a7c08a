"""The classifier: a ``keras.applications`` backbone (``model.backbone``, ResNet50 by default:
``busi.model.backbones``), its preprocessing inside the model, a small head.

Input: RGB images as float32 in 0-255 at ``data.image_size``. The backbone's own
``preprocess_input`` runs inside the saved model (built from Keras' own layers, so
``keras.saving.load_model`` loads ``model.keras`` without busi), and a served or reloaded model
cannot drift from training. Weights: ``imagenet`` (the backbone's Keras file, staged locally,
never downloaded at run time), a path, or ``none`` (``busi.model.weights``). A missing file is an
error, never a silent fall-back to random weights.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from busi.config.schema import ModelConfig
from busi.errors import DataError
from busi.model.backbones import (
    EFFICIENTNET_MEAN_RGB,
    EFFICIENTNET_STDDEV_RGB,
    UNFREEZE_STAGE,
    backbone,
    check_model,
)
from busi.model.weights import WeightsFile, check_weights, find_weights

log = logging.getLogger("busi")


@dataclass
class BuiltModel:
    model: Any  # keras.Model: image (0-255 RGB) -> class probabilities
    backbone: Any  # the keras.applications network inside it
    weights_file: Path | None
    weights_loaded_into: str  # backbone | model | none
    weights_sha256: str | None = None  # of weights_file
    backbone_name: str = "resnet50"

    def first_trainable(self, unfreeze: str) -> int | None:
        """The index in ``backbone.layers`` of the first layer ``unfreeze`` trains (None:
        ``none`` trains no backbone layer; 0: ``all``): every layer from it on is the top part."""
        stage = UNFREEZE_STAGE[unfreeze]
        if stage is None:
            return None
        if stage == "all":
            return 0
        prefix = backbone(self.backbone_name).stage_prefix(unfreeze)
        return next(i for i, layer in enumerate(self.backbone.layers) if layer.name.startswith(prefix or ""))

    def top_input(self, unfreeze: str) -> Any:
        """The tensor entering the top part for ``unfreeze`` (``top``/``top2``): what the frozen
        part before it outputs, and the feature cache holds."""
        return self.backbone.layers[self.first_trainable(unfreeze) or 0].input


def build_model(
    model_cfg: ModelConfig, image_size: int, classes: Sequence[str], weights_env: dict[str, str] | None = None
) -> BuiltModel:
    """Build the classifier for ``image_size`` px inputs and one output per class, and load its
    weights (``model_cfg.weights``, checked: ``busi.model.weights``). The backbone starts frozen
    (head phase)."""
    import keras

    from busi.model.backbones import build_application

    b = check_model(model_cfg)
    path = find_weights(model_cfg.weights, b.name, model_cfg.alpha, image_size, weights_env)
    if path is None and model_cfg.batchnorm == "frozen":
        log.warning("model: weights none with batchnorm frozen: BatchNorm keeps its initial statistics in every phase "
                    "and a random network's features carry little of the image (on the whole BUSI every fold predicted "
                    "one class; docs/training.md); train from scratch with model.batchnorm: train and "
                    "train.finetune.unfreeze: all, as job/demo.yaml does")
    weights = None if path is None else check_weights(path, model_cfg.weights_sha256, b)
    size = image_size
    num_classes = len(classes)
    inputs = keras.Input(shape=(size, size, 3), name="image", dtype="float32")
    x = preprocess_block(size, b.name, pretrained=weights is not None)(inputs)
    net = build_application(b.name, size, model_cfg.alpha)
    net.trainable = False
    if model_cfg.batchnorm == "frozen":
        # keras-io recipe: BatchNorm stays in inference mode in every phase, so fine-tuning
        # on a few hundred images cannot wreck the ImageNet statistics.
        x = net(x, training=False)
    else:
        # Trained from scratch on a small dataset: a short BatchNorm memory (0.9 instead of
        # Keras' 0.99), so the moving statistics used at inference converge within the few
        # hundred steps of a run.
        for layer in net.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.9
        x = net(x)
    pool = keras.layers.GlobalAveragePooling2D if model_cfg.pooling == "avg" else keras.layers.GlobalMaxPooling2D
    x = pool(name="pool")(x)
    x = keras.layers.Dropout(model_cfg.dropout, name="dropout")(x)
    # The output layer stays float32 under mixed precision: softmax and loss need the range.
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="probs")(x)
    model = keras.Model(inputs, outputs, name=f"busi_{b.name}")
    loaded = "none"
    if weights is not None:
        loaded = _load_weights(model, net, weights, b.name)
    return BuiltModel(model=model, backbone=net, weights_file=None if weights is None else weights.path,
                      weights_loaded_into=loaded, weights_sha256=None if weights is None else weights.sha256,
                      backbone_name=b.name)


def computes_in_float32(model: Any) -> bool:
    """``model`` computes in float32 (not under a mixed-precision policy)."""
    return getattr(getattr(model, "dtype_policy", None), "compute_dtype", "float32") == "float32"


def float32_copy(model: Any) -> Any:
    """``model`` itself where it computes in float32; else the same network with every layer's
    dtype policy set to float32, holding the same weights (variables stay float32 under mixed
    precision, so they copy exactly). Works on any Keras model, a loaded ``model.keras`` too:
    OpenVINO's TensorFlow frontend refuses a mixed-precision model's bfloat16 constants."""
    if computes_in_float32(model) and all(computes_in_float32(layer) for layer in model.layers):
        return model
    copy = model.__class__.from_config(_float32_policies(model.get_config()))
    copy.set_weights(model.get_weights())
    return copy


def _float32_policies(config: Any) -> Any:
    """A Keras config with every serialised ``DTypePolicy`` (mixed_bfloat16, mixed_float16) made float32."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and isinstance(config.get("config"), dict):
            return {**config, "config": {**config["config"], "name": "float32"}}
        return {k: _float32_policies(v) for k, v in config.items()}
    if isinstance(config, list):
        return [_float32_policies(v) for v in config]
    return config


def _load_weights(model: Any, net: Any, weights: WeightsFile, backbone_name: str) -> str:
    """A backbone file (Keras' ImageNet .h5) goes into the backbone; a whole-model file
    (``save_weights`` of a busi model) into the whole model. Anything else (another backbone's
    file, one cut short) is a DataError naming it (exit 3)."""
    errors = []
    path = weights.path
    order = [("model", model), ("backbone", net)]
    if not path.name.endswith(".weights.h5"):
        order.reverse()
    for name, target in order:
        try:
            with warnings.catch_warnings():
                # Keras warns and keeps random weights for parts it cannot match: that is a
                # silent fall-back to random weights, so it counts as a failure here.
                warnings.simplefilter("error")
                target.load_weights(str(path))
            return name
        except Exception as e:  # Keras raises ValueError, KeyError, OSError, warnings... by mismatch
            errors.append(f"as {name} weights: {type(e).__name__}: {str(e)[:200]}")
    raise DataError(path, f"does not fit this model ({backbone_name}, the job's model.alpha, image_size and classes), "
                    "or is cut short: " + "; ".join(errors) + ". Give the backbone's own file (model.weights), or set "
                    "model.backbone to the network it is of")


def set_trainable(built: BuiltModel, unfreeze: str, batchnorm: str) -> None:
    """Unfreeze the backbone's top stages for a phase (``busi.model.backbones``: every layer
    from the first of the stage on); BatchNorm stays frozen unless ``batchnorm: train``."""
    import keras

    first = built.first_trainable(unfreeze)
    net = built.backbone
    net.trainable = first is not None
    if first is None:
        return
    for i, layer in enumerate(net.layers):
        on = i >= first
        if isinstance(layer, keras.layers.BatchNormalization) and batchnorm == "frozen":
            on = False
        layer.trainable = on


# keras.applications.resnet50.preprocess_input ("caffe" mode): RGB -> BGR, minus the ImageNet
# mean of each BGR channel.
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)


def preprocess_block(image_size: int, backbone_name: str = "resnet50", pretrained: bool = True) -> Any:
    """The backbone's ``preprocess_input`` built from Keras' own parts, as the sub-model
    ``preprocess`` (it holds no weights, and a ``model.keras`` that contains it loads with plain
    ``keras.saving.load_model``: no busi code at load time):

    * ``caffe`` (ResNet50): ``keras.ops.flip`` (RGB -> BGR) and a ``Normalization`` layer with the
      ImageNet mean and unit variance, bit-identical to ``resnet50.preprocess_input`` (a flip, then
      one subtraction in the layer's compute dtype, as Keras does it);
    * ``tf`` (MobileNets): a ``Rescaling`` to -1..1, ``x / 127.5 - 1`` as ``preprocess_input``;
    * ``inside`` (EfficientNet, ConvNeXt normalise 0-255 input themselves): nothing, except for
      EfficientNet with pretrained weights, whose extra division by sqrt(std) (Keras adds that layer
      only for ``weights="imagenet"``) is applied here as the equivalent affine map of the input."""
    import keras

    b = backbone(backbone_name)
    x_in = keras.Input(shape=(image_size, image_size, 3), name="rgb", dtype="float32")
    if b.preprocess == "caffe":
        bgr = keras.ops.flip(x_in, axis=-1)
        out = keras.layers.Normalization(axis=-1, mean=list(IMAGENET_BGR_MEAN), variance=[1.0, 1.0, 1.0],
                                         name="imagenet_mean")(bgr)
    elif b.preprocess == "tf":
        out = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_minus1_1")(x_in)
    elif b.application.startswith("EfficientNet") and pretrained:
        mean, var = efficientnet_input_correction()
        out = keras.layers.Normalization(axis=-1, mean=mean, variance=var, name="imagenet_std_correction")(x_in)
    else:
        out = keras.layers.Identity(name="inside_the_backbone")(x_in)
    return keras.Model(x_in, out, name="preprocess")


def efficientnet_input_correction() -> tuple[list[float], list[float]]:
    """Mean and variance of a ``Normalization`` that maps an RGB 0-255 input ``x`` to ``x'`` with
    ``(x'/255 - m) / s == (x/255 - m) / (s * sqrt(s))`` per channel (m, s: ImageNet's mean and
    std): what EfficientNet's own normalisation then turns into the input its ImageNet weights
    learnt on. ``x' = 255 m + (x - 255 m) / sqrt(s)``, so ``x' = (x - mean) / sqrt(var)`` with
    ``mean = 255 m (1 - sqrt(s))`` and ``var = s``."""
    mean = [255.0 * m * (1.0 - s**0.5) for m, s in zip(EFFICIENTNET_MEAN_RGB, EFFICIENTNET_STDDEV_RGB)]
    return mean, list(EFFICIENTNET_STDDEV_RGB)


def preprocess_layer_class() -> Any:
    """The ``ResNetPreprocess`` layer of models written by busi 0.1 before the portable
    ``preprocess_block``: registered with Keras so that those ``model.keras`` files still load
    through ``load_saved_model``. Defined on first use (importing busi.model imports no TensorFlow)."""
    cls = globals().get("_ResNetPreprocess")
    if cls is not None:
        return cls
    import keras

    @keras.saving.register_keras_serializable(package="busi")
    class ResNetPreprocess(keras.layers.Layer):
        """``keras.applications.resnet50.preprocess_input`` as a layer (RGB->BGR, ImageNet mean)."""

        def call(self, x: Any) -> Any:
            return keras.applications.resnet50.preprocess_input(x)

    globals()["_ResNetPreprocess"] = ResNetPreprocess
    return ResNetPreprocess


def load_saved_model(path: str | Path) -> Any:
    """Load ``model.keras`` written by busi (plain Keras loads it too; the layer of older
    busi models is registered here)."""
    import keras

    preprocess_layer_class()  # registers the layer for deserialisation
    try:
        return keras.models.load_model(str(path), compile=False)
    except Exception as e:  # a truncated or foreign file: Keras raises many kinds
        raise DataError(path, f"not a readable Keras model ({type(e).__name__}: {str(e)[:200]}); "
                        "point --model at a complete run directory or model.keras") from None


def count_params(model: Any) -> dict[str, int]:
    import numpy as np

    trainable = int(sum(np.prod(v.shape) for v in model.trainable_weights))
    total = int(sum(np.prod(v.shape) for v in model.weights))
    return {"total": total, "trainable": trainable}


def weights_sha256(model: Any) -> str:
    """A fingerprint of a model's weights (every variable's dtype, shape and bytes, in order):
    equal on every rank of a data-parallel run that stayed in sync, and recorded in the manifest."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for w in model.get_weights():
        a = np.ascontiguousarray(w)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()
