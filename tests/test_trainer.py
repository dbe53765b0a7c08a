"""The training loop's stop, checkpoint and early-stopping policy, in-process, on a fake clock.

Every training step advances the clock by one second (through the loop's ``on_step`` hook,
which it calls before each step), so walltime budgets, checkpoint cadences and the epoch-time
estimates are exact whatever the speed of the machine. Real signals and real walltime
budgets in real subprocesses are in tests/test_resume.py.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SMALL_MODEL, spread_model

from busi.config.load import load_config
from busi.distributed.group import Dist
from busi.errors import Interrupted
from busi.runtime.stopper import Stopper
from busi.train.checkpoint import Checkpointer

SIZE = 32
PER_CLASS = 4  # 12 images: train and val are the same 12, so 6 steps of 2 per epoch
BATCH = 2
STEPS = 3 * PER_CLASS // BATCH
START = 1000.0  # the fake clock's start


@dataclass
class FakeClock:
    now: float = START

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Stepping:
    """The loop's ``on_step`` hook: every training step takes one second on ``clock``."""

    clock: FakeClock = field(default_factory=FakeClock)
    steps: list[int] = field(default_factory=list)

    signal_at: int = 0  # send this process SIGTERM when this step starts (0: never)

    def __call__(self, step: int) -> None:
        self.steps.append(step)
        self.clock.now += 1.0
        if step == self.signal_at:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture(scope="module")
def images(synth_data: Any) -> Any:
    from busi.data.pipeline import SplitData

    root = synth_data(PER_CLASS, SIZE, 0)
    paths = sorted(str(p) for p in root.rglob("*.png") if "_mask" not in p.name)
    labels = [("normal", "benign", "malignant").index(Path(p).parent.name) for p in paths]
    return SplitData(tuple(paths), tuple(labels))


def _model(cfg: Any) -> Any:
    """busi's model for ``cfg``: MobileNet at width 0.25 (``SMALL_MODEL``: the loop's policy, not
    the network, is under test), random weights, its activations of a trained network's size
    (conftest ``spread_model``: else every probability is 1/3 and val_loss ln 3 whatever the
    weights, and no run could tell averaged weights from trained ones)."""
    return spread_model(cfg.model, SIZE, ("normal", "benign", "malignant"))


def _config(out: Path, *sets: str) -> Any:
    return load_config(None, [
        "data.source=x", f"output.dir={out}", f"data.image_size={SIZE}", "model.weights=none", *SMALL_MODEL,
        f"train.batch_size={BATCH}", "train.precision=float32", "runtime.checkpoint_epochs=0",
        "runtime.checkpoint_minutes=0", *sets,
    ])


def _trainer(images: Any, out: Path, *sets: str, deadline: float | None = None, margin: float = 0.0,
             checkpoint: bool = True, signal_at: int = 0) -> tuple[Any, Stepping, Checkpointer]:
    from busi.data.pipeline import Pipeline
    from busi.train.loop import Trainer

    cfg = _config(out, *sets)
    clock = FakeClock()
    stepping = Stepping(clock=clock, signal_at=signal_at)
    stopper = Stopper(signals=("SIGTERM",) if signal_at else (), deadline=deadline, margin=margin, clock=clock)
    checkpointer = Checkpointer(out, cfg)
    pipeline = Pipeline(images, SIZE, "stretch")
    trainer = Trainer(cfg, _model(cfg), pipeline, pipeline, np.ones(3, np.float32), Dist(),
                      stopper=stopper, on_step=stepping, checkpointer=checkpointer if checkpoint else None, clock=clock)
    return trainer, stepping, checkpointer


def _stopped(images: Any, out: Path, *sets: str, deadline: float, margin: float) -> tuple[str, list[int], dict[str, Any]]:
    """Train until the walltime budget stops the loop: (its message, the steps taken, the
    state in the checkpoint it wrote)."""
    trainer, stepping, checkpointer = _trainer(images, out, *sets, deadline=deadline, margin=margin)
    with pytest.raises(Interrupted, match="walltime budget") as stop:
        trainer.fit()
    loaded = checkpointer.load()
    assert loaded is not None, "no checkpoint written on the stop"
    return str(stop.value), stepping.steps, loaded.state.to_json()


def test_walltime_budget_stops_at_an_epoch_end_when_the_next_epoch_does_not_fit(images: Any, tmp_path: Path) -> None:
    # Each epoch takes 6 s. After epoch 2 (t = 12 s) 13 s are left: less than the next epoch
    # (6 s) plus the margin (8 s), so the loop checkpoints at the epoch boundary and stops.
    message, steps, state = _stopped(images, tmp_path / "run", "train.head.epochs=100", "train.head.patience=100",
                                     "train.finetune.epochs=0", deadline=START + 25, margin=8)
    assert "at epoch 2, step 0" in message and steps == list(range(1, 2 * STEPS + 1))
    assert (state["epoch"], state["step"], len(state["history"])) == (2, 0, 2)
    assert [h["seconds"] for h in state["history"]] == [float(STEPS)] * 2


def test_walltime_budget_stops_mid_epoch_inside_the_margin(images: Any, tmp_path: Path) -> None:
    # 8 s of budget, a 5 s margin: after step 4 of epoch 1 (t = 4 s) 4 s are left, inside the
    # margin: the loop checkpoints mid-epoch, keeping the partial epoch's sums for the resume.
    message, steps, state = _stopped(images, tmp_path / "run", "train.head.epochs=100", "train.finetune.epochs=0",
                                     deadline=START + 8, margin=5)
    assert "at epoch 1, step 4" in message and steps == [1, 2, 3, 4]
    assert (state["epoch"], state["step"], state["history"]) == (0, 4, [])
    assert state["epoch_sums"][2] == 4 * BATCH and state["epoch_seconds"] == 4.0


def test_a_new_phase_needs_room_for_one_and_a_half_of_the_slowest_epoch(images: Any, tmp_path: Path) -> None:
    # The head's one epoch ends at t = 6 s with 10 s left. Within its phase the loop would
    # continue (10 >= 6 + 2), but a new phase first traces a new step function, so the check
    # asks for 1.5 x 6 + 2 = 11 s and stops before fine-tuning.
    _, steps, state = _stopped(images, tmp_path / "run", "train.head.epochs=1", "train.finetune.epochs=5",
                               "train.finetune.unfreeze=conv5", deadline=START + 16, margin=2)
    assert (state["phase"], state["epoch"], state["step"]) == ("finetune", 1, 0)
    assert steps == list(range(1, STEPS + 1))


@dataclass
class RecordingCheckpointer:
    """Records when the loop asks for a checkpoint; each save costs ``cost`` seconds of ``clock``."""

    clock: FakeClock
    cost: float = 0.0
    saves: list[tuple[int, int]] = field(default_factory=list)

    def save(self, state: Any, model: Any, optimizer: Any, best: Any) -> None:
        self.saves.append((state.epoch, state.step))
        self.clock.now += self.cost


def test_time_based_checkpoints_mid_epoch(images: Any, tmp_path: Path) -> None:
    # runtime.checkpoint_minutes=1: a checkpoint after the first step at least 60 s after the last.
    trainer, stepping, _ = _trainer(images, tmp_path / "run", "train.head.epochs=25", "train.head.patience=100",
                                "train.finetune.epochs=0", "runtime.checkpoint_minutes=1", checkpoint=False)
    trainer.checkpointer = recorder = RecordingCheckpointer(stepping.clock)
    trainer.fit()
    steps = [e * STEPS + s for e, s in recorder.saves]  # global step at each checkpoint
    assert steps == [60, 120]


def test_epoch_checkpoints_skip_those_that_cost_over_a_fifth_of_the_work(images: Any, tmp_path: Path) -> None:
    # runtime.checkpoint_epochs=1, but a save costs 2 s and an epoch 6 s: after a save the next
    # one waits until 5 x 2 s of work have passed, so every other epoch is checkpointed, and
    # the last epoch never (the final model replaces the checkpoint).
    trainer, stepping, _ = _trainer(images, tmp_path / "run", "train.head.epochs=6", "train.head.patience=100",
                                "train.finetune.epochs=0", "runtime.checkpoint_epochs=1", checkpoint=False)
    trainer.checkpointer = recorder = RecordingCheckpointer(stepping.clock, cost=2.0)
    trainer.fit()
    assert recorder.saves == [(1, 0), (3, 0), (5, 0)]


def test_early_stopping_after_patience_epochs_without_improvement(images: Any, tmp_path: Path) -> None:
    # A learning rate of 1e-30 leaves every weight as it is (below float32's resolution), so
    # val_loss is the same every epoch: epoch 1 is the best, and patience 2 ends the head phase
    # after epoch 3; the fine-tuning phase then runs its epochs.
    trainer, stepping, _ = _trainer(images, tmp_path / "run", "train.head.epochs=10", "train.head.patience=2",
                                "train.head.learning_rate=1e-30", "train.finetune.epochs=1",
                                "train.finetune.unfreeze=conv5", checkpoint=False)
    result = trainer.fit()
    assert [(h.phase, h.epoch) for h in result.history] == [("head", 1), ("head", 2), ("head", 3), ("finetune", 4)]
    assert result.stopped_early == {"head": True, "finetune": False}
    assert len({h.val_loss for h in result.history[:3]}) == 1
    assert result.best_epoch in (1, 4) and trainer.state.total_epochs == 4
    assert stepping.steps == list(range(1, 4 * STEPS + 1))


# --------------------------------------------------------------------- weight averaging

EMA_RUN = ("train.head.epochs=2", "train.head.patience=100", "train.finetune.epochs=2",
           "train.finetune.unfreeze=conv5", "train.finetune.patience=100", "train.finetune.learning_rate=1e-3",
           "train.feature_cache=none")


def _fit(images: Any, out: Path, *sets: str) -> tuple[Any, list[np.ndarray]]:
    import keras

    keras.utils.set_random_seed(7)  # the same initial weights, data order and dropout draws
    trainer, _, _ = _trainer(images, out, *EMA_RUN, *sets, checkpoint=False)
    result = trainer.fit()
    return result, [np.array(w) for w in trainer.built.model.get_weights()]


@pytest.fixture(scope="module")
def ema_runs(images: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, list[np.ndarray]]]:
    """The same run without and with train.ema=0.9: (result, kept weights) each."""
    root = tmp_path_factory.mktemp("ema")
    return {"plain": _fit(images, root / "plain"), "ema": _fit(images, root / "ema", "train.ema=0.9")}


def test_ema_validates_and_keeps_the_averaged_weights(images: Any, ema_runs: dict[str, Any]) -> None:
    """The average does not change training (the same training losses as without it), but what
    is validated and kept is the average: other val_loss, other kept weights. The kept
    weights of the EMA run validate to the val_loss recorded for its best epoch."""
    plain, plain_weights = ema_runs["plain"]
    averaged, ema_weights = ema_runs["ema"]
    # same trajectory: the averages live beside the trained weights (float32 noise only)
    assert [h.loss for h in averaged.history] == pytest.approx([h.loss for h in plain.history], abs=1e-4)
    assert [h.val_loss for h in averaged.history] != pytest.approx([h.val_loss for h in plain.history], abs=1e-4)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(plain_weights, ema_weights)) > 1e-4

    import keras

    from busi.data.pipeline import Pipeline
    from busi.model.network import build_model

    model = build_model(_config(Path("o")).model, SIZE, ("normal", "benign", "malignant")).model
    model.set_weights(ema_weights)  # BatchNorm's statistics included
    losses = [keras.losses.sparse_categorical_crossentropy(y, model(x, training=False)).numpy()
              for x, y in Pipeline(images, SIZE, "stretch").eval_dataset(BATCH)]
    best = next(h for h in averaged.history if h.epoch == averaged.best_epoch)
    assert float(np.mean(np.concatenate(losses))) == pytest.approx(best.val_loss, abs=1e-4)


def test_ema_survives_a_stop_and_resume_exactly(images: Any, tmp_path: Path, ema_runs: dict[str, Any]) -> None:
    """Stopped by SIGTERM mid-epoch in the fine-tuning phase and resumed from the checkpoint:
    the history and the kept weights are those of the run that was never stopped (the averages
    are optimizer variables, so the checkpoint holds them)."""
    import keras

    whole, whole_weights = ema_runs["ema"]
    out = tmp_path / "stopped"
    keras.utils.set_random_seed(7)
    # 4 epochs of 6 steps: SIGTERM arrives at step 4 of epoch 4 (global step 22), in the
    # fine-tuning phase, whose moving averages then have 3 + 6 steps behind them.
    trainer, _, checkpointer = _trainer(images, out, *EMA_RUN, "train.ema=0.9", signal_at=3 * STEPS + 4)
    with trainer.stopper, pytest.raises(Interrupted, match="SIGTERM"):
        trainer.fit()
    saved = checkpointer.load()
    assert saved is not None
    assert (saved.state.epoch, saved.state.step, saved.state.optimizer_phase) == (3, 4, "finetune")
    keras.utils.set_random_seed(7)  # as a resumed job seeds TensorFlow again (runtime.seed)
    again, _, _ = _trainer(images, out, *EMA_RUN, "train.ema=0.9", checkpoint=False)
    resumed = again.fit(saved)
    assert [h.epoch for h in resumed.history] == [h.epoch for h in whole.history] == [1, 2, 3, 4]
    for key in ("loss", "val_loss", "val_accuracy"):
        assert [getattr(h, key) for h in resumed.history] == pytest.approx(
            [getattr(h, key) for h in whole.history], abs=1e-5), key
    assert resumed.best_epoch == whole.best_epoch
    for a, b in zip(again.built.model.get_weights(), whole_weights):
        np.testing.assert_allclose(a, b, atol=1e-5)
