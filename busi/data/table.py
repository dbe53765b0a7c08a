"""Label tables: a CSV or TSV naming each image's path and class, and optionally its patient, its
lesion masks, a predefined split and a predefined cross-validation fold (``data.table``), read
into the samples class folders give (``busi.data.scan.Sample``).

Pure: it reads the table and decodes every image it names, and writes nothing. The table is
``data.table.file`` inside the staged ``data.source``; the paths in it are relative to the
table's own folder (``data.table.path_format`` makes a path of a bare ID, as BUS-BRA's ``ID``
column is); a sample's ``path`` is relative to ``data.source``, as for class folders. The
delimiter (comma, semicolon, tab, bar) is the one whose header holds the configured columns;
Excel's UTF-8 byte-order mark and quoted fields are read; a table that is not UTF-8 is read
as Windows-1252 (Excel's legacy "CSV" on Windows). A label matches ``data.classes`` exactly,
else ignoring case.

Every data row is accounted for: a sample, or a ``Problem`` (a path missing or outside
``data.source``, a label outside ``data.classes``, a duplicate row, a path listed twice with two
labels, a missing mask) or an unreadable image (``ScanResult.corrupt``). A column the job file
names that the table lacks is the job file's fault: ``ConfigError`` (exit 2) naming the key and
the columns found. ``DataError`` (exit 3): the table is missing or unreadable, a split value is
not train/val/test, a fold is empty, or no usable row is left for a class.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

from busi.config.schema import DicomConfig, TableConfig
from busi.data.scan import Sample, ScanResult, natural_key, read_image_infos
from busi.data.split import SPLITS
from busi.errors import ConfigError, DataError
from busi.runtime.safeio import is_regular_file, read_regular_file

DELIMITERS = (",", ";", "\t", "|")
SPREADSHEET_SUFFIXES = (".xlsx", ".xls", ".xlsm", ".ods", ".numbers")
# what a row that gives no sample (or a sample without one of its masks) can be, in report order
PROBLEM_KINDS = ("no_path", "outside_source", "missing_file", "bad_label", "duplicate_row", "conflicting_rows",
                 "missing_mask")


@dataclass(frozen=True)
class Problem:
    """A row of the table that gives no sample (or a mask that is missing): its line (the header
    is line 1), the path it names (relative to ``data.source``, or the cell as written) and why."""

    line: int
    path: str
    kind: str  # one of PROBLEM_KINDS
    detail: str


@dataclass(frozen=True)
class TableResult:
    """The samples of a table (in natural path order) with, aligned to them, each one's patient,
    predefined split and predefined fold (None where the table gives none)."""

    scan: ScanResult
    file: Path
    delimiter: str
    rows: int  # data rows, blank ones not counted
    patients: tuple[str | None, ...]
    splits: tuple[str | None, ...]
    folds: tuple[str | None, ...]
    problems: tuple[Problem, ...]


@dataclass(frozen=True)
class _Row:
    line: int
    path: str
    label: str
    masks: tuple[str, ...]
    patient: str | None
    split: str | None
    fold: str | None


def read_table(root: str | Path, cfg: TableConfig, classes: Sequence[str], dicom: DicomConfig) -> TableResult:
    """Read ``cfg.file`` under ``root`` (the staged ``data.source``) into samples of ``classes``
    (a DICOM image decoded as ``dicom`` says, as training decodes it)."""
    root = Path(root)
    file = root / cfg.file
    if Path(cfg.file).suffix.lower() in SPREADSHEET_SUFFIXES:
        raise ConfigError(f"data.table.file: {cfg.file} is a spreadsheet; save it as CSV (Excel: File > Save As > "
                          "CSV UTF-8) and name that file", keys=("data.table.file",))
    if not is_regular_file(file):
        raise DataError(file, f"label table not found (data.table.file is relative to data.source, {root})")
    try:
        text = decode_table(read_regular_file(file))
    except OSError as e:
        raise DataError(file, f"cannot read the label table: {e.strerror or e}") from None
    delimiter, header, records = parse_table(text, _wanted(cfg), file)
    _check_columns(cfg, header, file)
    rows, problems, count = _rows(root, cfg, classes, header, records, file)
    samples: list[Sample] = []
    kept: list[_Row] = []
    corrupt: list[tuple[str, str]] = []
    for r in sorted(rows, key=lambda r: natural_key(r.path)):
        try:
            infos = read_image_infos(root / r.path, dicom)
        except DataError as e:
            corrupt.append((r.path, e.reason))
            continue
        for info in infos:  # a cine loop under data.dicom.frame all: a sample per frame, each with its row
            samples.append(Sample(path=r.path, label=r.label, label_index=classes.index(r.label), masks=r.masks,
                                  **info))
            kept.append(r)
    _check_usable(file, classes, samples, problems, corrupt, count)
    return TableResult(
        scan=ScanResult(root=root, samples=tuple(samples), orphan_masks=(), skipped=(), corrupt=tuple(corrupt)),
        file=file, delimiter=delimiter, rows=count,
        patients=tuple(r.patient for r in kept), splits=tuple(r.split for r in kept), folds=tuple(r.fold for r in kept),
        problems=tuple(sorted(problems, key=lambda p: (PROBLEM_KINDS.index(p.kind), p.line))),
    )


def decode_table(data: bytes) -> str:
    """UTF-8 (a byte-order mark, as Excel writes "CSV UTF-8", dropped), else Windows-1252."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def parse_table(text: str, wanted: Sequence[str], file: Path) -> tuple[str, list[str], list[tuple[int, list[str]]]]:
    """(delimiter, header, [(line, cells)]): the delimiter is the first whose header holds every
    ``wanted`` column, else the one that splits the header into most columns."""
    first = text.split("\n", 1)[0]
    best = ","
    for d in DELIMITERS:
        cells = [c.strip() for c in next(csv.reader([first], delimiter=d), [])]
        if all(w in cells for w in wanted):
            best = d
            break
        if len(cells) > len(next(csv.reader([first], delimiter=best), [])):
            best = d
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=best)
    try:
        header = [c.strip() for c in next(reader, [])]
        records = []
        start = reader.line_num + 1
        for cells in reader:
            records.append((start, cells))
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(f"{file}:{reader.line_num}", f"not a readable CSV table: {e}") from None
    if not header or not any(header):
        raise DataError(file, "the label table is empty (no header line)")
    return best, header, records


def _wanted(cfg: TableConfig) -> list[str]:
    return [c for c in (cfg.path, cfg.label, cfg.group, cfg.split, cfg.fold, *cfg.masks) if c]


def _check_columns(cfg: TableConfig, header: list[str], file: Path) -> None:
    named = [("path", cfg.path), ("label", cfg.label), ("group", cfg.group), ("split", cfg.split), ("fold", cfg.fold)]
    named += [("masks", m) for m in cfg.masks]
    for key, column in named:
        if column is not None and column not in header:
            raise ConfigError(f"data.table.{key}: column {column!r} is not in the label table {file}; its columns: "
                              f"{', '.join(repr(c) for c in header)}", keys=(f"data.table.{key}",))


def class_of(value: str, classes: Sequence[str]) -> str | None:
    """The class a label cell names: exactly, else the one class equal to it ignoring case."""
    value = value.strip()
    if value in classes:
        return value
    matches = [c for c in classes if c.casefold() == value.casefold()]
    return matches[0] if len(matches) == 1 else None


def _rows(root: Path, cfg: TableConfig, classes: Sequence[str], header: list[str],
          records: list[tuple[int, list[str]]], file: Path) -> tuple[list[_Row], list[Problem], int]:
    """The usable rows (each path once) and the problems of the others; and the data rows counted."""
    col = {name: i for i, name in reversed(list(enumerate(header)))}  # a repeated header: its first column
    table_dir = posixpath.dirname(cfg.file.replace("\\", "/"))
    real_root = os.path.realpath(root)
    problems: list[Problem] = []
    first: dict[str, _Row] = {}
    conflicting: set[str] = set()
    count = 0

    def cell(cells: list[str], column: str | None) -> str:
        i = col.get(column, -1) if column else -1
        return cells[i].strip() if 0 <= i < len(cells) else ""

    for line, cells in records:
        if not any(c.strip() for c in cells):
            continue  # blank lines, as spreadsheets leave at the end
        count += 1
        split, fold = _split_of(cell(cells, cfg.split), cfg.split, file, line), cell(cells, cfg.fold) or None
        if cfg.fold and fold is None:
            raise DataError(f"{file}:{line}", f"column {cfg.fold!r} (data.table.fold) is empty; every row needs a fold")
        value = cell(cells, cfg.path)
        if not value:
            problems.append(Problem(line, "", "no_path", f"column {cfg.path!r} is empty"))
            continue
        path = resolve_path(table_dir, cfg.path_format.replace("{}", value))
        if path is None or not _inside(real_root, root / path):
            problems.append(Problem(line, value, "outside_source", "the path leads outside data.source"))
            continue
        raw_label = cell(cells, cfg.label)
        label = class_of(raw_label, classes)
        if label is None:
            problems.append(Problem(line, path, "bad_label", f"{raw_label!r} is not one of {', '.join(classes)}"))
            continue
        if path in first:
            if first[path].label == label:
                problems.append(Problem(line, path, "duplicate_row", f"listed before on line {first[path].line}"))
            else:
                conflicting.add(path)
                problems.append(Problem(line, path, "conflicting_rows", f"{label!r} here, {first[path].label!r} on line "
                                        f"{first[path].line}: left out"))
            continue
        if not is_regular_file(root / path):
            problems.append(Problem(line, path, "missing_file", "no such file"))
            continue
        masks = []
        for m in cfg.masks:
            mask_value = cell(cells, m)
            mask = resolve_path(table_dir, mask_value) if mask_value else None
            if mask_value and (mask is None or not _inside(real_root, root / mask) or not is_regular_file(root / mask)):
                problems.append(Problem(line, mask or mask_value, "missing_mask", f"column {m!r}; the image is kept"))
            elif mask:
                masks.append(mask)
        first[path] = _Row(line, path, label, tuple(masks), cell(cells, cfg.group) or None, split, fold)
    return [r for p, r in first.items() if p not in conflicting], problems, count


def resolve_path(table_dir: str, value: str) -> str | None:
    """``value`` (relative to the table's folder, either slash) relative to ``data.source``, in
    POSIX form; None for an absolute path or one that climbs out of ``data.source``."""
    value = value.replace("\\", "/")
    if value.startswith("/") or re.match(r"^[A-Za-z]:", value):
        return None
    path = posixpath.normpath(posixpath.join(table_dir, value))
    if path == ".." or path.startswith("../") or path == ".":
        return None
    return PurePosixPath(path).as_posix()


def _inside(real_root: str, path: Path) -> bool:
    """``path`` stays inside the dataset once links are followed."""
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def _split_of(value: str, column: str | None, file: Path, line: int) -> str | None:
    if column is None:
        return None
    split = value.lower()
    if split not in SPLITS:
        raise DataError(f"{file}:{line}", f"column {column!r} (data.table.split) holds {value!r}; every row needs one "
                        f"of {', '.join(SPLITS)}")
    return split


def _check_usable(file: Path, classes: Sequence[str], samples: list[Sample], problems: list[Problem],
                  corrupt: list[tuple[str, str]], count: int) -> None:
    """DataError when no row is usable, or a class of ``data.classes`` has none."""
    if not samples:
        kinds = Counter(p.kind for p in problems if p.kind != "missing_mask")
        why = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in kinds.items())
        why += f"{', ' if why else ''}{len(corrupt)} unreadable" if corrupt else ""
        raise DataError(file, f"no usable row among {count} ({why or 'the table has no data rows'}); "
                        "check data.table's columns, data.table.path_format and data.classes")
    per_class = Counter(s.label for s in samples)
    empty = [c for c in classes if per_class[c] == 0]
    if empty:
        raise DataError(file, f"no usable row of class(es) {', '.join(empty)} (data.classes); the table's usable "
                        f"labels: {dict(per_class)}; drop the class from data.classes or fix the label column")
