"""busi.evaluate.bootstrap: the vectorised metrics equal compute_metrics' (scikit-learn's) on the data
itself, intervals are seeded, contain the estimate and narrow as the split grows."""

from __future__ import annotations

import numpy as np
import pytest

from busi.evaluate.bootstrap import bootstrap_intervals, resampled_metrics
from busi.evaluate.metrics import compute_metrics
from busi.report.format import format_interval

CLASSES = ("normal", "benign", "malignant")


def _data(n: int, seed: int = 0, skill: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), y] += skill
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("case", ["plain", "ties", "class_never_predicted", "class_absent"])
def test_unresampled_metrics_equal_compute_metrics(case: str) -> None:
    y, probs = _data(60, seed=1)
    if case == "ties":  # tied scores: ROC AUC counts a tie half, as scikit-learn does
        probs = np.round(probs, 1)
        probs[:, 0] += 1e-9 * np.arange(60) % 3  # keep argmax well defined but leave ties in the other columns
    if case == "class_never_predicted":
        probs[:, 2] = 0.0
    if case == "class_absent":
        keep = y != 0
        y, probs = y[keep], probs[keep]
    ref = compute_metrics(y, probs, CLASSES)
    got = resampled_metrics(y, probs, np.arange(len(y))[None])
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro"):
        assert got[key][0] == pytest.approx(ref[key], abs=1e-12), key
    for i, c in enumerate(CLASSES):
        for key in ("precision", "recall", "f1", "roc_auc"):
            want = ref["per_class"][c][key]
            value = got[key][0, i]
            if want is None or (case == "class_absent" and i == 0 and key == "recall"):
                assert np.isnan(value), (c, key, value)  # undefined without the class
            else:
                assert value == pytest.approx(want, abs=1e-12), (c, key)


def test_intervals_are_seeded_and_contain_the_estimate() -> None:
    y, probs = _data(113, seed=2)
    a = bootstrap_intervals(y, probs, CLASSES, seed=7, resamples=500)
    assert a == bootstrap_intervals(y, probs, CLASSES, seed=7, resamples=500)
    assert a != bootstrap_intervals(y, probs, CLASSES, seed=8, resamples=500)
    assert a["resamples"] == 500 and a["seed"] == 7 and a["level"] == 0.95
    ref = compute_metrics(y, probs, CLASSES)
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro"):
        lo, hi = a[key]
        assert lo < ref[key] < hi, key
    for c in CLASSES:
        lo, hi = a["per_class"][c]["recall"]
        assert 0 <= lo < ref["per_class"][c]["recall"] < hi <= 1


def test_accuracy_interval_has_the_binomial_width() -> None:
    """On 113 images at accuracy p the 95% interval is about 2 x 1.96 sqrt(p(1-p)/n) wide
    (0.17 at p = 0.6): within 15%, which the resampling noise of 2,000 draws stays under."""
    y, probs = _data(113, seed=3, skill=1.0)
    ci = bootstrap_intervals(y, probs, CLASSES, seed=0)
    p = compute_metrics(y, probs, CLASSES)["accuracy"]
    width = ci["accuracy"][1] - ci["accuracy"][0]
    assert width == pytest.approx(2 * 1.96 * np.sqrt(p * (1 - p) / 113), rel=0.15)
    wide = bootstrap_intervals(*_data(30, seed=3, skill=1.0), CLASSES, seed=0)
    assert wide["accuracy"][1] - wide["accuracy"][0] > width


def test_a_class_too_rare_to_resample_has_no_interval() -> None:
    y, probs = _data(100, seed=4)
    y[:] = np.where(y == 0, 1, y)
    y[0] = 0  # one normal image: most resamples hold none
    ci = bootstrap_intervals(y, probs, CLASSES, seed=0, resamples=400)
    assert ci["per_class"]["normal"]["recall"] is None and ci["per_class"]["normal"]["roc_auc"] is None
    assert ci["accuracy"] is not None
    assert bootstrap_intervals([], np.zeros((0, 3)), CLASSES, seed=0)["note"].startswith("empty split")


def test_format_interval() -> None:
    assert format_interval(0.62, [0.53, 0.71]) == "0.620 [0.530, 0.710]"
    assert format_interval(0.62, None) == "0.620" and format_interval(None, None) == "n/a"
