"""The training loop: two phases (frozen backbone, then fine-tuning), a custom step, early
stopping, and stop-and-resume at any step.

A custom loop rather than ``model.fit``: with Keras 3, Horovod's Keras callbacks do not
synchronise ranks, so gradient averaging plugs in here (``Dist.average_gradients``), and a
run can stop at a step on a signal or the walltime budget and continue from its checkpoint
with the same data order, augmentation, dropout draws and optimizer state. This module
writes no run-directory files itself: epochs go to ``on_epoch``, checkpoints to the
``Checkpointer`` (``busi.train.checkpoint``), and ``busi.train.job`` decides what else to persist.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from busi.config.schema import JobConfig, PhaseConfig
from busi.data.pipeline import Pipeline
from busi.distributed.group import Dist
from busi.errors import Interrupted
from busi.model.engines import Host
from busi.model.features import CacheSettings, feature_cache_for
from busi.model.network import BuiltModel, set_trainable
from busi.runtime.stopper import Stopper
from busi.runtime.walltime import format_hms
from busi.train.checkpoint import (
    Checkpoint,
    Checkpointer,
    TrainState,
    restore_optimizer,
    restore_variables,
)
from busi.train.lr import epoch_learning_rate
from busi.train.steps import make_eval_step, make_optimizer, make_train_step

log = logging.getLogger("busi")

HISTORY_COLUMNS = ("phase", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds")
PHASES = ("head", "finetune")


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
    resumed_from: dict[str, Any] | None = None
    cache_engines: dict[str, dict[str, str]] = field(default_factory=dict)  # phase -> EngineInfo of its fill


@dataclass(frozen=True)
class _PhaseFunctions:
    """What a phase trains with: its feature cache (or None), training step and validation step."""

    cache: Any
    step: Callable[..., Any]
    evaluate: Callable[..., Any]


def _better(monitor: str, value: float, best: float | None) -> bool:
    if math.isnan(value):
        return False
    if best is None or math.isnan(best):
        return True
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
        on_step: Callable[[int], None] | None = None,
        stopper: Stopper | None = None,
        checkpointer: Checkpointer | None = None,
        clock: Callable[[], float] = time.perf_counter,
        host: Host = Host(),
    ) -> None:
        self.cfg = cfg
        self.host = host  # for the feature cache's engine (busi.model.engines)
        self.built = built
        self.train = train
        self.val = val
        self.class_weights = class_weights
        self.dist = dist
        self.on_epoch = on_epoch
        # called with each global step number (1-based, across epochs and phases) before the step
        # runs: the tests' failure injection (busi.runtime.faults) and fake clock
        self.on_step = on_step
        self.stopper = stopper or Stopper(signals=())
        self.checkpointer = checkpointer
        # Seconds for epoch times, ETAs and the checkpoint cadence (tests pass a fake clock, as
        # they pass the Stopper one for the walltime budget).
        self.clock = clock
        self.best_weights: list[np.ndarray] | None = None
        self.optimizer: Any = None
        self._trained: list[np.ndarray] | None = None  # train.ema: trained weights while the average is in
        self.state = TrainState(total_epochs=cfg.train.head.epochs + cfg.train.finetune.epochs)
        self._last_checkpoint = clock()
        self._checkpoint_cost = 0.0
        self.cache_engines: dict[str, dict[str, str]] = {}

    # ------------------------------------------------------------------ driver

    def fit(self, resume: Checkpoint | None = None) -> TrainResult:
        """Run (or continue) both phases. Raises ``Interrupted`` after checkpointing when the
        stopper says so; restores the best weights at the end."""
        if resume is not None:
            self.state = resume.state
            restore_variables(self.built.model, resume.variables)
            self.best_weights = resume.best
            log.info("resuming: phase %s, %d epochs done, step %d of the next", self.state.phase,
                     self.state.epoch, self.state.step)
        start = PHASES.index(self.state.phase)
        for index, name in enumerate(PHASES):
            phase: PhaseConfig = getattr(self.cfg.train, name)
            if index < start or phase.epochs == 0:
                continue
            own = resume is not None and index == start and resume.state.optimizer_phase == name
            optimizer_state = resume.optimizer if own and resume is not None else None
            self._run_phase(name, phase, optimizer_state)
        self.state.done = True
        if self.best_weights is not None:
            self.built.model.set_weights(self.best_weights)
        elif self.optimizer is not None:  # nothing validated (no validation split): the average, if any
            self.optimizer.finalize_variable_values(self.built.model.trainable_variables)
        return self.result(resume)

    def result(self, resume: Checkpoint | None = None) -> TrainResult:
        s = self.state
        return TrainResult(
            history=[EpochRecord(**h) for h in s.history],
            best_epoch=s.best_epoch,
            best_value=math.nan if s.best_value is None else s.best_value,
            phase_seconds=dict(s.phase_seconds),
            stopped_early=dict(s.stopped_early),
            resumed_from={"epoch": resume.state.epoch, "step": resume.state.step} if resume else None,
            cache_engines=dict(self.cache_engines),
        )

    # ------------------------------------------------------------------ phases

    def _start_phase(self, name: str, phase: PhaseConfig, optimizer_state: list[np.ndarray] | None) -> None:
        set_trainable(self.built, phase.unfreeze, self.cfg.model.batchnorm)
        optimizer = make_optimizer(phase.learning_rate, self.built.model.trainable_variables, self.cfg.train.ema)
        if optimizer_state is not None:
            restore_optimizer(optimizer, optimizer_state)
        self.dist.broadcast_model(self.built.model, optimizer)
        self.optimizer = optimizer
        self.state.optimizer_phase = name
        trainable = int(sum(np.prod(v.shape) for v in self.built.model.trainable_variables))
        log.info("phase %s: %d epochs, lr %.1e, unfreeze %s, %d trainable parameters",
                 name, phase.epochs, phase.learning_rate, phase.unfreeze, trainable)

    def _run_phase(self, name: str, phase: PhaseConfig, optimizer_state: list[np.ndarray] | None) -> None:
        """One phase, epoch by epoch, from wherever the state says it stopped."""
        s = self.state
        if s.phase != name:  # entering a phase afresh
            s.phase, s.phase_best, s.since_best = name, None, 0
        phase_seconds = self._phase_timer(name)
        self._start_phase(name, phase, optimizer_state)  # every rank now holds rank 0's weights
        fns = self._phase_functions(phase, phase_seconds)
        epoch_times = [h["seconds"] for h in s.history if h["phase"] == name]
        for local in range(len(epoch_times), phase.epochs):
            record = self._run_epoch(name, phase, local, fns, phase_seconds)
            epoch_times.append(record.seconds)
            self._log_epoch(record, epoch_times)
            last = self._update_best(name, phase, local, record)
            self._swap_out_average()  # training (and its checkpoint) goes on from the trained weights
            s.phase_seconds[name] = phase_seconds()
            if last:
                self._advance_phase(name)
            if self.on_epoch is not None:
                self.on_epoch(record, self.result())
            self._end_epoch(name, last, epoch_times, phase_seconds)
            if last:
                break
        s.stopped_early.setdefault(name, False)
        s.phase_seconds[name] = phase_seconds()

    def _phase_timer(self, name: str) -> Callable[[], float]:
        """Seconds spent in phase ``name`` so far, this attempt and the earlier ones."""
        before, started = self.state.phase_seconds.get(name, 0.0), self.clock()
        return lambda: round(before + self.clock() - started, 3)

    def _phase_functions(self, phase: PhaseConfig, phase_seconds: Callable[[], float]) -> "_PhaseFunctions":
        """The phase's feature cache (filled now: a signal or the walltime budget can stop the
        run while it fills), its traced training step and its validation step."""
        model = self.built.model
        forward: Callable[..., Any] = lambda x, training: model(x, training=training)  # noqa: E731
        cache = feature_cache_for(CacheSettings.of(self.cfg, self.host), self.built, phase.unfreeze, self.train,
                                  self.val)
        if cache is not None:
            self.cache_engines[self.state.phase] = cache.start_engine().as_dict()
            cache.build(between=lambda: self._maybe_stop(mid_epoch=True, t0=None, phase_seconds=phase_seconds))
            forward = cache.head
        step = make_train_step(model, self.optimizer, forward, self.dist.average_gradients)
        return _PhaseFunctions(cache, step, make_eval_step(forward))

    def _run_epoch(self, name: str, phase: PhaseConfig, local: int, fns: "_PhaseFunctions",
                   phase_seconds: Callable[[], float]) -> EpochRecord:
        """Train one epoch (continuing a partial one after a resume), then validate it."""
        cfg, s = self.cfg, self.state
        epoch, bs, shard = s.epoch + 1, cfg.train.batch_size, (self.dist.rank, self.dist.size)
        steps = self.train.steps(bs, self.dist.size)
        lr = epoch_learning_rate(cfg.train, name, phase.learning_rate, local + 1, self.dist.size)
        self.optimizer.learning_rate = lr  # x ranks, after the warmup (busi.train.lr)
        t0 = self.clock() - s.epoch_seconds
        skip = s.step
        if fns.cache is not None:
            ds = fns.cache.train_dataset(bs, cfg.runtime.seed, epoch, self.class_weights, shard=shard,
                                         skip_batches=skip)
        else:
            ds = self.train.train_dataset(bs, cfg.runtime.seed, epoch, cfg.data.augment, self.class_weights,
                                          shard=shard, skip_batches=skip)
        sums = list(s.epoch_sums) if skip else [0.0, 0.0, 0.0]  # loss x n, correct, n
        bar = _progress(steps, self.dist.is_primary)
        for i, (x, y, w) in enumerate(ds, start=skip):
            if self.on_step is not None:
                self.on_step((epoch - 1) * steps + i + 1)
            loss, n_correct = fns.step(x, y, w)
            n = float(x.shape[0])
            sums[0] += float(loss) * n
            sums[1] += float(n_correct)
            sums[2] += n
            s.step, s.epoch_sums = i + 1, sums
            if bar is not None:
                bar.update(i + 1, [("loss", float(loss))])
            self._maybe_stop(mid_epoch=True, t0=t0, phase_seconds=phase_seconds)
        totals = self.dist.sum_scalars(sums)
        self.dist.average_model_state(self.built.model)  # BatchNorm statistics: one model on every rank
        self._swap_in_average()  # train.ema: the averaged weights are validated (and kept as best)
        val_loss, val_acc = self._validate(fns.evaluate, fns.cache)
        seconds = self.clock() - t0
        record = EpochRecord(
            phase=name, epoch=epoch, loss=round(totals[0] / max(totals[2], 1), 6),
            accuracy=round(totals[1] / max(totals[2], 1), 6), val_loss=round(val_loss, 6),
            val_accuracy=round(val_acc, 6), lr=lr, seconds=round(seconds, 3),
            images_per_second=round(totals[2] / max(seconds, 1e-6), 2),
        )
        s.history.append(asdict(record))
        s.epoch, s.step, s.epoch_sums, s.epoch_seconds = epoch, 0, [0.0, 0.0, 0.0], 0.0
        return record

    def _log_epoch(self, record: EpochRecord, epoch_times: list[float]) -> None:
        eta = (self.state.total_epochs - record.epoch) * float(np.mean(epoch_times))
        log.info(
            "%s epoch %d/%d loss %.4f accuracy %.4f val_loss %.4f val_accuracy %.4f lr %.1e %.1f img/s ETA %s",
            record.phase, record.epoch, self.state.total_epochs, record.loss, record.accuracy, record.val_loss,
            record.val_accuracy, record.lr, record.images_per_second, format_hms(eta),
        )

    def _update_best(self, name: str, phase: PhaseConfig, local: int, record: EpochRecord) -> bool:
        """Keep the best weights by ``train.monitor``; early stopping. True if the phase ends."""
        cfg, s = self.cfg, self.state
        value = record.val_loss if cfg.train.monitor == "val_loss" else record.val_accuracy
        if _better(cfg.train.monitor, value, s.best_value):
            s.best_value, s.best_epoch = value, record.epoch
            self.best_weights = [np.array(w) for w in self.built.model.get_weights()]
        if _better(cfg.train.monitor, value, s.phase_best):
            s.phase_best, s.since_best = value, 0
        else:
            s.since_best += 1
        last = local + 1 == phase.epochs
        if s.since_best >= phase.patience and not last:
            log.info("%s: no improvement of %s for %d epochs; stopping the phase early",
                     name, cfg.train.monitor, s.since_best)
            s.stopped_early[name] = True
            s.total_epochs -= phase.epochs - (local + 1)
            last = True
        return last

    def _advance_phase(self, name: str) -> None:
        """The state points at the next phase, so a checkpoint from here resumes there."""
        nxt = PHASES.index(name) + 1
        if nxt < len(PHASES):
            self.state.phase, self.state.phase_best, self.state.since_best = PHASES[nxt], None, 0

    def _end_epoch(self, name: str, last: bool, epoch_times: list[float], phase_seconds: Callable[[], float]) -> None:
        """The epoch checkpoint (``runtime.checkpoint_epochs``), then the stop check that needs
        room for the next epoch (raises ``Interrupted``). Nothing after the run's last epoch."""
        cfg, s = self.cfg, self.state
        later = [p for p in PHASES[PHASES.index(name) + 1 :] if getattr(cfg.train, p).epochs > 0]
        if last and not later:
            return
        every = cfg.runtime.checkpoint_epochs
        # Skip an epoch checkpoint that would cost more than a fifth of the work it protects
        # (cached-feature epochs take a fraction of a second; writing ResNet50 takes ~1 s).
        cheap = self.clock() - self._last_checkpoint >= 5 * self._checkpoint_cost
        if every and s.epoch % every == 0 and cheap:
            self._checkpoint()
        # Time the next epoch will take: this phase's mean; a new phase first traces a new
        # (bigger) step function, so allow 1.5x the slowest epoch so far.
        estimate = 1.5 * max(h["seconds"] for h in s.history) if last else float(np.mean(epoch_times))
        self._maybe_stop(mid_epoch=False, t0=None, phase_seconds=phase_seconds, next_epoch=estimate)

    # ------------------------------------------------------------ weight averaging

    def _swap_in_average(self) -> None:
        """``train.ema``: put the optimizer's moving average into the model's trainable
        variables (Keras' ``finalize_variable_values``), keeping the trained values aside."""
        if self.cfg.train.ema is None:
            return
        variables = self.built.model.trainable_variables
        self._trained = [np.array(v.numpy()) for v in variables]
        self.optimizer.finalize_variable_values(variables)

    def _swap_out_average(self) -> None:
        """Back to the trained values, which the next step (and a checkpoint) continues from."""
        if self._trained is None:
            return
        for v, value in zip(self.built.model.trainable_variables, self._trained):
            v.assign(value)
        self._trained = None

    # ------------------------------------------------------------ stop/resume

    def _checkpoint(self) -> None:
        if self.checkpointer is not None:
            t = self.clock()
            path = self.checkpointer.save(self.state, self.built.model, self.optimizer, self.best_weights)
            self._checkpoint_cost = self.clock() - t
            if path is not None:
                log.info("checkpoint %s written in %.2f s (epoch %d, step %d)", path.name, self._checkpoint_cost,
                         self.state.epoch, self.state.step)
        self._last_checkpoint = self.clock()

    def _maybe_stop(
        self, mid_epoch: bool, t0: float | None, phase_seconds: Callable[[], float], next_epoch: float | None = None
    ) -> None:
        """Checkpoint and raise ``Interrupted`` if a signal came or the walltime budget is spent
        (all ranks agree); also take the periodic time-based checkpoint."""
        reason = self.stopper.reason(None if mid_epoch else next_epoch)
        if self.dist.any_flag(reason is not None):
            s = self.state
            if mid_epoch and t0 is not None:
                s.epoch_seconds = self.clock() - t0
            s.phase_seconds[s.phase] = phase_seconds()
            self._checkpoint()
            self.dist.any_flag(False)  # a barrier: no rank exits before rank 0's checkpoint is on disk
            raise Interrupted(
                f"stopped on {reason or 'another rank'} at epoch {s.epoch + (1 if s.step else 0)}, step {s.step}; "
                "checkpoint written: run the same command again to resume"
            )
        minutes = self.cfg.runtime.checkpoint_minutes
        if mid_epoch and minutes and self.clock() - self._last_checkpoint >= minutes * 60:
            if t0 is not None:
                self.state.epoch_seconds = self.clock() - t0
            self.state.phase_seconds[self.state.phase] = phase_seconds()
            self._checkpoint()

    def _validate(self, evaluate: Callable[[Any, Any], Any], cache: Any = None) -> tuple[float, float]:
        """Mean cross-entropy and accuracy on the validation split (each rank the whole split,
        so every rank takes the same early-stopping decision)."""
        if len(self.val.data) == 0:
            return math.nan, math.nan
        loss_sum = correct = n = 0.0
        bs = self.cfg.train.batch_size
        for x, y in (cache.eval_dataset(bs) if cache is not None else self.val.eval_dataset(bs)):
            loss, c = evaluate(x, y)
            loss_sum += float(loss)
            correct += float(c)
            n += float(x.shape[0])
        totals = self.dist.sum_scalars([loss_sum, correct, n])  # bit-identical on every rank
        return totals[0] / totals[2], totals[1] / totals[2]


def _progress(steps: int, primary: bool) -> Any:
    """A live progress bar only on an interactive terminal (batch logs stay one line per epoch)."""
    if not (primary and sys.stderr.isatty()):
        return None
    import keras

    return keras.utils.Progbar(steps, stateful_metrics=["loss"])
