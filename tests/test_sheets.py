"""busi.data.sheets: an Excel worksheet read as the header and rows a CSV gives."""

from __future__ import annotations

import datetime
from pathlib import Path

import openpyxl
import pytest

from busi.data.sheets import as_text, read_sheet
from busi.errors import ConfigError, DataError


def _book(path: Path) -> bytes:
    book = openpyxl.Workbook()
    book.active.title = "Data Dictionary"
    book.active.append(["Column", "Meaning"])
    data = book.create_sheet("clinical")
    data.append(["Image", "Type", "Scan date", "Score", None, None])  # formatted empty columns at the right
    data.append([1, "Benign", datetime.date(2012, 3, 4), 0.5])
    data.append([2.0, "Malignant", datetime.datetime(2012, 3, 5, 10, 30), True])
    data.append([None, None, None, None])
    data.append(["=1+2", "Benign"])
    book.save(path)
    return path.read_bytes()


def test_a_worksheet_reads_as_a_csv_export_would(tmp_path: Path) -> None:
    data = _book(tmp_path / "b.xlsx")
    name, header, rows = read_sheet(tmp_path / "b.xlsx", data, "clinical", "data.table.file")
    assert name == "clinical" and header == ["Image", "Type", "Scan date", "Score"]
    assert rows[0] == (2, ["1", "Benign", "2012-03-04", "0.5", "", ""])
    assert rows[1] == (3, ["2", "Malignant", "2012-03-05 10:30:00", "TRUE", "", ""])
    assert rows[2][0] == 4 and not any(rows[2][1])
    assert rows[3] == (5, ["", "Benign", "", "", "", ""])  # a formula Excel never computed has no saved value
    first, header, _ = read_sheet(tmp_path / "b.xlsx", data, None, "data.table.file")
    assert first == "Data Dictionary" and header == ["Column", "Meaning"]


def test_an_unknown_sheet_names_the_sheets_there_are(tmp_path: Path) -> None:
    data = _book(tmp_path / "b.xlsx")
    with pytest.raises(ConfigError) as e:
        read_sheet(tmp_path / "b.xlsx", data, "clinical data", "data.table.join[0].file")
    assert e.value.keys == ("data.table.join[0].sheet",)
    assert "b.xlsx has no worksheet 'clinical data'; its worksheets: 'Data Dictionary', 'clinical'" in str(e.value)


def test_a_damaged_workbook_is_a_data_error_naming_it(tmp_path: Path) -> None:
    data = _book(tmp_path / "b.xlsx")
    (tmp_path / "cut.xlsx").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as e:
        read_sheet(tmp_path / "cut.xlsx", data[: len(data) // 2], None, "data.table.file")
    assert e.value.path == str(tmp_path / "cut.xlsx") and "not a readable Excel workbook" in e.value.reason
    with pytest.raises(DataError):
        read_sheet(tmp_path / "csv.xlsx", b"a,b\n1,2\n", None, "data.table.file")


def test_cells_as_text() -> None:
    assert [as_text(v) for v in (None, 4, 4.0, 4.5, "4a", False)] == ["", "4", "4", "4.5", "4a", "FALSE"]
    assert as_text(datetime.time(9, 5)) == "09:05:00"
