"""busi.evaluate.screening: a positive class against the rest, the validation-chosen threshold, its intervals."""

from __future__ import annotations

import numpy as np
import pytest

from busi.evaluate.screening import (
    NO_POINT,
    OperatingPoint,
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


def _probs(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.5
    return y, np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


def test_screening_metrics_and_operating_point() -> None:
    y, probs = _probs(200, 3, 0)
    point = choose_operating_point(y[:100], probs[:100], CLASSES, "malignant")
    assert point["val_sensitivity"] >= 0.95 and 0 < point["threshold"] < 1
    m = screening_metrics(y[100:], probs[100:], CLASSES, OperatingPoint.from_json(point), seed=0)
    assert m is not None and set(m) >= {"argmax", "at_threshold"} and m["positive_class"] == "malignant"
    # a threshold low enough for 95% sensitivity flags more than the top-class rule does
    assert m["at_threshold"]["sensitivity"] >= m["argmax"]["sensitivity"]
    assert m["at_threshold"]["specificity"] <= m["argmax"]["specificity"]
    for rule in ("argmax", "at_threshold"):
        for key in ("sensitivity", "specificity", "ppv", "npv"):
            lo, hi = m[rule]["ci95"][key]
            assert lo <= m[rule][key] <= hi, (rule, key)
    assert screening_metrics(y, probs, ("a", "b", "c"), OperatingPoint("malignant"), seed=0) is None
    assert choose_operating_point(y, None, CLASSES, "malignant")["threshold"] is None
    assert choose_operating_point(y, probs, ("a", "b", "c"), "malignant")["note"] == "no 'malignant' class"


def test_no_positive_class_no_table() -> None:
    """Without evaluate.positive_class there is no screening table and no threshold."""
    y, probs = _probs(60, 3, 1)
    assert screening_metrics(y, probs, CLASSES, NO_POINT, seed=0) is None
    point = choose_operating_point(y, probs, CLASSES, None)
    assert point["threshold"] is None and point["positive_class"] is None and "null" in point["note"]


@pytest.mark.parametrize("classes, positive", [
    (("benign", "malignant"), "malignant"),
    (("BI-RADS 2", "BI-RADS 3", "BI-RADS 4", "BI-RADS 5", "BI-RADS 6"), "BI-RADS 5"),
])
def test_any_class_set_any_positive_class(classes: tuple[str, ...], positive: str) -> None:
    y, probs = _probs(300, len(classes), len(classes))
    k = classes.index(positive)
    point = choose_operating_point(y[:150], probs[:150], classes, positive, target=0.9)
    assert point["positive_class"] == positive and point["target_sensitivity"] == 0.9
    assert point["val_sensitivity"] >= 0.9 and positive in point["rule"]
    m = screening_metrics(y[150:], probs[150:], classes, OperatingPoint.from_json(point), seed=0)
    assert m is not None and m["positive_class"] == positive and "0.9" in m["threshold_rule"]
    truth, flagged = y[150:] == k, probs[150:, k] >= point["threshold"]
    assert m["at_threshold"]["tp"] == int(np.sum(truth & flagged))
    assert m["argmax"]["tp"] == int(np.sum(truth & (probs[150:].argmax(1) == k)))


def test_a_thresholds_file_from_before_class_sets_was_malignants() -> None:
    assert OperatingPoint.from_json({"threshold": 0.3}) == OperatingPoint("malignant", 0.3)
    assert OperatingPoint.from_json({"positive_class": None, "threshold": None}) == NO_POINT
