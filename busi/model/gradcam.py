"""Grad-CAM (Selvaraju et al. 2017) overlays: where in the image the predicted class came from.

The heatmap is the ReLU of the backbone's last feature map (its output: ResNet50's ``conv5``,
MobileNetV2's ``out_relu``, ..., ``busi.model.backbones``)
weighted by the spatially averaged gradient of the predicted class probability. It is the
picture a researcher looks at before trusting a label.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def backbone_of(model: Any) -> Any:
    """The backbone inside a busi model: its one nested network other than ``preprocess``."""
    return next(layer for layer in model.layers if hasattr(layer, "layers") and layer.name != "preprocess")


class GradCam:
    """Splits a busi model into preprocessing + backbone (features) and head (probabilities)."""

    def __init__(self, model: Any) -> None:
        import tensorflow as tf

        self.pre = model.get_layer("preprocess")
        self.backbone = backbone_of(model)
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
