"""The classifier: ResNet50 backbone, preprocessing inside the model, a small head.

Input: RGB images as float32 in 0-255 at ``data.image_size``. ``resnet50.preprocess_input``
runs inside the saved model (built from Keras' own layers, so ``keras.saving.load_model``
loads ``model.keras`` without busi), and a served or reloaded model cannot drift from training.
Weights: ``imagenet`` (a locally staged file, never downloaded at run time), a path, or
``none``. A missing file is an error, never a silent fall-back to random weights.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from busi.config.schema import ModelConfig
from busi.errors import DataError, WeightsError
from busi.model.weights import resolve_weights

# Stage prefixes of keras.applications.ResNet50 layer names; "conv4" unfreezes conv4 and conv5.
UNFREEZE_PREFIXES = {"none": (), "conv5": ("conv5_",), "conv4": ("conv4_", "conv5_"), "all": ("",)}


@dataclass
class BuiltModel:
    model: Any  # keras.Model: image (0-255 RGB) -> class probabilities
    backbone: Any  # the ResNet50 inside it
    weights_file: Path | None
    weights_loaded_into: str  # backbone | model | none


def build_model(
    model_cfg: ModelConfig, image_size: int, classes: Sequence[str], weights_env: dict[str, str] | None = None
) -> BuiltModel:
    """Build the classifier for ``image_size`` px inputs and one output per class, and load its
    weights (``model_cfg.weights``). The backbone starts frozen (head phase)."""
    import keras

    weights = resolve_weights(model_cfg.weights, weights_env)
    size = image_size
    num_classes = len(classes)
    inputs = keras.Input(shape=(size, size, 3), name="image", dtype="float32")
    x = preprocess_block(size)(inputs)
    backbone = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(size, size, 3))
    backbone.trainable = False
    if model_cfg.batchnorm == "frozen":
        # keras-io recipe: BatchNorm stays in inference mode in every phase, so fine-tuning
        # on a few hundred images cannot wreck the ImageNet statistics.
        x = backbone(x, training=False)
    else:
        # Trained from scratch on a small dataset: a short BatchNorm memory (0.9 instead of
        # Keras' 0.99), so the moving statistics used at inference converge within the few
        # hundred steps of a run.
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.9
        x = backbone(x)
    pool = keras.layers.GlobalAveragePooling2D if model_cfg.pooling == "avg" else keras.layers.GlobalMaxPooling2D
    x = pool(name="pool")(x)
    x = keras.layers.Dropout(model_cfg.dropout, name="dropout")(x)
    # The output layer stays float32 under mixed precision: softmax and loss need the range.
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="probs")(x)
    model = keras.Model(inputs, outputs, name="busi_resnet50")
    loaded = "none"
    if weights is not None:
        loaded = _load_weights(model, backbone, weights)
    return BuiltModel(model=model, backbone=backbone, weights_file=weights, weights_loaded_into=loaded)


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


def _load_weights(model: Any, backbone: Any, path: Path) -> str:
    """A backbone file (Keras' ImageNet .h5) goes into the backbone; a whole-model file
    (``save_weights`` of a busi model) into the whole model. Anything else is an error."""
    errors = []
    order = [("model", model), ("backbone", backbone)]
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
    raise WeightsError(
        f"model.weights: {path} does not fit this model (ResNet50, image_size and classes of the job): "
        + "; ".join(errors)
    )


def set_trainable(built: BuiltModel, unfreeze: str, batchnorm: str) -> None:
    """Unfreeze backbone stages for a phase; BatchNorm stays frozen unless ``batchnorm: train``."""
    import keras

    prefixes: Sequence[str] = UNFREEZE_PREFIXES[unfreeze]
    backbone = built.backbone
    backbone.trainable = bool(prefixes)
    if not prefixes:
        return
    for layer in backbone.layers:
        on = any(layer.name.startswith(p) for p in prefixes)
        if isinstance(layer, keras.layers.BatchNormalization) and batchnorm == "frozen":
            on = False
        layer.trainable = on


# keras.applications.resnet50.preprocess_input ("caffe" mode): RGB -> BGR, minus the ImageNet
# mean of each BGR channel.
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)


def preprocess_block(image_size: int) -> Any:
    """``resnet50.preprocess_input`` built from Keras' own parts, as the sub-model ``preprocess``:
    ``keras.ops.flip`` (RGB -> BGR) and a ``Normalization`` layer with the ImageNet mean and unit
    variance. Its values are bit-identical to ``preprocess_input`` (a flip, then one subtraction
    in the layer's compute dtype, as Keras does it), it holds no weights, and a ``model.keras``
    that contains it loads with plain ``keras.saving.load_model``: no busi code at load time."""
    import keras

    x_in = keras.Input(shape=(image_size, image_size, 3), name="rgb", dtype="float32")
    bgr = keras.ops.flip(x_in, axis=-1)
    out = keras.layers.Normalization(axis=-1, mean=list(IMAGENET_BGR_MEAN), variance=[1.0, 1.0, 1.0],
                                     name="imagenet_mean")(bgr)
    return keras.Model(x_in, out, name="preprocess")


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
