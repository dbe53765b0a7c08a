"""Grad-CAM (Selvaraju et al. 2017) overlays: where in the image the predicted class came from.

The heatmap is the ReLU of the last convolutional feature map (ResNet50's ``conv5`` output)
weighted by the spatially averaged gradient of the predicted class probability. It is the
picture a researcher looks at before trusting a label.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from busi.artifacts import atomic_write_with
from busi.inputs import InputFile


class GradCam:
    """Splits a busi model into preprocessing + backbone (features) and head (probabilities)."""

    def __init__(self, model: Any) -> None:
        import tensorflow as tf

        self.pre = model.get_layer("preprocess")
        self.backbone = next(l for l in model.layers if hasattr(l, "layers") and l.name.startswith("resnet50"))
        self.head = [model.get_layer(n) for n in ("pool", "dropout", "probs")]

        @tf.function
        def cam(x: Any, cls: Any) -> Any:
            feats = self.backbone(self.pre(x), training=False)
            with tf.GradientTape() as tape:
                tape.watch(feats)
                y = feats
                for layer in self.head:
                    y = layer(y, training=False)
                score = y[0, cls]
            grads = tape.gradient(score, feats)
            weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
            heat = tf.nn.relu(tf.reduce_sum(tf.cast(feats, tf.float32) * tf.cast(weights, tf.float32), axis=-1))[0]
            return heat / (tf.reduce_max(heat) + 1e-8)

        self._cam = cam

    def heatmap(self, image: np.ndarray, cls: int) -> np.ndarray:
        """Heatmap in 0..1 at the feature map's resolution for one HxWx3 image."""
        import tensorflow as tf

        return self._cam(tf.constant(image[None].astype(np.float32)), tf.constant(cls)).numpy()

    def write_overlay(self, image: np.ndarray, cls: int, f: InputFile, out_dir: Path) -> Path:
        """``out_dir/<path>.gradcam.png``: the model-input image with the heatmap blended in."""
        from matplotlib import colormaps
        from PIL import Image

        heat = self.heatmap(image, cls)
        h, w = image.shape[:2]
        heat_img = Image.fromarray(np.uint8(255 * heat)).resize((w, h), Image.Resampling.BILINEAR)
        colored = colormaps["jet"](np.asarray(heat_img) / 255.0)[..., :3] * 255.0
        blend = np.uint8(np.clip(0.6 * image.astype(np.float32) + 0.4 * colored, 0, 255))
        target = out_dir / (overlay_name(f.path) + OVERLAY_SUFFIX)
        target.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_with(target, lambda p: Image.fromarray(blend).save(p, format="PNG"), ".png")


OVERLAY_SUFFIX = ".gradcam.png"
# A file name is at most 255 bytes; the atomic writer's temp name adds ~20 bytes around it.
MAX_NAME_BYTES = 200


def overlay_name(path: str) -> str:
    """A relative file path for a reported input path (no leading /, no .., no archive marker),
    each component short enough for any file system: a long one keeps its start and gets a
    hash of the whole (so two long names that share a start stay apart)."""
    parts = [p for p in re.split(r"[/\\]|!/", path) if p not in ("", ".", "..")] or ["image"]
    reserve = len(OVERLAY_SUFFIX)
    return "/".join(_short(p, MAX_NAME_BYTES - (reserve if i == len(parts) - 1 else 0)) for i, p in enumerate(parts))


def _short(name: str, limit: int) -> str:
    raw = os.fsencode(name)
    if len(raw) <= limit:
        return name
    digest = hashlib.sha1(raw).hexdigest()[:16]
    head = raw[: limit - len(digest) - 1].decode("utf-8", "ignore")  # a whole character at the cut
    return f"{head}-{digest}"
