"""Tests for busi.data.dedupe (and its use in busi.data.prepare): real files, real hashes."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from busi.config.load import load_config
from busi.data.dedupe import group_duplicates
from busi.data.prepare import prepare_data
from busi.data.scan import scan_dataset
from busi.data.staging import stage_source

CLASSES = ("normal", "benign", "malignant")


def smooth_image(seed: int, size: int = 128) -> Image.Image:
    """A smooth random picture: distinct seeds are far apart in perceptual hash."""
    rng = np.random.default_rng(seed)
    small = (rng.random((6, 6)) * 255).astype(np.uint8)
    return Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)


def save(im: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kw)
    return path


@pytest.fixture
def dup_dataset(tmp_path: Path) -> Path:
    """normal 1-4, benign 1-4, malignant 1-4, all distinct, plus:
    benign (5) = exact copy of benign (1); benign (6) = resized JPEG re-export of benign (2);
    malignant (5) = exact copy of normal (3) (a cross-class duplicate)."""
    root = tmp_path / "ds"
    seed = 0
    for c in CLASSES:
        for n in range(1, 5):
            seed += 1
            save(smooth_image(seed), root / c / f"{c} ({n}).png")
    shutil.copyfile(root / "benign" / "benign (1).png", root / "benign" / "benign (5).png")
    with Image.open(root / "benign" / "benign (2).png") as im:
        small = im.resize((96, 96), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=70)
    (root / "benign" / "benign (6).jpg").write_bytes(buf.getvalue())
    shutil.copyfile(root / "normal" / "normal (3).png", root / "malignant" / "malignant (5).png")
    return root


def _groups_by_path(samples, groups) -> list[list[str]]:
    return [[samples[i].path for i in g.members] for g in groups if len(g.members) > 1]


def test_exact_groups_copies_only(dup_dataset: Path) -> None:
    scan = scan_dataset(dup_dataset, CLASSES)
    groups = group_duplicates(scan.samples, "exact")
    assert _groups_by_path(scan.samples, groups) == [
        ["normal/normal (3).png", "malignant/malignant (5).png"],
        ["benign/benign (1).png", "benign/benign (5).png"],
    ]
    # a partition of all samples, members ascending, stable ids
    members = sorted(i for g in groups for i in g.members)
    assert members == list(range(len(scan.samples)))
    for g in groups:
        assert list(g.members) == sorted(g.members)
        assert g.id == f"g{g.members[0]:05d}"


def test_near_also_groups_recompressed_copy(dup_dataset: Path) -> None:
    scan = scan_dataset(dup_dataset, CLASSES)
    near = _groups_by_path(scan.samples, group_duplicates(scan.samples, "near", threshold=6))
    assert ["benign/benign (2).png", "benign/benign (6).jpg"] in near
    assert ["benign/benign (1).png", "benign/benign (5).png"] in near
    assert ["normal/normal (3).png", "malignant/malignant (5).png"] in near
    assert len(near) == 3
    exact = _groups_by_path(scan.samples, group_duplicates(scan.samples, "exact"))
    assert ["benign/benign (2).png", "benign/benign (6).jpg"] not in exact
    # threshold 0 still groups identical hashes; a huge threshold groups everything
    everything = group_duplicates(scan.samples, "near", threshold=64)
    assert len(everything) == 1


def test_none_gives_singletons(dup_dataset: Path) -> None:
    scan = scan_dataset(dup_dataset, CLASSES)
    groups = group_duplicates(scan.samples, "none")
    assert [g.members for g in groups] == [(i,) for i in range(len(scan.samples))]
    assert not any(g.conflict for g in groups)


def test_cross_class_duplicate_is_conflict(dup_dataset: Path) -> None:
    scan = scan_dataset(dup_dataset, CLASSES)
    groups = group_duplicates(scan.samples, "near")
    conflicts = [g for g in groups if g.conflict]
    assert len(conflicts) == 1
    assert conflicts[0].labels == ("normal", "malignant")
    assert [scan.samples[i].path for i in conflicts[0].members] == [
        "normal/normal (3).png",
        "malignant/malignant (5).png",
    ]
    same_class = [g for g in groups if len(g.members) > 1 and not g.conflict]
    assert all(len(g.labels) == 1 for g in same_class) and len(same_class) == 2


def test_deterministic(dup_dataset: Path) -> None:
    scan = scan_dataset(dup_dataset, CLASSES)
    assert group_duplicates(scan.samples, "near") == group_duplicates(scan.samples, "near")
    assert group_duplicates([], "near") == []


def test_prepare_report_on_built_dataset(dup_dataset: Path, tmp_path: Path) -> None:
    cfg = load_config(None, base={"data": {"source": str(dup_dataset)}, "output": {"dir": "o"}}, env={})
    prepared = prepare_data(cfg.data, seed=0)
    r = prepared.report
    assert r["counts"]["images"] == 15
    assert r["counts"]["used"] == 13  # the two conflicting images are dropped
    kinds = {tuple(g["members"]): g["exact"] for g in r["duplicates"]["groups"]}
    assert kinds[("benign/benign (2).png", "benign/benign (6).jpg")] is False
    assert kinds[("benign/benign (1).png", "benign/benign (5).png")] is True
    assert r["excluded"]["label_conflicts"] == 2


# ---------------------------------------------------------------- real sample


@pytest.fixture(scope="module")
def sample_stage(sample_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    stage = tmp_path_factory.mktemp("stage") / "stage"
    stage_source(sample_zip, stage)
    return stage


def _prepare(sample_zip: Path, stage: Path, **data):
    base = {"data": {"source": str(sample_zip), "staging_dir": str(stage), **data}, "output": {"dir": "o"}}
    cfg = load_config(None, base=base, env={})
    return prepare_data(cfg.data, cfg.runtime.seed)


CONFLICT = ["benign/benign (433).png", "malignant/malignant (145).png"]


@pytest.fixture(scope="module")
def sample_dropped(sample_zip: Path, sample_stage: Path):
    return _prepare(sample_zip, sample_stage)


def test_real_sample_conflict_dropped(sample_dropped) -> None:
    prepared = sample_dropped
    samples = prepared.scan.samples
    groups_by_paths = [[samples[i].path for i in g.members] for g in prepared.groups]
    assert CONFLICT in groups_by_paths
    conflicts = prepared.report["label_conflicts"]
    assert [c["members"] for c in conflicts] == [CONFLICT]
    assert conflicts[0]["labels"] == ["benign", "malignant"]
    assert conflicts[0]["action"] == "dropped"
    assert conflicts[0]["exact"] is True
    row_paths = {r.path for r in prepared.rows}
    assert not set(CONFLICT) & row_paths
    assert len(prepared.rows) == 53
    assert prepared.report["counts"]["used"] == 53
    assert prepared.report["excluded"]["label_conflicts"] == 2


def test_real_sample_conflict_kept(sample_zip: Path, sample_stage: Path, sample_dropped) -> None:
    prepared = _prepare(sample_zip, sample_stage, conflicts="keep")
    assert [c["action"] for c in prepared.report["label_conflicts"]] == ["kept"]
    rows = {r.path: r for r in prepared.rows}
    assert set(CONFLICT) <= set(rows)
    assert len(prepared.rows) == 55
    # kept together: one group, one split, each row keeps its own label
    a, b = rows[CONFLICT[0]], rows[CONFLICT[1]]
    assert a.group == b.group and a.split == b.split
    assert (a.label, b.label) == ("benign", "malignant")
    assert prepared.report["excluded"]["label_conflicts"] == 0
    # staging was reused, not redone: same root as the default run
    assert prepared.root == sample_dropped.root
