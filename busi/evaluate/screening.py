"""One class against the rest: the clinically relevant question, as a binary operating point.

A three-class model answers "normal, benign or malignant"; a reader of a breast ultrasound first
asks "could this be malignant?". The job file names that class (``evaluate.positive_class``; any
class of any class set, e.g. ``malignant`` or ``BI-RADS 5``; null: no table), and for it against
the rest this module reports sensitivity (recall of the positive class), specificity, PPV and NPV
for two decision rules:

* ``argmax``: positive when it is the top class (what ``label`` in a prediction CSV says);
* ``threshold``: positive when its probability is at least the threshold chosen on the
  validation split as the highest one that still finds ``evaluate.target_sensitivity`` (0.95) of
  the validation split's positive images. A screening rule trades specificity for sensitivity;
  the test split then shows what that threshold really gives (with 95% bootstrap intervals:
  a threshold fitted on ~30 positive images is itself uncertain).

The class and the chosen threshold are stored beside the model (``model/thresholds.json``), so
``busi-job evaluate`` and ``cv-report`` report the same class against the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

TARGET_SENSITIVITY = 0.95  # evaluate.target_sensitivity's default
RATES = ("sensitivity", "specificity", "ppv", "npv")


@dataclass(frozen=True)
class OperatingPoint:
    """The class screened for, the threshold chosen for it (None: the argmax rule only) and the
    sensitivity that chose it: what ``model/thresholds.json`` carries to every evaluation."""

    positive_class: str | None
    threshold: float | None = None
    target_sensitivity: float = TARGET_SENSITIVITY

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "OperatingPoint":
        """From ``thresholds.json``; a file from before class sets (no ``positive_class``) was malignant's."""
        threshold = data.get("threshold")
        return cls(positive_class=data.get("positive_class", "malignant"),
                   threshold=None if threshold is None else float(threshold),
                   target_sensitivity=float(data.get("target_sensitivity", TARGET_SENSITIVITY)))


NO_POINT = OperatingPoint(None)


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


def screening_metrics(y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str], point: OperatingPoint,
                      seed: int) -> dict[str, Any] | None:
    """The positive class against the rest on a split for the argmax rule and, where the point
    has a threshold, the threshold rule, each with 95% bootstrap intervals
    (``busi.evaluate.bootstrap``); None without a positive class (or one the model does not
    have), without images, or where the split lacks positives or the rest (an external set of
    one class: sensitivity or specificity would be undefined)."""
    from busi.evaluate.bootstrap import interval_table

    positive, threshold = point.positive_class, point.threshold
    if positive is None or positive not in classes or len(y_true) == 0:
        return None
    k = list(classes).index(positive)
    is_positive = np.asarray(y_true) == k
    if is_positive.all() or not is_positive.any():
        return None
    rules = {"argmax": probs.argmax(axis=1) == k}
    if threshold is not None:
        rules["at_threshold"] = probs[:, k] >= threshold
    out: dict[str, Any] = {"positive_class": positive, "threshold": threshold,
                           "threshold_rule": "the highest validation threshold with sensitivity >= "
                                             f"{point.target_sensitivity:g}"}
    for name, flagged in rules.items():
        rates = binary_rates(is_positive, flagged)
        rates["ci95"] = interval_table(lambda index, f=flagged: resampled_rates(is_positive, f, index),
                                       len(is_positive), seed, RATES)
        out[name] = rates
    return out


def choose_operating_point(y_val: Sequence[int], val_probs: np.ndarray | None, classes: Sequence[str],
                           positive: str | None, target: float = TARGET_SENSITIVITY) -> dict[str, Any]:
    """What ``model/thresholds.json`` holds: the positive class and its threshold chosen on the
    validation split, with its validation sensitivity and specificity, or a null threshold and why."""
    out: dict[str, Any] = {"positive_class": positive, "target_sensitivity": target,
                           "chosen_on": "val", "threshold": None}
    if positive is None:
        return {**out, "note": "no positive class (evaluate.positive_class is null)"}
    if positive not in classes:
        return {**out, "note": f"no {positive!r} class"}
    if val_probs is None or len(y_val) == 0:
        return {**out, "note": "no validation split"}
    k = list(classes).index(positive)
    is_positive = np.asarray(y_val) == k
    threshold = choose_threshold(is_positive, val_probs[:, k], target)
    if threshold is None:
        return {**out, "note": f"no {positive} image in the validation split"}
    rates = binary_rates(is_positive, val_probs[:, k] >= threshold)
    return {**out, "threshold": round(threshold, 6), "val_images": int(len(is_positive)),
            "val_positives": int(is_positive.sum()), "val_sensitivity": rates["sensitivity"],
            "val_specificity": rates["specificity"],
            "rule": f"{positive} when its probability is at least the threshold (the highest one that finds "
                    f"{target:.0%} of the validation split's {positive} images)"}
