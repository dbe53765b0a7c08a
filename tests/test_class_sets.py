"""Any class set, end to end: a two-class and a five-class (BI-RADS-like) run train, evaluate,
report and predict with the class names the job file gives; the positive-vs-rest table follows
``evaluate.positive_class`` (the two-class run), and is absent without one (the five-class run)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from conftest import REPO, SMALL, run_main

# 32 px, a few epochs from random weights, conftest's SMALL model (MobileNet 0.25, no SavedModel):
# the machinery for any class set, not accuracy
TINY = ["--set", "data.image_size=32", "--set", "train.batch_size=4", "--set", "train.head.epochs=1",
        "--set", "train.finetune.epochs=1", "--set", "train.finetune.unfreeze=conv5",
        "--set", "runtime.deterministic=true", "--set", "train.quantize=none", "--set", "train.gradcam_masks=false",
        *SMALL]

FIVE = ("BI-RADS 2", "BI-RADS 3", "BI-RADS 4", "BI-RADS 5", "BI-RADS 6")


def _linked(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        os.link(f, dest / f.name)


@pytest.fixture(scope="module")
def five_classes(synth_data: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five class folders from two synthetic datasets of different seeds (hard links, masks too):
    every folder holds different images, so no duplicate group spans two classes."""
    a, b = synth_data(8, 32, 2), synth_data(8, 32, 3)
    root = tmp_path_factory.mktemp("five") / "ds"
    for name, src in zip(FIVE, (a / "normal", a / "benign", a / "malignant", b / "benign", b / "malignant")):
        _linked(src, root / name)
    return root


def _train(out: Path, data: Path, classes: tuple[str, ...], positive: str | None) -> dict[str, Any]:
    sets = ["--set", f"data.source={data}", "--set", f"output.dir={out}",
            "--set", "data.classes=" + json.dumps(list(classes)),
            "--set", f"evaluate.positive_class={json.dumps(positive)}", *TINY]
    proc = run_main("train", str(REPO / "job" / "demo.yaml"), *sets)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("case", ["two", "five"])
def test_a_class_set_trains_evaluates_reports_and_predicts(case: str, synth_data: Callable[..., Path],
                                                          five_classes: Path, tmp_path: Path) -> None:
    if case == "two":  # BUSI's folders, normal left out by data.classes; the malignant-vs-rest table
        data, classes, positive = synth_data(10, 32, 2), ("benign", "malignant"), "malignant"
    else:  # no positive class: no table (tests/test_writer.py scores BI-RADS 5 against the rest)
        data, classes, positive = five_classes, FIVE, None
    out = tmp_path / "run"
    m = _train(out, data, classes, positive)
    k = len(classes)
    assert m["classes"] == list(classes) and np.array(m["confusion_matrix"]).shape == (k, k)
    assert set(m["per_class"]) == set(classes) and m["n"] >= k
    assert json.loads((out / "model" / "labels.json").read_text()) == {str(i): c for i, c in enumerate(classes)}
    point = json.loads((out / "model" / "thresholds.json").read_text())
    card = (out / "model" / "README.md").read_text()
    page = (out / "report.html").read_text()
    assert point["positive_class"] == positive
    if positive is None:
        assert m["positive_vs_rest"] is None and point["threshold"] is None
        assert "vs the rest" not in card and "vs the rest" not in page
    else:
        assert m["positive_vs_rest"]["positive_class"] == positive
        assert f"{positive} vs the rest".lower() in card.lower() and f"{positive} vs the rest" in page
    for plot in ("confusion_matrix", "roc", "calibration"):
        assert (out / "plots" / f"{plot}.png").stat().st_size > 5000
    assert all(f"| {c} |" in card for c in classes) and all(c in page for c in classes)
    with open(out / "predictions" / "test.csv", newline="", encoding="utf-8") as f:
        test_rows = list(csv.DictReader(f))
    assert {r["true_label"] for r in test_rows} <= set(classes)

    csv_out = tmp_path / "pred.csv"
    proc = run_main("predict", "--model", str(out), "--input", str(data / classes[-1]), "--output", str(csv_out),
                    "--engine", "tensorflow")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(csv_out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(f"prob_{c}" in rows[0] for c in classes) and len([c for c in rows[0] if c.startswith("prob_")]) == k
    for r in rows:
        probs = [float(r[f"prob_{c}"]) for c in classes]
        assert r["label"] == classes[int(np.argmax(probs))] and abs(sum(probs) - 1) < 1e-4
