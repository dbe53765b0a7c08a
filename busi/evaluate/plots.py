"""The plots of a run and of an evaluation (matplotlib, headless: batch nodes have no display):
training curves, confusion matrix, one-vs-rest ROC curves, the reliability diagram."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from busi.evaluate.calibration import ECE_BINS, calibration_metrics, reliability_bins


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # headless: batch nodes have no display
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: Sequence[dict[str, Any]], metric: str, out: Path) -> None:
    """Train and validation ``metric`` per epoch, the head/fine-tune boundary marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h[metric] for h in history], "o-", label=f"train {metric}")
    val = [h[f"val_{metric}"] for h in history]
    if not all(v is None or (isinstance(v, float) and math.isnan(v)) for v in val):
        ax.plot(epochs, val, "s-", label=f"val {metric}")
    boundaries = [h["epoch"] for prev, h in zip(history, history[1:]) if prev["phase"] != h["phase"]]
    for b in boundaries:
        ax.axvline(b - 0.5, color="grey", linestyle="--", linewidth=1)
        ax.text(b - 0.4, ax.get_ylim()[1], "fine-tune", va="top", fontsize=8, color="grey")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per epoch")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, format="png")
    plt.close(fig)


def plot_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], out: Path, split: str = "test") -> None:
    plt = _pyplot()
    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(4.8, 4.2), dpi=100)
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=30)
    ax.set_yticks(range(len(classes)), classes)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center",
                    color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix ({split})")
    fig.tight_layout()
    fig.savefig(out, format="png")
    plt.close(fig)


def plot_roc(y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str], out: Path, split: str = "test") -> None:
    """One-vs-rest ROC curve per class (classes absent from the split are left out)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    y = np.asarray(y_true)
    fig, ax = plt.subplots(figsize=(4.8, 4.2), dpi=100)
    for i, name in enumerate(classes):
        pos = y == i
        if 0 < pos.sum() < len(y):
            fpr, tpr, _ = roc_curve(pos, probs[:, i])
            ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(pos, probs[:, i]):.2f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC, one vs rest ({split})")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, format="png")
    plt.close(fig)


def plot_calibration(y_true: Sequence[int], probs: np.ndarray, out: Path, title: str = "test") -> None:
    """Reliability diagram: accuracy against mean confidence per equal-width confidence bin
    (``busi.evaluate.calibration``), the diagonal for a calibrated model, and how many images each bin holds."""
    plt = _pyplot()
    table = reliability_bins(y_true, probs)
    edges = np.asarray(table["edges"])
    width = 1.0 / ECE_BINS
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(4.8, 5.6), dpi=100, sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    filled = [i for i, c in enumerate(table["count"]) if c]
    ax.bar(edges[filled], [table["accuracy"][i] for i in filled], width=width, align="edge",
           edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([table["confidence"][i] for i in filled], [table["accuracy"][i] for i in filled], "o", color="C1",
            label="mean confidence")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    ece = calibration_metrics(y_true, probs)["ece"]
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"reliability ({title}), ECE {ece:.3f} ({ECE_BINS} bins)")
    ax.legend(loc="upper left", fontsize=8)
    hist.bar(edges[:-1], table["count"], width=width, align="edge", edgecolor="black", color="C2")
    hist.set_xlabel("confidence (top-class probability)")
    hist.set_ylabel("images")
    hist.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(out, format="png")
    plt.close(fig)
