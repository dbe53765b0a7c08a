"""Checkpointer: a round trip, crash safety, and refusing to resume under other settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from busi.config.load import load_config
from busi.errors import ConfigError
from busi.train.checkpoint import Checkpointer, TrainState


class Var:
    def __init__(self, a: np.ndarray) -> None:
        self.a = a

    def numpy(self) -> np.ndarray:
        return self.a


class Holder:
    def __init__(self, n: int) -> None:
        self.variables = [Var(np.full((2, 2), float(i))) for i in range(n)]


def test_checkpointer_round_trip_and_crash_safety(tmp_path: Path) -> None:
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


def test_latest_json_naming_a_missing_checkpoint_falls_back_to_the_newest_complete_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = load_config(None, ["data.source=x", "output.dir=y"])
    ck = Checkpointer(tmp_path, cfg)
    ck.save(TrainState(epoch=3, step=0), Holder(2), Holder(1), best=None)
    (tmp_path / "checkpoint" / "latest.json").write_text('{"name": "ckpt-000099", "epoch": 9, "step": 0}')
    loaded = Checkpointer(tmp_path, cfg).load()
    assert loaded is not None and loaded.state.epoch == 3 and "resuming from ckpt-000001" in caplog.text
    # nothing complete left: start from scratch, with a warning
    import shutil

    shutil.rmtree(tmp_path / "checkpoint" / "ckpt-000001")
    (tmp_path / "checkpoint" / "latest.json").write_text("{half")
    assert Checkpointer(tmp_path, cfg).load() is None and "starting from scratch" in caplog.text
    # the next save numbers after what is on disk, never reusing a name
    assert ck.save(TrainState(epoch=1, step=0), Holder(2), Holder(1), best=None).name == "ckpt-000002"


def test_remove_deletes_only_what_the_checkpointer_wrote(tmp_path: Path) -> None:
    cfg = load_config(None, ["data.source=x", "output.dir=y"])
    ck = Checkpointer(tmp_path, cfg)
    ck.save(TrainState(epoch=1, step=0), Holder(2), Holder(1), best=None)
    (tmp_path / "checkpoint" / "my-notes.txt").write_text("keep")
    ck.remove()
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == ["my-notes.txt"]
    (tmp_path / "checkpoint" / "my-notes.txt").unlink()
    ck.remove()
    assert not (tmp_path / "checkpoint").exists()
