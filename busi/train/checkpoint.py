"""Resumable training checkpoints in ``OUT/checkpoint/``, crash-safe at every moment.

Layout::

    OUT/checkpoint/ckpt-000007/state.json      loop position, history, early-stopping state
    OUT/checkpoint/ckpt-000007/variables.npz   model variables (weights, BatchNorm statistics,
                                               dropout RNG state) and optimizer variables
    OUT/checkpoint/ckpt-000007/best.npz        the best weights so far (by train.monitor)
    OUT/checkpoint/latest.json                 {"name": "ckpt-000007", ...}

A checkpoint folder is built under a temp name and renamed into place; then ``latest.json``
is replaced atomically; then older folders are removed. A run killed at any moment leaves
``latest.json`` pointing at a complete checkpoint (or no checkpoint at all).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from busi.config.schema import JobConfig
from busi.errors import ConfigError
from busi.files.atomic import (
    atomic_write_dir,
    atomic_write_text,
    is_temp_name,
    remove_path,
)
from busi.files.text import json_text

log = logging.getLogger("busi")

FORMAT = 1

# Keys that do not change what a run computes: they may differ between an interrupted run
# and its resumption (another node, more cores, a new walltime).
NEUTRAL_KEYS = (
    "output",
    "data.source",
    "data.staging_dir",
    "data.max_archive_members",
    "data.max_archive_bytes",
    "data.max_archive_ratio",
    "runtime.cores",
    "runtime.walltime",
    "runtime.walltime_margin",
    "runtime.signals",
    "runtime.checkpoint_minutes",
    "runtime.checkpoint_epochs",
    "runtime.distributed",
)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def settings_that_matter(cfg: JobConfig) -> dict[str, Any]:
    """The flattened config less the keys that may change across a resume."""
    flat = _flatten(cfg.to_dict())
    return {k: v for k, v in flat.items() if not any(k == n or k.startswith(n + ".") for n in NEUTRAL_KEYS)}


def config_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class TrainState:
    """Where the loop is; everything needed to continue it exactly."""

    phase: str = "head"  # phase being run (or next to run)
    epoch: int = 0  # global epochs completed
    step: int = 0  # batches completed in the epoch in progress (epoch + 1)
    epoch_sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # loss*n, correct, n
    epoch_seconds: float = 0.0  # time spent in the epoch in progress before the interruption
    history: list[dict[str, Any]] = field(default_factory=list)
    best_value: float | None = None
    best_epoch: int = 0
    phase_best: float | None = None
    since_best: int = 0
    total_epochs: int = 0
    phase_seconds: dict[str, float] = field(default_factory=dict)
    stopped_early: dict[str, bool] = field(default_factory=dict)
    optimizer_phase: str = ""  # the phase whose optimizer state the checkpoint holds
    splits_sha256: str = ""  # the split the run trained on: a resume must use the same
    done: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TrainState":
        return cls(**d)


@dataclass
class Checkpoint:
    state: TrainState
    variables: list[np.ndarray]
    optimizer: list[np.ndarray]
    best: list[np.ndarray] | None
    path: Path


class Checkpointer:
    """Writes and reads the checkpoints of one run directory."""

    def __init__(self, root: str | Path, cfg: JobConfig, primary: bool = True) -> None:
        self.dir = Path(root) / "checkpoint"
        self.settings = settings_that_matter(cfg)
        self.hash = config_hash(self.settings)
        self.primary = primary
        self.counter = 0

    # --------------------------------------------------------------- writing

    def save(self, state: TrainState, model: Any, optimizer: Any, best: list[np.ndarray] | None) -> Path | None:
        """Write a complete checkpoint and point ``latest.json`` at it. No-op off the primary."""
        if not self.primary:
            return None
        self.counter = max(self.counter, self._latest_index()) + 1
        name = f"ckpt-{self.counter:06d}"
        variables = [np.asarray(v.numpy() if hasattr(v, "numpy") else v) for v in model.variables]
        opt_vars = [np.asarray(v.numpy()) for v in optimizer.variables] if optimizer is not None else []

        def write(tmp: Path) -> None:
            np.savez(tmp / "variables.npz", **{f"m{i}": a for i, a in enumerate(variables)},
                     **{f"o{i}": a for i, a in enumerate(opt_vars)})
            if best is not None:
                np.savez(tmp / "best.npz", **{f"b{i}": a for i, a in enumerate(best)})
            (tmp / "state.json").write_text(json_text({
                "format": FORMAT, "config_hash": self.hash, "settings": self.settings,
                "n_model": len(variables), "n_optimizer": len(opt_vars), "state": state.to_json(),
            }))

        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_dir(self.dir / name, write)
        atomic_write_text(self.dir / "latest.json", json_text({"name": name, "epoch": state.epoch, "step": state.step}))
        for old in self.dir.glob("ckpt-*"):
            if old.name != name:
                remove_path(old)
        return self.dir / name

    def _latest_index(self) -> int:
        return max((int(p.name.split("-")[1]) for p in self._checkpoints()), default=0)

    def _checkpoints(self) -> list[Path]:
        """The published ``ckpt-NNNNNN`` folders, oldest first (not temp or aside names)."""
        return sorted((p for p in self.dir.glob("ckpt-*") if re.fullmatch(r"ckpt-\d+", p.name)),
                      key=lambda p: int(p.name.split("-")[1]))

    def _read_latest(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.dir / "latest.json").read_text())
        except (OSError, ValueError):
            return None

    def remove(self) -> None:
        """Drop all checkpoints (a completed run keeps its final model instead): busi's own
        entries only; the folder goes too unless it holds something else."""
        if not self.primary or not self.dir.is_dir():
            return
        for entry in self.dir.iterdir():
            if entry.name.startswith("ckpt-") or entry.name == "latest.json" or is_temp_name(entry.name):
                remove_path(entry)
        try:
            self.dir.rmdir()
        except OSError:
            pass

    # --------------------------------------------------------------- reading

    def exists(self) -> bool:
        return self._find() is not None

    def _find(self) -> Path | None:
        """The checkpoint to resume: the one ``latest.json`` names, or, where that is missing
        or unreadable (a file system that lost it), the newest complete ``ckpt-*`` left, with
        a warning. None: start from scratch."""
        latest = self._read_latest()
        name = latest.get("name") if isinstance(latest, dict) else None
        if isinstance(name, str) and _complete(self.dir / name):
            return self.dir / name
        found = [p for p in self._checkpoints() if _complete(p)]
        if (self.dir / "latest.json").exists() or found:
            log.warning("checkpoint: %s names %s, which is missing or incomplete; %s", self.dir / "latest.json",
                        name, f"resuming from {found[-1].name}" if found else "starting from scratch")
        return found[-1] if found else None

    def load(self) -> Checkpoint | None:
        """The latest checkpoint, or None. ConfigError (exit 2) if it was made by a config
        that computes something else; the message lists the keys that differ."""
        path = self._find()
        if path is None:
            return None
        try:
            meta = json.loads((path / "state.json").read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"output.dir: {path / 'state.json'} is unreadable ({e}); pass --restart") from None
        if meta.get("config_hash") != self.hash:
            old = meta.get("settings", {})
            diff = sorted(k for k in set(old) | set(self.settings) if old.get(k) != self.settings.get(k))
            shown = "; ".join(f"{k}: {old.get(k)!r} -> {self.settings.get(k)!r}" for k in diff[:8])
            raise ConfigError(
                f"output.dir: {self.dir.parent} holds a checkpoint of a run with other settings ({shown}); "
                "resume with the original settings, pass --restart to start this run again from scratch, "
                "or choose another output.dir"
            )
        with np.load(path / "variables.npz") as z:
            variables = [z[f"m{i}"] for i in range(meta["n_model"])]
            optimizer = [z[f"o{i}"] for i in range(meta["n_optimizer"])]
        best = None
        if (path / "best.npz").is_file():
            with np.load(path / "best.npz") as z:
                best = [z[f"b{i}"] for i in range(len(z.files))]
        self.counter = int(path.name.split("-")[1])
        return Checkpoint(TrainState.from_json(meta["state"]), variables, optimizer, best, path)


def _complete(path: Path) -> bool:
    """A published checkpoint folder (published only once complete, so state.json is the test)."""
    return (path / "state.json").is_file() and (path / "variables.npz").is_file()


def _assign(variables: list[Any], values: list[np.ndarray], what: str) -> None:
    if len(variables) != len(values):
        raise ConfigError(f"checkpoint has {len(values)} {what} variables, the {what} {len(variables)}; use --restart")
    for v, a in zip(variables, values):
        v.assign(a)


def restore_variables(model: Any, values: list[np.ndarray]) -> None:
    """Model variables: weights, BatchNorm statistics, dropout RNG state."""
    _assign(model.variables, values, "model")


def restore_optimizer(optimizer: Any, values: list[np.ndarray]) -> None:
    """Optimizer variables: iteration count, learning rate, moments."""
    _assign(optimizer.variables, values, "optimizer")
