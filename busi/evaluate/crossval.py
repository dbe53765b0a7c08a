"""``busi-job cv-report``: a cross-validation gathered. Per metric, the mean, sd and 95%
t-interval across the folds (``across_folds``); the out-of-fold predictions (each image
predicted once, by the fold whose training never saw it) pooled into one evaluation
(``busi.evaluate.writer``: ``oof.csv``, plots, metrics with bootstrap intervals); the page.
The folder's layout: ``busi.files.cvdir``."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from busi.data.folds import read_folds
from busi.errors import DataError
from busi.evaluate.screening import OperatingPoint
from busi.evaluate.writer import Layout, score, write_evaluation
from busi.files.atomic import AtomicFolder
from busi.files.cvdir import FOLDS_FILE, OOF_FILE, REPORT_FILE, fold_dir, fold_status
from busi.files.rundir import RUN_FILES, RunDir
from busi.files.text import json_text, text_of
from busi.model.folder import read_thresholds
from busi.runtime.safeio import read_regular_file

OOF = Layout(predictions=OOF_FILE, metrics=None, plot_prefix="oof_", extra_columns=("fold",))


def _fold_results(root: Path, k: int) -> list[tuple[dict[str, Any], list[dict[str, str]]]]:
    missing = [i for i in range(k) if fold_status(root, i) != "completed"]
    if missing:
        raise DataError(root, f"fold(s) {', '.join(map(str, missing))} of {k} not completed "
                        f"({', '.join(f'{i}: {fold_status(root, i)}' for i in missing)}); run `busi-job cv JOB.yaml "
                        f"--folds {k} --fold I` for each, then the report again")
    out = []
    for i in range(k):
        run = fold_dir(root, i)
        metrics = RunDir(run).read_json("metrics")
        # the rule the CSV was written with: non-UTF-8 names keep their bytes
        text = text_of(read_regular_file(run / RUN_FILES["test_predictions"]))
        out.append((metrics, list(csv.DictReader(io.StringIO(text, newline="")))))
    return out


def across_folds(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sd and the 95% t-interval of the mean of one metric over the folds (clipped to the
    metrics' range, 0-1: with few folds the t-interval can overrun it)."""
    from scipy.stats import t

    v = np.array([x for x in values if x is not None], np.float64)
    if len(v) == 0:
        return {"mean": None, "sd": None, "ci95": None, "folds": 0}
    mean = float(v.mean())
    if len(v) == 1:
        return {"mean": mean, "sd": None, "ci95": None, "folds": 1}
    sd = float(v.std(ddof=1))
    half = float(t.ppf(0.975, len(v) - 1) * sd / math.sqrt(len(v)))
    return {"mean": round(mean, 6), "sd": round(sd, 6),
            "ci95": [round(max(0.0, mean - half), 6), round(min(1.0, mean + half), 6)],
            "folds": int(len(v)), "values": [round(float(x), 6) for x in v]}


def cv_report(root: Path, seed: int = 0) -> dict[str, Any]:
    """Gather the folds of ``root``: per-metric mean, sd and 95% interval across folds; the
    out-of-fold predictions (``oof.csv``) and the metrics and plots pooled over them."""
    from busi.report.html import cv_page

    folds = read_folds(root / FOLDS_FILE)
    k = len({r.fold for r in folds})
    results = _fold_results(root, k)
    classes = tuple(results[0][0]["classes"])
    headline = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro")
    per_metric: dict[str, Any] = {m: across_folds([r[0].get(m) for r in results]) for m in headline}
    per_metric["per_class"] = {
        c: {m: across_folds([r[0]["per_class"][c][m] for r in results]) for m in ("precision", "recall", "f1", "roc_auc")}
        for c in classes
    }
    rows = _out_of_fold(root, folds, results)
    probs = np.array([[float(row[f"prob_{c}"]) for c in classes] for row, _ in rows])
    # each fold chose its own threshold: pooled, the positive class at the argmax rule only
    positive = OperatingPoint.from_json(read_thresholds(fold_dir(root, 0) / RUN_FILES["model"])).positive_class
    pooled = score([row["path"] for row, _ in rows], [classes.index(row["true_label"]) for row, _ in rows], probs,
                   classes, "out of fold", seed, OperatingPoint(positive))
    report = {"folds": k, "images": len(rows), "across_folds": per_metric, "pooled_out_of_fold": pooled.metrics,
              "fold_sizes": [sum(r.fold == i for r in folds) for i in range(k)]}
    folder = AtomicFolder(root)
    plots = write_evaluation(folder, OOF, pooled, extra=[(i,) for _, i in rows])
    folder.write_text(REPORT_FILE, json_text(report))
    folder.write_text("report.html", cv_page(report, plots, f"busi cross-validation {root.name}"))
    return report


def _out_of_fold(root: Path, folds: Sequence[Any], results: Sequence[tuple[dict[str, Any], list[dict[str, str]]]]
                 ) -> list[tuple[dict[str, str], int]]:
    """Every fold's test predictions with its fold, checked: each image of ``folds.csv`` exactly
    once, predicted by its own fold's model."""
    fold_of = {r.key: r.fold for r in folds}  # test.csv names a sample by its key
    seen: dict[str, int] = {}
    out = []
    for i, (_, rows) in enumerate(results):
        for row in rows:
            if fold_of.get(row["path"]) != i:
                raise DataError(fold_dir(root, i), f"predicts {row['path']!r}, which is not in fold {i} of "
                                f"{root / FOLDS_FILE}; the fold was trained on another assignment")
            seen[row["path"]] = seen.get(row["path"], 0) + 1
            out.append((row, i))
    twice = [p for p, n in seen.items() if n > 1]
    absent = [r.key for r in folds if r.key not in seen]
    if twice or absent:
        raise DataError(root, f"out-of-fold predictions cover {len(seen)} of {len(folds)} images "
                        f"({len(absent)} missing, {len(twice)} twice, e.g. {(absent or twice)[0]!r})")
    return out
