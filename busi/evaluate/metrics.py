"""Test-split evaluation: the forward pass, metrics (scikit-learn) and the plots of a run
(matplotlib, headless).

scikit-learn gives audited implementations of balanced accuracy, macro F1 and one-vs-rest
ROC AUC; matplotlib draws the curves researchers expect. Both run without a display.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from busi.evaluate.calibration import calibration_metrics


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
        "calibration": calibration_metrics(y, probs),
    }
