"""busi.train.cv and busi.evaluate.crossval: folds over duplicate groups, each fold a complete run, and the report over them."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import CLASSES, REPO, run_main

from busi.data.folds import FoldRow, assign_folds, fold_splits
from busi.data.split import SplitRow
from busi.errors import ConfigError, DataError


def _rows(n_groups: int = 30, seed: int = 0) -> list[SplitRow]:
    """Groups of 1-3 images, labels by group, as the duplicate grouping gives them."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        label = CLASSES[g % 3]
        for m in range(int(rng.integers(1, 4))):
            rows.append(SplitRow(f"{label}/g{g}-{m}.png", label, f"g{g}", "train"))
    return rows


def test_folds_keep_groups_whole_and_stratify() -> None:
    rows = _rows()
    folds = assign_folds(rows, 5, seed=3)
    assert [f.path for f in folds] == [r.path for r in rows]
    by_group: dict[str, set[int]] = {}
    for f in folds:
        by_group.setdefault(f.group, set()).add(f.fold)
    assert all(len(v) == 1 for v in by_group.values()), "a duplicate group straddles folds"
    assert {f.fold for f in folds} == set(range(5))
    for i in range(5):  # every class in every fold (10 groups per class over 5 folds)
        assert {f.label for f in folds if f.fold == i} == set(CLASSES)
    assert assign_folds(rows, 5, seed=3) == folds and assign_folds(rows, 5, seed=4) != folds
    with pytest.raises(ConfigError, match="--folds"):
        assign_folds(rows, 1, seed=0)
    with pytest.raises(DataError, match="cannot fill"):
        assign_folds(rows[:2], 5, seed=0)
    rare = [r for r in rows if r.label != "normal"] + [r for r in rows if r.label == "normal"][:2]
    with pytest.raises(DataError, match="smallest class has 2 image"):
        assign_folds(rare, 3, seed=0)


def test_a_folds_validation_split_is_carved_from_the_other_folds_by_group() -> None:
    folds = assign_folds(_rows(60), 4, seed=0)
    for i in range(4):
        split = fold_splits(folds, i, 0.15 / 0.85, seed=0)
        test = {r.path for r in split if r.split == "test"}
        assert test == {f.path for f in folds if f.fold == i}
        groups = {s: {r.group for r in split if r.split == s} for s in ("train", "val", "test")}
        assert not groups["train"] & groups["val"] and not groups["val"] & groups["test"]
        n = Counter(r.split for r in split)
        assert 0.1 < n["val"] / (n["val"] + n["train"]) < 0.3
    none = fold_splits(folds, 0, 0.0, seed=0)
    assert "val" not in {r.split for r in none}


def test_folds_csv_round_trips(tmp_path: Path) -> None:
    from busi.data.folds import folds_text, read_folds

    folds = [FoldRow("benign/a\u2028b.png", "benign", "g1", 0), FoldRow("normal/c,d.png", "normal", "g2", 1)]
    (tmp_path / "folds.csv").write_text(folds_text(folds), encoding="utf-8")
    assert read_folds(tmp_path / "folds.csv") == folds
    (tmp_path / "bad.csv").write_text("path,label\nx,y\n")
    with pytest.raises(DataError, match="not a busi folds file"):
        read_folds(tmp_path / "bad.csv")


@pytest.mark.integration
def test_cv_runs_folds_resumes_and_reports(synth_data: Any, tmp_path: Path) -> None:
    """Fold 0 alone (as an array task would), a report that names the missing folds, then the
    rest in turn (fold 0 skipped), and the report: every image predicted exactly once."""
    data = tmp_path / "data"
    shutil.copytree(synth_data(5, 32, 0), data)  # a copy: the test adds a duplicate to it
    shutil.copy2(data / "benign" / "benign (1).png", data / "benign" / "benign copy.png")  # a duplicate pair
    out = tmp_path / "cv"
    # ResNet50, not conftest's SMALL: the fold models must give each image its own probabilities
    # (their mean, spread and mirror image are checked below), and a MobileNet trained from random
    # weights for a few steps gives every image the same ones (its BatchNorm statistics are still
    # the initial ones). No SavedModel, INT8 model or Grad-CAM scoring: nothing here reads them
    # (tests/test_job.py, tests/test_quantize.py, tests/test_explain.py do).
    sets = ["--set", f"data.source={data}", "--set", f"output.dir={out}", "--set", "data.image_size=32",
            "--set", "train.finetune.epochs=0", "--set", "runtime.checkpoint_minutes=0", "--set", "train.quantize=none",
            "--set", "train.gradcam_masks=false", "--set", "output.saved_model=false"]
    job = str(REPO / "job" / "demo.yaml")
    p = run_main("cv", job, "--folds", "3", *sets, env={"SLURM_ARRAY_TASK_ID": "0"})
    assert p.returncode == 0, p.stderr[-3000:]
    with (out / "folds.csv").open(newline="") as fh:
        folds = list(csv.DictReader(fh))
    assert len(folds) == 16 and {f["fold"] for f in folds} == {"0", "1", "2"}
    pair = {f["fold"] for f in folds if f["path"] in ("benign/benign (1).png", "benign/benign copy.png")}
    assert len(pair) == 1, "the duplicate pair is in two folds"
    m0 = json.loads((out / "fold-0" / "metrics.json").read_text())
    assert m0["n"] == sum(f["fold"] == "0" for f in folds)
    r = run_main("cv-report", str(out))
    assert r.returncode == 3 and "fold(s) 1, 2 of 3 not completed" in r.stderr and "Traceback" not in r.stderr
    p = run_main("cv", job, "--folds", "4", *sets)
    assert p.returncode == 2 and "holds 3 folds" in p.stderr
    p = run_main("cv", job, "--folds", "3", *sets)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "fold 0 of 3 already completed" in p.stderr
    r = run_main("cv-report", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "3 folds, 16 images out of fold" in r.stdout and "accuracy" in r.stdout
    with (out / "oof.csv").open(newline="") as fh:
        oof = list(csv.DictReader(fh))
    assert sorted(o["path"] for o in oof) == sorted(f["path"] for f in folds)  # each image once
    assert all(o["fold"] == f["fold"] for o, f in zip(sorted(oof, key=lambda o: o["path"]),
                                                         sorted(folds, key=lambda f: f["path"])))
    report = json.loads((out / "cv-metrics.json").read_text())
    acc = report["across_folds"]["accuracy"]
    assert acc["folds"] == 3 and len(acc["values"]) == 3 and acc["ci95"][0] <= acc["mean"] <= acc["ci95"][1]
    assert report["pooled_out_of_fold"]["n"] == 16 and report["pooled_out_of_fold"]["ci95"]["accuracy"] is not None
    for name in ("oof_confusion_matrix", "oof_roc", "oof_calibration"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
    page = (out / "report.html").read_text()
    assert "Across 3 folds" in page and f"{acc['mean']:.3f}" in page and "Pooled out of fold" in page
    _the_folds_predict_together(out, data, tmp_path)


def _predict(model: Path, data: Path, csv_out: Path, *extra: str) -> dict[str, dict[str, str]]:
    r = run_main("predict", "--model", str(model), "--input", str(data), "--output", str(csv_out),
                 "--engine", "openvino", "--precision", "float32", *extra)
    assert r.returncode == 0, r.stderr[-2000:]
    with csv_out.open(newline="") as fh:
        return {row["path"]: row for row in csv.DictReader(fh)}


def _the_folds_predict_together(out: Path, data: Path, tmp_path: Path) -> None:
    """``predict --model CV_DIR``: the mean of the fold models' probabilities, ``fold_sd`` their
    spread on the label; ``--tta flip`` the mean over each image and its mirror image; Grad-CAM
    of an ensemble refused by name (exit 2)."""
    folds = [_predict(out / f"fold-{i}", data, tmp_path / f"fold-{i}.csv") for i in range(3)]
    together = _predict(out, data, tmp_path / "ensemble.csv")
    assert json.loads((tmp_path / "ensemble.csv.done.json").read_text())["model"] == str(out)
    classes = ("normal", "benign", "malignant")
    for path, row in together.items():
        per = np.array([[float(f[path][f"prob_{c}"]) for c in classes] for f in folds])
        mean = np.array([float(row[f"prob_{c}"]) for c in classes])
        np.testing.assert_allclose(mean, per.mean(axis=0), atol=2e-6)
        assert row["label"] == classes[int(mean.argmax())]
        assert float(row["fold_sd"]) == pytest.approx(per[:, mean.argmax()].std(), abs=2e-6)
    assert len({row["fold_sd"] for row in together.values()}) > 1
    flipped = _predict(out, data, tmp_path / "tta.csv", "--tta", "flip")
    assert flipped.keys() == together.keys() and any(flipped[p]["prob_benign"] != together[p]["prob_benign"]
                                                     for p in together)
    r = run_main("predict", "--model", str(out), "--input", str(data), "--output", str(tmp_path / "cam.csv"),
                 "--gradcam", str(tmp_path / "cams"))
    assert r.returncode == 2 and "a cross-validation (3 fold models)" in r.stderr and "Traceback" not in r.stderr


def test_across_folds_is_a_t_interval_clipped_to_the_metric_range() -> None:
    from busi.evaluate.crossval import across_folds

    s = across_folds([0.70, 0.75, 0.80, 0.72, 0.78])
    # mean 0.75, sd 0.04123; t(0.975, 4) = 2.776: half width 2.776 x 0.04123 / sqrt(5) = 0.0512
    assert s["mean"] == pytest.approx(0.75) and s["sd"] == pytest.approx(0.04123, abs=1e-4)
    assert s["ci95"] == pytest.approx([0.75 - 0.0512, 0.75 + 0.0512], abs=2e-4)
    wide = across_folds([0.167, 0.311, 0.437])  # three folds: the t-interval would reach below 0
    assert wide["ci95"][0] == 0.0 and wide["ci95"][1] < 1
    assert across_folds([0.5])["ci95"] is None and across_folds([None, None])["mean"] is None
