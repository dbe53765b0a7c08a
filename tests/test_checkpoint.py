"""Checkpointer: a round trip, crash safety, and refusing to resume under other settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from busi.checkpoint import Checkpointer, TrainState
from busi.config import load_config
from busi.errors import ConfigError


def test_checkpointer_round_trip_and_crash_safety(tmp_path: Path) -> None:
    class Var:
        def __init__(self, a: np.ndarray) -> None:
            self.a = a

        def numpy(self) -> np.ndarray:
            return self.a

    class Holder:
        def __init__(self, n: int) -> None:
            self.variables = [Var(np.full((2, 2), float(i))) for i in range(n)]

    cfg = load_config(None, ["data.source=x", "output.dir=y"])
    ck = Checkpointer(tmp_path, cfg)
    assert ck.load() is None
    ck.save(TrainState(epoch=1, step=3), Holder(3), Holder(2), best=None)
    ck.save(TrainState(epoch=2, step=0), Holder(4), Holder(2), best=[np.ones(3)])
    # a crash mid-write leaves a temp folder, which is ignored
    (tmp_path / "checkpoint" / ".ckpt-000009.junk.tmp").mkdir()
    loaded = Checkpointer(tmp_path, cfg).load()
    assert loaded is not None and loaded.state.epoch == 2 and len(loaded.variables) == 4
    assert loaded.best is not None and loaded.best[0].tolist() == [1.0, 1.0, 1.0]
    assert sorted(p.name for p in (tmp_path / "checkpoint").glob("ckpt-*")) == ["ckpt-000002"]
    other = load_config(None, ["data.source=x", "output.dir=y", "train.batch_size=8"])
    with pytest.raises(ConfigError, match="train.batch_size: 32 -> 8"):
        Checkpointer(tmp_path, other).load()
    neutral = load_config(None, ["data.source=elsewhere", "output.dir=y", "runtime.cores=1"])
    assert Checkpointer(tmp_path, neutral).load() is not None
