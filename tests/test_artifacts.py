"""The run directory's writers: atomic files and folders, primary-only writes, CSV text."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from busi.errors import ConfigError
from busi.files.atomic import atomic_write_dir, atomic_write_text, publish_dir
from busi.files.rundir import RUN_FILES, RunDir
from busi.files.text import csv_text
from busi.runtime.clock import utc_now


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_file_is_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "a" / "metrics.json"
    atomic_write_text(target, "old\n")
    atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n"

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")

    from busi.files.atomic import atomic_write_with

    with pytest.raises(RuntimeError):
        atomic_write_with(target, fail)
    assert target.read_text() == "new\n" and _names(target.parent) == ["metrics.json"]  # no temp file left


def test_a_folder_is_swapped_in_by_rename(tmp_path: Path) -> None:
    target = tmp_path / "saved_model"
    atomic_write_dir(target, lambda p: (p / "v1.pb").write_text("1"))
    atomic_write_dir(target, lambda p: (p / "v2.pb").write_text("2"))
    assert _names(target) == ["v2.pb"] and _names(tmp_path) == ["saved_model"]

    def fail(p: Path) -> None:
        (p / "partial.pb").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write_dir(target, fail)
    assert _names(target) == ["v2.pb"] and _names(tmp_path) == ["saved_model"]


def test_publish_dir_replaces_a_folder_a_file_or_nothing(tmp_path: Path) -> None:
    for existing in ("folder", "file", None):
        final = tmp_path / f"final-{existing}"
        if existing == "folder":
            final.mkdir()
            (final / "old.txt").write_text("old")
        elif existing == "file":
            final.write_text("a file in the way")
        tmp = tmp_path / f".tmp-{existing}"
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
        publish_dir(tmp, final)
        assert _names(final) == ["new.txt"] and not tmp.exists()
    assert not [p for p in tmp_path.iterdir() if ".old-" in p.name]  # the aside copies are gone


def test_only_the_primary_rank_writes(tmp_path: Path) -> None:
    other = RunDir(tmp_path / "run", primary=False)
    assert other.write_json("manifest", {"status": "running"}) is None
    assert other.write_csv("history", ["a"], [[1]]) is None
    assert other.write_dir_with("saved_model", lambda p: (p / "x").write_text("x")) is None
    assert not (tmp_path / "run").exists()
    primary = RunDir(tmp_path / "run")
    assert primary.write_json("manifest", {"status": "running"}) == tmp_path / "run" / RUN_FILES["manifest"]
    assert other.read_json("manifest") == {"status": "running"}  # every rank may read


def test_csv_text_round_trips_awkward_values() -> None:
    rows = [["a,b.png", 'say "hi"', 1], {"path": "line\nbreak.png", "label": "benign", "n": 2}]
    text = csv_text(["path", "label", "n"], rows)
    parsed = list(csv.reader(io.StringIO(text, newline="")))
    assert parsed == [["path", "label", "n"], ["a,b.png", 'say "hi"', "1"], ["line\nbreak.png", "benign", "2"]]


def test_utc_now_is_iso_8601_to_the_second() -> None:
    stamp = dt.datetime.fromisoformat(utc_now())
    assert stamp.tzinfo is not None and stamp.utcoffset() == dt.timedelta(0) and stamp.microsecond == 0


# ------------------------------------------------------------- text and CSV files

AWKWARD_NAMES = ["a\rb.png", "c\nd.png", "e\r\nf.png", "g\u2028h.png", "i\x1cj.png", "k\x85l.png", 'm"n,o.png',
                 os.fsdecode(b"p\xffq.png")]


def test_csv_round_trips_names_with_line_breaks_and_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    from busi.files.text import open_text, read_csv_text

    rows = [[n, i] for i, n in enumerate(AWKWARD_NAMES)]
    path = atomic_write_text(tmp_path / "x.csv", csv_text(["path", "i"], rows))
    back = read_csv_text(path.read_bytes().decode("utf-8", "surrogateescape"))
    assert back == [["path", "i"]] + [[n, str(i)] for n, i in rows]
    with open_text(path) as fh:
        assert [r[0] for r in csv.reader(fh)][1:] == AWKWARD_NAMES
    assert b"p\xffq.png" in path.read_bytes()  # the name's own bytes, not an escape


def test_files_get_the_umask_not_0600(tmp_path: Path) -> None:
    old = os.umask(0o002)
    try:
        f = atomic_write_text(tmp_path / "run" / "metrics.json", "{}\n")
        d = atomic_write_dir(tmp_path / "run" / "saved_model", lambda p: (p / "x.pb").write_text("1"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(f.stat().st_mode) == 0o664
    assert stat.S_IMODE(d.stat().st_mode) == 0o775


# ----------------------------------------------------------- claiming a run folder


def _manifest(root: Path, status: str = "completed") -> None:
    atomic_write_text(root / RUN_FILES["manifest"], json.dumps({"status": status}))


def test_claim_removes_only_busi_temp_files_of_killed_writers(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    _manifest(run.root, "interrupted")
    stale = [run.root / ".metrics.json.ab12cd_9.tmp", run.root / "model" / ".model.keras.zzzzzzzz.tmp.keras",
             run.root / "checkpoint" / ".ckpt-000002.a1b2c3d4.tmp", run.root / "model" / "saved_model.old-77-0a1b2c3d"]
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        (p.mkdir() if p.name.endswith(".tmp") and "ckpt" in p.name else p.write_text("half"))
    mine = [run.root / ".notes.tmp", run.root / "model" / "notes.txt", run.root / "keep.old-1"]
    for p in mine:
        p.write_text("user's")
    with run.claim():
        pass
    assert not any(p.exists() for p in stale)
    assert all(p.read_text() == "user's" for p in mine)


def test_claim_refuses_a_folder_busi_did_not_write_and_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    (root / "checkpoint").mkdir(parents=True)
    (root / "checkpoint" / "theirs.pt").write_text("x")
    (root / "model").mkdir()
    (root / "model" / "README.md").write_text("their notes")
    before = _tree(root)
    with pytest.raises(ConfigError, match=r"holds files busi did not write \(checkpoint, model\).*--restart"):
        with RunDir(root).claim():
            pass
    # --restart would replace model/README.md and delete checkpoint/: refused too, naming them
    with pytest.raises(ConfigError, match=r"model/README.md.*busi would replace"):
        with RunDir(root).claim(restart=True):
            pass
    assert _tree(root) == before


def test_claim_refuses_a_file_where_busi_writes_a_folder(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    _manifest(run.root, "interrupted")
    (run.root / "checkpoint").write_text("not a folder")
    for restart in (False, True):
        with pytest.raises(ConfigError, match=r"checkpoint \(not a folder\).*move it away"):
            with run.claim(restart):
                pass
    assert (run.root / "checkpoint").read_text() == "not a folder"


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A read-only folder: a read-only tmpfs mount as root (root ignores permission bits), a
    0555 folder otherwise."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
        yield ro
        ro.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True).returncode:
        pytest.skip("root without mount rights: no read-only folder to test with")
    try:
        yield ro
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_claim_of_a_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        with RunDir(tmp_path / "afile").claim():
            pass
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.system
def test_a_read_only_output_dir_or_csv_is_a_config_error(read_only_dir: Path) -> None:
    from busi.predict.output import CsvSink

    with pytest.raises(ConfigError, match="not writable"):
        with RunDir(read_only_dir).claim():
            pass
    with pytest.raises(ConfigError, match="cannot create"):
        with RunDir(read_only_dir / "run").claim():
            pass
    with pytest.raises(ConfigError, match=r"--output .*p.csv"):
        CsvSink(read_only_dir / "p.csv", ["path", "label"], resume=False)


def test_restart_clears_the_old_results_behind_a_restarting_manifest(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    _manifest(run.root)
    for key in ("model", "metrics", "plot_loss", "history"):
        atomic_write_text(run.path(key), "old")
    atomic_write_dir(run.path("saved_model"), lambda p: (p / "saved_model.pb").write_text("old"))
    (run.root / "predictions").mkdir()
    (run.root / "predictions" / "all.csv").write_text("the user's predictions")
    (run.root / "notes.txt").write_text("the user's notes")
    with run.claim(restart=True):
        assert json.loads(run.path("manifest").read_text())["status"] == "restarting"
        assert not any(run.path(k).exists() for k in ("model", "metrics", "plot_loss", "history", "saved_model"))
    assert (run.root / "predictions" / "all.csv").read_text() == "the user's predictions"
    assert (run.root / "notes.txt").read_text() == "the user's notes"
    assert not (run.root / "plots").exists()  # emptied layout folders go


def test_a_corrupt_manifest_is_named_and_restart_replaces_it(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    run.path("manifest").write_text("{not json")
    with pytest.raises(ConfigError, match=r"manifest.json is not a busi manifest.*--restart"):
        with run.claim():
            pass
    with run.claim(restart=True):
        assert json.loads(run.path("manifest").read_text())["status"] == "restarting"


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): (p.read_text() if p.is_file() else "/") for p in sorted(root.rglob("*"))
            if p.name != ".busi.lock"}
