"""The language of ``data.table``'s path keys: how a table's cell becomes file paths
(``path_format`` with ``path_replace``; ``mask_format`` with ``mask_replace`` and ``mask_separator``),
checked when the job file is read and applied when the table is (``busi.data.table``).

Public sets name their files by an ID that is not a path: BUS-BRA's ``bus_0001-l`` is
``Images/bus_0001-l.png`` and its mask ``Masks/mask_0001-l.png``; UDIAT Dataset B's ``1`` is
``original/000001.png``; BrEaST puts several mask names in one cell, joined with ``&``. A template
is Python's format syntax with one replacement field (``{}``, or ``{:06d}`` to zero-pad a number,
whose cell may read ``1`` or, from a spreadsheet, ``1.0``); before it, an optional regular-expression
substitution of the cell (``re.sub(PATTERN, REPLACEMENT, cell)``, ``\\1`` for a group).

Pure functions; a cell a template cannot take is a ``CellError`` (the row's problem, not the job's),
a template that is wrong for every cell a message for the job file's key (``template_problem``).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Sequence

INT_TYPES = frozenset("bcdoxXn")  # format types that take an int
FLOAT_TYPES = frozenset("eEfFgG%")


class CellError(ValueError):
    """A cell a template cannot make a path of (``{:06d}`` given ``abc``)."""

    def __init__(self, value: str, reason: str) -> None:
        super().__init__(reason)
        self.value = value
        self.reason = reason


def template_problem(fmt: str) -> str | None:
    """Why ``fmt`` cannot be a cell template (not exactly one ``{}``/``{:spec}`` field, or a spec
    no value can take), or None where it can."""
    try:
        fields = [(name, spec, conv) for _lit, name, spec, conv in string.Formatter().parse(fmt) if name is not None]
    except ValueError as e:
        return f"{fmt!r} is not a template: {e} (write {{{{ and }}}} for literal braces)"
    if len(fields) != 1:
        return f"{fmt!r} needs exactly one {{}} (or {{:06d}} and the like) for the cell's value; it has {len(fields)}"
    name, spec, conv = fields[0]
    if name != "" or conv is not None:
        return f"{fmt!r}: write the field as {{}} or {{:SPEC}} (no name, index or !conversion)"
    try:
        format(_sample(spec or ""), spec or "")
    except ValueError as e:
        return f"{fmt!r}: {{:{spec}}} is not a format spec ({e})"
    return None


def replace_problem(replace: Sequence[str]) -> str | None:
    """Why ``replace`` is not ``()`` or ``[PATTERN, REPLACEMENT]`` with a pattern that compiles."""
    if not replace:
        return None
    if len(replace) != 2:
        return f"expected [PATTERN, REPLACEMENT] (two strings), got {list(replace)!r}"
    try:
        compiled = re.compile(replace[0])
        compiled.sub(replace[1], "")  # a bad group reference (\\3 of a one-group pattern) fails here
    except re.error as e:
        return f"{replace[0]!r} with {replace[1]!r}: {e}"
    return None


def fill(fmt: str, value: str) -> str:
    """``fmt`` with ``value`` in its field; the value read as a number where the spec needs one."""
    spec = next(spec or "" for _lit, name, spec, _conv in string.Formatter().parse(fmt) if name is not None)
    kind = spec[-1:]
    arg: object = value
    if kind in INT_TYPES:
        try:
            arg = int(value)
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                raise CellError(value, f"{value!r} is not a number, which {{:{spec}}} needs") from None
            if not number.is_integer():
                raise CellError(value, f"{value!r} is not a whole number, which {{:{spec}}} needs") from None
            arg = int(number)
    elif kind in FLOAT_TYPES:
        try:
            arg = float(value)
        except ValueError:
            raise CellError(value, f"{value!r} is not a number, which {{:{spec}}} needs") from None
    return fmt.format(arg)


@dataclass(frozen=True)
class CellTemplate:
    """How a cell becomes paths: ``replace`` (``()`` or ``(PATTERN, REPLACEMENT)``) then ``format``;
    with ``separator``, each part of the cell between separators in turn (empty parts skipped)."""

    format: str = "{}"
    replace: tuple[str, ...] = ()
    separator: str | None = None

    def names(self, cell: str) -> list[str]:
        """The paths ``cell`` names (none for an empty cell). CellError for a part the template cannot take."""
        parts = cell.split(self.separator) if self.separator else [cell]
        out = []
        for part in (p.strip() for p in parts):
            if not part:
                continue
            if self.replace:
                part = re.sub(self.replace[0], self.replace[1], part)
            out.append(fill(self.format, part))
        return out


def _sample(spec: str) -> object:
    kind = spec[-1:]
    return 1 if kind in INT_TYPES else 1.0 if kind in FLOAT_TYPES else "x"
