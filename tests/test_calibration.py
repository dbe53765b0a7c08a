"""busi.evaluate.calibration: ECE, Brier score, temperature fitting and the temperature inside the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from busi.evaluate.calibration import (
    ECE_BINS,
    T_BOUNDS,
    brier_score,
    calibration_metrics,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    separated,
    with_temperature,
)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _calibrated(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from the model's own probabilities: a calibrated model by construction."""
    rng = np.random.default_rng(seed)
    probs = _softmax(rng.normal(scale=2.0, size=(n, 3)))
    y = np.array([rng.choice(3, p=p) for p in probs])
    return y, probs


def test_ece_by_hand_and_its_bins() -> None:
    # 4 images: two at confidence 0.9 (one right), two at 0.6 (both right)
    probs = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.2, 0.6, 0.2], [0.2, 0.6, 0.2]])
    y = np.array([0, 1, 1, 1])
    # |0.5 - 0.9| x 2/4 + |1.0 - 0.6| x 2/4 = 0.4
    assert expected_calibration_error(y, probs) == pytest.approx(0.4)
    table = reliability_bins(y, probs)
    assert len(table["count"]) == ECE_BINS and sum(table["count"]) == 4
    assert table["edges"][0] == 0 and table["edges"][-1] == 1
    full = np.array([[1.0, 0.0, 0.0]])  # confidence exactly 1 lands in the last bin
    assert reliability_bins([0], full)["count"][-1] == 1


def test_a_calibrated_model_has_small_ece_and_an_overconfident_one_large() -> None:
    y, probs = _calibrated(4000)
    # sampling noise of ECE on 4000 images over 15 bins is ~0.01-0.02
    assert expected_calibration_error(y, probs) < 0.03
    over = with_temperature(probs, 0.4)  # logits x 2.5: over-confident, same labels
    assert (over.argmax(1) == probs.argmax(1)).all()
    assert expected_calibration_error(y, over) > 0.1


def test_brier_score() -> None:
    assert brier_score([0], np.array([[1.0, 0.0, 0.0]])) == 0.0
    assert brier_score([0], np.array([[0.0, 1.0, 0.0]])) == 2.0
    assert brier_score([0, 1], np.full((2, 3), 1 / 3)) == pytest.approx(2 / 3)
    m = calibration_metrics([0, 1], np.full((2, 3), 1 / 3))
    assert m["ece_bins"] == ECE_BINS and m["nll"] == pytest.approx(np.log(3))


def test_fit_temperature_recovers_a_known_temperature() -> None:
    """Probabilities made over-confident by T = 2.5 (logits x 2.5) are fitted back to ~2.5:
    on 4000 images the NLL minimum lies within 10% of it (its curvature: measured here)."""
    y, probs = _calibrated(4000, seed=1)
    sharp = with_temperature(probs, 1 / 2.5)
    t = fit_temperature(y, sharp)
    assert t == pytest.approx(2.5, rel=0.1)
    fixed = with_temperature(sharp, t)
    assert calibration_metrics(y, fixed)["nll"] < calibration_metrics(y, sharp)["nll"]
    assert expected_calibration_error(y, fixed) < expected_calibration_error(y, sharp)
    assert fit_temperature([], np.zeros((0, 3))) == 1.0


def test_a_separated_validation_split_keeps_the_model_as_trained() -> None:
    """Every top class right: the NLL falls without end as T -> 0, so there is no temperature to
    fit; the search would stop at its bound (the most over-confident model). One wrong image
    gives the NLL a minimum again."""
    y, probs = _calibrated(200, seed=2)
    right = np.eye(3)[y] * 0.5 + probs * 0.5  # every top class is the true class
    assert separated(y, right)
    assert fit_temperature(y, right) == 1.0
    wrong = right.copy()
    wrong[0] = np.roll(wrong[0], 1)  # one image's top class is now another
    assert not separated(y, wrong)
    assert T_BOUNDS[0] < fit_temperature(y, wrong) < T_BOUNDS[1]


def test_the_temperature_goes_into_the_output_layer(tmp_path: Path) -> None:
    import keras

    from busi.evaluate.calibration import scale_output_layer

    inputs = keras.Input((5,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="probs")(inputs))
    x = np.random.default_rng(0).normal(size=(16, 5)).astype(np.float32) * 3
    before = model(x).numpy()
    scale_output_layer(model, 1.7)
    after = model(x).numpy()
    np.testing.assert_allclose(after, with_temperature(before, 1.7), rtol=0, atol=1e-6)
    assert (after.argmax(1) == before.argmax(1)).all()
