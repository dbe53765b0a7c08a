"""busi.evaluate.screening: malignant-vs-rest rates, the validation-chosen threshold, its intervals."""

from __future__ import annotations

import numpy as np
import pytest

from busi.evaluate.screening import (
    binary_rates,
    choose_operating_point,
    choose_threshold,
    screening_metrics,
)

CLASSES = ("normal", "benign", "malignant")


def test_binary_rates_by_hand() -> None:
    positive = np.array([1, 1, 1, 0, 0, 0, 0], bool)
    flagged = np.array([1, 1, 0, 1, 0, 0, 0], bool)
    r = binary_rates(positive, flagged)
    assert (r["tp"], r["fn"], r["tn"], r["fp"]) == (2, 1, 3, 1)
    assert r["sensitivity"] == pytest.approx(2 / 3) and r["specificity"] == pytest.approx(3 / 4)
    assert r["ppv"] == pytest.approx(2 / 3) and r["npv"] == pytest.approx(3 / 4)
    assert binary_rates(np.zeros(3, bool), np.zeros(3, bool))["sensitivity"] is None


@pytest.mark.parametrize("n_pos", [1, 19, 20, 30])
def test_the_threshold_is_the_highest_that_reaches_the_target(n_pos: int) -> None:
    rng = np.random.default_rng(n_pos)
    score = rng.uniform(size=n_pos + 50)
    positive = np.zeros(len(score), bool)
    positive[:n_pos] = True
    t = choose_threshold(positive, score)
    sens = lambda th: np.mean(score[positive] >= th)  # noqa: E731
    assert sens(t) >= 0.95
    above = np.sort(score[positive])
    higher = above[above > t]
    if len(higher):  # the next positive score up would miss the target
        assert sens(higher[0]) < 0.95
    assert choose_threshold(np.zeros(3, bool), np.ones(3)) is None


def test_screening_metrics_and_operating_point() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    logits = rng.normal(size=(200, 3))
    logits[np.arange(200), y] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    point = choose_operating_point(y[:100], probs[:100], CLASSES)
    assert point["val_sensitivity"] >= 0.95 and 0 < point["threshold"] < 1
    m = screening_metrics(y[100:], probs[100:], CLASSES, point["threshold"], seed=0)
    assert m is not None and set(m) >= {"argmax", "at_threshold"}
    # a threshold low enough for 95% sensitivity flags more than the top-class rule does
    assert m["at_threshold"]["sensitivity"] >= m["argmax"]["sensitivity"]
    assert m["at_threshold"]["specificity"] <= m["argmax"]["specificity"]
    for rule in ("argmax", "at_threshold"):
        for key in ("sensitivity", "specificity", "ppv", "npv"):
            lo, hi = m[rule]["ci95"][key]
            assert lo <= m[rule][key] <= hi, (rule, key)
    assert screening_metrics(y, probs, ("a", "b", "c"), None, seed=0) is None
    assert choose_operating_point(y, None, CLASSES)["threshold"] is None
    assert choose_operating_point(y, probs, ("a", "b", "c"))["note"] == "no 'malignant' class"
