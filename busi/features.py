"""Feature caching for the frozen-backbone phase.

While the backbone is frozen (and its BatchNorm in inference mode) its output for an image
never changes, so recomputing it every epoch is pure waste: ResNet50's forward pass is
~99.9% of a head-phase step. ``FeatureCache`` computes the pooled backbone features once per
image (``train.feature_cache: once``), or once per augmentation variant (``variants``: epoch
e trains on variant (e - 1) mod K), and the head trains on those 2048-d vectors. The head
(dropout + dense softmax) is the model's own layers, so the result is the same model.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from busi.config import JobConfig
from busi.data.pipeline import Pipeline, _mix

log = logging.getLogger("busi")


class FeatureCache:
    """Pooled backbone features of the train (per variant) and validation splits."""

    def __init__(self, cfg: JobConfig, model: Any, train: Pipeline, val: Pipeline) -> None:
        import keras
        import tensorflow as tf

        self.cfg = cfg
        self.model = model
        self.train = train
        self.val = val
        self.variants = cfg.train.feature_cache_variants if cfg.train.feature_cache == "variants" else 1
        pooled = keras.Model(model.input, model.get_layer("pool").output, name="features")
        self.extract = tf.function(lambda x: pooled(x, training=False))
        self.dropout = model.get_layer("dropout")
        self.dense = model.get_layer("probs")
        self.train_features: list[np.ndarray] = []
        self.val_features: np.ndarray | None = None
        self.seconds = 0.0

    def _features(self, ds: Any) -> np.ndarray:
        out = [self.extract(x).numpy() for x, _ in ds]
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)

    def build(self) -> None:
        """Run the backbone over every training image (per variant) and the validation split."""
        t = time.perf_counter()
        bs, seed = self.cfg.train.batch_size, self.cfg.runtime.seed
        augment = self.cfg.data.augment if self.variants > 1 else None
        self.train_features = [
            self._features(self.train.variant_dataset(bs, seed, v, augment)) for v in range(self.variants)
        ]
        if len(self.val.data):
            self.val_features = self._features(self.val.variant_dataset(bs, seed, 0, None))
        self.seconds = time.perf_counter() - t
        log.info("feature cache: %d train image(s) x %d variant(s), %d val, in %.1f s",
                 len(self.train.data), self.variants, len(self.val.data), self.seconds)

    def train_dataset(
        self, batch_size: int, seed: int, epoch: int, class_weights: np.ndarray,
        shard: tuple[int, int] = (0, 1), skip_batches: int = 0,
    ) -> Any:
        """Like ``Pipeline.train_dataset`` (same shuffle and sharding), over cached features."""
        import tensorflow as tf

        feats = self.train_features[(epoch - 1) % self.variants]
        labels = np.asarray(self.train.data.labels, np.int32)
        n = len(labels)
        ds = tf.data.Dataset.from_tensor_slices((feats, labels))
        ds = ds.shuffle(n, seed=_mix(seed, epoch), reshuffle_each_iteration=False)
        rank, size = shard
        if size > 1:
            ds = ds.take((n // size) * size).shard(size, rank)
        weights = tf.constant(class_weights, tf.float32)
        ds = ds.map(lambda f, y: (f, y, tf.gather(weights, y))).batch(batch_size)
        if skip_batches:
            ds = ds.skip(skip_batches)
        return ds.prefetch(tf.data.AUTOTUNE)

    def eval_dataset(self, batch_size: int) -> Any:
        import tensorflow as tf

        assert self.val_features is not None
        labels = np.asarray(self.val.data.labels, np.int32)
        return tf.data.Dataset.from_tensor_slices((self.val_features, labels)).batch(batch_size)

    def head(self, features: Any, training: bool) -> Any:
        """The model's own head on pooled features: dropout, then the float32 softmax layer."""
        return self.dense(self.dropout(features, training=training))
