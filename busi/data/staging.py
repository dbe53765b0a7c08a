"""Stage a data source: a folder is used in place, an archive is unpacked once, safely.

Batch jobs are often pointed at a dataset archive (``.zip`` or a tarball) on shared
storage. Reading images straight out of an archive is slow and awkward for tf.data, so
the archive is unpacked into a node-local staging folder and the pipeline reads that.

Why it is built the way it is:

* **Unpack once.** Many jobs (array tasks, restarts) stage the same archive. The unpacked
  folder carries a marker, ``.busi-staged.json``, recording the archive's size, mtime and
  sha256. A later call with the same size and mtime reuses the folder without reading
  the archive; when only the mtime changed (the archive was copied again, ``touch``-ed)
  the sha256 decides, so an identical copy is not unpacked again.
* **Concurrency.** Several processes on one node may stage the same archive at the same
  moment. A lock file (``busi.locks``) serialises check-and-extract, and extraction goes
  into a private temp folder that is renamed into place only when complete, with the
  marker written (temp file + fsync + rename) before that rename. A reader therefore
  never sees a half-extracted folder with a valid marker, even if the lock is not
  honoured (some network filesystems) or a process is killed mid-way.
* **Safety.** Archives are untrusted input. Every member is validated *before* anything
  is written: no absolute paths, no ``..``, no links, no device files or fifos, and the
  member count and declared uncompressed size must be within :class:`ArchiveLimits`.
  While extracting, the bytes really written are counted too (zip headers can lie).
  Nothing is ever written outside the staging folder, ``extractall`` is never used, and
  archive permission bits are ignored (files get the process umask).

This module must stay importable without TensorFlow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import lzma
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Union

from busi.artifacts import atomic_write_text, publish_dir, remove_path
from busi.clock import utc_now
from busi.config import DataConfig
from busi.data.names import has_junk_part
from busi.errors import DataError, UnsafeArchiveError
from busi.locks import exclusive_lock, is_locked

# Longest first, so ".tar.gz" wins over a hypothetical ".gz" match.
ARCHIVE_SUFFIXES: tuple[str, ...] = (".tar.bz2", ".tar.gz", ".tar.xz", ".tgz", ".tar", ".zip")
MARKER_NAME = ".busi-staged.json"
MARKER_FORMAT = 1
STAGING_DIR_NAME = "busi-staging"
PATH_HASH_CHARS = 12

_CHUNK = 1024 * 1024
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
# Errors raised while *reading* a damaged archive (writing errors are handled apart).
_CORRUPT_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    tarfile.TarError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    NotImplementedError,  # zip compression method this Python cannot decode
    OSError,  # gzip.BadGzipFile, bz2 "Invalid data stream"
)
_LOG = logging.getLogger(__name__)

_PATH_ADVICE = (
    "Re-create the archive with plain relative paths under one top folder "
    "(e.g. `cd parent && zip -r data.zip Dataset_BUSI_with_GT`), or unpack and inspect it "
    "yourself and pass the folder as the data source."
)
_RAISE_BYTES = (
    "If the archive is genuine, raise the size limits (`data.max_archive_bytes` and "
    "`data.max_archive_ratio`, or `predict.max_archive_*` for prediction inputs) or unpack it "
    "yourself and pass the folder."
)
_LINK_ADVICE = (
    "Archives must contain only regular files and folders. Re-create it without links "
    "(zip without -y, tar with -h to follow links), or unpack and inspect it yourself and "
    "pass the folder as the data source."
)


@dataclass(frozen=True)
class ArchiveLimits:
    """Upper bounds that stop archive bombs before they fill the node's disk.

    ``max_members`` counts every entry (files, folders, skipped entries);
    ``max_bytes`` bounds the total uncompressed size of regular files, both as declared
    in the archive and as actually written; ``max_ratio`` bounds it too, at that many times
    the archive's own size (never below ``RATIO_FLOOR``): a 2 MB zip of zeros that would
    unpack to 2 GB stops at 200 MB instead of at the 20 GiB byte limit. Image datasets
    compress hardly at all (BUSI's zip: 1.0x), so the ratio only ever stops bombs. These are
    the defaults of ``data.max_archive_*`` and ``predict.max_archive_*`` (``busi.config``).
    """

    max_members: int = DataConfig.max_archive_members
    max_bytes: int = DataConfig.max_archive_bytes  # total uncompressed bytes
    max_ratio: int = DataConfig.max_archive_ratio

    RATIO_FLOOR = 64 * 1024**2  # small archives may hold up to 64 MiB whatever their ratio

    @classmethod
    def from_config(cls, section: object) -> "ArchiveLimits":
        """The limits a config section sets (``data`` or ``predict``: ``max_archive_*`` keys)."""
        return cls(max_members=getattr(section, "max_archive_members"), max_bytes=getattr(section, "max_archive_bytes"),
                   max_ratio=getattr(section, "max_archive_ratio"))

    def for_archive(self, archive_bytes: int) -> "ArchiveLimits":
        """These limits with ``max_bytes`` lowered to what the ratio allows an archive this size."""
        by_ratio = max(self.max_ratio * archive_bytes, self.RATIO_FLOOR)
        return dataclasses.replace(self, max_bytes=min(self.max_bytes, by_ratio))


@dataclass(frozen=True)
class _Member:
    """One validated archive entry to materialise (a regular file or a folder)."""

    name: str  # the name as stored in the archive, for messages
    parts: tuple[str, ...]  # safe relative path components
    is_dir: bool
    size: int  # declared uncompressed size (0 for folders)
    ref: Union[zipfile.ZipInfo, tarfile.TarInfo]


def default_staging_dir() -> Path:
    """Return ``$TMPDIR/busi-staging`` (or the platform temp dir): node-local on clusters."""
    base = os.environ.get("TMPDIR") or tempfile.gettempdir()
    return Path(base) / STAGING_DIR_NAME


def _archive_suffix(name: str) -> str | None:
    """Return the supported archive suffix of a file name (case-insensitive), or None."""
    lower = name.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if lower.endswith(suffix) and len(lower) >= len(suffix):
            return suffix
    return None


def is_archive(path: Path) -> bool:
    """True if ``path``'s name ends in a supported archive suffix.

    Supported: .zip, .tar, .tar.gz, .tgz, .tar.bz2, .tar.xz (any letter case). Only the
    name is looked at; whether the content really is such an archive is found out when
    it is opened.
    """
    return _archive_suffix(Path(path).name) is not None


def stage_source(
    source: str | Path,
    staging_dir: str | Path | None = None,
    limits: ArchiveLimits = ArchiveLimits(),
) -> Path:
    """Return a local folder holding the data of ``source``.

    Folder -> returned as is (resolved; DataError if missing). Archive -> unpacked once
    into ``staging_dir`` (default :func:`default_staging_dir`) as
    ``<archive-name-without-ext>-<12 hex of sha1(resolved archive path)>/`` and that
    folder returned; later calls reuse it while the archive is unchanged. Missing
    source -> DataError naming it. Unsafe archive -> UnsafeArchiveError, with nothing
    written outside the staging dir and no temp folder left behind.
    """
    given = Path(source).expanduser()
    if not given.exists():
        raise DataError(
            f"Data source {str(source)!r} does not exist (looked for {given.absolute()}). "
            "Check `data.source` in the job file; relative paths are resolved against "
            "the current working directory."
        )
    path = given.resolve()
    if path.is_dir():
        return path
    if not path.is_file() or not is_archive(path):
        raise DataError(
            f"Data source {path} is neither a folder nor a supported archive "
            f"({', '.join(sorted(ARCHIVE_SUFFIXES))}). Point `data.source` at the dataset folder "
            "or at an archive of it."
        )

    root = Path(staging_dir).expanduser() if staging_dir is not None else default_staging_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        root = root.resolve()
    except OSError as exc:
        raise DataError(
            f"Cannot create the staging dir {root} to unpack {path}: {exc}. Set `data.staging_dir` "
            "(or $TMPDIR) to a writable local folder with enough free space."
        ) from exc

    name = _stage_name(path)
    final = root / name
    lock = root / f"{name}.lock"
    with exclusive_lock(lock, f"staging {path} in {root}", wait=True,
                        on_wait=lambda who: _LOG.info("busi staging: waiting for %s, staging %s", who, path)) as held:
        if held:
            _remove_stale(root, name)
        st = _stat_archive(path)
        marker = _read_marker(final)
        digest: str | None = None
        if marker is not None and marker["size"] == st.st_size:
            if marker["mtime"] == st.st_mtime_ns:
                _LOG.info("busi staging: reusing %s for %s (size and mtime unchanged)", final, path)
                return final
            digest = _sha256(path)
            if digest == marker["sha256"]:
                marker["mtime"] = st.st_mtime_ns
                marker["verified_at"] = utc_now()
                _write_json_atomic(final / MARKER_NAME, marker)
                _LOG.info("busi staging: reusing %s for %s (mtime changed, sha256 same)", final, path)
                return final
        return _extract_and_publish(path, root, name, limits, st, digest)


# --------------------------------------------------------------------------- staging


def _stage_name(archive: Path) -> str:
    """Folder name for an archive: its name without extension plus a hash of its path.

    The path hash keeps two different archives that share a file name apart, while the
    same archive always maps to the same folder (which is what makes reuse possible).
    """
    suffix = _archive_suffix(archive.name) or ""
    stem = archive.name[: len(archive.name) - len(suffix)] or "archive"
    digest = hashlib.sha1(str(archive).encode("utf-8", "surrogateescape")).hexdigest()
    return f"{stem}-{digest[:PATH_HASH_CHARS]}"


def _stat_archive(path: Path) -> os.stat_result:
    """stat() the archive, turning an OS error into a DataError that names it."""
    try:
        return path.stat()
    except OSError as exc:
        raise DataError(f"Cannot read archive {path}: {exc}. Check that it exists and is readable.") from exc


def _sha256(path: Path) -> str:
    """sha256 of the archive's bytes, read in chunks (archives can be many GB)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                h.update(chunk)
    except OSError as exc:
        raise DataError(f"Cannot read archive {path}: {exc}. Check that it is readable.") from exc
    return h.hexdigest()


def _remove_stale(root: Path, name: str) -> None:
    """Delete temp/aside folders left by killed processes: those of ``name`` (whose lock this
    process holds, so any seen now is an orphan), and those of other archives whose lock no
    live process holds (a killed unpack's hundreds of MB do not wait for that archive to be
    staged again)."""
    markers = (".tmp-", ".old-")
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for entry in entries:
        cut = min((entry.name.find(m) for m in markers if m in entry.name), default=-1)
        if cut <= 0:
            continue
        owner = entry.name[:cut]
        if owner == name or not is_locked(root / f"{owner}.lock"):
            _LOG.info("busi staging: removing stale %s", entry.path)
            remove_path(Path(entry.path))


def _read_marker(final: Path) -> dict | None:
    """Return the marker of a staged folder if the folder is complete and valid, else None."""
    if not final.is_dir() or final.is_symlink():
        return None
    try:
        with open(final / MARKER_NAME, encoding="utf-8") as fh:
            marker = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict):
        return None
    if not (
        isinstance(marker.get("size"), int)
        and isinstance(marker.get("mtime"), int)
        and isinstance(marker.get("sha256"), str)
    ):
        return None
    return marker


def _write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON via temp file + fsync + rename, so readers see the old or new file whole."""
    try:
        atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise DataError(
            f"Cannot write staging marker {path}: {exc}. Check free space and permissions of "
            "the staging dir, or set `data.staging_dir` (or $TMPDIR) elsewhere."
        ) from exc


def _extract_and_publish(
    archive: Path,
    root: Path,
    name: str,
    limits: ArchiveLimits,
    st: os.stat_result,
    digest: str | None,
) -> Path:
    """Unpack into a private temp folder, write the marker, then rename it into place."""
    final = root / name
    if digest is None:
        digest = _sha256(archive)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f"{name}.tmp-{os.getpid()}-", dir=root))
    except OSError as exc:
        raise DataError(
            f"Cannot create a temp folder in staging dir {root} for {archive}: {exc}. Set "
            "`data.staging_dir` (or $TMPDIR) to a writable local folder."
        ) from exc
    _LOG.info("busi staging: unpacking %s into %s", archive, final)
    try:
        n_files, n_bytes = _extract(archive, tmp, limits)
        after = _stat_archive(archive)
        if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            raise DataError(
                f"Archive {archive} changed while it was being unpacked. Wait until it is "
                "completely written (copy finished), then run again."
            )
        _write_json_atomic(
            tmp / MARKER_NAME,
            {
                "format": MARKER_FORMAT,
                "source": str(archive),
                "size": st.st_size,
                "mtime": st.st_mtime_ns,
                "sha256": digest,
                "staged_at": utc_now(),
                "files": n_files,
                "bytes": n_bytes,
            },
        )
        _publish(tmp, final, archive)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _LOG.info("busi staging: staged %s (%d files, %d bytes) at %s", archive, n_files, n_bytes, final)
    return final


def _publish(tmp: Path, final: Path, archive: Path) -> None:
    """Atomically move the complete temp folder to its final name (``busi.artifacts.publish_dir``)."""
    try:
        publish_dir(tmp, final)
    except OSError as exc:
        raise DataError(
            f"Cannot move unpacked {archive} into place at {final}: {exc}. Remove {final} and "
            "run again."
        ) from exc


# --------------------------------------------------------------------------- validation


def _unsafe(archive: Path, member: str, why: str, advice: str) -> UnsafeArchiveError:
    """Build the refusal error: names the archive and member, says what to do."""
    return UnsafeArchiveError(
        f"Refusing to unpack {archive}: member {member!r} {why}. Nothing was unpacked. {advice}"
    )


def _member_parts(archive: Path, name: str) -> tuple[str, ...]:
    """Validate a member name and return its relative path components.

    Backslashes count as separators (archives made on Windows), so ``..\\x`` and
    ``\\x`` are caught as well; ``.`` and empty components are dropped.
    """
    if "\x00" in name:
        raise _unsafe(archive, name, "has a NUL byte in its name", _PATH_ADVICE)
    norm = name.replace("\\", "/")
    if norm.startswith("/") or _DRIVE_RE.match(norm):
        raise _unsafe(archive, name, "has an absolute path", _PATH_ADVICE)
    parts = tuple(p for p in norm.split("/") if p not in ("", "."))
    if ".." in parts:
        raise _unsafe(archive, name, "has a '..' path component", _PATH_ADVICE)
    return parts


def _is_skipped(parts: tuple[str, ...]) -> bool:
    """True for names that are never data (``busi.data.names``: ``__MACOSX/``, ``.DS_Store``,
    other hidden files) and the archive root itself."""
    return not parts or has_junk_part(parts)


def _check_count(archive: Path, count: int, member: str, limits: ArchiveLimits) -> None:
    """Refuse once the member count passes ``limits.max_members``."""
    if count > limits.max_members:
        raise _unsafe(
            archive,
            member,
            f"is member number {count}, over the limit of {limits.max_members} members",
            "If the archive is genuine, raise the archive member limit (`data.max_archive_members`, "
            "or `predict.max_archive_members` for prediction inputs) or unpack it yourself and pass the folder.",
        )


def _check_total(archive: Path, total: int, member: str, limits: ArchiveLimits) -> None:
    """Refuse once the declared uncompressed total passes ``limits.max_bytes``."""
    if total > limits.max_bytes:
        raise _unsafe(
            archive,
            member,
            f"brings the declared uncompressed size to {total} bytes, over the limit of "
            f"{limits.max_bytes} bytes",
            _RAISE_BYTES,
        )


def _zip_members(archive: Path, zf: zipfile.ZipFile, limits: ArchiveLimits) -> list[_Member]:
    """Validate every zip entry (from the central directory) before anything is written."""
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        _check_count(archive, limits.max_members + 1, infos[limits.max_members].filename, limits)
    members: list[_Member] = []
    total = 0
    for info in infos:
        parts = _member_parts(archive, info.filename)
        mode = (info.external_attr >> 16) & 0xFFFF
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            raise _unsafe(archive, info.filename, "is a symbolic link", _LINK_ADVICE)
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise _unsafe(archive, info.filename, "is a device file, fifo or socket", _LINK_ADVICE)
        if info.flag_bits & 0x1:
            raise DataError(
                f"Cannot unpack {archive}: member {info.filename!r} is encrypted. Unpack it "
                "yourself with the password and pass the folder as the data source."
            )
        is_dir = kind == stat.S_IFDIR or info.filename.replace("\\", "/").endswith("/")
        size = 0 if is_dir else info.file_size
        total += size
        _check_total(archive, total, info.filename, limits)
        if not _is_skipped(parts):
            members.append(_Member(info.filename, parts, is_dir, size, info))
    return members


def _tar_members(archive: Path, tf: tarfile.TarFile, limits: ArchiveLimits) -> list[_Member]:
    """Validate every tar entry before anything is written; stops early on a bomb."""
    members: list[_Member] = []
    total = 0
    count = 0
    for info in tf:
        count += 1
        _check_count(archive, count, info.name, limits)
        parts = _member_parts(archive, info.name)
        if info.issym():
            raise _unsafe(archive, info.name, f"is a symbolic link (to {info.linkname!r})", _LINK_ADVICE)
        if info.islnk():
            raise _unsafe(archive, info.name, f"is a hard link (to {info.linkname!r})", _LINK_ADVICE)
        if info.ischr() or info.isblk():
            raise _unsafe(archive, info.name, "is a device file", _LINK_ADVICE)
        if info.isfifo():
            raise _unsafe(archive, info.name, "is a fifo", _LINK_ADVICE)
        if info.isdir():
            is_dir = True
        elif info.isreg():
            is_dir = False
        else:
            raise _unsafe(archive, info.name, f"has unsupported tar type {info.type!r}", _LINK_ADVICE)
        size = 0 if is_dir else info.size
        total += size
        _check_total(archive, total, info.name, limits)
        if not _is_skipped(parts):
            members.append(_Member(info.name, parts, is_dir, size, info))
    return members


# --------------------------------------------------------------------------- extraction


class _BudgetWriter:
    """File-like wrapper that counts bytes written and stops an over-long member.

    Used with ``shutil.copyfileobj``: a member may not write more than it declared, nor
    more than what is left of ``max_bytes``, whatever the (possibly lying) headers say.
    Write errors (disk full) become DataError here, so read errors can be told apart.
    """

    def __init__(self, raw: IO[bytes], archive: Path, member: _Member, remaining: int, limit: int) -> None:
        self.raw = raw
        self.archive = archive
        self.member = member
        self.remaining = remaining
        self.limit = limit
        self.written = 0

    def write(self, data: bytes) -> int:
        """Count, check against the budgets, then write."""
        self.written += len(data)
        if self.written > self.remaining:
            raise _unsafe(
                self.archive,
                self.member.name,
                f"unpacks to more bytes than the limit of {self.limit} allows",
                "The archive's size headers are wrong, or it is an archive bomb. " + _RAISE_BYTES,
            )
        if self.written > self.member.size:
            raise _unsafe(
                self.archive,
                self.member.name,
                f"unpacks to more than its declared {self.member.size} bytes",
                "The archive's size headers are wrong (possibly an archive bomb). Re-create the "
                "archive, or unpack and inspect it yourself and pass the folder.",
            )
        try:
            return self.raw.write(data)
        except OSError as exc:
            raise _write_error(self.archive, self.member, exc) from exc


def _write_error(archive: Path, member: _Member, exc: OSError) -> DataError:
    """DataError for a failure to write a member into the staging dir."""
    return DataError(
        f"Cannot unpack member {member.name!r} of {archive}: {exc}. Check free space in the "
        "staging dir (set `data.staging_dir` or $TMPDIR to a larger local disk) and that the archive "
        "has no file and folder with the same name."
    )


def _open_member(archive: Path, container: object, member: _Member) -> IO[bytes]:
    """Open a validated regular-file member for streaming reads."""
    if isinstance(container, zipfile.ZipFile):
        return container.open(member.ref)  # type: ignore[arg-type]
    assert isinstance(container, tarfile.TarFile)
    fh = container.extractfile(member.ref)  # type: ignore[arg-type]
    if fh is None:  # pragma: no cover - only regular files reach here
        raise DataError(f"Cannot read member {member.name!r} of {archive}.")
    return fh


def _materialise(
    archive: Path, container: object, members: list[_Member], dest: Path, limits: ArchiveLimits
) -> tuple[int, int]:
    """Create folders and stream regular files into ``dest``; return (files, bytes)."""
    used = 0
    n_files = 0
    for member in members:
        target = dest.joinpath(*member.parts)
        try:
            if member.is_dir:
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            out = open(target, "wb")
        except OSError as exc:
            raise _write_error(archive, member, exc) from exc
        try:
            with _open_member(archive, container, member) as src:
                writer = _BudgetWriter(out, archive, member, limits.max_bytes - used, limits.max_bytes)
                shutil.copyfileobj(src, writer, _CHUNK)
            try:
                out.close()  # the final flush can fail on a full disk: a write error
            except OSError as exc:
                raise _write_error(archive, member, exc) from exc
        finally:
            if not out.closed:
                try:
                    out.close()
                except OSError:
                    pass
        used += writer.written
        n_files += 1
    return n_files, used


def _extract(archive: Path, dest: Path, limits: ArchiveLimits) -> tuple[int, int]:
    """Validate all members, then unpack ``archive`` into the empty folder ``dest``.

    Returns (files written, bytes written). Raises UnsafeArchiveError for unsafe content,
    DataError for a corrupt or unreadable archive.
    """
    limits = limits.for_archive(_stat_archive(archive).st_size)
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                members = _zip_members(archive, zf, limits)
                return _materialise(archive, zf, members, dest, limits)
        with tarfile.open(archive, "r:*") as tf:
            members = _tar_members(archive, tf, limits)
            return _materialise(archive, tf, members, dest, limits)
    except DataError:
        raise
    except _CORRUPT_ERRORS as exc:
        raise DataError(
            f"Archive {archive} is corrupt or unreadable ({type(exc).__name__}: {exc}). Re-copy "
            "or re-download it (compare its checksum), or pass an unpacked folder instead."
        ) from exc
