"""The text rule of every file busi writes or reads back (CSVs, input lists, JSON): UTF-8, and
a file name that is not valid UTF-8 (bytes such as ``\\xff`` from old shares) keeps its own
bytes (Python's ``surrogateescape``), so reading a CSV back gives the same path, byte for byte.
CSVs are written and read with the csv module only (``CsvWriter``, ``read_csv_text``)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import IO, Any, Iterable, Sequence

TEXT_ENCODING = "utf-8"
TEXT_ERRORS = "surrogateescape"  # a name that is not UTF-8 keeps its bytes


def open_text(path: str | Path, mode: str = "r") -> IO[str]:
    """A text file busi writes or reads back (CSVs, input lists): UTF-8, names' bytes kept."""
    return open(path, mode, encoding=TEXT_ENCODING, errors=TEXT_ERRORS, newline="")


def text_bytes(text: str) -> bytes:
    """``text`` as busi writes it to a file (``text_of``' inverse)."""
    return text.encode(TEXT_ENCODING, TEXT_ERRORS)


def text_of(data: bytes) -> str:
    """The text of a file busi reads back (``text_bytes``' inverse: never a UnicodeDecodeError)."""
    return data.decode(TEXT_ENCODING, TEXT_ERRORS)


def json_text(obj: Any) -> str:
    """JSON as busi writes it: indented, keys in insertion order, anything else as ``str``."""
    return json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n"


class CsvWriter:
    """The csv module's writer for every CSV busi writes: rows end in ``\n``, and a row with a
    carriage return in a field ends in ``\r\n`` instead, because only then does the csv
    module quote a bare ``\r`` (a name holding one would otherwise split the row). Read them
    back with the csv module (``read_csv_text``), never by lines: names may hold ``\n``,
    U+2028 or ``\x1c``, which ``str.splitlines`` breaks on."""

    def __init__(self, fh: IO[str]) -> None:
        self._lf = csv.writer(fh, lineterminator="\n")
        self._crlf = csv.writer(fh, lineterminator="\r\n")

    def writerow(self, row: Sequence[Any]) -> None:
        (self._crlf if any("\r" in str(v) for v in row) else self._lf).writerow(row)

    def writerows(self, rows: Iterable[Sequence[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def read_csv_text(text: str) -> list[list[str]]:
    """Every record of CSV ``text`` (csv.Error on a malformed one)."""
    return list(csv.reader(io.StringIO(text, newline="")))


def csv_text(columns: Sequence[str], rows: Iterable[Sequence[Any] | dict[str, Any]]) -> str:
    """A whole CSV: the header, then each row (a sequence, or a dict read by column name)."""
    buf = io.StringIO(newline="")
    w = CsvWriter(buf)
    w.writerow(columns)
    for r in rows:
        w.writerow([r.get(c, "") for c in columns] if isinstance(r, dict) else r)
    return buf.getvalue()
