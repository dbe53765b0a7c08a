"""Grad-CAM (Selvaraju et al. 2017) overlays: where in the image the predicted class came from.

The heatmap is the ReLU of the last convolutional feature map (ResNet50's ``conv5`` output)
weighted by the spatially averaged gradient of the predicted class probability. It is the
picture a researcher looks at before trusting a label.
"""

from __future__ import annotations

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
        target = out_dir / (overlay_name(f.path) + ".gradcam.png")
        target.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_with(target, lambda p: Image.fromarray(blend).save(p, format="PNG"), ".png")


def overlay_name(path: str) -> str:
    """A relative file path for a reported input path (no leading /, no .., no archive marker)."""
    parts = [p for p in re.split(r"[/\\]|!/", path) if p not in ("", ".", "..")]
    return "/".join(parts) or "image"
