"""Prediction rows: the CSV contract shared by ``busi-job predict`` and ``predictions/test.csv``.

Columns: ``path,label,label_index,prob_<class>...,error``; classes come from the model's
``labels.json``, never from a hard-coded list.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def prediction_columns(classes: Sequence[str]) -> list[str]:
    return ["path", "label", "label_index"] + [f"prob_{c}" for c in classes] + ["error"]


def prediction_row(path: str, probs: np.ndarray | None, classes: Sequence[str], error: str = "") -> list[Any]:
    """One CSV row: a classified file, or a failed one (empty label and probabilities, the error)."""
    if probs is None:
        return [path, "", ""] + [""] * len(classes) + [error]
    i = int(np.argmax(probs))
    return [path, classes[i], i] + [f"{float(p):.6f}" for p in probs] + [error]
