"""The run directory's writers: atomic files and folders, primary-only writes, CSV text."""

from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path

import pytest

from busi.artifacts import RUN_FILES, RunDir, atomic_write_dir, atomic_write_text, csv_text, publish_dir, utc_now


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

    from busi.artifacts import atomic_write_with

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
