"""Tests for busi.data.staging: real archives built in tmp_path, real extraction."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Callable

import pytest

from busi.data.staging import (
    MARKER_NAME,
    ArchiveLimits,
    default_staging_dir,
    is_archive,
    stage_source,
)
from busi.errors import DataError, UnsafeArchiveError

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_ZIP = Path(__file__).resolve().parents[2] / "shared/data/busi-sample.zip"

FILES = {
    "Dataset_BUSI_with_GT/benign/benign (1).png": b"benign-one" * 50,
    "Dataset_BUSI_with_GT/benign/benign (1)_mask.png": b"mask",
    "Dataset_BUSI_with_GT/malignant/malignant (1).png": b"\x00\x01\x02" * 1000,
    "Dataset_BUSI_with_GT/normal/normal (1).png": b"normal",
}


# --------------------------------------------------------------------------- helpers


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def make_tar(path: Path, files: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return path


def add_tar_special(path: Path, make_info: Callable[[], tarfile.TarInfo], data: bytes = b"") -> Path:
    """Tarball with a safe file first, then one special member built by make_info."""
    with tarfile.open(path, "w:gz") as tf:
        ok = tarfile.TarInfo("ok.txt")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"ok"))
        info = make_info()
        if info.isreg():
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        else:
            tf.addfile(info)
    return path


def assert_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        assert (root / name).read_bytes() == data, name


def listing(root: Path, exclude: Path | None = None) -> set[str]:
    out = set()
    for p in root.rglob("*"):
        if exclude is not None and (p == exclude or exclude in p.parents):
            continue
        out.add(str(p.relative_to(root)))
    return out


def staged_entries(staging: Path) -> list[str]:
    return sorted(p.name for p in staging.iterdir()) if staging.exists() else []


def bump_mtime(path: Path, seconds: int = 10) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


# --------------------------------------------------------------------------- basics


def test_is_archive_suffixes() -> None:
    for name in ["a.zip", "a.ZIP", "a.tar", "a.tar.gz", "A.TGZ", "a.tar.bz2", "a.tar.xz"]:
        assert is_archive(Path(name)), name
    for name in ["a", "a.gz", "a.png", "a.rar", "zip", "a.tar.zst"]:
        assert not is_archive(Path(name)), name


def test_default_staging_dir_uses_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert default_staging_dir() == tmp_path / "busi-staging"


def test_folder_source_returned_as_is(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "benign").mkdir(parents=True)
    staging = tmp_path / "stage"
    assert stage_source(data, staging) == data.resolve()
    assert stage_source(str(data), staging) == data.resolve()
    assert not staging.exists()  # a folder source never touches the staging dir


def test_missing_source_is_data_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "data.zip"
    with pytest.raises(DataError, match="nope/data.zip") as exc:
        stage_source(missing, tmp_path / "stage")
    assert "does not exist" in str(exc.value)
    assert not isinstance(exc.value, UnsafeArchiveError)


def test_non_archive_file_is_data_error(tmp_path: Path) -> None:
    f = tmp_path / "data.csv"
    f.write_text("x")
    with pytest.raises(DataError, match="data.csv"):
        stage_source(f, tmp_path / "stage")


@pytest.mark.parametrize("suffix", [".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz"])
def test_every_format_stages(tmp_path: Path, suffix: str) -> None:
    archive = tmp_path / f"busi{suffix}"
    if suffix == ".zip":
        make_zip(archive, FILES)
    else:
        modes = {".tar": "w", ".tar.gz": "w:gz", ".tgz": "w:gz", ".tar.bz2": "w:bz2", ".tar.xz": "w:xz"}
        mode = modes[suffix]
        make_tar(archive, FILES, mode)
    staging = tmp_path / "stage"
    out = stage_source(archive, staging)
    expected_hash = hashlib.sha1(str(archive.resolve()).encode()).hexdigest()[:12]
    assert out == staging.resolve() / f"busi-{expected_hash}"
    assert_tree(out, FILES)


# --------------------------------------------------------------------------- reuse


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_stage_reuse_and_restage(tmp_path: Path, kind: str) -> None:
    archive = tmp_path / "src" / f"busi.{kind}"
    archive.parent.mkdir()
    build = make_zip if kind == "zip" else make_tar
    build(archive, FILES)
    staging = tmp_path / "stage"

    out = stage_source(archive, staging)
    assert out.parent == staging.resolve()
    assert_tree(out, FILES)
    marker = json.loads((out / MARKER_NAME).read_text())
    st = archive.stat()
    assert marker["size"] == st.st_size
    assert marker["mtime"] == st.st_mtime_ns
    assert marker["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert marker["source"] == str(archive.resolve())
    assert marker["staged_at"]
    # Only the staged dir and its lock file: no temp dirs left behind.
    assert staged_entries(staging) == sorted([out.name, f"{out.name}.lock"])

    # Second call: fast path, nothing re-extracted.
    inode = out.stat().st_ino
    sentinel = out / "sentinel.txt"
    sentinel.write_text("still here")
    assert stage_source(archive, staging) == out
    assert sentinel.exists() and out.stat().st_ino == inode

    # mtime changed, content same: sha256 path skips and refreshes the marker.
    bump_mtime(archive)
    assert stage_source(archive, staging) == out
    assert sentinel.exists() and out.stat().st_ino == inode
    assert json.loads((out / MARKER_NAME).read_text())["mtime"] == archive.stat().st_mtime_ns

    # Content changed (same member names and sizes): re-extracted.
    changed = {k: bytes(reversed(v)) if len(v) > 1 else b"Z" for k, v in FILES.items()}
    changed["Dataset_BUSI_with_GT/normal/normal (1).png"] = b"NORMAL"
    build(archive, changed)
    bump_mtime(archive, 20)
    assert stage_source(archive, staging) == out
    assert not sentinel.exists()
    assert_tree(out, changed)
    new_sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert json.loads((out / MARKER_NAME).read_text())["sha256"] == new_sha
    assert staged_entries(staging) == sorted([out.name, f"{out.name}.lock"])


@pytest.mark.integration
def test_dir_without_marker_is_restaged_and_stale_temps_removed(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "busi.zip", FILES)
    staging = tmp_path / "stage"
    out = stage_source(archive, staging)
    # Simulate a killed run: marker gone, junk inside, orphan temp and aside folders next to it
    # (named as busi.files.atomic names them)
    (out / MARKER_NAME).unlink()
    (out / "partial.bin").write_bytes(b"x")
    (staging / f".{out.name}.a1b2c3d4.tmp").mkdir()
    (staging / f".{out.name}.a1b2c3d4.tmp" / "half.png").write_bytes(b"x")
    (staging / f"{out.name}.old-999999-abcd1234").mkdir()

    assert stage_source(archive, staging) == out
    assert not (out / "partial.bin").exists()
    assert (out / MARKER_NAME).exists()
    assert_tree(out, FILES)
    assert staged_entries(staging) == sorted([out.name, f"{out.name}.lock"])


def test_macos_metadata_skipped(tmp_path: Path) -> None:
    files = dict(FILES)
    files["__MACOSX/Dataset_BUSI_with_GT/._x.png"] = b"junk"
    files["Dataset_BUSI_with_GT/.DS_Store"] = b"junk"
    out = stage_source(make_zip(tmp_path / "mac.zip", files), tmp_path / "stage")
    assert_tree(out, FILES)
    assert not (out / "__MACOSX").exists()
    assert not (out / "Dataset_BUSI_with_GT/.DS_Store").exists()


@pytest.mark.parametrize("name", ["bad.zip", "bad.tar.gz"])
def test_corrupt_archive_is_data_error(tmp_path: Path, name: str) -> None:
    archive = tmp_path / name
    archive.write_bytes(b"this is not an archive at all" * 10)
    staging = tmp_path / "stage"
    with pytest.raises(DataError, match=name) as exc:
        stage_source(archive, staging)
    assert "corrupt" in str(exc.value)
    assert [n for n in staged_entries(staging) if not n.endswith(".lock")] == []


def test_truncated_targz_is_data_error(tmp_path: Path) -> None:
    good = make_tar(tmp_path / "good.tar.gz", {"a.bin": os.urandom(200_000)})
    archive = tmp_path / "cut.tar.gz"
    archive.write_bytes(good.read_bytes()[:60_000])
    staging = tmp_path / "stage"
    with pytest.raises(DataError, match="cut.tar.gz"):
        stage_source(archive, staging)
    assert [n for n in staged_entries(staging) if not n.endswith(".lock")] == []


# --------------------------------------------------------------------------- unsafe archives


Builder = Callable[[Path, Path], "tuple[Path, str, ArchiveLimits]"]


def _zip_with(path: Path, info: zipfile.ZipInfo, data: bytes = b"evil") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ok.txt", b"ok")
        zf.writestr(info, data)
    return path


def _zip_symlink(path: Path, root: Path) -> tuple[Path, str, ArchiveLimits]:
    info = zipfile.ZipInfo("link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return _zip_with(path.with_suffix(".zip"), info, b"/etc/passwd"), "link", ArchiveLimits()


def _zip_name(name_of: Callable[[Path], str]) -> Builder:
    def build(path: Path, root: Path) -> tuple[Path, str, ArchiveLimits]:
        name = name_of(root)
        return _zip_with(path.with_suffix(".zip"), zipfile.ZipInfo(name)), name, ArchiveLimits()

    return build


def _tar_special(name_of: Callable[[Path], str], kind: bytes, linkname: str = "") -> Builder:
    def build(path: Path, root: Path) -> tuple[Path, str, ArchiveLimits]:
        name = name_of(root)

        def info() -> tarfile.TarInfo:
            ti = tarfile.TarInfo(name)
            ti.type = kind
            ti.linkname = linkname
            if kind == tarfile.CHRTYPE:
                ti.devmajor, ti.devminor = 1, 3
            return ti

        return add_tar_special(path.with_suffix(".tar.gz"), info, b"evil"), name, ArchiveLimits()

    return build


def _too_many(path: Path, root: Path) -> tuple[Path, str, ArchiveLimits]:
    files = {f"f{i}.txt": b"x" for i in range(5)}
    return make_zip(path.with_suffix(".zip"), files), "f3.txt", ArchiveLimits(max_members=3)


def _too_many_tar(path: Path, root: Path) -> tuple[Path, str, ArchiveLimits]:
    files = {f"f{i}.txt": b"x" for i in range(5)}
    return make_tar(path.with_suffix(".tar.gz"), files), "f3.txt", ArchiveLimits(max_members=3)


def _too_big(path: Path, root: Path) -> tuple[Path, str, ArchiveLimits]:
    files = {"small.txt": b"x" * 50, "big.bin": b"\0" * 5000}
    return make_zip(path.with_suffix(".zip"), files), "big.bin", ArchiveLimits(max_bytes=1000)


def _too_big_tar(path: Path, root: Path) -> tuple[Path, str, ArchiveLimits]:
    files = {"small.txt": b"x" * 50, "big.bin": b"\0" * 5000}
    return make_tar(path.with_suffix(".tar.gz"), files), "big.bin", ArchiveLimits(max_bytes=1000)


UNSAFE = {
    "zip-absolute": _zip_name(lambda root: str(root / "abs-evil.txt")),
    "zip-dotdot": _zip_name(lambda root: "../evil.txt"),
    "zip-dotdot-deep": _zip_name(lambda root: "a/../../../evil.txt"),
    "zip-backslash-dotdot": _zip_name(lambda root: "..\\..\\evil.txt"),
    "zip-windows-drive": _zip_name(lambda root: "C:\\evil.txt"),
    "zip-symlink": _zip_symlink,
    "tar-symlink": _tar_special(lambda root: "link", tarfile.SYMTYPE, "/etc/passwd"),
    "tar-hardlink": _tar_special(lambda root: "hard", tarfile.LNKTYPE, "ok.txt"),
    "tar-chardev": _tar_special(lambda root: "null", tarfile.CHRTYPE),
    "tar-fifo": _tar_special(lambda root: "pipe", tarfile.FIFOTYPE),
    "tar-absolute": _tar_special(lambda root: str(root / "abs-evil.txt"), tarfile.REGTYPE),
    "tar-dotdot": _tar_special(lambda root: "../../evil.txt", tarfile.REGTYPE),
    "zip-too-many-members": _too_many,
    "tar-too-many-members": _too_many_tar,
    "zip-too-big": _too_big,
    "tar-too-big": _too_big_tar,
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_archive_refused(tmp_path: Path, case: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    archive, member, limits = UNSAFE[case](src / "evil", tmp_path)
    staging = tmp_path / "stage"
    before = listing(tmp_path)

    with pytest.raises(UnsafeArchiveError) as exc:
        stage_source(archive, staging, limits)

    msg = str(exc.value)
    assert str(archive.resolve()) in msg
    assert repr(member) in msg
    assert isinstance(exc.value, DataError) and exc.value.exit_code == 3
    # Nothing outside the staging dir; inside it only the lock file (no staged or temp dir).
    assert listing(tmp_path, exclude=staging) == before
    entries = staged_entries(staging)
    assert len(entries) == 1 and entries[0].endswith(".lock"), entries
    assert not list(tmp_path.rglob("*evil.txt"))
    assert not (tmp_path / "ok.txt").exists()


def test_zip_with_lying_size_header_refused(tmp_path: Path) -> None:
    """Central and local headers claim 10 bytes for a 100 kB member: refused, nothing left."""
    archive = tmp_path / "liar.zip"
    payload = os.urandom(100_000)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("bomb.bin", payload)
    raw = bytearray(archive.read_bytes())
    local = raw.find(b"PK\x03\x04")
    central = raw.rfind(b"PK\x01\x02")
    assert struct.unpack_from("<I", raw, local + 22)[0] == len(payload)
    assert struct.unpack_from("<I", raw, central + 24)[0] == len(payload)
    struct.pack_into("<I", raw, local + 22, 10)
    struct.pack_into("<I", raw, central + 24, 10)
    archive.write_bytes(bytes(raw))
    staging = tmp_path / "stage"

    with pytest.raises(DataError, match="liar.zip"):
        stage_source(archive, staging, ArchiveLimits(max_bytes=1000))
    assert [n for n in staged_entries(staging) if not n.endswith(".lock")] == []
    assert not list(tmp_path.rglob("bomb.bin"))


def test_byte_budget_stops_member_longer_than_declared(tmp_path: Path) -> None:
    """zipfile/tarfile already cap reads at the declared size; the writer guard is the backstop."""
    from busi.data.archives import _BudgetWriter, _Member

    member = _Member("bomb.bin", ("bomb.bin",), False, 10, zipfile.ZipInfo("bomb.bin"))
    sink = io.BytesIO()
    writer = _BudgetWriter(sink, tmp_path / "x.zip", member, remaining=1000, limit=1000)
    with pytest.raises(UnsafeArchiveError, match="'bomb.bin'.*declared 10 bytes"):
        shutil.copyfileobj(io.BytesIO(b"A" * 100), writer, 8)
    assert sink.getvalue() == b"A" * 8  # stopped at the first chunk past the declared size
    writer = _BudgetWriter(io.BytesIO(), tmp_path / "x.zip", member, remaining=5, limit=1000)
    with pytest.raises(UnsafeArchiveError, match="limit of 1000"):
        writer.write(b"123456")


# --------------------------------------------------------------------------- concurrency

_CHILD = """
import logging, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(process)d %(message)s")
from busi.data.staging import stage_source
start = float(sys.argv[3])
while time.time() < start:
    time.sleep(0.002)
print(stage_source(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.integration
def test_concurrent_staging_two_processes(tmp_path: Path) -> None:
    files = {f"Dataset_BUSI_with_GT/benign/benign ({i}).png": os.urandom(256 * 1024) for i in range(20)}
    archive = make_zip(tmp_path / "busi.zip", files)  # ~5 MB, incompressible
    staging = tmp_path / "stage"
    pythonpath = [str(REPO_ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(pythonpath))
    start = time.time() + 1.5
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(archive), str(staging), repr(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=60) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
    paths = {out.strip() for out, _ in results}
    assert len(paths) == 1
    staged = Path(paths.pop())
    assert_tree(staged, files)
    assert (staged / MARKER_NAME).exists()
    # Exactly one process unpacked; the other waited for the lock and reused the result.
    assert sum(err.count("busi staging: unpacking") for _, err in results) == 1
    dirs = [p for p in staging.iterdir() if p.is_dir()]
    assert dirs == [staged]
    assert not [p for p in staging.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


# --------------------------------------------------------------------------- real sample


def test_busi_sample_zip(tmp_path: Path) -> None:
    if not SAMPLE_ZIP.is_file():
        pytest.skip("../shared/data/busi-sample.zip not present (only in the project's CI workspace)")
    out = stage_source(SAMPLE_ZIP, tmp_path / "stage")
    for cls in ("benign", "malignant", "normal"):
        folder = out / "Dataset_BUSI_with_GT" / cls
        assert folder.is_dir(), folder
        assert any(folder.glob("*.png"))



@pytest.mark.integration
def test_a_killed_unpack_of_another_archive_is_cleaned_once_no_one_holds_its_lock(tmp_path: Path) -> None:
    staging = tmp_path / "stage"
    staging.mkdir()
    orphan = staging / ".other-0123456789ab.x1y2z3w4.tmp"  # a killed unpack of another archive
    orphan.mkdir()
    (orphan / "big.bin").write_bytes(b"x" * 1000)
    live = staging / ".busy-0123456789ab.x2y3z4w5.tmp"  # another archive being unpacked right now
    live.mkdir()
    from busi.runtime.locks import exclusive_lock

    with exclusive_lock(staging / "busy-0123456789ab.lock", "test"):
        out = stage_source(make_zip(tmp_path / "busi.zip", FILES), staging)
        assert not orphan.exists() and live.exists()
    assert_tree(out, FILES)


def test_a_high_compression_ratio_is_refused_before_the_disk_fills(tmp_path: Path) -> None:
    # 80 MiB of zeros compress to ~80 KB: ratio ~1000, over the default 100 (and the 64 MiB floor)
    archive = tmp_path / "zeros.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("normal/zeros.png", "w") as fh:
            for _ in range(80):
                fh.write(bytes(1024 * 1024))
    assert archive.stat().st_size < 1024 * 1024
    staging = tmp_path / "stage"
    with pytest.raises(UnsafeArchiveError, match=r"max_archive_ratio"):
        stage_source(archive, staging)
    assert [n for n in staged_entries(staging) if not n.endswith(".lock")] == []
    # a genuine archive of that kind stages with the ratio raised
    out = stage_source(archive, staging, ArchiveLimits(max_ratio=10_000))
    assert (out / "normal" / "zeros.png").stat().st_size == 80 * 1024 * 1024


def test_archive_limits_come_from_the_job_for_training_and_prediction() -> None:
    from busi.config.load import load_config, load_predict_config

    cfg = load_config(None, ["data.source=x", "output.dir=y", "data.max_archive_members=7", "data.max_archive_ratio=3"])
    assert ArchiveLimits.from_config(cfg.data) == ArchiveLimits(max_members=7, max_ratio=3)
    pcfg = load_predict_config(None, ["predict.max_archive_members=9"], base={"predict": {"model": "m", "inputs": ["i"]}})
    assert ArchiveLimits.from_config(pcfg.predict) == ArchiveLimits(max_members=9)
    assert ArchiveLimits().max_members == 200_000  # one default: the config's
