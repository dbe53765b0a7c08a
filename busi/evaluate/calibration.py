"""Calibration: whether a predicted probability of 0.8 is right 80% of the time.

* Expected calibration error (ECE): the images are put in ``ECE_BINS`` equal-width bins of
  their top-class probability (confidence); ECE is the image-weighted mean, over the bins, of
  |accuracy - mean confidence| (Guo et al., "On Calibration of Modern Neural Networks", 2017,
  who use 15 bins; so does busi).
* Brier score: the mean over images of the squared distance between the probability vector
  and the one-hot truth (0 is perfect; 2 the worst; a uniform guess over 3 classes scores 0.667).
* Temperature scaling (``train.calibration: temperature``): one scalar T > 0 fitted on the
  validation split by minimising the negative log-likelihood of softmax(logits / T). It never
  changes a label (argmax is invariant to T), only how confident the probabilities are. busi's
  output layer is a Dense softmax, so dividing its kernel and bias by T puts T inside the model:
  ``model.keras``, the SavedModel, OpenVINO and every engine apply it with no extra layer.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

ECE_BINS = 15
T_BOUNDS = (0.05, 20.0)  # the temperatures searched (log-uniform): far wider than fitted ones


def reliability_bins(y_true: Sequence[int], probs: np.ndarray, bins: int = ECE_BINS) -> dict[str, list[Any]]:
    """Per equal-width confidence bin: images, mean confidence, accuracy (None where empty)."""
    y = np.asarray(y_true, dtype=np.int64)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    which = np.minimum((conf * bins).astype(np.int64), bins - 1)  # confidence 1.0 goes in the last bin
    count = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=conf, minlength=bins)
    hit_sum = np.bincount(which, weights=correct.astype(np.float64), minlength=bins)
    return {
        "edges": [round(i / bins, 6) for i in range(bins + 1)],
        "count": count.tolist(),
        "confidence": [float(c / n) if n else None for c, n in zip(conf_sum, count)],
        "accuracy": [float(h / n) if n else None for h, n in zip(hit_sum, count)],
    }


def expected_calibration_error(y_true: Sequence[int], probs: np.ndarray, bins: int = ECE_BINS) -> float:
    table = reliability_bins(y_true, probs, bins)
    n = sum(table["count"])
    if n == 0:
        return float("nan")
    return float(sum(c * abs(a - f) for c, a, f in zip(table["count"], table["accuracy"], table["confidence"]) if c)
                 / n)


def brier_score(y_true: Sequence[int], probs: np.ndarray) -> float:
    y = np.asarray(y_true, dtype=np.int64)
    if len(y) == 0:
        return float("nan")
    onehot = np.eye(probs.shape[1])[y]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def calibration_metrics(y_true: Sequence[int], probs: np.ndarray) -> dict[str, Any]:
    """ECE (``ECE_BINS`` bins), Brier score and negative log-likelihood of a split."""
    y = np.asarray(y_true, dtype=np.int64)
    nll = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)))) if len(y) else float("nan")
    return {"ece": expected_calibration_error(y, probs), "ece_bins": ECE_BINS, "brier": brier_score(y, probs),
            "nll": nll}


def with_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(probs) / T): the probabilities of the model whose logits are divided by T
    (log-probabilities are the logits up to a per-image constant, which softmax ignores)."""
    logits = np.log(np.clip(np.asarray(probs, np.float64), 1e-300, None)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def separated(y_true: Sequence[int], probs: np.ndarray) -> bool:
    """Every image's top class is its true class. Then no temperature minimises the NLL: it keeps
    falling as T -> 0 (every probability pushed to 0 or 1), so a fit would only find the search
    bound and make the model as over-confident as it can be (a small validation split of a
    well-trained model is often separated)."""
    y = np.asarray(y_true, dtype=np.int64)
    return bool(len(y)) and bool(np.all(np.asarray(probs).argmax(axis=1) == y))


def fit_temperature(y_true: Sequence[int], probs: np.ndarray) -> float:
    """The T in ``T_BOUNDS`` minimising the negative log-likelihood of ``with_temperature``;
    1.0 (the model as trained) where it is not identifiable: no images, or ``separated``."""
    from scipy.optimize import minimize_scalar

    y = np.asarray(y_true, dtype=np.int64)
    if len(y) == 0 or separated(y, probs):
        return 1.0

    def nll(log_t: float) -> float:
        p = with_temperature(probs, float(np.exp(log_t)))
        return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-300, None))))

    res = minimize_scalar(nll, bounds=tuple(np.log(T_BOUNDS)), method="bounded", options={"xatol": 1e-5})
    return float(np.exp(res.x))


def scale_output_layer(model: Any, temperature: float, layer: str = "probs") -> None:
    """Divide the softmax layer's kernel and bias by ``temperature`` (in place)."""
    dense = model.get_layer(layer)
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel / temperature, bias / temperature])
