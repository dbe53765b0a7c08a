"""The prediction CSV's merge: shards found beside the output, checked against their markers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from busi.errors import DataError
from busi.predictions import done_marker, merge_shards, prediction_columns

CLASSES = ("normal", "benign", "malignant")


def _shard(output: Path, index: int, count: int, paths: list[str], marker: bool = True) -> Path:
    part = output.with_name(f"{output.stem}.part-{index:05d}-of-{count:05d}{output.suffix}")
    with part.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(prediction_columns(CLASSES))
        for p in paths:
            w.writerow([p, "benign", 1, "0.1", "0.8", "0.1", ""])
    if marker:
        done_marker(part).write_text(json.dumps({"rows": len(paths)}))
    return part


@pytest.mark.parametrize("name", ["preds.csv", "br[1].csv", "a*b?.csv"])
def test_merge_joins_every_shard_in_natural_order_whatever_the_name(tmp_path: Path, name: str) -> None:
    output = tmp_path / name
    _shard(output, 0, 2, ["x (10).png", "x (2).png"])
    _shard(output, 1, 2, ["x (1).png"])
    assert merge_shards(output) == 3
    with output.open(newline="") as fh:
        assert [r["path"] for r in csv.DictReader(fh)] == ["x (1).png", "x (2).png", "x (10).png"]


def test_merge_names_every_missing_or_incomplete_shard(tmp_path: Path) -> None:
    output = tmp_path / "p.csv"
    _shard(output, 0, 3, ["a.png"])
    _shard(output, 2, 3, ["c.png"], marker=False)
    with pytest.raises(DataError, match=r"p.part-00001-of-00003.csv: missing.*p.part-00002-of-00003.csv: incomplete"):
        merge_shards(output)
    assert not output.exists()
