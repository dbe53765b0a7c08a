"""Prediction inputs: folders, lists and archives expanded into one sorted list; its shards."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from busi.data.inputs import expand_inputs
from busi.errors import ConfigError, DataError
from busi.predict.shards import Shard, parse_shard, shard_from_env, shard_output_path


def _touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


def test_folders_expand_in_natural_order_without_junk_or_masks(tmp_path: Path) -> None:
    _touch(tmp_path, "scan (10).png", "scan (2).png", "sub/scan (1).png", "scan (2)_mask.png", ".DS_Store",
           ".hidden/a.png", "__MACOSX/sub/._scan.png", ".ipynb_checkpoints/x.png", "notes.txt")
    files = expand_inputs([str(tmp_path)])
    assert [Path(f.path).relative_to(tmp_path).as_posix() for f in files] == [
        "notes.txt", "scan (2).png", "scan (10).png", "sub/scan (1).png",  # a non-image gets its error row later
    ]
    assert all(f.file.is_file() for f in files)
    masks = expand_inputs([str(tmp_path)], include_masks=True)
    assert [Path(f.path).name for f in masks if "_mask" in f.path] == ["scan (2)_mask.png"]


def test_an_input_named_twice_is_one_file_and_a_missing_one_an_error(tmp_path: Path) -> None:
    _touch(tmp_path, "a.png")
    listed = tmp_path / "list.txt"
    listed.write_text("# one file, twice\na.png\n\na.png\n")
    files = expand_inputs([str(tmp_path / "a.png"), f"@{listed}"])
    assert [f.path for f in files] == [str(tmp_path / "a.png")]  # list paths are relative to the list
    with pytest.raises(DataError, match="nothing-here.png: input not found"):
        expand_inputs([str(tmp_path / "nothing-here.png")])
    with pytest.raises(DataError, match="cannot read input list"):
        expand_inputs([f"@{tmp_path / 'no-list.txt'}"])


def test_shard_selection_from_environment() -> None:
    assert shard_from_env({}) == Shard(0, 1, "none")
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "4"}) == Shard(2, 4, "slurm")
    assert shard_from_env({"AWS_BATCH_JOB_ARRAY_INDEX": "3", "AWS_BATCH_JOB_ARRAY_SIZE": "10"}) == Shard(3, 10, "aws-batch")
    assert shard_from_env({"BATCH_TASK_INDEX": "0", "BATCH_TASK_COUNT": "2"}) == Shard(0, 2, "gcp-batch")
    assert shard_from_env({"HOROVOD_RANK": "1", "HOROVOD_SIZE": "2"}) == Shard(1, 2, "horovod")
    # every launcher of busi.distributed.launchers' table, and an array job before the rank of a launch
    assert shard_from_env({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4"}) == Shard(2, 4, "mpi")
    assert shard_from_env({"PMI_RANK": "0", "PMI_SIZE": "3"}) == Shard(0, 3, "pmi")
    assert shard_from_env({"PMIX_RANK": "5", "PMIX_SIZE": "6"}) == Shard(5, 6, "pmix")
    both = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2", "PMIX_RANK": "0", "PMIX_SIZE": "4"}
    assert shard_from_env(both) == Shard(1, 2, "slurm")
    with pytest.raises(ConfigError, match="AWS_BATCH_JOB_ARRAY_SIZE"):
        shard_from_env({"AWS_BATCH_JOB_ARRAY_INDEX": "3"})
    with pytest.raises(ConfigError, match="outside"):
        shard_from_env({"BATCH_TASK_INDEX": "4", "BATCH_TASK_COUNT": "2"})
    assert parse_shard("1/3") == Shard(1, 3, "option")
    for bad in ("3/3", "x", "1/0"):
        with pytest.raises(ConfigError):
            parse_shard(bad)
    assert shard_output_path(Path("o/p.csv"), Shard(2, 8, "x")) == Path("o/p.part-00002-of-00008.csv")
    items = list(range(10))
    covered = sorted(i for k in range(3) for i in Shard(k, 3, "x").select(items))  # type: ignore[arg-type]
    assert covered == items


def test_a_list_file_with_names_that_are_not_utf8_or_have_odd_line_breaks(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    names = [b"scan\xe9.png", "a\u2028b.png".encode(), b"c\x1cd.png"]
    for n in names:
        (Path(os.fsdecode(os.path.join(os.fsencode(tmp_path / "d"), n)))).write_bytes(b"x")
    lst = tmp_path / "list.txt"
    lst.write_bytes(b"# inputs\r\n" + b"\r\n".join(b"d/" + n for n in names) + b"\r\n")
    found = expand_inputs([f"@{lst}"])
    assert sorted(os.fsencode(Path(f.path).name) for f in found) == sorted(names)
    assert all(f.file.is_file() for f in found)
