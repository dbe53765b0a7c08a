"""The run directory: the only module that writes it, and every write is atomic.

Layout (a contract, documented in the README and held by tests)::

    OUT/config.yaml            resolved job config
    OUT/manifest.json          versions, host, cores/threads and their source, precision, seed,
                               times, seconds per phase, status
    OUT/data/splits.csv        path,label,group,split
    OUT/data/report.json       the inspect report
    OUT/model/model.keras      Keras model, preprocessing inside
    OUT/model/saved_model/     TF SavedModel for serving
    OUT/model/labels.json      index -> class name
    OUT/model/preprocessing.json  image_size and resize mode that prediction must use
    OUT/model/README.md        model card
    OUT/history.csv            phase,epoch,loss,accuracy,val_loss,val_accuracy,lr,seconds
    OUT/metrics.json           test-split metrics
    OUT/plots/*.png            accuracy, loss, confusion_matrix, roc
    OUT/predictions/test.csv   the predict CSV columns plus true_label

Every writer is a no-op off the primary rank (``RunDir(..., primary=False)``), so callers
need no rank checks. Files are written to a temp file in the same folder, fsynced, and
renamed into place: a run killed at any moment leaves each file complete or absent.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import yaml

RUN_FILES = {
    "config": "config.yaml",
    "manifest": "manifest.json",
    "splits": "data/splits.csv",
    "report": "data/report.json",
    "model": "model/model.keras",
    "saved_model": "model/saved_model",
    "labels": "model/labels.json",
    "preprocessing": "model/preprocessing.json",
    "model_card": "model/README.md",
    "history": "history.csv",
    "metrics": "metrics.json",
    "plot_accuracy": "plots/accuracy.png",
    "plot_loss": "plots/loss.png",
    "plot_confusion": "plots/confusion_matrix.png",
    "plot_roc": "plots/roc.png",
    "test_predictions": "predictions/test.csv",
}


def fsync_dir(folder: Path) -> None:
    """fsync a folder so a rename inside it survives a crash (best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via temp file + fsync + rename."""
    return atomic_write_with(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: str | Path, writer: Callable[[Path], Any], suffix: str = "") -> Path:
    """Let ``writer`` produce a file at a temp path beside ``path``; then move it into place.

    Used for files written by libraries (Keras ``model.save``, matplotlib ``savefig``);
    ``suffix`` keeps the extension those libraries insist on.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_dir(path: str | Path, writer: Callable[[Path], Any]) -> Path:
    """Like ``atomic_write_with`` for a folder (a SavedModel): build beside, swap in by rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        writer(tmp)
        for f in tmp.rglob("*"):  # contents on disk before the rename publishes them
            if f.is_file():
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
        publish_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def publish_dir(tmp: Path, final: Path) -> Path:
    """Move the complete folder ``tmp`` to ``final`` (same file system) in one rename. Whatever
    ``final`` held (a folder, file or link) is first renamed aside (``<name>.old-<pid>-<hex>``)
    and deleted afterwards, so at no moment does ``final`` name a partly written or partly
    deleted tree. Raises OSError (``tmp`` is then left for the caller to remove). The one
    folder-publishing step of the run directory, dataset staging and ``busi-job synth``."""
    aside: Path | None = None
    try:
        if final.exists() or final.is_symlink():
            aside = final.with_name(f"{final.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
            os.replace(final, aside)
        os.replace(tmp, final)
    finally:
        if aside is not None:
            remove_path(aside)
    fsync_dir(final.parent)
    return final


def remove_path(path: Path) -> None:
    """Remove a folder tree, file or symlink, ignoring errors (best-effort cleanup)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass


def utc_now() -> str:
    """The current time in UTC, ISO 8601 to the second: every timestamp busi writes into a file."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n"


def csv_text(columns: Sequence[str], rows: Iterable[Sequence[Any] | dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([r.get(c, "") for c in columns] if isinstance(r, dict) else r)
    return buf.getvalue()


class RunDir:
    """Writers for the run directory; no-ops unless ``primary``."""

    def __init__(self, root: str | Path, primary: bool = True) -> None:
        self.root = Path(root)
        self.primary = primary

    def path(self, key: str) -> Path:
        return self.root / RUN_FILES[key]

    def write_text(self, key: str, text: str) -> Path | None:
        return atomic_write_text(self.path(key), text) if self.primary else None

    def write_json(self, key: str, obj: Any) -> Path | None:
        return self.write_text(key, json_text(obj))

    def write_yaml(self, key: str, obj: Any) -> Path | None:
        return self.write_text(key, yaml.safe_dump(obj, sort_keys=False))

    def write_csv(self, key: str, columns: Sequence[str], rows: Iterable[Sequence[Any] | dict[str, Any]]) -> Path | None:
        return self.write_text(key, csv_text(columns, rows))

    def write_file_with(self, key: str, writer: Callable[[Path], Any], suffix: str = "") -> Path | None:
        return atomic_write_with(self.path(key), writer, suffix) if self.primary else None

    def write_dir_with(self, key: str, writer: Callable[[Path], Any]) -> Path | None:
        return atomic_write_dir(self.path(key), writer) if self.primary else None

    def read_json(self, key: str) -> Any:
        p = self.path(key)
        return json.loads(p.read_text(encoding="utf-8")) if p.exists() else None


class Manifest:
    """``manifest.json``: what ran, where and how, one entry per attempt (a resumed run adds
    one), and how the run ended. Facts are recorded with ``record`` as the run learns them;
    ``start`` and ``finish`` write the file (primary rank only, atomically, as every
    ``RunDir`` write), so each of its writers is one call."""

    def __init__(self, run: RunDir, facts: dict[str, Any], previous: dict[str, Any] | None = None,
                 host: str = "", resumed_from: dict[str, Any] | None = None) -> None:
        self.run = run
        previous = previous or {}
        attempts = list(previous.get("attempts", []))
        attempts.append({"started_at": utc_now(), "host": host, "resumed_from": resumed_from})
        self.data: dict[str, Any] = {
            "status": "running", "started_at": previous.get("started_at") or utc_now(), "ended_at": None,
            **facts, "attempts": attempts, "seconds": {},
        }

    @property
    def seconds(self) -> dict[str, float]:
        """Seconds per stage of the run (data, model_build, phase_*, evaluate, save, total)."""
        return self.data["seconds"]

    def record(self, **facts: Any) -> None:
        self.data.update(facts)

    def start(self) -> None:
        self.run.write_json("manifest", self.data)

    def finish(self, status: str, **facts: Any) -> None:
        """End the run (and its attempt) as ``completed``, ``interrupted`` or ``failed``."""
        now = utc_now()
        self.data.update(status=status, ended_at=now, **facts)
        self.data["attempts"][-1].update(ended_at=now, status=status)
        self.run.write_json("manifest", self.data)

