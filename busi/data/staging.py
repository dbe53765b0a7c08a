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
  moment. A lock file (``busi.runtime.locks``) serialises check-and-extract, and extraction goes
  into a private temp folder that is renamed into place only when complete, with the
  marker written (temp file + fsync + rename) before that rename. A reader therefore
  never sees a half-extracted folder with a valid marker, even if the lock is not
  honoured (some network filesystems) or a process is killed mid-way.
* **Safety.** Archives are untrusted input: ``busi.data.archives`` validates every member
  before anything is written and counts the bytes really written.

No TensorFlow here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from busi.data.archives import (
    ARCHIVE_SUFFIXES,
    ArchiveLimits,
    archive_suffix,
    extract_archive,
    is_archive,
    stat_archive,
)
from busi.errors import DataError
from busi.files.atomic import (
    atomic_write_text,
    publish_dir,
    remove_path,
    temp_dir,
    temp_owner,
)
from busi.files.digest import file_sha256
from busi.runtime.clock import utc_now
from busi.runtime.locks import exclusive_lock, is_locked

MARKER_NAME = ".busi-staged.json"
MARKER_FORMAT = 1
STAGING_DIR_NAME = "busi-staging"
PATH_HASH_CHARS = 12
_LOG = logging.getLogger(__name__)


def default_staging_dir() -> Path:
    """Return ``$TMPDIR/busi-staging`` (or the platform temp dir): node-local on clusters."""
    base = os.environ.get("TMPDIR") or tempfile.gettempdir()
    return Path(base) / STAGING_DIR_NAME


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
        raise DataError(source, f"data source does not exist (looked for {given.absolute()}). Check "
                        "`data.source` in the job file; relative paths are resolved against the current "
                        "working directory.")
    path = given.resolve()
    if path.is_dir():
        return path
    if not path.is_file() or not is_archive(path):
        raise DataError(path, f"data source is neither a folder nor a supported archive "
                              f"({', '.join(sorted(ARCHIVE_SUFFIXES))}). Point `data.source` at the dataset "
                              "folder or at an archive of it.")

    root = Path(staging_dir).expanduser() if staging_dir is not None else default_staging_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        root = root.resolve()
    except OSError as exc:
        raise DataError(root, f"cannot create the staging dir to unpack {path}: {exc}. Set `data.staging_dir` "
                              "(or $TMPDIR) to a writable local folder with enough free space.") from exc

    name = _stage_name(path)
    final = root / name
    lock = root / f"{name}.lock"
    with exclusive_lock(lock, f"staging {path} in {root}", wait=True,
                        on_wait=lambda who: _LOG.info("busi staging: waiting for %s, staging %s", who, path)) as held:
        if held:
            _remove_stale(root, name)
        st = stat_archive(path)
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
    suffix = archive_suffix(archive.name) or ""
    stem = archive.name[: len(archive.name) - len(suffix)] or "archive"
    digest = hashlib.sha1(str(archive).encode("utf-8", "surrogateescape")).hexdigest()
    return f"{stem}-{digest[:PATH_HASH_CHARS]}"


def _sha256(path: Path) -> str:
    """sha256 of the archive's bytes (read in chunks: archives can be many GB)."""
    try:
        return file_sha256(path)
    except OSError as exc:
        raise DataError(path, f"cannot read archive: {exc}. Check that it is readable.") from exc


def _remove_stale(root: Path, name: str) -> None:
    """Delete temp/aside folders left by killed processes: those of ``name`` (whose lock this
    process holds, so any seen now is an orphan), and those of other archives whose lock no
    live process holds (a killed unpack's hundreds of MB do not wait for that archive to be
    staged again)."""
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for entry in entries:
        owner = temp_owner(entry.name)
        if owner is None:
            continue
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
        raise DataError(path, f"cannot write the staging marker: {exc}. Check free space and permissions of "
                              "the staging dir, or set `data.staging_dir` (or $TMPDIR) elsewhere.") from exc


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
        tmp = temp_dir(final)
    except OSError as exc:
        raise DataError(root, f"cannot create a temp folder in the staging dir for {archive}: {exc}. Set "
                              "`data.staging_dir` (or $TMPDIR) to a writable local folder.") from exc
    _LOG.info("busi staging: unpacking %s into %s", archive, final)
    try:
        n_files, n_bytes = extract_archive(archive, tmp, limits)
        after = stat_archive(archive)
        if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            raise DataError(archive, "the archive changed while it was being unpacked. Wait until it is "
                                     "completely written (copy finished), then run again.")
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
    """Atomically move the complete temp folder to its final name (``busi.files.atomic.publish_dir``)."""
    try:
        publish_dir(tmp, final)
    except OSError as exc:
        raise DataError(final, f"cannot move the unpacked {archive} into place: {exc}. Remove {final} and "
                               "run again.") from exc
