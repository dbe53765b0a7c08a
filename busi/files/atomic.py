"""Atomic writes: every file and folder busi publishes is complete or absent, whenever the
process dies. The one place that names temp files and "aside" files.

A file is written to a temp file beside it, fsynced and renamed into place; a folder is built
beside its final name and swapped in by one rename (``publish_dir``), whatever it replaces
being renamed aside first and deleted after. The names, the one convention for every writer
(run directory, checkpoints, staging, synth, evaluation folders)::

    .<name>.<8 random>.tmp[.ext]     a file or folder being written (mkstemp / mkdtemp)
    <name>.old-<pid>-<8 hex>         what a publish or a discard moved out of the way

A killed writer leaves these behind; ``is_temp_name`` recognises them (only they are ever
removed as stale, by the owner of the folder's lock) and ``temp_owner`` says whose they are.
Files get the process umask, not mkstemp's 0600.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from busi.files.text import text_bytes

_TEMP_NAME = re.compile(r"^\.(?P<owner>.+)\.[A-Za-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$")
_ASIDE_NAME = re.compile(r"^(?P<owner>.+)\.old-\d+-[0-9a-f]{8}$")


def is_temp_name(name: str) -> bool:
    """A temp or aside name of busi's atomic writers (a killed writer leaves these behind)."""
    return temp_owner(name) is not None


def temp_owner(name: str) -> str | None:
    """The final name a temp or aside name belongs to (``.x.csv.ab12cd34.tmp`` -> ``x.csv``),
    None for any other name."""
    m = _TEMP_NAME.match(name) or _ASIDE_NAME.match(name)
    return m.group("owner") if m else None


def aside_name(path: Path) -> Path:
    """Where ``path`` goes while it is replaced or deleted: ``<name>.old-<pid>-<8 hex>`` beside it."""
    return path.with_name(f"{path.name}.old-{os.getpid()}-{secrets.token_hex(4)}")


def temp_dir(final: Path) -> Path:
    """A new empty folder beside ``final`` to build it in (``publish_dir`` moves it into place)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    _honour_umask(tmp, directory=True)
    return tmp


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
    tmp = temp_dir(path)
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
    ``final`` held (a folder, file or link) is first renamed aside (``aside_name``) and deleted
    afterwards, so at no moment does ``final`` name a partly written or partly
    deleted tree. Raises OSError (``tmp`` is then left for the caller to remove). The one
    folder-publishing step of the run directory, dataset staging and ``busi-job synth``."""
    aside: Path | None = None
    try:
        if final.exists() or final.is_symlink():
            aside = aside_name(final)
            os.replace(final, aside)
        os.replace(tmp, final)
    finally:
        if aside is not None:
            remove_path(aside)
    fsync_dir(final.parent)
    return final


def discard(path: Path) -> None:
    """Delete ``path`` (a file, link or folder tree) so that it vanishes at once: renamed aside
    first (OSError if that fails), then removed. A reader never sees it half deleted."""
    aside = aside_name(path)
    os.replace(path, aside)
    remove_path(aside)


def remove_path(path: Path) -> None:
    """Remove a folder tree, file or symlink, ignoring errors (best-effort cleanup)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass


class AtomicFolder:
    """Atomic writers for the files of one folder, by path relative to it (``enabled=False``:
    every write is a no-op, for ranks that write nothing). The run directory writes through
    one (``RunDir.files``), and so does the evaluation writer wherever it writes."""

    def __init__(self, root: str | Path, enabled: bool = True) -> None:
        self.root = Path(root)
        self.enabled = enabled

    def path(self, rel: str) -> Path:
        return self.root / rel

    def write_text(self, rel: str, text: str) -> Path | None:
        return atomic_write_text(self.path(rel), text) if self.enabled else None

    def write_with(self, rel: str, writer: Callable[[Path], Any], suffix: str = "") -> Path | None:
        return atomic_write_with(self.path(rel), writer, suffix) if self.enabled else None

    def write_dir_with(self, rel: str, writer: Callable[[Path], Any]) -> Path | None:
        return atomic_write_dir(self.path(rel), writer) if self.enabled else None
