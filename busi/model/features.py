"""Feature caching: the frozen part of the network runs once per image, not once per epoch.

A layer that is frozen (and whose BatchNorm runs in inference mode, as every frozen Keras 3
BatchNorm does) gives the same output for an image in every epoch, so recomputing it is pure
waste. ``FeatureCache`` runs the frozen part once per image (``train.feature_cache: once``), or
once per augmentation variant (``variants``: epoch e trains on variant (e - 1) mod K), keeps
its outputs in memory, and the phase trains the rest of the network on them:

* head phase (``unfreeze: none``): the whole backbone and its pooling are frozen; the cache
  holds the pooled vectors (2048-d for ResNet50) and the head (dropout + dense softmax) trains
  on them. The backbone's forward pass is ~99.9% of a head step.
* fine-tuning a top part (``unfreeze: top`` or ``top2``, ``conv5`` or ``conv4`` by ResNet50's
  names): the stages before it are frozen; the cache holds the map entering its first layer
  (``busi.model.backbones``: ResNet50's ``conv4_block6_out``, 14x14x1024 at 224 px, for top) and
  the top part + pooling + head train on it. ResNet50's conv1-conv4 are ~80% of its forward
  FLOPs (what that saves per epoch: README, "Performance"; each backbone's share: its table).
* ``unfreeze: all``: nothing is frozen, nothing is cached.

Both halves are the model's own layers (the same variables), so training on the cache is
training the same model; ``tests/test_features.py`` checks that the two paths compute the
same probabilities and the same training step. ``once`` trains on unaugmented images; use
``variants`` (or ``none``) to keep augmentation. The cache lives in memory: a phase whose
cache would exceed ``train.feature_cache_max_gb`` runs uncached, with a warning.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from busi.config.schema import AugmentConfig, JobConfig, ModelConfig, TrainConfig
from busi.data.pipeline import Pipeline, epoch_order
from busi.errors import ConfigError
from busi.model.backbones import UNFREEZE_STAGE, backbone
from busi.model.engines import Engine, EngineInfo, Host
from busi.model.network import BuiltModel
from busi.model.tracing import one_trace

log = logging.getLogger("busi")

def cache_feature_shape(unfreeze: str, image_size: int, model: ModelConfig = ModelConfig()) -> tuple[int, ...]:
    """The shape of one cached item, without building a model (``busi.model.backbones``): the
    pooled vector for the head phase, the map entering the top part when fine-tuning it."""
    return backbone(model.backbone).feature_shape(unfreeze, image_size, model.alpha)


def cache_nbytes(feature_shape: tuple[int, ...], itemsize: int, train_images: int, variants: int,
                 val_images: int) -> int:
    """Memory a phase's cache holds: every train image per variant, and the validation split.
    The one formula of the run (``FeatureCache``) and of the walltime estimate (``busi.perf.bench``)."""
    return int(np.prod(feature_shape)) * itemsize * (train_images * variants + val_images)


def cache_variants(train: TrainConfig) -> int:
    """Cached copies of each training image: ``feature_cache_variants`` under ``variants``, else 1."""
    return train.feature_cache_variants if train.feature_cache == "variants" else 1


def cacheable(train: TrainConfig, unfreeze: str) -> bool:
    """Whether a phase with this ``unfreeze`` setting has a frozen part worth caching."""
    return train.feature_cache != "none" and UNFREEZE_STAGE[unfreeze] != "all"


@dataclass(frozen=True)
class CacheSettings:
    """What the feature cache needs of a job: the ``train.feature_cache*`` keys, the batch size
    and seed its passes run with, the augmentation of ``variants``, the model settings (BatchNorm
    mode), ``train.engine`` and the node."""

    train: TrainConfig
    augment: AugmentConfig
    model: ModelConfig
    seed: int
    host: Host = Host()

    @property
    def batchnorm(self) -> str:
        return self.model.batchnorm

    @classmethod
    def of(cls, cfg: JobConfig, host: Host = Host()) -> "CacheSettings":
        return cls(cfg.train, cfg.data.augment, cfg.model, cfg.runtime.seed, host)


class FeatureCache:
    """Outputs of the frozen part of the network for the train (per variant) and validation
    splits, and ``head``: the trainable rest of the network applied to them."""

    def __init__(self, settings: CacheSettings, built: BuiltModel, unfreeze: str, train: Pipeline,
                 val: Pipeline) -> None:
        import keras
        import tensorflow as tf

        if not cacheable(settings.train, unfreeze):
            raise ValueError(f"nothing to cache: unfreeze {unfreeze!r}, feature_cache {settings.train.feature_cache!r}")
        self.settings = settings
        self.train = train
        self.val = val
        self.variants = cache_variants(settings.train)
        model = built.model
        dropout, dense = model.get_layer("dropout"), model.get_layer("probs")
        frozen = frozen_model(built, unfreeze)
        self.extract = one_trace(lambda x: frozen(x, training=False))
        if unfreeze == "none":
            self.layer = "pool"
            self.head: Callable[..., Any] = lambda f, training: dense(dropout(f, training=training))
        else:
            net = built.backbone
            top = net.layers[built.first_trainable(unfreeze) or 0]
            self.layer = top.input._keras_history[0].name  # the layer (or op) whose output the cache holds
            suffix = keras.Model(top.input, net.output, name="trainable_part")
            pool = model.get_layer("pool")
            # As in busi.model.network: with batchnorm frozen the backbone always runs in inference mode.
            bn_training = settings.batchnorm == "train"
            self.head = lambda f, training: dense(
                dropout(pool(suffix(f, training=training and bn_training)), training=training)
            )
        self.unfreeze = unfreeze
        self.feature_shape = tuple(int(d) for d in frozen.output.shape[1:])
        # Pooled vectors are kept in float32; a backbone stage's output in the dtype it was
        # computed in (bfloat16 under mixed_bfloat16), so the cached values are the exact ones.
        compute = keras.mixed_precision.global_policy().compute_dtype
        self.itemsize = 4 if unfreeze == "none" or compute == "float32" else 2
        # What the cache holds, in numpy: the pooled float32 vectors, or the stage's compute dtype.
        self.dtype = np.dtype(np.float32) if self.itemsize == 4 else np.dtype(tf.dtypes.as_dtype(compute).as_numpy_dtype)
        self.train_features: list[np.ndarray] = []
        self.val_features: np.ndarray | None = None
        self.seconds = 0.0
        self.engine: Engine | None = None  # set by ``start_engine`` when OpenVINO fills the cache
        self._built = built

    def nbytes(self) -> int:
        """Memory the cache will hold: every train image per variant, and the validation split."""
        return cache_nbytes(self.feature_shape, self.itemsize, len(self.train.data), self.variants, len(self.val.data))

    def work_images(self) -> float:
        """The fill's cost in images at 224 px through the whole backbone (``busi.model.engines``)."""
        side = self._built.model.input_shape[1]
        images = len(self.train.data) * self.variants + len(self.val.data)
        return images * (side / 224) ** 2 * backbone(self._built.backbone_name).frozen_flops_share(self.unfreeze)

    def start_engine(self) -> EngineInfo:
        """Choose the engine of the fill (``train.engine``) and, for OpenVINO, convert the frozen
        part now (after the phase's weights were broadcast: every rank converts the same
        weights). What computed the fill: TensorFlow in the training policy, or OpenVINO."""
        import keras

        from busi.model.engines import (
            OpenVINOEngine,
            choose_engine,
            policy_precision,
            tensorflow_info,
            worth_converting,
        )
        from busi.model.openvino import openvino_available, to_openvino

        policy = keras.mixed_precision.global_policy().name
        precision = policy_precision(policy)
        setting, host = self.settings.train.engine, self.settings.host
        if setting == "auto" and not host.gpu and not worth_converting(self.work_images(), precision):
            log.info("engine: tensorflow for the feature cache of unfreeze %s (%.0f image(s) at 224 px through the "
                     "whole backbone, equivalently; converting for OpenVINO would cost more than it saves)",
                     self.unfreeze, self.work_images())
            setting = "tensorflow"
        if choose_engine(setting, host.gpu, openvino_available(), key="train.engine") == "tensorflow":
            return tensorflow_info(self._built.model)
        t = time.perf_counter()
        try:
            frozen = frozen_model(self._built, self.unfreeze)
            self.engine = OpenVINOEngine(to_openvino(frozen), self.settings.train.batch_size, precision,
                                         host.threads)
        except ConfigError:
            raise
        except Exception as e:  # the converter raises many kinds on a graph it cannot read
            reason = f"{type(e).__name__}: {str(e)[:200]}"
            if setting == "openvino":
                raise ConfigError(f"train.engine: OpenVINO cannot convert the frozen part for the {self.unfreeze} "
                                  f"feature cache ({reason}); use train.engine: tensorflow or auto") from None
            log.warning("engine: OpenVINO cannot convert the frozen part (%s); the cache fills on TensorFlow", reason)
            return tensorflow_info(self._built.model)
        log.info("engine: %s for the feature cache of unfreeze %s (converted and compiled in %.1f s)",
                 self.engine.info.label(), self.unfreeze, time.perf_counter() - t)
        return self.engine.info

    def _extract(self, x: Any) -> np.ndarray:
        if self.engine is not None:
            return self.engine.run(x.numpy()).astype(self.dtype, copy=False)
        f = self.extract(x).numpy()
        return f.astype(np.float32) if self.unfreeze == "none" else f

    def _features(self, ds: Any, between: Callable[[], None] | None) -> np.ndarray:
        out = []
        for x, _ in ds:
            out.append(self._extract(x))
            if between is not None:
                between()
        if not out:
            return np.zeros((0, *self.feature_shape), np.float32)
        return np.concatenate(out)

    def build(self, between: Callable[[], None] | None = None) -> None:
        """Run the frozen part over every training image (per variant) and the validation
        split. ``between`` runs after every batch (the trainer's stop check)."""
        t = time.perf_counter()
        bs, seed = self.settings.train.batch_size, self.settings.seed
        augment = self.settings.augment if self.variants > 1 else None
        self.train_features = [
            self._features(self.train.variant_dataset(bs, seed, v, augment), between) for v in range(self.variants)
        ]
        if len(self.val.data):
            self.val_features = self._features(self.val.variant_dataset(bs, seed, 0, None), between)
        self.seconds = time.perf_counter() - t
        log.info("feature cache (%s output, %s, %s): %d train image(s) x %d variant(s), %d val, %.0f MiB, in %.1f s",
                 self.layer, "x".join(map(str, self.feature_shape)),
                 self.engine.info.label() if self.engine is not None else "tensorflow", len(self.train.data), self.variants,
                 len(self.val.data), sum(f.nbytes for f in self.train_features) / 2**20
                 + (0 if self.val_features is None else self.val_features.nbytes / 2**20), self.seconds)

    def train_dataset(
        self, batch_size: int, seed: int, epoch: int, class_weights: np.ndarray,
        shard: tuple[int, int] = (0, 1), skip_batches: int = 0,
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Like ``Pipeline.train_dataset`` (the same shuffle and sharding), over cached features:
        (features, labels int32, sample weights float32) batches as numpy arrays (the features
        are gathered from the in-memory arrays, never copied into the TensorFlow graph)."""
        import tensorflow as tf

        feats = self.train_features[(epoch - 1) % self.variants]
        labels = np.asarray(self.train.data.labels, np.int32)
        n = len(labels)
        ds = epoch_order(tf.data.Dataset.range(n), n, seed, epoch, shard).batch(batch_size)
        if skip_batches:
            ds = ds.skip(skip_batches)
        weights = np.asarray(class_weights, np.float32)
        for idx in ds.as_numpy_iterator():
            y = labels[idx]
            yield feats[idx], y, weights[y]

    def eval_dataset(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        assert self.val_features is not None
        labels = np.asarray(self.val.data.labels, np.int32)
        for i in range(0, len(labels), batch_size):
            yield self.val_features[i : i + batch_size], labels[i : i + batch_size]


def frozen_model(built: BuiltModel, unfreeze: str) -> Any:
    """The frozen part of ``built`` for an ``unfreeze`` setting as one Keras model, image ->
    what the cache holds (the pooled vector, or the map entering the top part): what OpenVINO converts."""
    import keras

    model = built.model
    if unfreeze == "none":
        return keras.Model(model.input, model.get_layer("pool").output, name="frozen_part")
    prefix = keras.Model(built.backbone.input, built.top_input(unfreeze), name="frozen_prefix")
    image = keras.Input(shape=model.input_shape[1:], name="image", dtype="float32")
    return keras.Model(image, prefix(model.get_layer("preprocess")(image), training=False), name="frozen_part")


def feature_cache_for(settings: CacheSettings, built: BuiltModel, unfreeze: str, train: Pipeline,
                      val: Pipeline) -> FeatureCache | None:
    """The cache a phase trains on, or None: none configured, nothing frozen, or more memory
    than ``train.feature_cache_max_gb`` (then the phase runs uncached, with a warning)."""
    if not cacheable(settings.train, unfreeze):
        return None
    cache = FeatureCache(settings, built, unfreeze, train, val)
    budget = settings.train.feature_cache_max_gb * 2**30
    if cache.nbytes() > budget:
        log.warning(
            "feature cache for unfreeze %s would hold %.1f GiB (%s per image x %d images), over "
            "train.feature_cache_max_gb=%g: this phase recomputes the frozen layers every epoch. "
            "Raise the limit if the node has the memory, or lower feature_cache_variants",
            unfreeze, cache.nbytes() / 2**30, "x".join(map(str, cache.feature_shape)),
            len(train.data) * cache.variants + len(val.data), settings.train.feature_cache_max_gb,
        )
        return None
    return cache
