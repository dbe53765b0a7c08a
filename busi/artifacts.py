"""The run directory: the only module that writes it, and every write is atomic.

Layout (a contract, documented in the README and held by tests)::

    OUT/config.yaml            resolved job config
    OUT/manifest.json          versions, host, cores/threads and their source, precision, seed,
                               times, seconds per phase, status
    OUT/data/splits.csv        path,label,group,split
    OUT/data/report.json       the inspect report
    OUT/data/hashes.csv        path,split,sha256,phash of the train and val images (busi.leakage)
    OUT/model/model.keras      Keras model, preprocessing inside
    OUT/model/saved_model/     TF SavedModel for serving
    OUT/model/openvino/        the OpenVINO model (model.xml, model.bin, source.json): busi.engines
    OUT/model/labels.json      index -> class name
    OUT/model/preprocessing.json  image_size and resize mode that prediction must use
    OUT/model/thresholds.json  the malignant operating point chosen on the validation split
    OUT/model/README.md        model card
    OUT/history.csv            phase,epoch,loss,accuracy,val_loss,val_accuracy,lr,seconds
    OUT/metrics.json           test-split metrics
    OUT/report.html            one self-contained page: metrics, plots, data findings (busi.report)
    OUT/plots/*.png            accuracy, loss, confusion_matrix, roc, calibration
    OUT/predictions/test.csv   the predict CSV columns plus true_label
    OUT/checkpoint/            resumable state while a run is unfinished (busi.checkpoint)
    OUT/tensorboard/           TensorBoard event logs: train/, validation/, test/ (busi.tensorboard_log)

TensorBoard event files are the one exception to "replaced atomically": TensorBoard reads them
as append-only streams while they grow (``busi.tensorboard_log`` writes them, primary rank only).

Every writer is a no-op off the primary rank (``RunDir(..., primary=False)``), so callers
need no rank checks. Files are written to a temp file in the same folder, fsynced, and
renamed into place: a run killed at any moment leaves each file complete or absent. Files
get the process umask (``umask 002`` makes a run group-readable and writable).

A run directory is claimed (``RunDir.claim``) before anything is written: one lock per
directory (``OUT/.busi.lock``, ``busi.locks``), temp files of killed writers removed, and a
folder busi did not write refused (no ``manifest.json`` but other files) unless ``--restart``.
busi deletes or replaces only the paths of this layout, never a file it did not write.

Text files (CSVs, lists) are UTF-8. A file name that is not valid UTF-8 (bytes such as
``\xff`` from old shares) is written as its own bytes (Python's ``surrogateescape``), so
reading the CSV back with ``open_text`` gives the same path, byte for byte.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Sequence

import yaml

from busi.clock import utc_now
from busi.errors import ConfigError

log = logging.getLogger("busi")

RUN_FILES = {
    "config": "config.yaml",
    "manifest": "manifest.json",
    "splits": "data/splits.csv",
    "hashes": "data/hashes.csv",
    "report": "data/report.json",
    "model": "model/model.keras",
    "saved_model": "model/saved_model",
    "openvino": "model/openvino",
    "labels": "model/labels.json",
    "preprocessing": "model/preprocessing.json",
    "thresholds": "model/thresholds.json",
    "model_card": "model/README.md",
    "history": "history.csv",
    "metrics": "metrics.json",
    "report_html": "report.html",
    "plot_accuracy": "plots/accuracy.png",
    "plot_loss": "plots/loss.png",
    "plot_confusion": "plots/confusion_matrix.png",
    "plot_roc": "plots/roc.png",
    "plot_calibration": "plots/calibration.png",
    "test_predictions": "predictions/test.csv",
}


RUN_FOLDERS = (RUN_FILES["saved_model"], RUN_FILES["openvino"])  # entries of RUN_FILES that are folders
TENSORBOARD_DIR = "tensorboard"  # event logs (busi.tensorboard_log): append-only streams, not replaced
RUN_DIRS = ("checkpoint", TENSORBOARD_DIR)  # folders busi writes besides the parents of RUN_FILES
LOCK_FILE = ".busi.lock"

# What busi's own temp and aside names look like: mkstemp/mkdtemp ``.<name>.<8 random>.tmp[.ext]``
# and publish_dir's ``<name>.old-<pid>-<8 hex>``. Only these are ever removed as stale.
_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$|^.+\.old-\d+-[0-9a-f]{8}$")

TEXT_ENCODING = "utf-8"
TEXT_ERRORS = "surrogateescape"  # a name that is not UTF-8 keeps its bytes


def open_text(path: str | Path, mode: str = "r") -> IO[str]:
    """A text file busi writes or reads back (CSVs, input lists): UTF-8, names' bytes kept."""
    return open(path, mode, encoding=TEXT_ENCODING, errors=TEXT_ERRORS, newline="")


def text_bytes(text: str) -> bytes:
    return text.encode(TEXT_ENCODING, TEXT_ERRORS)


def text_of(data: bytes) -> str:
    """The text of a file busi reads back (``text_bytes``' inverse: never a UnicodeDecodeError)."""
    return data.decode(TEXT_ENCODING, TEXT_ERRORS)


def is_temp_name(name: str) -> bool:
    """A temp or aside name of busi's atomic writers (a killed writer leaves these behind)."""
    return _TEMP_NAME.match(name) is not None


def current_umask() -> int:
    """The process umask, read without changing it (Linux ``/proc``), else by set-and-restore."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _honour_umask(path: Path, directory: bool) -> None:
    """mkstemp and mkdtemp create 0600/0700 whatever the umask: give the umask's mode instead."""
    try:
        os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())
    except OSError:
        pass


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
    return atomic_write_bytes(path, text_bytes(text))


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
    _honour_umask(tmp, directory=False)
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
    _honour_umask(tmp, directory=True)
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


def json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n"


class CsvWriter:
    """The csv module's writer for every CSV busi writes: rows end in ``\n``, and a row with a
    carriage return in a field ends in ``\r\n`` instead, because only then does the csv
    module quote a bare ``\r`` (a name holding one would otherwise split the row). Read them
    back with the csv module (``read_csv_text``), never by lines: names may hold ``\n``,
    U+2028 or ``\x1c``, which ``str.splitlines`` breaks on."""

    def __init__(self, fh: IO[str]) -> None:
        self._lf = csv.writer(fh, lineterminator="\n")
        self._crlf = csv.writer(fh, lineterminator="\r\n")

    def writerow(self, row: Sequence[Any]) -> None:
        (self._crlf if any("\r" in str(v) for v in row) else self._lf).writerow(row)

    def writerows(self, rows: Iterable[Sequence[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def read_csv_text(text: str) -> list[list[str]]:
    """Every record of CSV ``text`` (csv.Error on a malformed one)."""
    return list(csv.reader(io.StringIO(text, newline="")))


def csv_text(columns: Sequence[str], rows: Iterable[Sequence[Any] | dict[str, Any]]) -> str:
    buf = io.StringIO(newline="")
    w = CsvWriter(buf)
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

    # ------------------------------------------------------------ claiming the folder

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest, None if there is none; ConfigError naming it if it is not busi's JSON."""
        p = self.path("manifest")
        if not p.exists():
            return None
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or "status" not in data:
                raise ValueError("no status")
            return data
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"output.dir: {p} is not a busi manifest ({type(e).__name__}: {e}); pass --restart to "
                "start this run again from scratch, or choose another output.dir"
            ) from None

    def layout(self) -> list[tuple[Path, bool]]:
        """Every path of the run-directory layout with whether it is a folder, parents first."""
        out: dict[Path, bool] = {}
        for rel in RUN_FILES.values():
            parts = Path(rel).parts
            for i in range(1, len(parts)):
                out.setdefault(self.root.joinpath(*parts[:i]), True)
        for rel in RUN_FILES.values():
            out[self.root / rel] = rel in RUN_FOLDERS
        for rel in RUN_DIRS:
            out[self.root / rel] = True
        return list(out.items())

    @contextmanager
    def claim(self, restart: bool = False) -> Iterator[None]:
        """Own the run directory for the ``with`` block (primary rank only): create it, lock it
        (a second job exits 2 naming the holder's host and pid), remove temp files of killed
        writers, and refuse what busi must not touch. ``restart``: clear this layout's files of
        the previous run first (rename aside, then delete), behind a manifest marked
        ``restarting``, so an interrupted restart never leaves old results that look current."""
        if not self.primary:
            yield
            return
        from busi.locks import exclusive_lock

        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"output.dir: {self.root} is a file, not a folder; choose another output.dir")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"output.dir: cannot create {self.root}: {e.strerror or e}; choose a writable "
                              "output.dir") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise ConfigError(f"output.dir: {self.root} is not writable (read-only mount or permissions); "
                              "choose a writable output.dir")
        with exclusive_lock(self.root / LOCK_FILE, f"output.dir {self.root}"):
            self._remove_stale()
            self._check_layout(restart)
            if restart:
                self._clear()
            yield

    def _remove_stale(self) -> None:
        """Temp and aside files of killed writers (the lock is held: no live writer owns them)."""
        for folder in [self.root] + [p for p, is_dir in self.layout() if is_dir]:
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                if is_temp_name(entry.name):
                    log.info("output.dir: removing %s, left by a killed run", entry.path)
                    remove_path(Path(entry.path))

    def _check_layout(self, restart: bool) -> None:
        wrong = [p for p, is_dir in self.layout()
                 if (p.exists() or p.is_symlink()) and (p.is_dir() and not p.is_symlink()) != is_dir]
        if wrong:
            shown = ", ".join(f"{p} ({'a folder' if p.is_dir() else 'not a folder'})" for p in wrong[:5])
            raise ConfigError(f"output.dir: {shown}: busi writes a {'file' if wrong[0].is_dir() else 'folder'} "
                              "there and did not write this; move it away or choose another output.dir")
        try:
            manifest = self.read_manifest()
        except ConfigError:
            if not restart:
                raise
            manifest = {"status": "unreadable"}
        if manifest is not None:
            return  # busi's run directory: files outside the layout are the user's, left alone
        foreign = sorted(e.name for e in os.scandir(self.root) if e.name != LOCK_FILE and not is_temp_name(e.name))
        if foreign and not restart:
            raise ConfigError(
                f"output.dir: {self.root} holds files busi did not write ({', '.join(foreign[:5])}"
                f"{', ...' if len(foreign) > 5 else ''}) and no {RUN_FILES['manifest']}; choose an empty or "
                "new output.dir, or pass --restart to write the run beside them"
            )
        taken = [p for p, is_dir in self.layout() if not is_dir and (p.exists() or p.is_symlink())]
        taken += [p for p in (self.root / d for d in RUN_DIRS) if p.exists()]
        if taken:
            raise ConfigError(
                f"output.dir: {', '.join(str(p) for p in taken[:5])}: busi would replace "
                f"{'these files' if len(taken) > 1 else 'this'}, which it did not write (there is no "
                f"{RUN_FILES['manifest']}); move them away or choose another output.dir"
            )

    def _clear(self) -> None:
        """``--restart``: the previous run's files go (each renamed aside, then deleted) behind a
        manifest that says so; folders of the layout stay if they hold the user's files."""
        previous = self.path("manifest")
        if previous.exists():
            atomic_write_text(previous, json_text({"status": "restarting", "restarted_at": utc_now()}))
        for p, is_dir in reversed(self.layout()):
            if p == previous:
                continue
            if not is_dir or p.name in RUN_DIRS or str(p.relative_to(self.root)) in RUN_FOLDERS:
                if p.exists() or p.is_symlink():
                    aside = p.with_name(f"{p.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
                    try:
                        os.replace(p, aside)
                    except OSError as e:
                        raise ConfigError(f"--restart: cannot remove {p}: {e.strerror or e}") from None
                    remove_path(aside)
            else:
                try:
                    p.rmdir()  # only if empty: a layout folder may hold the user's files too
                except OSError:
                    pass


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

