"""Learning rate under data parallelism (busi.train.lr) and its config keys."""

from __future__ import annotations

import pytest

from busi.config.load import load_config
from busi.errors import ConfigError
from busi.train.lr import epoch_learning_rate

BASE = ["data.source=x", "output.dir=y"]


def _train(*sets: str):  # type: ignore[no-untyped-def]
    return load_config(None, [*BASE, *sets]).train


def test_defaults() -> None:
    cfg = load_config(None, BASE)
    assert cfg.train.scale_lr is True and cfg.train.warmup_epochs == 0
    assert cfg.runtime.distributed == "auto" and cfg.runtime.log_all_ranks is False


def test_one_rank_keeps_the_configured_rate() -> None:
    t = _train("train.head.epochs=3", "train.warmup_epochs=2")
    assert [epoch_learning_rate(t, "head", 1e-3, k, 1) for k in (1, 2, 3)] == pytest.approx([1e-3] * 3)


def test_rate_scales_with_ranks() -> None:
    t = _train()
    assert epoch_learning_rate(t, "head", 1e-3, 1, 4) == pytest.approx(4e-3)
    assert epoch_learning_rate(t, "finetune", 1e-5, 1, 4) == pytest.approx(4e-5)
    off = _train("train.scale_lr=false")
    assert epoch_learning_rate(off, "head", 1e-3, 1, 4) == pytest.approx(1e-3)


def test_warmup_ramps_the_head_phase_linearly() -> None:
    t = _train("train.head.epochs=5", "train.warmup_epochs=2")
    rates = [epoch_learning_rate(t, "head", 1e-3, k, 5) for k in range(1, 6)]
    assert rates == pytest.approx([1e-3, 3e-3, 5e-3, 5e-3, 5e-3])
    # fine-tuning starts from the trained head: no warmup
    assert epoch_learning_rate(t, "finetune", 1e-5, 1, 5) == pytest.approx(5e-5)


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="train.warmup_epochs"):
        _train("train.head.epochs=1", "train.warmup_epochs=2")
    with pytest.raises(ConfigError, match="train.warmup_epochs"):
        _train("train.warmup_epochs=-1")
    with pytest.raises(ConfigError, match="runtime.distributed"):
        load_config(None, [*BASE, "runtime.distributed=mpi"])
    with pytest.raises(ConfigError, match="train.scale_lr"):
        _train("train.scale_lr=yes please")


def test_cosine_decays_each_phase_from_its_rate_towards_zero() -> None:
    """``train.schedule: cosine``: epoch 1 of a phase at its rate, a half cosine over its epochs,
    on top of the warmup and the rank scaling; a pure function of the epoch (resumable)."""
    import math

    t = _train("train.schedule=cosine", "train.head.epochs=4", "train.finetune.epochs=2", "train.warmup_epochs=2")
    head = [epoch_learning_rate(t, "head", 1e-3, k, 2) for k in (1, 2, 3, 4)]
    ramp = [1e-3, 1.5e-3, 2e-3, 2e-3]
    assert head == pytest.approx([r * 0.5 * (1 + math.cos(math.pi * (k - 1) / 4)) for k, r in enumerate(ramp, 1)])
    assert [epoch_learning_rate(t, "finetune", 1e-4, k, 1) for k in (1, 2)] == pytest.approx([1e-4, 5e-5])
    assert _train().schedule == "constant"
