"""Confidence intervals for a split's metrics: a seeded percentile bootstrap.

A 15% test split of BUSI holds ~113 images; one split's accuracy then has a standard error near
0.04-0.05, and a per-class recall on 19 normal images is nearly meaningless without its
interval. ``bootstrap_intervals`` resamples the images with replacement (``RESAMPLES`` times,
seeded: the same data and seed give the same interval), recomputes every metric of
``busi.evaluate.compute_metrics`` on each resample, and reports the 2.5th and 97.5th
percentiles. The metrics are computed here for all resamples at once (confusion matrices by
``bincount``, ROC AUC as the Mann-Whitney statistic on average ranks, ties counted half), the
definitions of ``compute_metrics`` (scikit-learn's), which ``tests/test_bootstrap.py`` checks on
the unresampled data. A resample in which a class is absent gives no recall or ROC AUC for that
class (and leaves it out of balanced accuracy and macro F1, as ``compute_metrics`` leaves out a
class absent from the split); an interval is ``None`` when fewer than 95% of the resamples
define the metric (a class with fewer than ~3 images in the split: 1 - e^-3 = 95%).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
CHUNK = 250  # resamples computed at once (bounds memory: CHUNK x n x classes floats)
MIN_DEFINED = 0.95  # share of resamples that must define a metric for it to get an interval


def resampled_metrics(y: np.ndarray, probs: np.ndarray, index: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric for each row of ``index`` (R x n indices into the n images): arrays of R
    (per-class ones R x classes); NaN where a resample does not define the metric."""
    k = probs.shape[1]
    yr = y[index]  # R x n
    pred = probs.argmax(axis=1)[index]
    r, n = yr.shape
    cm = np.bincount((np.arange(r)[:, None] * k * k + yr * k + pred).ravel(), minlength=r * k * k).reshape(r, k, k)
    tp = np.diagonal(cm, axis1=1, axis2=2).astype(np.float64)
    support = cm.sum(axis=2).astype(np.float64)
    predicted = cm.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)  # zero_division=0
        recall = np.where(support > 0, tp / np.maximum(support, 1), np.nan)
        denom = precision + np.nan_to_num(recall)
        f1 = np.where(denom > 0, 2 * precision * np.nan_to_num(recall) / np.where(denom > 0, denom, 1), 0.0)
    present = support > 0
    auc = _auc(yr, probs[index], present)
    with np.errstate(invalid="ignore"):
        out = {
            "accuracy": tp.sum(axis=1) / n,
            "balanced_accuracy": np.nanmean(np.where(present, recall, np.nan), axis=1),
            "macro_f1": np.nanmean(np.where(present, f1, np.nan), axis=1),
            "roc_auc_macro": _nanmean_rows(auc),
            "precision": precision,
            "recall": recall,
            "f1": np.where(present | (predicted > 0), f1, np.nan),
            "roc_auc": auc,
        }
    return out


def _nanmean_rows(a: np.ndarray) -> np.ndarray:
    defined = ~np.isnan(a)
    count = defined.sum(axis=1)
    return np.where(count > 0, np.where(defined, a, 0.0).sum(axis=1) / np.maximum(count, 1), np.nan)


def _auc(yr: np.ndarray, scores: np.ndarray, present: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC AUC per resample and class (R x classes), NaN where a class has no
    positives or no negatives: (sum of the positives' ranks - P(P+1)/2) / (P N)."""
    from scipy.stats import rankdata

    r, n, k = scores.shape
    out = np.full((r, k), np.nan)
    for c in range(k):
        pos = yr == c
        p = pos.sum(axis=1).astype(np.float64)
        neg = n - p
        ranks = rankdata(scores[:, :, c], axis=1)  # average ranks: ties count half
        u = (ranks * pos).sum(axis=1) - p * (p + 1) / 2
        ok = (p > 0) & (neg > 0)
        out[ok, c] = u[ok] / (p[ok] * neg[ok])
    return out


def _interval(values: np.ndarray, level: float) -> list[float] | None:
    defined = values[~np.isnan(values)]
    if len(defined) < MIN_DEFINED * len(values):
        return None
    lo, hi = np.percentile(defined, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return [round(float(lo), 6), round(float(hi), 6)]


def resample(metrics: Callable[[np.ndarray], dict[str, np.ndarray]], n: int, seed: int,
             resamples: int = RESAMPLES) -> dict[str, np.ndarray]:
    """``metrics(index)`` over ``resamples`` seeded draws of n of the n images (with replacement),
    ``CHUNK`` draws at a time: each metric's values, one per draw."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, resamples, CHUNK):
        index = rng.integers(0, n, size=(min(CHUNK, resamples - start), n))
        for key, value in metrics(index).items():
            parts.setdefault(key, []).append(value)
    return {key: np.concatenate(v) for key, v in parts.items()}


def interval_table(metrics: Callable[[np.ndarray], dict[str, np.ndarray]], n: int, seed: int, keys: Sequence[str],
                   resamples: int = RESAMPLES, level: float = LEVEL) -> dict[str, list[float] | None]:
    """The 95% interval of each of ``keys`` of ``metrics`` (see ``resample``)."""
    values = resample(metrics, n, seed, resamples)
    return {key: _interval(values[key], level) for key in keys}


def bootstrap_intervals(y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str], seed: int,
                        resamples: int = RESAMPLES, level: float = LEVEL) -> dict[str, Any]:
    """``ci95``-style intervals for ``compute_metrics``' figures: {"accuracy": [lo, hi], ...,
    "per_class": {class: {"precision": [lo, hi], ...}}}, and how they were made."""
    y = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    method = {"method": "percentile bootstrap", "resamples": resamples, "level": level, "seed": seed}
    if len(y) == 0:
        return {**method, "note": "empty split: no intervals"}
    values = resample(lambda index: resampled_metrics(y, probs, index), len(y), seed, resamples)
    out: dict[str, Any] = {key: _interval(values[key], level)
                           for key in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro")}
    out["per_class"] = {
        name: {key: _interval(values[key][:, i], level) for key in ("precision", "recall", "f1", "roc_auc")}
        for i, name in enumerate(classes)
    }
    return {**out, **method}
