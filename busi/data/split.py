"""Stratified, group-aware, seeded train/val/test splits; reading a given splits.csv; checking
a predefined split (a label table's split or fold column) for patients on two sides.

Pure functions: the same samples, groups, fractions and seed give the same split on every
machine. A group (a patient's images and every copy of them) never straddles splits, so neither
a copy of a test image nor another image of a test patient is trained on.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from busi.data.dedupe import Group
from busi.data.scan import Sample, SampleKeyed
from busi.errors import DataError
from busi.files.text import csv_text, text_of
from busi.runtime.safeio import read_regular_file

SPLITS = ("train", "val", "test")
SPLITS_COLUMNS = ("path", "label", "group", "split", "frame")
REQUIRED_SPLITS_COLUMNS = SPLITS_COLUMNS[:4]  # frame: only where a sample is a frame of a cine loop


@dataclass(frozen=True)
class SplitRow(SampleKeyed):
    """One line of ``splits.csv``: an image file, and its 1-based ``frame`` where the sample is
    one frame of a cine loop (``data.dicom.frame: all``)."""

    path: str
    label: str
    group: str
    split: str
    frame: int | None = None


def splits_text(rows: Sequence[SplitRow]) -> str:
    """``splits.csv`` (a run's data/splits.csv, a cv fold's split): a row per sample; the
    ``frame`` column only where a sample is a frame of a cine loop (else the file is as it
    always was, and so is its hash, which a checkpoint compares on resume)."""
    if not any(r.frame is not None for r in rows):
        return csv_text(REQUIRED_SPLITS_COLUMNS, ([r.path, r.label, r.group, r.split] for r in rows))
    return csv_text(SPLITS_COLUMNS, ([r.path, r.label, r.group, r.split, frame_cell(r.frame)] for r in rows))


def frame_cell(frame: int | None) -> str:
    return "" if frame is None else str(frame)


def read_frame_cell(value: str | None, path: str | Path, line: int | None = None) -> int | None:
    """A frame column's cell: empty (or no column) for a whole file, else a frame number >= 1;
    DataError naming ``path`` (and ``line``, where given) otherwise."""
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise DataError(path, f"frame {value!r}; expected a frame number (1, 2, ...) or nothing", line=line)
    return int(value)


def split_groups(
    samples: Sequence[Sample],
    groups: Sequence[Group],
    fractions: dict[str, float],
    seed: int,
    drop_conflicts: bool = True,
) -> list[SplitRow]:
    """Assign every group to a split, stratified by class, by sample counts.

    Within each class the groups are shuffled with the seed and each goes to the split
    furthest below its target count. Conflicting groups are dropped (``drop_conflicts``) or
    assigned by their majority label. Rows come back in sample order.
    """
    active = [s for s in SPLITS if fractions.get(s, 0.0) > 0]
    by_class: dict[str, list[Group]] = {}
    for g in groups:
        if g.conflict and drop_conflicts:
            continue
        label = Counter(samples[i].label for i in g.members).most_common(1)[0][0]
        by_class.setdefault(label, []).append(g)

    assignment: dict[int, tuple[str, str]] = {}
    for class_index, label in enumerate(sorted(by_class)):
        class_groups = by_class[label]
        rng = np.random.default_rng([seed, class_index])
        order = rng.permutation(len(class_groups))
        total = sum(len(g.members) for g in class_groups)
        counts = {s: 0 for s in active}
        for k in order:
            g = class_groups[int(k)]
            # furthest below target; ties go to the earlier split (train, val, test)
            split = max(active, key=lambda s: (fractions[s] * total - counts[s], -active.index(s)))
            counts[split] += len(g.members)
            for i in g.members:
                assignment[i] = (g.id, split)
    return [
        SplitRow(path=s.path, label=s.label, group=assignment[i][0], split=assignment[i][1], frame=s.frame)
        for i, s in enumerate(samples)
        if i in assignment
    ]


@dataclass(frozen=True)
class Crossing:
    """A patient, or a group joined by duplicate images, that a predefined split or fold puts on
    several sides."""

    group: str  # the patient ID, or the group's id
    kind: str  # patient | duplicates
    sides: tuple[str, ...]
    members: tuple[str, ...]  # paths


def find_crossings(samples: Sequence[Sample], groups: Sequence[Group], patients: Sequence[str | None],
                   sides: Sequence[str]) -> list[Crossing]:
    """Patients whose images ``sides`` (sample i's split or fold; "" for none: left out) puts on
    several sides; then groups that cross only through duplicate images of different patients (or none)."""
    from busi.data.scan import natural_key

    out: list[Crossing] = []
    for g in groups:
        crossing_patients = []
        for p in g.patients:
            idx = [i for i in g.members if patients[i] == p]
            seen = tuple(sorted({sides[i] for i in idx if sides[i]}, key=natural_key))
            if len(seen) > 1:
                crossing_patients.append(p)
                out.append(Crossing(p, "patient", seen, tuple(samples[i].key for i in idx)))
        seen = tuple(sorted({sides[i] for i in g.members if sides[i]}, key=natural_key))
        if len(seen) > 1 and not crossing_patients:
            out.append(Crossing(g.id, "duplicates", seen, tuple(samples[i].key for i in g.members)))
    return out


def given_split(samples: Sequence[Sample], groups: Sequence[Group], sides: Sequence[str]) -> list[SplitRow]:
    """The rows of a predefined split: sample i in ``sides[i]``, its group's id; samples of no
    group (dropped label conflicts) left out. Rows in sample order."""
    group_of = {i: g.id for g in groups for i in g.members}
    return [SplitRow(path=s.path, label=s.label, group=group_of[i], split=sides[i], frame=s.frame)
            for i, s in enumerate(samples) if i in group_of]


def parse_splits(path: str | Path, what: str = "data.splits file") -> list[tuple[int, SplitRow]]:
    """The rows of a ``splits.csv``, each with its line in the file, checked on their own:
    the required columns, a known split, a frame number or nothing. DataError naming the file
    (``what`` says which file it is) or the line."""
    p = Path(path)
    try:
        # the rule splits.csv was written with: non-UTF-8 names keep their bytes; a FIFO never blocks
        reader = csv.DictReader(io.StringIO(text_of(read_regular_file(p)), newline=""))
        listed = list(reader)
    except FileNotFoundError:
        raise DataError(p, f"{what} not found") from None
    except (OSError, csv.Error) as e:
        raise DataError(p, f"cannot read {what}: {getattr(e, 'strerror', None) or e}") from None
    missing_cols = [c for c in REQUIRED_SPLITS_COLUMNS if c not in (reader.fieldnames or [])]
    if missing_cols:
        raise DataError(p, f"{what} lacks column(s) {missing_cols}; expected header "
                        f"{','.join(REQUIRED_SPLITS_COLUMNS)} (and frame, where samples are frames of cine loops)")
    rows = []
    for line, r in enumerate(listed, start=2):
        row = SplitRow(path=r["path"], label=r["label"], group=r["group"], split=r["split"],
                       frame=read_frame_cell(r.get("frame"), p, line))
        if row.split not in SPLITS:
            raise DataError(p, f"split {row.split!r} for {row.key}; expected one of {', '.join(SPLITS)}", line=line)
        rows.append((line, row))
    return rows


def read_splits_file(path: str | Path, samples: Sequence[Sample]) -> tuple[list[SplitRow], list[str]]:
    """Use a given ``splits.csv``: its rows (in sample order) and the scanned paths it leaves out.

    Every listed path must exist in the scan with the same label; otherwise DataError naming it.
    """
    by_key = {s.key: s for s in samples}  # a cine loop's frames by their keys (path#frame-N)
    rows: dict[str, SplitRow] = {}
    for line, row in parse_splits(path):
        sp = row.key
        if sp not in by_key:
            raise DataError(path, f"{sp} is not an image of the scanned dataset; check data.source", line=line)
        if by_key[sp].label != row.label:
            raise DataError(path, f"{sp} is labelled {row.label!r} here but {by_key[sp].label!r} in the dataset",
                            line=line)
        if sp in rows:
            raise DataError(path, f"{sp} is listed twice", line=line)
        rows[sp] = dataclasses.replace(row, group=row.group or sp)
    ordered = [rows[s.key] for s in samples if s.key in rows]
    left_out = [s.key for s in samples if s.key not in rows]
    return ordered, left_out
