"""busi.evaluate.writer for any class set: two classes and five (BI-RADS-like) score, write their
metrics, predictions, plots and page, with and without a positive class."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from busi.evaluate.screening import NO_POINT, OperatingPoint
from busi.evaluate.writer import PLOTS, Layout, score, write_evaluation
from busi.files.atomic import AtomicFolder
from busi.report.html import page_plots, run_report

TWO = ("benign", "malignant")
FIVE = ("BI-RADS 2", "BI-RADS 3", "BI-RADS 4", "BI-RADS 5", "BI-RADS 6")


def _split(classes: tuple[str, ...], n: int = 90, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(classes)  # every class present
    logits = rng.normal(size=(n, len(classes)))
    logits[np.arange(n), y] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return [f"{classes[t]}/img {i}.png" for i, t in enumerate(y)], y, probs


@pytest.mark.parametrize("classes, point", [
    (TWO, OperatingPoint("malignant", 0.4)),
    (TWO, NO_POINT),
    (FIVE, OperatingPoint("BI-RADS 5", 0.2, 0.9)),
    (FIVE, NO_POINT),
], ids=["2-classes-positive", "2-classes", "5-classes-positive", "5-classes"])
def test_an_evaluation_of_any_class_set(tmp_path: Path, classes: tuple[str, ...], point: OperatingPoint) -> None:
    paths, y, probs = _split(classes)
    scored = score(paths, y, probs, classes, "test", 0, point)
    m = scored.metrics
    k = len(classes)
    assert m["classes"] == list(classes) and np.array(m["confusion_matrix"]).shape == (k, k)
    assert set(m["per_class"]) == set(classes) and all(v["roc_auc"] is not None for v in m["per_class"].values())
    assert 0 <= m["roc_auc_macro"] <= 1 and set(m["ci95"]["per_class"]) == set(classes)
    for key in ("accuracy", "macro_f1", "roc_auc_macro"):
        lo, hi = m["ci95"][key]
        assert lo <= m[key] <= hi
    screen = m["positive_vs_rest"]
    if point.positive_class is None:
        assert screen is None
    else:
        assert screen["positive_class"] == point.positive_class and screen["threshold"] == point.threshold
        j = classes.index(point.positive_class)
        assert screen["at_threshold"]["tp"] == int(np.sum((y == j) & (probs[:, j] >= point.threshold)))

    plots = write_evaluation(AtomicFolder(tmp_path), Layout(predictions="predictions.csv"), scored)
    written = page_plots(plots)
    assert len(written) == 3
    for path in written.values():
        with Image.open(path) as im:  # a real figure, not a blank canvas
            assert im.size[0] > 200 and len(set(np.asarray(im.convert("L")).ravel().tolist())) > 10
    assert json.loads((tmp_path / "metrics.json").read_text())["classes"] == list(classes)
    with open(tmp_path / "predictions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(paths) and [r["true_label"] for r in rows] == [classes[t] for t in y]
    assert all(f"prob_{c}" in rows[0] for c in classes)
    assert all(r["label"] == classes[int(np.argmax(p))] for r, p in zip(rows, probs))

    html = run_report(m, {"root": "/data", "classes": list(classes), "counts": {"images": 90, "used": 90}},
                      {}, plots, "busi run")
    assert all(c in html for c in classes)
    assert html.count("<figure>") == 3 and all(f"<figcaption>{c}</figcaption>" in html for c in written)
    (tmp_path / Layout(predictions="predictions.csv").plot(PLOTS["ROC"])).unlink()  # a plot not written: not shown
    assert set(page_plots(plots)) == {"confusion matrix", "reliability"}
    assert run_report(m, {}, {}, plots, "busi run").count("<figure>") == 2
    assert (f"{point.positive_class} vs the rest" in html) == (point.positive_class is not None)
