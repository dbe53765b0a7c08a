"""tf.data input pipeline: parallel decode and resize, cache, seeded augmentation, batching.

Every random choice is a pure function of ``(seed, epoch, sample index)`` (stateless ops),
so an epoch's batches and augmentations can be rebuilt exactly after a resume, and each
rank of a distributed run can take its own shard of the same global order.

A file that will not decode inside the pipeline (it passed the scan, then changed or was cut
short on a shared disk while the job ran) never becomes a TensorFlow error: an exception raised
in a ``tf.numpy_function`` comes out as ``UnknownError`` with stacked tracebacks, and at 64 px it
left the process hung at exit (the iterator's destructor waiting, with the GIL held at
interpreter shutdown, for map calls that need the GIL). The decode records the failure and
yields a black image; every dataset the pipeline hands out (``Checked``) stops its iteration with
the ``DataError`` naming the file (exit 3) and releases its ``tf.data`` iterator there, while
the interpreter still runs.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from busi.config.schema import AugmentConfig, DicomConfig
from busi.data.images import load_image
from busi.errors import DataError


@dataclass(frozen=True)
class SplitData:
    """Absolute file paths and integer labels of one split, in a fixed order; ``frames``: each
    sample's 1-based frame of a cine loop (``data.dicom.frame: all``), None for a whole file
    (empty: every sample is a whole file)."""

    paths: tuple[str, ...]
    labels: tuple[int, ...]
    frames: tuple[int | None, ...] = ()

    def __len__(self) -> int:
        return len(self.paths)

    def frame(self, i: int) -> int | None:
        return self.frames[i] if self.frames else None

    def images(self) -> list[tuple[str, int | None]]:
        """(path, frame) of every sample: what ``busi.data.images.load_image`` decodes."""
        return [(p, self.frame(i)) for i, p in enumerate(self.paths)]


def balanced_class_weights(labels: Sequence[int], num_classes: int) -> np.ndarray:
    """n / (k * count_c): each class contributes equally to the loss (BUSI is 437/210/133).
    A class absent from training gets weight 0."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    weights = np.zeros(num_classes)
    present = counts > 0
    weights[present] = len(labels) / (present.sum() * counts[present])
    return weights.astype(np.float32)


class DecodeFailures:
    """The files of one pipeline that would not decode, recorded by the decode threads (never
    raised there) and raised, the first of them, by ``check`` on the consumer's thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failed: list[tuple[str, str]] = []

    def record(self, path: str, error: Exception) -> None:
        reason = error.reason if isinstance(error, DataError) else f"{type(error).__name__}: {error}"
        with self._lock:
            self._failed.append((path, reason))

    @property
    def failed(self) -> tuple[tuple[str, str], ...]:
        with self._lock:
            return tuple(self._failed)

    def check(self) -> None:
        """DataError (exit 3) naming the first file that failed, if any did."""
        failed = self.failed
        if failed:
            path, reason = failed[0]
            more = f"; {len(failed) - 1} more failed too" if len(failed) > 1 else ""
            raise DataError(path, f"{reason}. It passed the dataset scan, so it changed or was damaged while the job "
                            f"ran{more}: restore it and run the same command again (a run resumes from its last "
                            "checkpoint), or remove it and start again with --restart")


class Checked:
    """A ``tf.data`` dataset of one pipeline, iterated in Python: each element is handed out only
    while no file of the pipeline failed to decode (else ``DecodeFailures.check`` raises), and the
    ``tf.data`` iterator is released as the iteration ends, however it ends. ``dataset`` is the
    ``tf.data.Dataset`` itself, for a caller that needs its operations (and checks on its own)."""

    def __init__(self, dataset: Any, failures: DecodeFailures) -> None:
        self.dataset = dataset
        self.failures = failures

    def __iter__(self) -> Iterator[Any]:
        iterator = iter(self.dataset)
        try:
            for element in iterator:
                self.failures.check()
                yield element
            self.failures.check()
        finally:
            del iterator  # now, not at interpreter shutdown (the hang the module docstring names)


class Pipeline:
    """Decoded, cached images of one split, and per-epoch datasets built from them."""

    def __init__(self, data: SplitData, image_size: int, resize: str, cache: bool = True,
                 dicom: DicomConfig = DicomConfig()) -> None:
        import tensorflow as tf

        self.data = data
        self.size = image_size
        self.failures = DecodeFailures()
        n = len(data)
        index = np.arange(n, dtype=np.int64)

        def decode(path: Any, idx: Any) -> np.ndarray:
            try:
                return load_image(os.fsdecode(path), image_size, resize, dicom, data.frame(int(idx)))
            except Exception as e:  # never into TensorFlow: recorded, raised by Checked
                self.failures.record(os.fsdecode(path), e)
                return np.zeros((image_size, image_size, 3), np.uint8)

        def tf_decode(path: Any, label: Any, idx: Any) -> tuple[Any, Any, Any]:
            image = tf.numpy_function(decode, [path, idx], tf.uint8, stateful=False)
            image.set_shape((image_size, image_size, 3))
            return image, label, idx

        base = tf.data.Dataset.from_tensor_slices(
            # the paths' bytes (os.fsencode): a name that is not UTF-8 cannot become a tf.string otherwise
            (np.array([os.fsencode(p) for p in data.paths], dtype=object), np.array(data.labels, dtype=np.int32), index)
        )
        # deterministic=True keeps file order, so a cached epoch is identical on every run
        base = base.map(tf_decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        self.base = base.cache() if cache else base

    def steps(self, batch_size: int, shards: int = 1) -> int:
        """Batches per epoch on each shard, as ``train_dataset`` yields them (the ragged tail
        of a sharded epoch is dropped, so every rank takes the same number of steps)."""
        return math.ceil(len(self.data) // shards / batch_size)

    def train_dataset(
        self,
        batch_size: int,
        seed: int,
        epoch: int,
        augment: AugmentConfig,
        class_weights: np.ndarray,
        shard: tuple[int, int] = (0, 1),
        skip_batches: int = 0,
    ) -> Checked:
        """One epoch: shuffle by (seed, epoch), take this rank's shard, augment, batch.

        Yields (images float32 0-255, labels int32, sample weights float32). ``skip_batches``
        resumes part-way through an epoch.
        """
        import tensorflow as tf

        weights = tf.constant(class_weights, dtype=tf.float32)
        ds = epoch_order(self.base, len(self.data), seed, epoch, shard)
        aug_seed = _mix(seed + 1, epoch)

        def prepare(image: Any, label: Any, idx: Any) -> tuple[Any, Any, Any]:
            x = tf.cast(image, tf.float32)
            x = augment_image(x, tf.stack([tf.constant(aug_seed, tf.int64), idx]), augment)
            return x, label, tf.gather(weights, label)

        ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(batch_size)
        if skip_batches:
            ds = ds.skip(skip_batches)
        return Checked(ds.prefetch(tf.data.AUTOTUNE), self.failures)

    def variant_dataset(self, batch_size: int, seed: int, variant: int, augment: AugmentConfig | None) -> Checked:
        """All images in file order, augmented as variant ``variant`` (``augment`` None: as is):
        (images float32, labels int32). Feeds the feature cache (``busi.model.features``)."""
        import tensorflow as tf

        aug_seed = _mix(seed + 2, variant)

        def prepare(image: Any, label: Any, idx: Any) -> tuple[Any, Any]:
            x = tf.cast(image, tf.float32)
            if augment is not None:
                x = augment_image(x, tf.stack([tf.constant(aug_seed, tf.int64), idx]), augment)
            return x, label

        ds = self.base.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return Checked(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE), self.failures)

    def eval_dataset(self, batch_size: int) -> Checked:
        """All images in file order, unaugmented: (images float32, labels int32)."""
        import tensorflow as tf

        ds = self.base.map(lambda im, y, i: (tf.cast(im, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
        return Checked(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE), self.failures)


def epoch_order(ds: Any, n: int, seed: int, epoch: int, shard: tuple[int, int] = (0, 1)) -> Any:
    """The one definition of a training epoch's order: the ``n`` elements of ``ds`` shuffled by
    ``(seed, epoch)``, then rank ``shard[0]``'s share of ``shard[1]``. Training on images
    (``Pipeline.train_dataset``) and on cached features (``busi.model.features``, over
    ``tf.data.Dataset.range(n)``) both call it, so an epoch visits the same samples in the same
    order on either path, and a resumed epoch (``skip`` of the batches done) continues exactly."""
    ds = ds.shuffle(n, seed=_mix(seed, epoch), reshuffle_each_iteration=False)
    rank, size = shard
    if size > 1:
        # Equal step counts on every rank (a collective per step): drop the ragged tail.
        ds = ds.take((n // size) * size).shard(size, rank)
    return ds


def _mix(seed: int, epoch: int) -> int:
    """A per-epoch seed that differs for every (seed, epoch) pair and fits in int63."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 1) % (2**62)


def augment_image(x: Any, seed: Any, cfg: AugmentConfig) -> Any:
    """Flip, rotation, zoom, shift, brightness, contrast and speckle on one float32 0-255 image,
    stateless. Never a vertical flip: depth runs down an ultrasound image."""
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed, num=8)
    size = tf.shape(x)[0]
    if cfg.flip:
        x = tf.image.stateless_random_flip_left_right(x, seeds[0])
    if cfg.rotation > 0 or cfg.zoom > 0 or cfg.shift > 0:
        angle = tf.random.stateless_uniform([], seeds[1], -cfg.rotation, cfg.rotation) * 2.0 * math.pi
        scale = tf.random.stateless_uniform([], seeds[2], 1.0 - cfg.zoom, 1.0 + cfg.zoom)
        c = (tf.cast(size, tf.float32) - 1.0) / 2.0
        shift = tf.random.stateless_uniform([2], seeds[5], -cfg.shift, cfg.shift) * tf.cast(size, tf.float32)
        a0, a1 = scale * tf.cos(angle), -scale * tf.sin(angle)
        b0, b1 = scale * tf.sin(angle), scale * tf.cos(angle)
        transform = tf.stack([a0, a1, c - a0 * c - a1 * c + shift[0], b0, b1, c - b0 * c - b1 * c + shift[1], 0.0, 0.0])
        x = tf.raw_ops.ImageProjectiveTransformV3(
            images=x[None],
            transforms=transform[None],
            output_shape=tf.shape(x)[:2],
            fill_value=0.0,
            interpolation="BILINEAR",
            fill_mode="CONSTANT",
        )[0]
    if cfg.brightness > 0:
        x = x + tf.random.stateless_uniform([], seeds[3], -cfg.brightness, cfg.brightness) * 255.0
    if cfg.contrast > 0:
        factor = tf.random.stateless_uniform([], seeds[4], 1.0 - cfg.contrast, 1.0 + cfg.contrast)
        mean = tf.reduce_mean(x)
        x = (x - mean) * factor + mean
    if cfg.speckle > 0:
        x = x * (1.0 + cfg.speckle * tf.random.stateless_normal(tf.shape(x)[:2], seeds[6]))[..., None]
    return tf.clip_by_value(x, 0.0, 255.0)
