"""Tests for busi.train.tensorboard: event files that TensorBoard's own reader parses, one value
per tag per epoch, logs rebuilt from the checkpointed history on resume (no duplicate steps)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from conftest import read_tensorboard, scalars
from PIL import Image

from busi.train.loop import EpochRecord
from busi.train.tensorboard import TensorBoardLog


def _record(phase: str, epoch: int, loss: float, val_loss: float = 0.9) -> EpochRecord:
    return EpochRecord(phase=phase, epoch=epoch, loss=loss, accuracy=0.5 + epoch / 100, val_loss=val_loss,
                       val_accuracy=0.4, lr=1e-3 if phase == "head" else 1e-5, seconds=2.0,
                       images_per_second=30.0 + epoch)


HISTORY = [_record("head", 1, 1.1), _record("head", 2, 1.0), _record("finetune", 3, 0.8)]


def _attempt(folder: Path, resumed: list[EpochRecord], new: list[EpochRecord]) -> None:
    """One attempt of a run: start from the checkpoint's history ``resumed``, log ``new``."""
    log = TensorBoardLog(folder)
    log.start(resumed)
    for r in new:
        log.epoch(r)
    log.close()


def test_epochs_are_logged_once_per_tag_tagged_by_phase(tmp_path: Path) -> None:
    _attempt(tmp_path / "tb", [], HISTORY)
    logs = read_tensorboard(tmp_path / "tb")
    train, val = logs["train"], logs["validation"]
    assert scalars(train["head/loss"]) == [(1, 1.1), (2, 1.0)]
    assert scalars(train["finetune/loss"]) == [(3, 0.8)]
    assert scalars(train["head/learning_rate"]) == [(1, 1e-3), (2, 1e-3)]
    assert scalars(train["finetune/images_per_second"]) == [(3, 33.0)]
    assert scalars(val["head/loss"]) == [(1, 0.9), (2, 0.9)]
    assert set(val) == {"head/loss", "head/accuracy", "finetune/loss", "finetune/accuracy"}
    # one value per (tag, step)
    for run in logs.values():
        for tag, values in run.items():
            steps = [s for s, _ in values]
            assert len(steps) == len(set(steps)), (tag, steps)


def test_a_resumed_attempt_replaces_what_was_logged_after_its_checkpoint(tmp_path: Path) -> None:
    """Attempt 1 logged epochs 1-3 but its checkpoint holds 2: attempt 2 reruns epoch 3 (other
    values) and the logs show each epoch once, epoch 3 with attempt 2's values."""
    _attempt(tmp_path / "tb", [], HISTORY)
    _attempt(tmp_path / "tb", HISTORY[:2], [_record("finetune", 3, 0.7), _record("finetune", 4, 0.6)])
    train = read_tensorboard(tmp_path / "tb")["train"]
    assert scalars(train["head/loss"]) == [(1, 1.1), (2, 1.0)]
    assert scalars(train["finetune/loss"]) == [(3, 0.7), (4, 0.6)]
    assert not [p for p in (tmp_path).iterdir() if p.name != "tb"], "no temp or aside folders left"


def test_a_fresh_start_drops_a_failed_attempts_logs(tmp_path: Path) -> None:
    _attempt(tmp_path / "tb", [], [_record("head", 1, 5.0)])
    _attempt(tmp_path / "tb", [], [_record("head", 1, 1.5)])
    assert scalars(read_tensorboard(tmp_path / "tb")["train"]["head/loss"]) == [(1, 1.5)]


def test_no_validation_split_logs_no_nan(tmp_path: Path) -> None:
    _attempt(tmp_path / "tb", [], [_record("head", 1, 1.0, val_loss=math.nan)])
    logs = read_tensorboard(tmp_path / "tb")
    assert "head/loss" not in logs["validation"] and "head/accuracy" in logs["validation"]


def _png(path: Path) -> Path:
    Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(path)
    return path


def test_test_results_scalars_table_and_plots(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = TensorBoardLog(tmp_path / "tb")
    log.start([])
    metrics = {"split": "test", "n": 12, "accuracy": 0.75, "balanced_accuracy": 0.7, "macro_f1": 0.72,
               "roc_auc_macro": None, "per_class": {"normal": {"precision": 1.0, "recall": 0.5, "f1": 0.67,
                                                              "support": 4}}}
    log.test_results(metrics, {"confusion_matrix": _png(tmp_path / "cm.png"), "roc": tmp_path / "absent.png"},
                     step=3)
    log.close()
    test = read_tensorboard(tmp_path / "tb")["test"]
    assert scalars(test["test/accuracy"]) == [(3, 0.75)]
    assert "test/roc_auc_macro" not in test  # None is not logged as a number
    table = test["test/metrics"][0][1].item().decode()
    assert "| accuracy | 0.7500 |" in table and "| normal | 1.0000 | 0.5000 |" in table
    acc = EventAccumulator(str(tmp_path / "tb" / "test"), size_guidance={"tensors": 0})
    acc.Reload()
    (image,) = acc.Tensors("plots/confusion_matrix")
    width, height, encoded = image.tensor_proto.string_val
    assert (int(width), int(height)) == (30, 20) and image.step == 3
    assert Image.open(io.BytesIO(encoded)).size == (30, 20)
    assert "plots/roc" not in acc.Tags()["tensors"]


def test_off_the_primary_rank_nothing_is_written(tmp_path: Path) -> None:
    log = TensorBoardLog(tmp_path / "tb", enabled=False)
    log.start(HISTORY)
    log.epoch(HISTORY[0])
    log.test_results({"accuracy": 1.0}, {}, step=1)
    assert not (tmp_path / "tb").exists()
