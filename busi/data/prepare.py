"""From ``data.source`` to a split dataset and its report: stage, scan, group, split.

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
from busi.data.dedupe import Group, group_duplicates
from busi.data.scan import Sample, ScanResult, scan_dataset
from busi.data.split import SPLITS, SplitRow, read_splits_file, split_groups
from busi.data.staging import ArchiveLimits, stage_source
from busi.errors import DataError

log = logging.getLogger("busi")


@dataclass(frozen=True)
class PreparedData:
    scan: ScanResult
    groups: tuple[Group, ...]
    rows: tuple[SplitRow, ...]
    report: dict[str, Any]

    @property
    def root(self) -> Path:
        return self.scan.root

    def split(self, name: str) -> list[tuple[Sample, SplitRow]]:
        """(sample, row) pairs of one split, in sample order."""
        by_path = {s.path: s for s in self.scan.samples}
        return [(by_path[r.path], r) for r in self.rows if r.split == name]


def prepare_data(cfg: DataConfig, seed: int, exclude: Sequence[str | Path] = ()) -> PreparedData:
    """Stage ``cfg.source``, scan it, group duplicates and split (or read ``cfg.splits``).
    ``exclude``: busi's own output folders (the run directory), never scanned as data."""
    root = stage_source(cfg.source, cfg.staging_dir, ArchiveLimits.from_config(cfg))
    scan = scan_dataset(root, cfg.classes, exclude=[*exclude, *([cfg.staging_dir] if cfg.staging_dir else [])])
    for rel in scan.excluded_dirs:
        log.warning("data: %s is inside the dataset %s; busi's own output there is not scanned as data",
                    scan.root / rel, scan.root)
    groups = group_duplicates(scan.samples, cfg.dedupe, cfg.near_threshold)
    left_out: list[str] = []
    if cfg.splits:
        rows, left_out = read_splits_file(cfg.splits, scan.samples)
    else:
        fractions = {"train": cfg.split.train, "val": cfg.split.val, "test": cfg.split.test}
        rows = split_groups(scan.samples, groups, fractions, seed, drop_conflicts=cfg.conflicts == "drop")
    if not any(r.split == "train" for r in rows):
        raise DataError(root, "no training images after de-duplication and splitting; add images or check data.split")
    report = build_report(cfg, scan, groups, rows, left_out)
    return PreparedData(scan=scan, groups=tuple(groups), rows=tuple(rows), report=report)


def build_report(
    cfg: DataConfig, scan: ScanResult, groups: list[Group], rows: list[SplitRow], left_out: list[str]
) -> dict[str, Any]:
    """The inspect report (also ``OUT/data/report.json``): plain JSON-ready values."""
    samples = scan.samples
    per_split: dict[str, dict[str, int]] = {s: {c: 0 for c in cfg.classes} for s in SPLITS}
    for r in rows:
        per_split[r.split][r.label] += 1
    used = {r.path for r in rows}
    dup_groups = [g for g in groups if len(g.members) > 1]
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
            "images_without_masks": [s.path for s in samples if not s.masks],
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
            "label_conflicts": sum(1 for g in conflicts for i in g.members if samples[i].path not in used),
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
        "members": [samples[i].path for i in g.members],
        "labels": list(g.labels),
        "exact": len({samples[i].sha256 for i in g.members}) == 1,
    }
