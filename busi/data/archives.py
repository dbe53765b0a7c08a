"""Archives as untrusted input: which files are archives, the limits that stop archive bombs,
and the validation and extraction of their members (``busi.data.staging`` decides where and
when an archive is unpacked).

Every member is validated *before* anything is written: no absolute paths, no ``..``, no
links, no device files or fifos, and the member count and declared uncompressed size must be
within :class:`ArchiveLimits`. While extracting, the bytes really written are counted too (zip
headers can lie). Nothing is ever written outside the destination folder, ``extractall`` is
never used, and archive permission bits are ignored (files get the process umask). The
standard library's ``zipfile`` and ``tarfile`` read the archives.
"""

from __future__ import annotations

import dataclasses
import lzma
import os
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Iterator, Union

from busi.config.schema import DataConfig
from busi.data.names import has_junk_part
from busi.errors import DataError, UnsafeArchiveError

# Longest first, so ".tar.gz" wins over a hypothetical ".gz" match.
ARCHIVE_SUFFIXES: tuple[str, ...] = (".tar.bz2", ".tar.gz", ".tar.xz", ".tgz", ".tar", ".zip")

_CHUNK = 1024 * 1024  # bytes copied per read while extracting
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
    the defaults of ``data.max_archive_*`` and ``predict.max_archive_*`` (``busi.config.schema``).
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


def archive_suffix(name: str) -> str | None:
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
    return archive_suffix(Path(path).name) is not None


# --------------------------------------------------------------------------- validation


def _unsafe(archive: Path, member: str, why: str, advice: str) -> UnsafeArchiveError:
    """Build the refusal error: names the archive and member, says what to do."""
    return UnsafeArchiveError(archive, f"refusing to unpack: member {member!r} {why}. Nothing was unpacked. {advice}")


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


def _zip_entries(archive: Path, zf: zipfile.ZipFile, limits: ArchiveLimits) -> Iterator[_Member]:
    """Each zip entry (from the central directory), checked on its own."""
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        _check_count(archive, limits.max_members + 1, infos[limits.max_members].filename, limits)
    for info in infos:
        parts = _member_parts(archive, info.filename)
        mode = (info.external_attr >> 16) & 0xFFFF
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            raise _unsafe(archive, info.filename, "is a symbolic link", _LINK_ADVICE)
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise _unsafe(archive, info.filename, "is a device file, fifo or socket", _LINK_ADVICE)
        if info.flag_bits & 0x1:
            raise DataError(archive, f"cannot unpack: member {info.filename!r} is encrypted. Unpack it "
                            "yourself with the password and pass the folder as the data source.")
        is_dir = kind == stat.S_IFDIR or info.filename.replace("\\", "/").endswith("/")
        yield _Member(info.filename, parts, is_dir, 0 if is_dir else info.file_size, info)


def _tar_entries(archive: Path, tf: tarfile.TarFile, limits: ArchiveLimits) -> Iterator[_Member]:
    """Each tar entry, checked on its own as it is read (a bomb of entries stops the read early)."""
    for count, info in enumerate(tf, start=1):
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
        yield _Member(info.name, parts, is_dir, 0 if is_dir else info.size, info)


def _validated(archive: Path, entries: Iterable[_Member], limits: ArchiveLimits) -> list[_Member]:
    """Every entry of a zip or tar (``_zip_entries``, ``_tar_entries``) checked before anything is
    written, stopping early on a bomb: the declared total within ``limits``. Returns the members
    to unpack (names that are never data left out)."""
    members: list[_Member] = []
    total = 0
    for member in entries:
        total += member.size
        _check_total(archive, total, member.name, limits)
        if not _is_skipped(member.parts):
            members.append(member)
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
        archive, f"cannot unpack member {member.name!r}: {exc}. Check free space in the "
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
        raise DataError(archive, f"cannot read member {member.name!r}")
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


def extract_archive(archive: Path, dest: Path, limits: ArchiveLimits) -> tuple[int, int]:
    """Validate all members, then unpack ``archive`` into the empty folder ``dest``.

    Returns (files written, bytes written). Raises UnsafeArchiveError for unsafe content,
    DataError for a corrupt or unreadable archive.
    """
    limits = limits.for_archive(stat_archive(archive).st_size)
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                members = _validated(archive, _zip_entries(archive, zf, limits), limits)
                return _materialise(archive, zf, members, dest, limits)
        with tarfile.open(archive, "r:*") as tf:
            members = _validated(archive, _tar_entries(archive, tf, limits), limits)
            return _materialise(archive, tf, members, dest, limits)
    except DataError:
        raise
    except _CORRUPT_ERRORS as exc:
        raise DataError(
            archive, f"corrupt or unreadable archive ({type(exc).__name__}: {exc}). Re-copy "
            "or re-download it (compare its checksum), or pass an unpacked folder instead."
        ) from exc


def stat_archive(path: Path) -> "os.stat_result":
    """stat() the archive, turning an OS error into a DataError that names it."""
    try:
        return path.stat()
    except OSError as exc:
        raise DataError(path, f"cannot read archive: {exc}. Check that it exists and is readable.") from exc
