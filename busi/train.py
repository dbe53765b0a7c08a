"""The training loop: two phases (frozen backbone, then fine-tuning), a custom step, early stopping.

A custom loop rather than ``model.fit``: with Keras 3, Horovod's Keras callbacks do not
synchronise ranks, so gradient averaging plugs in here (``Dist.average_gradients``), and a
run can stop and resume at a step. This module writes no files: it reports each epoch to
``on_epoch`` and the caller (``busi.job``) decides what to persist.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from busi.config import JobConfig, PhaseConfig
from busi.data.pipeline import Pipeline
from busi.dist import Dist
from busi.model import BuiltModel, set_trainable

log = logging.getLogger("busi")

HISTORY_COLUMNS = ("phase", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds")


@dataclass(frozen=True)
class EpochRecord:
    phase: str
    epoch: int  # global, 1-based, continuous across phases
    loss: float
    accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float
    images_per_second: float

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: d[k] for k in HISTORY_COLUMNS}


@dataclass
class TrainResult:
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    best_value: float = math.nan
    phase_seconds: dict[str, float] = field(default_factory=dict)
    stopped_early: dict[str, bool] = field(default_factory=dict)


def _better(monitor: str, value: float, best: float) -> bool:
    if math.isnan(best):
        return not math.isnan(value)
    return value < best if monitor.endswith("loss") else value > best


class Trainer:
    """Runs the configured phases on a built model; keeps the best weights by ``train.monitor``."""

    def __init__(
        self,
        cfg: JobConfig,
        built: BuiltModel,
        train: Pipeline,
        val: Pipeline,
        class_weights: np.ndarray,
        dist: Dist,
        on_epoch: Callable[[EpochRecord, TrainResult], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.built = built
        self.train = train
        self.val = val
        self.class_weights = class_weights
        self.dist = dist
        self.on_epoch = on_epoch
        self.total_epochs = cfg.train.head.epochs + cfg.train.finetune.epochs

    def fit(self) -> TrainResult:
        result = TrainResult()
        best_weights: list[np.ndarray] | None = None
        epoch = 0
        for name, phase in (("head", self.cfg.train.head), ("finetune", self.cfg.train.finetune)):
            if phase.epochs == 0:
                continue
            started = time.perf_counter()
            epoch, best_weights = self._run_phase(name, phase, epoch, result, best_weights)
            result.phase_seconds[name] = round(time.perf_counter() - started, 3)
        if best_weights is not None:
            self.built.model.set_weights(best_weights)
        return result

    # ------------------------------------------------------------------ phases

    def _run_phase(
        self, name: str, phase: PhaseConfig, epoch: int, result: TrainResult, best_weights: list[np.ndarray] | None
    ) -> tuple[int, list[np.ndarray] | None]:
        import keras

        cfg = self.cfg
        unfreeze = phase.unfreeze if name == "finetune" or phase.unfreeze != "none" else "none"
        set_trainable(self.built, unfreeze, cfg.model.batchnorm)
        lr = phase.learning_rate
        optimizer: Any = keras.optimizers.Adam(learning_rate=lr)
        if keras.mixed_precision.global_policy().name == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        step = self._make_train_step(optimizer)
        evaluate = self._make_eval_step()
        # Build optimizer slots outside tf.function (Keras 3 needs this before tracing).
        optimizer.build(self.built.model.trainable_variables)
        self.dist.broadcast_model(self.built.model, optimizer)
        trainable = int(sum(np.prod(v.shape) for v in self.built.model.trainable_variables))
        log.info("phase %s: %d epochs, lr %.1e, unfreeze %s, %d trainable parameters",
                 name, phase.epochs, lr, unfreeze, trainable)

        phase_best = math.nan
        since_best = 0
        epoch_times: list[float] = []
        bs = cfg.train.batch_size
        steps = self.train.steps(bs, self.dist.size, drop_remainder=False)
        for local in range(phase.epochs):
            epoch += 1
            t0 = time.perf_counter()
            ds = self.train.train_dataset(
                bs, cfg.runtime.seed, epoch, cfg.data.augment, self.class_weights, shard=(self.dist.rank, self.dist.size)
            )
            loss_sum = correct = seen = 0.0
            bar = _progress(steps, self.dist.is_primary)
            for i, (x, y, w) in enumerate(ds):
                loss, n_correct = step(x, y, w)
                n = float(x.shape[0])
                loss_sum += float(loss) * n
                correct += float(n_correct)
                seen += n
                if bar is not None:
                    bar.update(i + 1, [("loss", float(loss))])
            totals = self.dist.sum_scalars([loss_sum, correct, seen])
            train_loss, train_acc = totals[0] / max(totals[2], 1), totals[1] / max(totals[2], 1)
            val_loss, val_acc = self._validate(evaluate)
            seconds = time.perf_counter() - t0
            epoch_times.append(seconds)
            record = EpochRecord(
                phase=name, epoch=epoch, loss=round(train_loss, 6), accuracy=round(train_acc, 6),
                val_loss=round(val_loss, 6), val_accuracy=round(val_acc, 6), lr=lr,
                seconds=round(seconds, 3), images_per_second=round(totals[2] / seconds, 2),
            )
            result.history.append(record)
            remaining = self.total_epochs - epoch
            eta = remaining * float(np.mean(epoch_times))
            log.info(
                "%s epoch %d/%d loss %.4f accuracy %.4f val_loss %.4f val_accuracy %.4f lr %.1e %.1f img/s ETA %s",
                name, epoch, self.total_epochs, train_loss, train_acc, val_loss, val_acc, lr,
                record.images_per_second, _hms(eta),
            )
            value = val_loss if cfg.train.monitor == "val_loss" else val_acc
            if _better(cfg.train.monitor, value, result.best_value):
                result.best_value, result.best_epoch = value, epoch
                best_weights = [np.array(w) for w in self.built.model.get_weights()]
            if _better(cfg.train.monitor, value, phase_best):
                phase_best, since_best = value, 0
            else:
                since_best += 1
            if self.on_epoch is not None:
                self.on_epoch(record, result)
            if since_best >= phase.patience and local + 1 < phase.epochs:
                log.info("%s: no improvement of %s for %d epochs; stopping the phase early",
                         name, cfg.train.monitor, since_best)
                result.stopped_early[name] = True
                self.total_epochs -= phase.epochs - (local + 1)
                break
        result.stopped_early.setdefault(name, False)
        return epoch, best_weights

    def _validate(self, evaluate: Callable[[Any, Any], Any]) -> tuple[float, float]:
        """Mean cross-entropy and accuracy on the validation split (each rank the whole split,
        so every rank takes the same early-stopping decision)."""
        if len(self.val.data) == 0:
            return math.nan, math.nan
        loss_sum = correct = n = 0.0
        for x, y in self.val.eval_dataset(self.cfg.train.batch_size):
            loss, c = evaluate(x, y)
            loss_sum += float(loss)
            correct += float(c)
            n += float(x.shape[0])
        return loss_sum / n, correct / n

    # -------------------------------------------------------------- tf functions

    def _make_train_step(self, optimizer: Any) -> Callable[..., Any]:
        import keras
        import tensorflow as tf

        model = self.built.model
        dist = self.dist

        @tf.function
        def step(x: Any, y: Any, w: Any) -> tuple[Any, Any]:
            variables = model.trainable_variables
            with tf.GradientTape() as tape:
                probs = model(x, training=True)
                per_sample = keras.losses.sparse_categorical_crossentropy(y, probs)
                loss = tf.reduce_mean(per_sample * w)
                scaled = optimizer.scale_loss(loss)
            grads = tape.gradient(scaled, variables)
            grads = dist.average_gradients(grads)
            optimizer.apply(grads, variables)
            correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probs, axis=-1, output_type=tf.int32), y), tf.float32))
            return loss, correct

        return step

    def _make_eval_step(self) -> Callable[..., Any]:
        import keras
        import tensorflow as tf

        model = self.built.model

        @tf.function
        def evaluate(x: Any, y: Any) -> tuple[Any, Any]:
            probs = model(x, training=False)
            loss = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(y, probs))
            correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probs, axis=-1, output_type=tf.int32), y), tf.float32))
            return loss, correct

        return evaluate


def predict_probs(model: Any, pipeline: Pipeline, batch_size: int) -> np.ndarray:
    """Class probabilities for every image of a pipeline, in its file order."""
    import tensorflow as tf

    @tf.function
    def forward(x: Any) -> Any:
        return model(x, training=False)

    out = [forward(x).numpy() for x, _ in pipeline.eval_dataset(batch_size)]
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)


def _progress(steps: int, primary: bool) -> Any:
    """A live progress bar only on an interactive terminal (batch logs stay one line per epoch)."""
    if not (primary and sys.stderr.isatty()):
        return None
    import keras

    return keras.utils.Progbar(steps, stateful_metrics=["loss"])


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
