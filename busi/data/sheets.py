"""Spreadsheets as label tables: an Excel workbook's worksheet read into the header and rows a CSV
gives (``busi.data.table``), so every check and error after it is the CSV's.

openpyxl (the maintained reader of the Office Open XML formats that pandas uses too) in read-only
mode: the worksheet streams row by row, and formulas give the value Excel last computed and saved.
A cell becomes the text a CSV export of it would hold: a whole number without ``.0`` (UDIAT's image
``1``, a BI-RADS ``4``), a date as ISO 8601, an empty cell as ``""``.

``.xls`` (the binary format before 2007) and OpenDocument ``.ods`` are refused with what to do: the
readers of those formats (xlrd, odfpy) have had no release since 2020, and every spreadsheet program saves
``.xlsx``.
"""

from __future__ import annotations

import datetime
import io
import zipfile
from pathlib import Path
from typing import Any

from busi.errors import ConfigError, DataError

WORKBOOK_SUFFIXES = (".xlsx", ".xlsm")
# spreadsheets busi does not read, with what to do
REFUSED_SUFFIXES = (".xls", ".ods", ".numbers")


def is_spreadsheet(name: str) -> bool:
    return Path(name).suffix.lower() in WORKBOOK_SUFFIXES + REFUSED_SUFFIXES


def read_sheet(file: Path, data: bytes, sheet: str | None, key: str) -> tuple[str, list[str], list[tuple[int, list[str]]]]:
    """(the worksheet's name, its first row as the header, [(row number, cells)] of the rest) of
    the workbook ``data`` read from ``file``; ``sheet``: the worksheet's name (None: the first).
    ``key``: the job file's key naming the file, for a ConfigError (an unknown sheet, a format
    busi does not read); DataError naming ``file`` for a workbook that does not open."""
    suffix = file.suffix.lower()
    if suffix in REFUSED_SUFFIXES:
        raise ConfigError(f"{key}: {file.name} is a {suffix} spreadsheet, which busi does not read; save it as an "
                          "Excel workbook (.xlsx) or as CSV UTF-8 and name that file", keys=(key,))
    import openpyxl

    try:
        book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as e:
        raise DataError(file, f"not a readable Excel workbook ({type(e).__name__}: {e}); open it in a spreadsheet "
                        "program and save it again as .xlsx") from None
    try:
        names = book.sheetnames
        if sheet is None:
            name = names[0]
        elif sheet in names:
            name = sheet
        else:
            sheet_key = key.rsplit(".", 1)[0] + ".sheet"
            raise ConfigError(f"{sheet_key}: {file.name} has no worksheet {sheet!r}; its worksheets: "
                              f"{', '.join(repr(n) for n in names)}", keys=(sheet_key,))
        rows = book[name].iter_rows(values_only=True)
        header = [as_text(v).strip() for v in next(rows, ())]
        records = [(i, [as_text(v) for v in row]) for i, row in enumerate(rows, start=2)]
    finally:
        book.close()
    while header and not header[-1]:
        header.pop()  # formatted but empty columns at the right
    if not any(header):
        raise DataError(file, f"worksheet {name!r} is empty (no header row)")
    return name, header, records


def as_text(value: Any) -> str:
    """A cell's value as a CSV export would write it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime.datetime):
        return value.isoformat(sep=" ") if value.time() != datetime.time() else value.date().isoformat()
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return str(value)
