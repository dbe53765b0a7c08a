"""Test-split evaluation: the forward pass, metrics (scikit-learn) and the plots of a run
(matplotlib, headless).

scikit-learn gives audited implementations of balanced accuracy, macro F1 and one-vs-rest
ROC AUC; matplotlib draws the curves researchers expect. Both run without a display.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def predict_probs(model: Any, pipeline: Any, batch_size: int) -> np.ndarray:
    """The evaluation forward pass: class probabilities for every image of a pipeline
    (``busi.data.pipeline.Pipeline``), in its file order."""
    import tensorflow as tf

    @tf.function
    def forward(x: Any) -> Any:
        return model(x, training=False)

    out = [forward(x).numpy() for x, _ in pipeline.eval_dataset(batch_size)]
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)


def compute_metrics(y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro F1, per-class precision/recall/F1/support,
    one-vs-rest ROC AUC per class and macro, and the confusion matrix (rows: true)."""
    from sklearn import metrics as skm

    y = np.asarray(y_true, dtype=np.int64)
    k = len(classes)
    if len(y) == 0:
        return {"n": 0, "classes": list(classes), "note": "empty split: no metrics"}
    pred = probs.argmax(axis=1)
    labels = list(range(k))
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    per_class: dict[str, Any] = {}
    aucs: list[float] = []
    for i, name in enumerate(classes):
        positives = y == i
        auc = None
        if 0 < positives.sum() < len(y):
            auc = float(skm.roc_auc_score(positives, probs[:, i]))
            aucs.append(auc)
        per_class[name] = {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(s[i]),
            "roc_auc": auc,
        }
    present = [i for i in labels if (y == i).any()]
    return {
        "n": int(len(y)),
        "classes": list(classes),
        "accuracy": float(skm.accuracy_score(y, pred)),
        "balanced_accuracy": float(np.mean([r[i] for i in present])),
        "macro_f1": float(skm.f1_score(y, pred, labels=present, average="macro", zero_division=0)),
        "roc_auc_macro": float(np.mean(aucs)) if aucs else None,
        "per_class": per_class,
        "confusion_matrix": skm.confusion_matrix(y, pred, labels=labels).tolist(),
    }


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


def plot_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], out: Path) -> None:
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
    ax.set_title("confusion matrix (test)")
    fig.tight_layout()
    fig.savefig(out, format="png")
    plt.close(fig)


def plot_roc(y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str], out: Path) -> None:
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
    ax.set_title("ROC, one vs rest (test)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, format="png")
    plt.close(fig)
