"""From ``data.source`` to a split dataset and its report: stage, scan (class folders) or read
the label table (``data.table``), group duplicates and patients, split.

Patients come from the table's group column or ``data.group_pattern`` on the file names; their
groups are joined with the duplicate groups (``busi.data.dedupe.group_patients``), so the split,
``cv``'s folds and the training hashes keep a patient on one side. The split is, first to last:
``data.splits`` (a splits.csv), the table's predefined split column (``data.table.split``), or
busi's own (stratified, seeded). A predefined split or fold that puts one patient on two sides
is an error (exit 3); one that splits only duplicate images of different patients is a warning
in the log and the report.

This is what ``busi-job inspect`` shows and what training consumes; it writes nothing
except the staging dir (archives), so it is safe to run anywhere.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from busi.config.schema import DataConfig
from busi.data.dedupe import (
    Group,
    group_duplicates,
    group_patients,
    patients_from_names,
)
from busi.data.folds import FoldRow
from busi.data.scan import Sample, ScanResult, natural_key, scan_dataset
from busi.data.split import (
    SPLITS,
    Crossing,
    SplitRow,
    find_crossings,
    given_split,
    read_splits_file,
    split_groups,
)
from busi.data.staging import ArchiveLimits, stage_source
from busi.data.table import PROBLEM_KINDS, TableResult, read_table
from busi.errors import DataError

log = logging.getLogger("busi")

NO_PATIENTS = ("no patient IDs given (data.table.group or data.group_pattern): images of one patient may sit on "
               "both sides of the split")


@dataclass(frozen=True)
class PreparedData:
    scan: ScanResult
    groups: tuple[Group, ...]  # duplicate groups (the report's duplicates and label conflicts)
    rows: tuple[SplitRow, ...]
    report: dict[str, Any]
    split_groups: tuple[Group, ...] = ()  # what the split keeps whole: duplicates joined by patient
    folds: tuple[FoldRow, ...] = ()  # data.table.fold's folds of the rows' images, in rows' order; else none
    patients: tuple[str | None, ...] = ()  # each scanned sample's patient ID, in scan order (None: not given)

    @property
    def root(self) -> Path:
        return self.scan.root

    def split(self, name: str) -> list[tuple[Sample, SplitRow]]:
        """(sample, row) pairs of one split, in sample order."""
        by_key = {s.key: s for s in self.scan.samples}  # a row's path is its sample's key
        return [(by_key[r.key], r) for r in self.rows if r.split == name]


def prepare_data(cfg: DataConfig, seed: int, exclude: Sequence[str | Path] = ()) -> PreparedData:
    """Stage ``cfg.source``, scan it (or read ``cfg.table``), group duplicates and patients and
    split (or read ``cfg.splits``, or the table's split column). ``exclude``: busi's own output
    folders (the run directory), never scanned as data."""
    root = stage_source(cfg.source, cfg.staging_dir, ArchiveLimits.from_config(cfg))
    table = read_table(root, cfg.table, cfg.classes, cfg.dicom) if cfg.table is not None else None
    if table is not None:
        scan = table.scan
    else:
        scan = scan_dataset(root, cfg.classes, exclude=[*exclude, *([cfg.staging_dir] if cfg.staging_dir else [])],
                            dicom=cfg.dicom)
    for rel in scan.excluded_dirs:
        log.warning("data: %s is inside the dataset %s; busi's own output there is not scanned as data",
                    scan.root / rel, scan.root)
    samples = scan.samples
    patients = patients_of(cfg, scan, table)
    duplicates = group_duplicates(samples, cfg.dedupe, cfg.near_threshold)
    drop = [i for g in duplicates if g.conflict and cfg.conflicts == "drop" for i in g.members]
    groups = group_patients(samples, duplicates, patients, drop)
    rows, left_out, crossings = split_rows(cfg, table, samples, groups, patients, seed)
    if not any(r.split == "train" for r in rows):
        raise DataError(root, "no training images after de-duplication and splitting; add images or check data.split")
    folds, fold_crossings = given_folds(cfg, table, samples, groups, patients, rows)
    report = build_report(cfg, scan, duplicates, rows, left_out)
    report.update(source_report(cfg, table, samples, patients, rows, crossings, folds, fold_crossings))
    return PreparedData(scan=scan, groups=tuple(duplicates), rows=tuple(rows), report=report,
                        split_groups=tuple(groups), folds=tuple(folds), patients=tuple(patients))


def split_rows(cfg: DataConfig, table: TableResult | None, samples: Sequence[Sample], groups: Sequence[Group],
               patients: Sequence[str | None], seed: int) -> tuple[list[SplitRow], list[str], list[Crossing]]:
    """The split's rows, the scanned paths a ``data.splits`` file leaves out, and a predefined
    split's crossings: ``data.splits``, else the table's split column, else busi's split."""
    if cfg.splits:
        rows, left_out = read_splits_file(cfg.splits, samples)
        side_of = {r.key: r.split for r in rows}  # the images the file leaves out are on no side
        crossings = _checked_crossings(samples, groups, patients, [side_of.get(s.key, "") for s in samples],
                                       "data.splits", Path(cfg.splits))
        return rows, left_out, crossings
    if table is not None and cfg.table is not None and cfg.table.split:
        sides = [s or "" for s in table.splits]
        crossings = _checked_crossings(samples, groups, patients, sides, "data.table.split", table.file)
        return given_split(samples, groups, sides), [], crossings
    fractions = {"train": cfg.split.train, "val": cfg.split.val, "test": cfg.split.test}
    return split_groups(samples, groups, fractions, seed, drop_conflicts=False), [], []


def patients_of(cfg: DataConfig, scan: ScanResult, table: TableResult | None) -> list[str | None]:
    """Each sample's patient ID: ``data.group_pattern`` on the file name, else the table's group
    column (the two are never both set), else None."""
    if cfg.group_pattern is not None:
        found = patients_from_names([s.path for s in scan.samples], cfg.group_pattern)
        unmatched = [s.path for s, p in zip(scan.samples, found) if p is None]
        if unmatched:
            log.warning("data: data.group_pattern %r matches no patient in %d file name(s) (e.g. %s); each is its own "
                        "group", cfg.group_pattern, len(unmatched), unmatched[0])
        return found
    if table is not None:
        return list(table.patients)
    return [None] * len(scan.samples)


def _checked_crossings(samples: Sequence[Sample], groups: Sequence[Group], patients: Sequence[str | None],
                       sides: Sequence[str], key: str, file: Path) -> list[Crossing]:
    """A predefined split's (or fold's) crossings: DataError for a patient on two sides, the
    others (duplicate images of different patients) logged and returned for the report."""
    crossings = find_crossings(samples, groups, patients, sides)
    leaks = [c for c in crossings if c.kind == "patient"]
    if leaks:
        shown = "; ".join(f"{c.group} ({', '.join(c.sides)})" for c in leaks[:5])
        raise DataError(file, f"{key} puts {len(leaks)} patient(s) on two sides: {shown}{' ...' if len(leaks) > 5 else ''}"
                        f"; fix it, or set {key}: null to let busi split by patient")
    for c in crossings:
        log.warning("data: %s puts duplicate images %s on two sides (%s); their patients differ, so they are kept as "
                    "given", key, ", ".join(c.members), ", ".join(c.sides))
    return crossings


def table_report(table: TableResult, images: int | None = None) -> dict[str, Any]:
    """The label table's part of ``data/report.json`` (and of ``inspect`` and ``evaluate``): the
    file, sheet and joins read, its rows, the images it gave (``images``: those used, default all)
    and every row left out or flagged."""
    root = table.scan.root
    return {
        "file": table.file.relative_to(root).as_posix(),
        "delimiter": table.delimiter,
        "sheet": table.sheet,
        "joins": [{"file": j.file.relative_to(root).as_posix(), "sheet": j.sheet, "rows": j.rows,
                   "unmatched": j.unmatched} for j in table.joins],
        "rows": table.rows,
        "images": len(table.scan.samples) if images is None else images,
        "problems": {k: n for k in PROBLEM_KINDS if (n := sum(p.kind == k for p in table.problems))},
        "rows_left_out": [{"line": p.line, "path": p.path, "kind": p.kind, "detail": p.detail}
                          for p in table.problems],
    }


def given_folds(cfg: DataConfig, table: TableResult | None, samples: Sequence[Sample], groups: Sequence[Group],
                patients: Sequence[str | None], rows: Sequence[SplitRow]) -> tuple[list[FoldRow], list[Crossing]]:
    """The table's fold column as folds 0..K-1 (its distinct values in natural order) of the
    rows' images, and its crossings; none without ``data.table.fold``."""
    if table is None or cfg.table is None or not cfg.table.fold:
        return [], []
    names = sorted({f for f in table.folds if f is not None}, key=natural_key)
    index = {name: i for i, name in enumerate(names)}
    sides = [f or "" for f in table.folds]
    crossings = _checked_crossings(samples, groups, patients, sides, "data.table.fold", table.file)
    fold_of = {s.key: index[f] for s, f in zip(samples, sides)}
    return [FoldRow(r.path, r.label, r.group, fold_of[r.key], r.frame) for r in rows], crossings


def source_report(cfg: DataConfig, table: TableResult | None, samples: Sequence[Sample],
                  patients: Sequence[str | None], rows: Sequence[SplitRow], crossings: Sequence[Crossing],
                  folds: Sequence[FoldRow], fold_crossings: Sequence[Crossing]) -> dict[str, Any]:
    """The report's ``table``, ``patients``, ``split`` and ``folds`` entries."""
    patient_of = {s.key: p for s, p in zip(samples, patients)}
    given = cfg.group_pattern is not None or (cfg.table is not None and cfg.table.group is not None)
    source = (f"data.group_pattern '{cfg.group_pattern}'" if cfg.group_pattern is not None
              else f"data.table.group (column {cfg.table.group!r})" if given and cfg.table is not None else None)
    without = [s.key for s, p in zip(samples, patients) if p is None] if given else []
    note = NO_PATIENTS if not given else (
        f"{len(without)} image(s) without a patient ID: each is its own group" if without else None)
    split_from = ("data.splits" if cfg.splits else f"data.table.split (column {cfg.table.split!r})"
                  if cfg.table is not None and cfg.table.split else "busi (stratified by class, seeded, whole groups)")
    out: dict[str, Any] = {
        "table": None if table is None else table_report(table, len(samples)),
        "patients": {
            "from": source,
            "count": len({p for p in patients if p is not None}),
            "per_split": {s: len({patient_of[r.key] for r in rows if r.split == s and patient_of[r.key] is not None})
                          for s in SPLITS},
            "groups_per_split": {s: len({r.group for r in rows if r.split == s}) for s in SPLITS},
            "images_without_patient": without,
            "note": note,
        },
        "split": {"from": split_from, "crossings": [_crossing_json(c) for c in crossings]},
        "folds": None,
    }
    if folds:
        k = max(f.fold for f in folds) + 1
        out["folds"] = {"from": f"data.table.fold (column {cfg.table.fold!r})" if cfg.table else None, "count": k,
                        "sizes": [sum(f.fold == i for f in folds) for i in range(k)],
                        "crossings": [_crossing_json(c) for c in fold_crossings]}
    return out


def _crossing_json(c: Crossing) -> dict[str, Any]:
    return {"group": c.group, "kind": c.kind, "sides": list(c.sides), "members": list(c.members)}


def build_report(
    cfg: DataConfig, scan: ScanResult, groups: list[Group], rows: list[SplitRow], left_out: list[str]
) -> dict[str, Any]:
    """The inspect report (also ``OUT/data/report.json``): plain JSON-ready values."""
    samples = scan.samples
    per_split: dict[str, dict[str, int]] = {s: {c: 0 for c in cfg.classes} for s in SPLITS}
    for r in rows:
        per_split[r.split][r.label] += 1
    used = {r.key for r in rows}
    # the frames of one cine loop share the file's hash: one file is no duplicate of itself
    dup_groups = [g for g in groups if len({samples[i].path for i in g.members}) > 1]
    conflicts = [g for g in dup_groups if g.conflict]
    widths = [s.width for s in samples]
    heights = [s.height for s in samples]
    return {
        "root": str(scan.root),
        "classes": list(cfg.classes),
        "counts": {
            "images": len(samples),
            "used": len(rows),
            "per_class": {c: sum(1 for s in samples if s.label == c) for c in cfg.classes},
            "per_split": per_split,
        },
        "image_size": {
            "width": [min(widths), max(widths)] if widths else None,
            "height": [min(heights), max(heights)] if heights else None,
        },
        "modes": dict(sorted(Counter(s.mode for s in samples).items())),
        "masks": {
            "mask_files": sum(len(s.masks) for s in samples) + len(scan.orphan_masks),
            "images_with_masks": sum(1 for s in samples if s.masks),
            "images_without_masks": [s.key for s in samples if not s.masks],
            "orphan_masks": list(scan.orphan_masks),
        },
        "duplicates": {
            "mode": cfg.dedupe,
            "near_threshold": cfg.near_threshold,
            "groups": [_group_json(g, samples) for g in dup_groups],
        },
        "label_conflicts": [
            {**_group_json(g, samples), "action": "dropped" if cfg.conflicts == "drop" and not cfg.splits else "kept"}
            for g in conflicts
        ],
        "excluded": {
            "label_conflicts": sum(1 for g in conflicts for i in g.members if samples[i].key not in used),
            "not_in_splits_file": left_out,
        },
        "skipped_files": list(scan.skipped),
        "corrupt_images": [{"path": p, "error": e} for p, e in scan.corrupt],
        "extra_folders": list(scan.extra_dirs),
        "excluded_folders": list(scan.excluded_dirs),  # busi's own output inside the dataset
    }


def _group_json(g: Group, samples: tuple[Sample, ...]) -> dict[str, Any]:
    return {
        "id": g.id,
        "members": [samples[i].key for i in g.members],
        "labels": list(g.labels),
        "exact": len({samples[i].sha256 for i in g.members}) == 1,
    }
