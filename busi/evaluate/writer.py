"""The one writer of an evaluation: a split's predictions and what they score, written as a
metrics file, a predictions CSV, three plots and a page.

Three callers, one code path: a training run's test split (``busi.train.job``), the pooled
out-of-fold predictions of a cross-validation (``busi.evaluate.crossval``) and an external
evaluation (``busi.evaluate.external``). ``score`` computes the metrics of
``busi.evaluate.metrics`` with their bootstrap intervals and the malignant-vs-rest rates;
``write_evaluation`` writes them where a ``Layout`` says, through an ``AtomicFolder`` (every
file complete or absent), and returns the plots for the caller's page (``busi.report.html``, which
shows those that were written: ``page_plots``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from busi.evaluate.bootstrap import bootstrap_intervals
from busi.evaluate.metrics import compute_metrics
from busi.evaluate.plots import plot_calibration, plot_confusion, plot_roc
from busi.evaluate.screening import OperatingPoint, screening_metrics
from busi.files.atomic import AtomicFolder
from busi.files.rundir import EVALUATION_PLOTS
from busi.files.text import csv_text, json_text
from busi.predict.output import prediction_columns, prediction_row

PLOTS = EVALUATION_PLOTS  # caption on the page -> file name stem of each evaluation plot


@dataclass(frozen=True)
class Scored:
    """A split's predictions (``paths`` as reported, true class indices, probabilities) and
    their metrics (``metrics.json``'s content)."""

    paths: tuple[str, ...]
    y_true: tuple[int, ...]
    probs: np.ndarray
    classes: tuple[str, ...]
    metrics: dict[str, Any]


@dataclass(frozen=True)
class Layout:
    """Where an evaluation's files go, relative to its folder. ``metrics`` None: the caller
    writes its own summary (cross-validation's, which holds more than one split's metrics)."""

    predictions: str
    metrics: str | None = "metrics.json"
    plots: str = "plots"
    plot_prefix: str = ""
    extra_columns: tuple[str, ...] = field(default=())  # after true_label (cross-validation: fold)

    def plot(self, stem: str) -> str:
        return f"{self.plots}/{self.plot_prefix}{stem}.png"


def score(paths: Sequence[str], y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str], split: str,
          seed: int, point: OperatingPoint) -> Scored:
    """The metrics of a split's predictions: ``compute_metrics``, their 95% bootstrap intervals
    (``ci95``) and the point's positive class against the rest (``positive_vs_rest``, null
    without one) at the argmax rule and at its threshold."""
    metrics = compute_metrics(y_true, probs, classes)
    metrics["split"] = split
    metrics["ci95"] = bootstrap_intervals(y_true, probs, classes, seed=seed)
    metrics["positive_vs_rest"] = screening_metrics(y_true, probs, classes, point, seed)
    return Scored(tuple(paths), tuple(int(y) for y in y_true), np.asarray(probs), tuple(classes), metrics)


def write_evaluation(folder: AtomicFolder, layout: Layout, scored: Scored,
                     extra: Sequence[Sequence[Any]] = ()) -> dict[str, Path]:
    """The metrics (where the layout has a file for them), the predictions CSV (the prediction
    columns, ``true_label``, then ``layout.extra_columns`` from ``extra``, one row per image) and
    the plots. Returns ``{caption: plot path}`` for the page."""
    classes, split = scored.classes, scored.metrics.get("split", "test")
    if layout.metrics is not None:
        folder.write_text(layout.metrics, json_text(scored.metrics))
    columns = prediction_columns(classes) + ["true_label", *layout.extra_columns]
    rows = [prediction_row(path, p, classes) + [classes[t], *more]
            for path, p, t, more in zip(scored.paths, scored.probs, scored.y_true, extra or [()] * len(scored.paths))]
    folder.write_text(layout.predictions, csv_text(columns, rows))
    plots = {caption: folder.path(layout.plot(stem)) for caption, stem in PLOTS.items()}
    if scored.metrics.get("n"):
        y, probs = list(scored.y_true), scored.probs
        folder.write_with(layout.plot(PLOTS["confusion matrix"]),
                          lambda p: plot_confusion(scored.metrics["confusion_matrix"], classes, p, split), ".png")
        folder.write_with(layout.plot(PLOTS["ROC"]), lambda p: plot_roc(y, probs, classes, p, split), ".png")
        folder.write_with(layout.plot(PLOTS["reliability"]), lambda p: plot_calibration(y, probs, p, split), ".png")
    return plots
