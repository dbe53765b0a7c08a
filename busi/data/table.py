"""Label tables: a CSV, TSV or Excel worksheet naming each image's path and class, and optionally
its patient, its lesion masks, a predefined split and a predefined cross-validation fold
(``data.table``), read into the samples class folders give (``busi.data.scan.Sample``).

Pure: it reads the tables and decodes every image they name, and writes nothing. The table is
``data.table.file`` inside the staged ``data.source``; the paths in it are relative to the
table's own folder, made from a cell by a template (``data.table.path_format``, ``mask_format``:
``busi.config.templates``); a sample's ``path`` is relative to ``data.source``, as for class folders.
The delimiter (comma, semicolon, tab, bar) is the one whose header holds the configured columns;
Excel's UTF-8 byte-order mark and quoted fields are read; a table that is not UTF-8 is read
as Windows-1252 (Excel's legacy "CSV" on Windows); a workbook's worksheet is read by
``busi.data.sheets``. ``data.table.join`` adds the columns of other tables, matched on a key
column. A label matches ``data.classes`` (or a key of ``data.table.label_map``) exactly, else
ignoring case and spacing (``label_key``).

Every data row is accounted for: a sample, or a ``Problem`` (a path missing or outside
``data.source``, a cell a template cannot take, a row without a match in a joined table, a label
outside ``data.classes``, a duplicate row, a path listed twice with two labels, a missing mask) or an
unreadable image (``ScanResult.corrupt``). A column the job file names that the tables lack, or
mask columns none of whose masks is found, is the job file's fault: ``ConfigError`` (exit 2) naming
the key and the columns found. ``DataError`` (exit 3): a table is missing or unreadable, a split value
is not train/val/test, a fold is empty, a joined table gives one key two rows, or no usable row is
left for a class.
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
from typing import Mapping, Sequence

from busi.config.schema import DicomConfig, JoinConfig, TableConfig
from busi.config.templates import CellError, CellTemplate
from busi.data.scan import Sample, ScanResult, natural_key, read_image_infos
from busi.data.sheets import is_spreadsheet, read_sheet
from busi.data.split import SPLITS
from busi.errors import ConfigError, DataError
from busi.runtime.safeio import is_regular_file, read_regular_file

DELIMITERS = (",", ";", "\t", "|")
# what a row that gives no sample (or a sample without one of its masks) can be, in report order
PROBLEM_KINDS = ("no_path", "bad_cell", "unjoined", "outside_source", "missing_file", "bad_label", "duplicate_row",
                 "conflicting_rows", "missing_mask")


@dataclass(frozen=True)
class Problem:
    """A row of the table that gives no sample (or a mask that is missing): its line (the header
    is line 1), the path it names (relative to ``data.source``, or the cell as written) and why."""

    line: int
    path: str
    kind: str  # one of PROBLEM_KINDS
    detail: str


@dataclass(frozen=True)
class Joined:
    """One table of ``data.table.join``: its file, the worksheet read (None for CSV), its data rows,
    and how many of the label table's rows found no match in it."""

    file: Path
    sheet: str | None
    rows: int
    unmatched: int


@dataclass(frozen=True)
class TableResult:
    """The samples of a table (in natural path order) with, aligned to them, each one's patient,
    predefined split and predefined fold (None where the table gives none)."""

    scan: ScanResult
    file: Path
    delimiter: str | None  # None for a spreadsheet
    sheet: str | None  # the worksheet read, for a spreadsheet
    joins: tuple[Joined, ...]
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
    """Read ``cfg.file`` under ``root`` (the staged ``data.source``), joined with ``cfg.join``'s
    tables, into samples of ``classes`` (a DICOM image decoded as ``dicom`` says, as training decodes it)."""
    root = Path(root)
    file = root / cfg.file
    delimiter, sheet, header, records = read_rows(file, cfg.sheet, _wanted(cfg), "data.table.file", root)
    count = sum(1 for _line, cells in records if any(c.strip() for c in cells))
    problems: list[Problem] = []
    joins = []
    for i, join in enumerate(cfg.join):
        header, records, joined = _join(root, join, f"data.table.join[{i}]", header, records, file, problems)
        joins.append(joined)
    _check_columns(cfg, header, file)
    rows = _rows(root, cfg, classes, header, records, file, problems)
    _check_masks_found(cfg, rows, problems)
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
        file=file, delimiter=delimiter, sheet=sheet, joins=tuple(joins), rows=count,
        patients=tuple(r.patient for r in kept), splits=tuple(r.split for r in kept), folds=tuple(r.fold for r in kept),
        problems=tuple(sorted(problems, key=lambda p: (PROBLEM_KINDS.index(p.kind), p.line))),
    )


def read_rows(file: Path, sheet: str | None, wanted: Sequence[str], key: str,
              root: Path) -> tuple[str | None, str | None, list[str], list[tuple[int, list[str]]]]:
    """(delimiter or None, worksheet or None, header, [(line, cells)]) of a CSV/TSV or a workbook's
    worksheet. DataError naming ``file`` where it is missing or unreadable."""
    if not is_regular_file(file):
        what = "label table" if key == "data.table.file" else "table"
        raise DataError(file, f"{what} not found ({key} is relative to data.source, {root})")
    try:
        data = read_regular_file(file)
    except OSError as e:
        raise DataError(file, f"cannot read the table: {e.strerror or e}") from None
    if is_spreadsheet(file.name):
        name, header, records = read_sheet(file, data, sheet, key)
        return None, name, header, records
    if sheet is not None:
        sheet_key = key.rsplit(".", 1)[0] + ".sheet"
        raise ConfigError(f"{sheet_key}: {file.name} is a text table, not a workbook; remove the key",
                          keys=(sheet_key,))
    delimiter, header, records = parse_table(decode_table(data), wanted, file)
    return delimiter, None, header, records


def _join(root: Path, join: JoinConfig, key: str, header: list[str], records: list[tuple[int, list[str]]],
          file: Path, problems: list[Problem]) -> tuple[list[str], list[tuple[int, list[str]]], Joined]:
    """The label table's header and rows with ``join``'s columns after them (its columns the table
    already has are not added: the label table's own come first). A row without a match is left out,
    listed as ``unjoined``; a key given twice in the joined file with different rows is exit 3."""
    other = root / join.file
    if resolve_path("", join.file) is None or not _inside(os.path.realpath(root), other):
        raise ConfigError(f"{key}.file: {join.file!r}: give the table's path relative to data.source",
                          keys=(f"{key}.file",))
    other_key = join.file_column or join.column
    _delimiter, sheet, o_header, o_records = read_rows(other, join.sheet, [other_key], f"{key}.file", root)
    if join.column not in header:
        raise ConfigError(f"{key}.column: column {join.column!r} is not in the label table {file}; its columns: "
                          f"{', '.join(repr(c) for c in header)}", keys=(f"{key}.column",))
    if other_key not in o_header:
        which = "file_column" if join.file_column else "column"
        raise ConfigError(f"{key}.{which}: column {other_key!r} is not in {other}; its columns: "
                          f"{', '.join(repr(c) for c in o_header)}", keys=(f"{key}.{which}",))
    added = [(i, c) for i, c in enumerate(o_header) if c and c not in header]
    k = o_header.index(other_key)
    index: dict[str, tuple[int, list[str]]] = {}
    rows = 0
    for line, cells in o_records:
        if not any(c.strip() for c in cells):
            continue
        rows += 1
        value = cells[k].strip() if k < len(cells) else ""
        extra = [cells[i].strip() if i < len(cells) else "" for i, _c in added]
        if value in index and index[value][1] != extra:
            raise DataError(other, f"{other_key} {value!r} is given on line {index[value][0]} too, with "
                            "other values; the joined table must have one row per key", line=line)
        index.setdefault(value, (line, extra))
    on = header.index(join.column)
    out: list[tuple[int, list[str]]] = []
    unmatched = 0
    for line, cells in records:
        if not any(c.strip() for c in cells):
            continue
        value = cells[on].strip() if on < len(cells) else ""
        if value not in index:
            unmatched += 1
            problems.append(Problem(line, value, "unjoined", f"no row with {other_key} {value!r} in {join.file}"))
            continue
        out.append((line, [*cells, *([""] * (len(header) - len(cells))), *index[value][1]]))
    return [*header, *(c for _i, c in added)], out, Joined(other, sheet, rows, unmatched)


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
        raise DataError(file, f"not a readable CSV table: {e}", line=reader.line_num) from None
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
            joined = f" (with the columns of {', '.join(j.file for j in cfg.join)})" if cfg.join else ""
            raise ConfigError(f"data.table.{key}: column {column!r} is not in the label table {file}{joined}; its "
                              f"columns: {', '.join(repr(c) for c in header)}", keys=(f"data.table.{key}",))


def label_key(value: str) -> str:
    """A label as compared: case, spaces, underscores and hyphens ignored (``Benign``, `` benign ``,
    ``BENIGN`` are one label; ``4a``, ``4 A`` too; ``benign lesion``, ``Benign_Lesion``), and a whole
    number written as a decimal (``4.0``, a spreadsheet's 4) read as that number."""
    text = re.sub(r"[\s_]+|(?<=\w)-", "", value.strip()).casefold()  # a leading minus stays: -1 is not 1
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def class_of(value: str, classes: Sequence[str], label_map: Mapping[str, str] | None = None) -> str | None:
    """The class a label cell names: through ``label_map`` where one of its keys matches (as
    ``label_key`` compares), else the class it names (exactly, else the one class that matches)."""
    value = value.strip()
    if label_map:
        mapped = [c for k, c in label_map.items() if label_key(k) == label_key(value)]
        if mapped:
            value = mapped[0]
    if value in classes:
        return value
    matches = [c for c in classes if label_key(c) == label_key(value)]
    return matches[0] if len(matches) == 1 else None


def _rows(root: Path, cfg: TableConfig, classes: Sequence[str], header: list[str],
          records: list[tuple[int, list[str]]], file: Path, problems: list[Problem]) -> list[_Row]:
    """The usable rows (each path once); the problems of the others go to ``problems``."""
    col = {name: i for i, name in reversed(list(enumerate(header)))}  # a repeated header: its first column
    table_dir = posixpath.dirname(cfg.file.replace("\\", "/"))
    real_root = os.path.realpath(root)
    image_names = CellTemplate(cfg.path_format, cfg.path_replace)
    mask_names = CellTemplate(cfg.mask_format, cfg.mask_replace, cfg.mask_separator)
    first: dict[str, _Row] = {}
    conflicting: set[str] = set()

    def cell(cells: list[str], column: str | None) -> str:
        i = col.get(column, -1) if column else -1
        return cells[i].strip() if 0 <= i < len(cells) else ""

    for line, cells in records:
        if not any(c.strip() for c in cells):
            continue  # blank lines, as spreadsheets leave at the end
        split, fold = _split_of(cell(cells, cfg.split), cfg.split, file, line), cell(cells, cfg.fold) or None
        if cfg.fold and fold is None:
            raise DataError(file, f"column {cfg.fold!r} (data.table.fold) is empty; every row needs a fold",
                            line=line)
        value = cell(cells, cfg.path)
        if not value:
            problems.append(Problem(line, "", "no_path", f"column {cfg.path!r} is empty"))
            continue
        try:
            (name,) = image_names.names(value)
        except CellError as e:
            problems.append(Problem(line, value, "bad_cell", f"column {cfg.path!r}: {e.reason} (data.table.path_format)"))
            continue
        path = resolve_path(table_dir, name)
        if path is None or not _inside(real_root, root / path):
            problems.append(Problem(line, name, "outside_source", "the path leads outside data.source"))
            continue
        raw_label = cell(cells, cfg.label)
        label = class_of(raw_label, classes, cfg.label_map)
        if label is None:
            mapped = " or a key of data.table.label_map" if cfg.label_map else ""
            problems.append(Problem(line, path, "bad_label", f"{raw_label!r} is not one of {', '.join(classes)}{mapped}"))
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
        masks = _row_masks(root, real_root, table_dir, mask_names, line, [(m, cell(cells, m)) for m in cfg.masks],
                           problems)
        first[path] = _Row(line, path, label, masks, cell(cells, cfg.group) or None, split, fold)
    return [r for p, r in first.items() if p not in conflicting]


def _row_masks(root: Path, real_root: str, table_dir: str, mask_names: CellTemplate, line: int,
               cells: list[tuple[str, str]], problems: list[Problem]) -> tuple[str, ...]:
    """The masks a row's mask columns (``(column, cell)``) name that are files under ``root``
    (``real_root``: its resolved path, found once per table), each once; each one that is not
    goes to ``problems`` (the image is kept)."""
    masks: list[str] = []
    for column, value in cells:
        try:
            names = mask_names.names(value)
        except CellError as e:
            problems.append(Problem(line, e.value, "missing_mask", f"column {column!r}: {e.reason} "
                                    "(data.table.mask_format); the image is kept"))
            continue
        for mask_name in names:
            mask = resolve_path(table_dir, mask_name)
            if mask is None or not _inside(real_root, root / mask) or not is_regular_file(root / mask):
                problems.append(Problem(line, mask or mask_name, "missing_mask", f"column {column!r}; the image is kept"))
            elif mask not in masks:
                masks.append(mask)
    return tuple(masks)


def _check_masks_found(cfg: TableConfig, rows: list[_Row], problems: list[Problem]) -> None:
    """Mask columns that name files, none of which is found, are the job file's fault (the masks'
    folder or name pattern), not a data set without masks: exit 2, naming a path looked for."""
    missing = [p for p in problems if p.kind == "missing_mask"]
    if not cfg.masks or not missing or any(r.masks for r in rows):
        return
    keys = ("data.table.masks", "data.table.mask_format", "data.table.mask_replace")
    raise ConfigError(f"data.table.masks: none of the masks that column(s) {', '.join(repr(m) for m in cfg.masks)} name "
                      f"is found ({len(missing)} looked for, e.g. {missing[0].path!r} from line {missing[0].line}; paths "
                      "are relative to the table's folder); give their folder and name with data.table.mask_format "
                      "(and mask_replace), as path_format does for the images", keys=keys)


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
        raise DataError(file, f"column {column!r} (data.table.split) holds {value!r}; every row needs one "
                        f"of {', '.join(SPLITS)}", line=line)
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
