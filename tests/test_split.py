"""Tests for busi.data.split: stratified, group-aware, seeded splits and splits.csv files."""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from busi.data.dedupe import group_duplicates
from busi.data.scan import Sample
from busi.data.split import SPLITS_COLUMNS, SplitRow, read_splits_file, split_groups
from busi.errors import DataError
from busi.files.text import csv_text

CLASSES = ("normal", "benign", "malignant")
FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def make_samples(per_class: dict[str, int], group_size: int = 1) -> list[Sample]:
    """Samples whose sha256 repeats every ``group_size`` images within a class, so exact
    de-duplication forms groups of that size."""
    out = []
    for index, label in enumerate(CLASSES):
        for n in range(1, per_class.get(label, 0) + 1):
            out.append(
                Sample(
                    path=f"{label}/{label} ({n}).png",
                    label=label,
                    label_index=index,
                    masks=(),
                    width=10,
                    height=10,
                    mode="L",
                    sha256=f"{label}-{(n - 1) // group_size}",
                    phash=n,
                )
            )
    return out


def assignment(rows: list[SplitRow]) -> dict[str, str]:
    return {r.path: r.split for r in rows}


# ---------------------------------------------------------------------- split


def test_same_seed_same_rows_different_seed_differs() -> None:
    samples = make_samples({"normal": 40, "benign": 50, "malignant": 30}, group_size=2)
    groups = group_duplicates(samples, "exact")
    a = split_groups(samples, groups, FRACTIONS, seed=1)
    b = split_groups(samples, groups, FRACTIONS, seed=1)
    assert a == b
    c = split_groups(samples, groups, FRACTIONS, seed=2)
    assert assignment(a) != assignment(c)
    assert [r.path for r in a] == [s.path for s in samples]  # rows come in sample order


def test_fractions_respected_per_class() -> None:
    samples = make_samples({"normal": 100, "benign": 200, "malignant": 60})
    rows = split_groups(samples, group_duplicates(samples, "none"), FRACTIONS, seed=3)
    per = Counter((r.label, r.split) for r in rows)
    for label, n in (("normal", 100), ("benign", 200), ("malignant", 60)):
        for split, frac in FRACTIONS.items():
            assert abs(per[(label, split)] - frac * n) <= 1, (label, split, per)
        assert sum(per[(label, s)] for s in FRACTIONS) == n


def test_zero_fraction_split_is_empty() -> None:
    samples = make_samples({"normal": 20, "benign": 20, "malignant": 20})
    rows = split_groups(samples, group_duplicates(samples, "none"), {"train": 0.8, "val": 0.2, "test": 0.0}, seed=0)
    assert {r.split for r in rows} == {"train", "val"}
    assert Counter(r.split for r in rows) == {"train": 48, "val": 12}


def test_groups_never_straddle_splits() -> None:
    samples = make_samples({"normal": 60, "benign": 90, "malignant": 45}, group_size=5)
    groups = group_duplicates(samples, "exact")
    assert all(len(g.members) == 5 for g in groups)
    for seed in range(5):
        rows = split_groups(samples, groups, FRACTIONS, seed=seed)
        splits_of = defaultdict(set)
        for r in rows:
            splits_of[r.group].add(r.split)
        assert len(splits_of) == len(groups)
        assert all(len(s) == 1 for s in splits_of.values())
        assert {r.split for r in rows} == set(FRACTIONS)
        by_group = {g.id: {samples[i].path for i in g.members} for g in groups}
        for gid, paths in by_group.items():
            assert {r.path for r in rows if r.group == gid} == paths


def test_conflicting_group_dropped_or_kept_by_majority() -> None:
    samples = make_samples({"normal": 10, "benign": 10, "malignant": 10})
    # make malignant (1) and (2) exact copies of benign (1): a 3-member conflict, majority malignant
    copies = {"benign/benign (1).png", "malignant/malignant (1).png", "malignant/malignant (2).png"}
    samples = [dataclasses.replace(s, sha256="dup") if s.path in copies else s for s in samples]
    groups = group_duplicates(samples, "exact")
    conflict = [g for g in groups if g.conflict]
    assert len(conflict) == 1 and conflict[0].labels == ("benign", "malignant")
    dropped = split_groups(samples, groups, FRACTIONS, seed=0)
    assert len(dropped) == 27
    assert "benign/benign (1).png" not in assignment(dropped)
    kept = split_groups(samples, groups, FRACTIONS, seed=0, drop_conflicts=False)
    assert len(kept) == 30
    in_conflict = [r for r in kept if r.group == conflict[0].id]
    assert len({r.split for r in in_conflict}) == 1
    assert sorted(r.label for r in in_conflict) == ["benign", "malignant", "malignant"]


# ------------------------------------------------------------------ splits.csv


def write_rows(path: Path, rows: list[SplitRow]) -> Path:
    path.write_text(csv_text(SPLITS_COLUMNS, ([r.path, r.label, r.group, r.split] for r in rows)))
    return path


def test_read_splits_file_round_trip(tmp_path: Path) -> None:
    samples = make_samples({"normal": 12, "benign": 15, "malignant": 9}, group_size=3)
    rows = split_groups(samples, group_duplicates(samples, "exact"), FRACTIONS, seed=4)
    path = write_rows(tmp_path / "splits.csv", rows)
    back, left_out = read_splits_file(path, samples)
    assert back == rows
    assert left_out == []
    # rows written in another order come back in sample order; unlisted images are reported
    write_rows(path, list(reversed(rows[3:])))
    back, left_out = read_splits_file(path, samples)
    assert back == rows[3:]
    assert left_out == [s.path for s in samples[:3]]


def test_read_splits_file_empty_group_defaults_to_path(tmp_path: Path) -> None:
    samples = make_samples({"normal": 2, "benign": 2, "malignant": 2})
    path = tmp_path / "s.csv"
    path.write_text("path,label,group,split\nnormal/normal (1).png,normal,,train\n")
    back, left_out = read_splits_file(path, samples)
    assert back == [SplitRow("normal/normal (1).png", "normal", "normal/normal (1).png", "train")]
    assert len(left_out) == 5


@pytest.mark.parametrize(
    "line, message",
    [
        ("benign/benign (99).png,benign,g1,train", "benign/benign (99).png is not an image of the scanned dataset; check data.source"),
        ("benign/benign (1).png,malignant,g1,train", "benign/benign (1).png is labelled 'malignant' here but 'benign' in the dataset"),
        ("benign/benign (1).png,benign,g1,training", "split 'training' for benign/benign (1).png; expected one of train, val, test"),
        ("normal/normal (1).png,normal,g0,train", "normal/normal (1).png is listed twice"),
    ],
)
def test_read_splits_file_errors_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    samples = make_samples({"normal": 2, "benign": 2, "malignant": 2})
    path = tmp_path / "splits.csv"
    path.write_text("path,label,group,split\nnormal/normal (1).png,normal,g0,train\n" + line + "\n")
    with pytest.raises(DataError) as info:
        read_splits_file(path, samples)
    assert str(info.value) == f"{path}:3: {message}"
    assert (info.value.path, info.value.line, info.value.reason) == (str(path), 3, message)  # fields, not a message
    assert info.value.exit_code == 3


def test_read_splits_file_missing_or_bad_header(tmp_path: Path) -> None:
    samples = make_samples({"normal": 1, "benign": 1, "malignant": 1})
    with pytest.raises(DataError, match="data.splits file not found"):
        read_splits_file(tmp_path / "nope.csv", samples)
    path = tmp_path / "s.csv"
    path.write_text("path,label,split\nnormal/normal (1).png,normal,train\n")
    with pytest.raises(DataError) as info:
        read_splits_file(path, samples)
    assert str(info.value).startswith(f"{path}: data.splits file lacks column(s) ['group']")


def test_a_written_splits_csv_is_reusable_whatever_the_file_names(tmp_path: Path) -> None:
    """Names that are not UTF-8 or hold \\r, \\n, U+2028 or \\x1c: train writes splits.csv
    (busi.files.rundir), and data.splits reads it back to the same rows."""
    import os

    import numpy as np
    from PIL import Image

    from busi.data.scan import scan_dataset
    from busi.files.atomic import atomic_write_text

    odd = [b"scan\xff.png", b"a\rb.png", b"c\nd.png", "e\u2028f.png".encode(), b"g\x1ch.png", b"plain.png"]
    rng = np.random.default_rng(0)
    for label in CLASSES:
        folder = os.path.join(os.fsencode(tmp_path), label.encode())
        os.makedirs(folder)
        for n in odd:
            Image.fromarray(rng.integers(0, 255, (16, 16), np.uint8)).save(os.path.join(folder, n), format="PNG")
    samples = scan_dataset(tmp_path, CLASSES).samples
    assert len(samples) == 3 * len(odd)
    rows = split_groups(samples, group_duplicates(samples, "none"), FRACTIONS, seed=1)
    path = atomic_write_text(tmp_path / "splits.csv", csv_text(SPLITS_COLUMNS, ([r.path, r.label, r.group, r.split] for r in rows)))
    back, left_out = read_splits_file(path, samples)
    assert back == rows and left_out == []
