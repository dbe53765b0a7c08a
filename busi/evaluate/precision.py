"""The accuracy contract of a reduced precision (INT8, bfloat16): may prediction use it?

Measured at training time on the evaluated split (test, else validation), against the float32
model's probabilities on the same images:

* the labels agree with float32's on at least ``AGREEMENT`` of the images, and
* accuracy, macro F1 and macro ROC AUC each lie inside the float32 model's 95% bootstrap
  interval (``metrics.json`` ``ci95``): whatever the precision changed, it is not a difference
  the test split can tell from resampling noise.

A precision that misses it is never chosen by ``--precision auto`` (``busi.model.engines``);
asked for by name it still runs. The results go into ``metrics.json`` (``precisions``), the
model folder (``model/precisions.json``, which prediction reads) and the model card.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from busi.evaluate.metrics import compute_metrics

AGREEMENT = 0.99
CONTRACT_METRICS = ("accuracy", "macro_f1", "roc_auc_macro")


def not_measured(reason: str) -> dict[str, Any]:
    """A precision whose contract could not be measured here (it is then never chosen by auto)."""
    return {"measured": False, "passed": False, "reason": reason}


def precision_contract(y_true: Sequence[int], reference: np.ndarray, candidate: np.ndarray, reference_ci: dict[str, Any],
                       classes: Sequence[str]) -> dict[str, Any]:
    """The contract of ``candidate`` probabilities against float32's ``reference`` on the same
    images with labels ``y_true``; ``reference_ci``: float32's ``ci95``."""
    y = np.asarray(y_true, dtype=np.int64)
    if len(y) == 0:
        return not_measured("no evaluated images")
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    agreement = float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1)))
    ours = compute_metrics(y, candidate, classes)
    theirs = compute_metrics(y, reference, classes)
    failures = [] if agreement >= AGREEMENT else [f"labels agree with float32 on {agreement:.1%} of the images "
                                                  f"(needs {AGREEMENT:.0%})"]
    within: dict[str, bool | None] = {}
    for key in CONTRACT_METRICS:
        interval, value = reference_ci.get(key), ours.get(key)
        if interval is None or value is None or interval[0] is None:
            within[key] = None  # undefined here (a class absent from the split): not a failure
            continue
        within[key] = bool(interval[0] - 1e-12 <= value <= interval[1] + 1e-12)
        if not within[key]:
            failures.append(f"{key} {value:.3f} outside float32's 95% interval [{interval[0]:.3f}, {interval[1]:.3f}]")
    return {
        "measured": True,
        "passed": not failures,
        "images": int(len(y)),
        "label_agreement": round(agreement, 6),
        "max_abs_prob_diff": round(float(np.max(np.abs(reference - candidate))), 6),
        "metrics": {k: ours.get(k) for k in CONTRACT_METRICS},
        "float32": {k: theirs.get(k) for k in CONTRACT_METRICS},
        "float32_ci95": {k: reference_ci.get(k) for k in CONTRACT_METRICS},
        "within_ci95": within,
        "reason": "; ".join(failures) if failures else "labels and metrics within the contract",
    }
