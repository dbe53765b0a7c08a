"""busi.report: the self-contained report page, rendered by a real browser (headless Chromium)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import assert_rendered

CLASSES = ("normal", "benign", "malignant")


def test_a_run_page_renders_its_numbers_and_plots(tmp_path: Path) -> None:
    from busi.evaluate.bootstrap import bootstrap_intervals
    from busi.evaluate.metrics import compute_metrics
    from busi.evaluate.plots import plot_calibration
    from busi.report.format import format_interval
    from busi.report.html import run_report

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    logits = rng.normal(size=(60, 3))
    logits[np.arange(60), y] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    metrics = compute_metrics(y, probs, CLASSES)
    metrics["ci95"] = bootstrap_intervals(y, probs, CLASSES, seed=0)
    metrics["split"] = "test"
    plot_calibration(y, probs, tmp_path / "calibration.png")
    report = {"root": "/data/busi<&>", "classes": list(CLASSES),
              "counts": {"images": 70, "used": 66, "per_split": {"test": {"normal": 20, "benign": 20, "malignant": 20}}},
              "label_conflicts": [{"id": "g7", "members": ["benign/x.png", "malignant/x.png"],
                                   "labels": ["benign", "malignant"], "action": "dropped"}],
              "duplicates": {"groups": [{"id": "g7", "members": ["benign/x.png", "malignant/x.png"], "exact": True}]}}
    page = tmp_path / "report.html"
    page.write_text(run_report(metrics, report, {"busi_version": "0.1", "best_epoch": 3}, {
        "reliability": tmp_path / "calibration.png", "missing": tmp_path / "nothing.png"}, "busi run demo"),
        encoding="utf-8")
    acc = format_interval(metrics["accuracy"], metrics["ci95"]["accuracy"])
    dom = assert_rendered(page, tmp_path, [acc, "Label conflicts (1)", "malignant/x.png", "/data/busi&lt;&amp;&gt;"])
    assert "<script" not in page.read_text()
    assert "busi run demo" in dom and "not for diagnosis" in dom
