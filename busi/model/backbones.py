"""The backbones busi builds, in one table: what each needs of the rest of the package.

Every backbone is a ``keras.applications`` network without its top. Per backbone the table says:

* ``preprocess``: what its ImageNet weights expect of an RGB 0-255 image, built into the saved
  model (``busi.model.network.preprocess_block``) and recorded in ``preprocessing.json``:
  ``caffe`` (RGB to BGR, minus the ImageNet mean: ResNet50), ``tf`` (scaled to -1..1: the
  MobileNets), ``inside`` (the network normalises 0-255 input itself: EfficientNet, ConvNeXt);
* ``weights_file``: the name Keras gives its no-top ImageNet file (``weights: imagenet`` looks
  for it by that name) and ``weights_hash``, the hash Keras checks it against where Keras lists one;
* ``top`` and ``top2``: the first layer (by name prefix) of the stride-32 stage and of the
  stride-16 stage. ``unfreeze: top`` (``conv5``, its ResNet50 name) trains every layer from the
  first, ``top2`` (``conv4``) from the second; the frozen part before it is what the feature
  cache holds (``busi.model.features``);
* ``gflops``: multiply-adds x 2 of one 224 px forward pass at alpha 1, and at each alpha for the
  MobileNets (``tests/test_backbones.py`` counts them on the built network), what ``bench`` and
  the walltime estimate scale by.

Grad-CAM reads every backbone's own output, its last feature map (``busi.model.gradcam``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from busi.config.schema import BACKBONES, ModelConfig
from busi.errors import ConfigError

Preprocess = Literal["caffe", "tf", "inside"]

# The unfreeze settings and the stage each begins at (``Backbone.first_trainable``); conv5 and
# conv4 are top and top2 by their ResNet50 names (job files written before the table still run).
UNFREEZE_STAGE = {"none": None, "top": "top", "conv5": "top", "top2": "top2", "conv4": "top2", "all": "all"}

# EfficientNet, with weights="imagenet", divides its normalised input by sqrt(std) once more
# (keras.applications.efficientnet; tensorflow/tensorflow#49930): a network built without that
# layer and then loaded from the file would see other inputs than the ones the weights learnt on.
EFFICIENTNET_STDDEV_RGB = (0.229, 0.224, 0.225)
EFFICIENTNET_MEAN_RGB = (0.485, 0.456, 0.406)


@dataclass(frozen=True)
class Backbone:
    name: str
    application: str  # the keras.applications constructor
    preprocess: Preprocess
    top: str  # name prefix of the stride-32 stage's first layer
    top2: str  # ... of the stride-16 stage's
    gflops: float  # one 224 px forward pass, alpha 1
    channels: tuple[int, int, int]  # at alpha 1: the input of top2's first layer, of top's, and the output
    frozen_share: tuple[float, float]  # share of the forward FLOPs before top's first layer, before top2's
    weights_base: str  # Keras' file name, {alpha} and {size} filled in by weights_file
    weights_hash: str | None = None  # md5 (32 hex) or sha256 (64 hex) as Keras lists it
    alphas: tuple[float, ...] = (1.0,)  # width multipliers with released weights (MobileNets)
    alpha_gflops: tuple[float, ...] = ()  # gflops at each of alphas, where there are several
    weights_sizes: tuple[int, ...] = (224,)  # input sizes with released weights; others load the 224 file

    def weights_file(self, alpha: float = 1.0, image_size: int = 224) -> str:
        """The no-top ImageNet file Keras asks for, for this ``alpha`` and input size."""
        size = image_size if image_size in self.weights_sizes else 224
        text = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}.get(alpha, str(alpha))
        return self.weights_base.format(alpha_text=text, alpha=float(alpha), size=size)

    def width(self, channels: int, alpha: float, output: bool = False) -> int:
        """A layer's channels at ``alpha``, by Keras' rule for the family (MobileNet: truncated;
        MobileNetV2: rounded to a multiple of 8, its last 1280 kept below alpha 1)."""
        if self.application == "MobileNet":
            return int(channels * alpha)
        if self.application == "MobileNetV2":
            if output and alpha <= 1.0:
                return channels
            return _make_divisible(channels * alpha, 8)
        return channels

    def cost(self, image_size: int, alpha: float = 1.0) -> float:
        """GFLOPs of one forward pass at ``image_size`` px: the table's figure at ``alpha``
        scaled by pixels (convolutions cost what their output maps hold)."""
        at_224 = self.gflops
        if self.alpha_gflops and alpha in self.alphas:
            at_224 = self.alpha_gflops[self.alphas.index(alpha)]
        return at_224 * (image_size / 224) ** 2

    def feature_shape(self, unfreeze: str, image_size: int, alpha: float = 1.0) -> tuple[int, ...]:
        """What the frozen part outputs for ``unfreeze`` (the feature cache's item), without
        building a network: the pooled vector for ``none``, else the map entering the first
        trainable stage (stride 16 for ``top``, 8 for ``top2``)."""
        stage = UNFREEZE_STAGE[unfreeze]
        if stage is None:
            return (self.width(self.channels[2], alpha, output=True),)
        stride, channels = {"top": (16, self.channels[1]), "top2": (8, self.channels[0])}[stage]
        side = -(-image_size // stride)
        return (side, side, self.width(channels, alpha))

    def frozen_flops_share(self, unfreeze: str) -> float:
        """The share of a forward pass that ``unfreeze`` leaves frozen (1 for ``none``, 0 for ``all``)."""
        stage = UNFREEZE_STAGE[unfreeze]
        return {None: 1.0, "all": 0.0, "top": self.frozen_share[0], "top2": self.frozen_share[1]}[stage]

    def stage_prefix(self, unfreeze: str) -> str | None:
        """The name prefix of the first trainable layer for ``unfreeze`` (None: nothing or all)."""
        stage = UNFREEZE_STAGE[unfreeze]
        return {"top": self.top, "top2": self.top2}.get(stage or "")


_MOBILENET_SIZES = (128, 160, 192, 224)
TABLE: dict[str, Backbone] = {b.name: b for b in (
    Backbone("resnet50", "ResNet50", "caffe", top="conv5_", top2="conv4_", gflops=7.71, channels=(512, 1024, 2048),
             frozen_share=(0.81, 0.45),
             weights_base="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
             weights_hash="4d473c1dd8becc155b73f8504c6f6626"),
    Backbone("mobilenet", "MobileNet", "tf", top="conv_pad_12", top2="conv_pad_6", gflops=1.14,
             channels=(256, 512, 1024), frozen_share=(0.86, 0.36),
             weights_base="mobilenet_{alpha_text}_{size}_tf_no_top.h5", alphas=(0.25, 0.5, 0.75, 1.0),
             alpha_gflops=(0.082, 0.298, 0.649, 1.135), weights_sizes=_MOBILENET_SIZES),
    Backbone("mobilenet_v2", "MobileNetV2", "tf", top="block_13_", top2="block_6_", gflops=0.60,
             channels=(32, 96, 1280), frozen_share=(0.7, 0.38),
             weights_base="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{size}_no_top.h5",
             alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4), alpha_gflops=(0.116, 0.192, 0.416, 0.599, 1.015, 1.161),
             weights_sizes=(96, *_MOBILENET_SIZES)),
    Backbone("efficientnet_b0", "EfficientNetB0", "inside", top="block6a_", top2="block4a_", gflops=0.77,
             channels=(40, 112, 1280), frozen_share=(0.63, 0.3), weights_base="efficientnetb0_notop.h5",
             weights_hash="50bc09e76180e00e4465e1a485ddc09d"),
    Backbone("efficientnet_b1", "EfficientNetB1", "inside", top="block6a_", top2="block4a_", gflops=1.14,
             channels=(40, 112, 1280), frozen_share=(0.6, 0.29), weights_base="efficientnetb1_notop.h5",
             weights_hash="74c4e6b3e1f6a1eea24c589628592432"),
    Backbone("efficientnet_b2", "EfficientNetB2", "inside", top="block6a_", top2="block4a_", gflops=1.32,
             channels=(48, 120, 1408), frozen_share=(0.59, 0.27), weights_base="efficientnetb2_notop.h5",
             weights_hash="111f8e2ac8aa800a7a99e3239f7bfb39"),
    Backbone("efficientnet_b3", "EfficientNetB3", "inside", top="block6a_", top2="block4a_", gflops=1.92,
             channels=(48, 136, 1536), frozen_share=(0.63, 0.29), weights_base="efficientnetb3_notop.h5",
             weights_hash="af6d107764bb5b1abb91932881670226"),
    Backbone("convnext_tiny", "ConvNeXtTiny", "inside", top="convnext_tiny_downsampling_block_2",
             top2="convnext_tiny_downsampling_block_1", gflops=8.91, channels=(192, 384, 768),
             frozen_share=(0.83, 0.34),
             weights_base="convnext_tiny_notop.h5",
             weights_hash="d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1"),
)}


def _make_divisible(v: float, divisor: int) -> int:
    """keras.applications.mobilenet_v2's rounding of a layer's width."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def backbone(name: str) -> Backbone:
    """The table's row for ``name`` (a KeyError names what exists; configs are checked before)."""
    try:
        return TABLE[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; one of {', '.join(BACKBONES)}") from None


def check_model(model: ModelConfig) -> Backbone:
    """The backbone of ``model`` (``model.backbone``), with an ``alpha`` it has weights for:
    ConfigError (exit 2) naming ``model.alpha`` and the widths there are."""
    b = backbone(model.backbone)
    if model.alpha not in b.alphas:
        allowed = ", ".join(f"{a:g}" for a in b.alphas)
        only = "" if len(b.alphas) > 1 else "; only mobilenet and mobilenet_v2 take an alpha"
        raise ConfigError(f"model.alpha: {model.alpha:g} is not a width {b.name} has ImageNet weights for "
                          f"({allowed}){only}", keys=("model.alpha", "model.backbone"))
    return b


def build_application(name: str, image_size: int, alpha: float = 1.0) -> Any:
    """The Keras application of ``name`` without its top, random weights, for ``image_size`` px."""
    import keras

    b = backbone(name)
    kwargs: dict[str, Any] = {"include_top": False, "weights": None, "input_shape": (image_size, image_size, 3)}
    if len(b.alphas) > 1:
        kwargs["alpha"] = alpha
    return getattr(keras.applications, b.application)(**kwargs)


def forward_gflops(network: Any) -> float:
    """Multiply-adds x 2 of one forward pass of a built Keras network (its convolutions and dense
    layers, nested models included): the count the table's ``gflops`` are checked against."""
    import keras

    macs = 0.0
    for layer in _all_layers(network):
        if not hasattr(layer, "output") or not hasattr(layer, "input"):
            continue
        try:
            out, inp = layer.output.shape, layer.input.shape
        except (AttributeError, ValueError):  # a layer used more than once has no single shape
            continue
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            macs += out[1] * out[2] * kh * kw * out[3]
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            macs += out[1] * out[2] * kh * kw * inp[3] * out[3] / getattr(layer, "groups", 1)
        elif isinstance(layer, keras.layers.Dense):
            positions = 1.0
            for d in inp[1:-1]:
                positions *= d
            macs += positions * inp[-1] * out[-1]
    return 2 * macs / 1e9


def _all_layers(network: Any) -> list[Any]:
    out = []
    for layer in network.layers:
        out.extend(_all_layers(layer) if hasattr(layer, "layers") else [layer])
    return out
