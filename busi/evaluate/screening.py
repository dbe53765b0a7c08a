"""Malignant or not: the clinically relevant question, as a binary operating point.

The three-class model answers "normal, benign or malignant"; a reader of a breast ultrasound
first asks "could this be malignant?". For malignant against the rest this module reports
sensitivity (recall of malignant), specificity, PPV and NPV for two decision rules:

* ``argmax``: malignant when it is the top class (what ``label`` in a prediction CSV says);
* ``threshold``: malignant when its probability is at least the threshold chosen on the
  validation split as the highest one that still finds ``TARGET_SENSITIVITY`` (0.95) of the
  validation split's malignant images. A screening rule trades specificity for sensitivity;
  the test split then shows what that threshold really gives (with 95% bootstrap intervals:
  a threshold fitted on ~30 malignant images is itself uncertain).

The chosen threshold is stored beside the model (``model/thresholds.json``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

POSITIVE_CLASS = "malignant"
TARGET_SENSITIVITY = 0.95
RATES = ("sensitivity", "specificity", "ppv", "npv")


def binary_rates(positive: np.ndarray, flagged: np.ndarray) -> dict[str, Any]:
    """Sensitivity, specificity, PPV, NPV (None where undefined) and the four counts."""
    positive, flagged = np.asarray(positive, bool), np.asarray(flagged, bool)
    tp = int(np.sum(positive & flagged))
    fn = int(np.sum(positive & ~flagged))
    tn = int(np.sum(~positive & ~flagged))
    fp = int(np.sum(~positive & flagged))

    def ratio(a: int, b: int) -> float | None:
        return a / (a + b) if a + b else None

    return {"sensitivity": ratio(tp, fn), "specificity": ratio(tn, fp), "ppv": ratio(tp, fp), "npv": ratio(tn, fn),
            "tp": tp, "fn": fn, "tn": tn, "fp": fp}


def choose_threshold(positive: np.ndarray, score: np.ndarray, target: float = TARGET_SENSITIVITY) -> float | None:
    """The highest threshold t with sensitivity(score >= t) >= ``target``; None without positives."""
    scores = np.sort(np.asarray(score, np.float64)[np.asarray(positive, bool)])[::-1]
    if len(scores) == 0:
        return None
    needed = int(np.ceil(target * len(scores) - 1e-9))  # positives that must score at or above t
    return float(scores[max(needed, 1) - 1])


def resampled_rates(positive: np.ndarray, flagged: np.ndarray, index: np.ndarray) -> dict[str, np.ndarray]:
    """``RATES`` for each row of ``index`` (R x n), NaN where undefined."""
    p, f = positive[index], flagged[index]
    tp, fn = (p & f).sum(1), (p & ~f).sum(1)
    tn, fp = (~p & ~f).sum(1), (~p & f).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"sensitivity": np.where(tp + fn > 0, tp / (tp + fn), np.nan),
                "specificity": np.where(tn + fp > 0, tn / (tn + fp), np.nan),
                "ppv": np.where(tp + fp > 0, tp / (tp + fp), np.nan),
                "npv": np.where(tn + fn > 0, tn / (tn + fn), np.nan)}


def screening_metrics(y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str], threshold: float | None,
                      seed: int) -> dict[str, Any] | None:
    """Malignant-vs-rest rates on a split for the argmax rule and, where given, the threshold
    rule, each with 95% bootstrap intervals (``busi.evaluate.bootstrap``); None without a malignant class."""
    from busi.evaluate.bootstrap import interval_table

    if POSITIVE_CLASS not in classes or len(y_true) == 0:
        return None
    k = list(classes).index(POSITIVE_CLASS)
    positive = np.asarray(y_true) == k
    rules = {"argmax": probs.argmax(axis=1) == k}
    if threshold is not None:
        rules["at_threshold"] = probs[:, k] >= threshold
    out: dict[str, Any] = {"positive_class": POSITIVE_CLASS, "threshold": threshold,
                           "threshold_rule": f"highest validation threshold with sensitivity >= {TARGET_SENSITIVITY}"}
    for name, flagged in rules.items():
        rates = binary_rates(positive, flagged)
        rates["ci95"] = interval_table(lambda index, f=flagged: resampled_rates(positive, f, index), len(positive),
                                       seed, RATES)
        out[name] = rates
    return out


def choose_operating_point(y_val: Sequence[int], val_probs: np.ndarray | None, classes: Sequence[str]) -> dict[str, Any]:
    """What ``model/thresholds.json`` holds: the malignant threshold chosen on the validation
    split, with its validation sensitivity and specificity, or a null threshold and why."""
    out: dict[str, Any] = {"positive_class": POSITIVE_CLASS, "target_sensitivity": TARGET_SENSITIVITY,
                           "chosen_on": "val", "threshold": None}
    if POSITIVE_CLASS not in classes:
        return {**out, "note": f"no {POSITIVE_CLASS!r} class"}
    if val_probs is None or len(y_val) == 0:
        return {**out, "note": "no validation split"}
    k = list(classes).index(POSITIVE_CLASS)
    positive = np.asarray(y_val) == k
    threshold = choose_threshold(positive, val_probs[:, k])
    if threshold is None:
        return {**out, "note": f"no {POSITIVE_CLASS} image in the validation split"}
    rates = binary_rates(positive, val_probs[:, k] >= threshold)
    return {**out, "threshold": round(threshold, 6), "val_images": int(len(positive)),
            "val_positives": int(positive.sum()), "val_sensitivity": rates["sensitivity"],
            "val_specificity": rates["specificity"],
            "rule": f"malignant when its probability is at least the threshold (the highest one that finds "
                    f"{TARGET_SENSITIVITY:.0%} of the validation split's malignant images)"}
