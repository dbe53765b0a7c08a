"""Cross-validation folds, as pure functions: each image's fold (scikit-learn's
``StratifiedGroupKFold``, seeded, whole duplicate groups per fold), each fold's
train/val/test split, and ``folds.csv`` (``path,label,group,fold``) written and read back."""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from busi.data.scan import SampleKeyed
from busi.data.split import SplitRow, frame_cell, read_frame_cell
from busi.errors import ConfigError, DataError
from busi.files.text import csv_text, text_of
from busi.runtime.safeio import read_regular_file

FOLDS_COLUMNS = ("path", "label", "group", "fold", "frame")
LEGACY_FOLDS_COLUMNS = FOLDS_COLUMNS[:4]  # no sample is a frame of a cine loop: no frame column
MAX_FOLDS = 20


@dataclass(frozen=True)
class FoldRow(SampleKeyed):
    """One line of ``folds.csv``; ``frame`` as in ``SplitRow``."""

    path: str
    label: str
    group: str
    fold: int
    frame: int | None = None


def assign_folds(rows: Sequence[SplitRow], k: int, seed: int) -> list[FoldRow]:
    """Each used image's fold: stratified by label, whole duplicate groups per fold (seeded)."""
    from sklearn.model_selection import StratifiedGroupKFold

    if not 2 <= k <= MAX_FOLDS:
        raise ConfigError(f"--folds: {k}; give 2 to {MAX_FOLDS}")
    groups = {r.group for r in rows}
    if len(groups) < k:
        raise DataError(None, f"cv: {len(groups)} duplicate group(s) cannot fill {k} folds; use fewer folds")
    labels = np.array([r.label for r in rows])
    smallest = min(Counter(labels.tolist()).values())
    if smallest < k:
        raise DataError(None, f"cv: the smallest class has {smallest} image(s), too few for {k} folds (each fold tests "
                        f"every class); use at most {smallest} folds")
    fold = np.zeros(len(rows), np.int64)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for i, (_, test) in enumerate(splitter.split(np.zeros(len(rows)), labels, [r.group for r in rows])):
        fold[test] = i
    return [FoldRow(r.path, r.label, r.group, int(f), r.frame) for r, f in zip(rows, fold)]


def fold_splits(folds: Sequence[FoldRow], fold: int, val_fraction: float, seed: int) -> list[SplitRow]:
    """Fold ``fold``'s train/val/test rows: test is the fold; val is carved group-aware and
    stratified from the others (``val_fraction`` of their images; none at 0)."""
    from sklearn.model_selection import StratifiedGroupKFold

    rest = [r for r in folds if r.fold != fold]
    val_groups: set[str] = set()
    if val_fraction > 0 and rest:
        # one part of round(1 / val_fraction) stratified group parts; fewer parts where a class is
        # too small for that many (each part holds every class)
        smallest = min(Counter(r.label for r in rest).values())
        parts = min(max(2, round(1 / val_fraction)), smallest)
        if parts >= 2 and len({r.group for r in rest}) >= parts:
            splitter = StratifiedGroupKFold(n_splits=parts, shuffle=True, random_state=seed + 1 + fold)
            _, val = next(splitter.split(np.zeros(len(rest)), [r.label for r in rest], [r.group for r in rest]))
            val_groups = {rest[i].group for i in val}
    out = []
    for r in folds:
        split = "test" if r.fold == fold else "val" if r.group in val_groups else "train"
        out.append(SplitRow(r.path, r.label, r.group, split, r.frame))
    return out


def folds_text(rows: Sequence[FoldRow]) -> str:
    """``folds.csv``; the ``frame`` column only where a sample is a frame of a cine loop."""
    if not any(r.frame is not None for r in rows):
        return csv_text(LEGACY_FOLDS_COLUMNS, ([r.path, r.label, r.group, r.fold] for r in rows))
    return csv_text(FOLDS_COLUMNS, ([r.path, r.label, r.group, r.fold, frame_cell(r.frame)] for r in rows))


def read_folds(path: Path) -> list[FoldRow]:
    try:
        reader = csv.DictReader(io.StringIO(text_of(read_regular_file(path)), newline=""))
        if tuple(reader.fieldnames or ()) not in (FOLDS_COLUMNS, LEGACY_FOLDS_COLUMNS):
            raise ValueError(f"columns {reader.fieldnames}, expected {','.join(FOLDS_COLUMNS)}")
        return [FoldRow(r["path"], r["label"], r["group"], int(r["fold"]), read_frame_cell(r.get("frame"), path, line))
                for line, r in enumerate(reader, start=2)]
    except FileNotFoundError:
        raise DataError(path, "not found; run `busi-job cv JOB.yaml --folds K` first") from None
    except (OSError, ValueError, KeyError, TypeError, csv.Error) as e:
        raise DataError(path, f"not a busi folds file: {e}; remove it to assign the folds again") from None
