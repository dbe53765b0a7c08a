"""busi.config.templates: a table cell to paths (data.table.path_format, mask_format, *_replace, mask_separator)."""

from __future__ import annotations

import pytest

from busi.config.templates import CellError, CellTemplate, fill, replace_problem, template_problem


@pytest.mark.parametrize("fmt, value, out", [
    ("Images/{}.png", "bus_0001-l", "Images/bus_0001-l.png"),
    ("original/{:06d}.png", "1", "original/000001.png"),
    ("original/{:06d}.png", "7.0", "original/000007.png"),  # a spreadsheet's number
    ("original/{:06d}.png", " 12 ", "original/000012.png"),
    ("{:d}", "12345678901234567890123", "12345678901234567890123"),  # exact, not through a float
    ("x/{:>5}.png", "ab", "x/   ab.png"),
    ("{{literal}}/{}", "a", "{literal}/a"),
    ("{:.1f}.png", "2", "2.0.png"),
])
def test_fill(fmt: str, value: str, out: str) -> None:
    assert template_problem(fmt) is None
    assert fill(fmt, value) == out


@pytest.mark.parametrize("fmt, value, why", [
    ("{:06d}.png", "abc", "'abc' is not a number, which {:06d} needs"),
    ("{:06d}.png", "1.5", "'1.5' is not a whole number, which {:06d} needs"),
    ("{:.1f}.png", "x", "'x' is not a number, which {:.1f} needs"),
])
def test_a_cell_the_template_cannot_take_is_a_cell_error(fmt: str, value: str, why: str) -> None:
    with pytest.raises(CellError) as e:
        fill(fmt, value)
    assert e.value.value == value and e.value.reason == why


@pytest.mark.parametrize("fmt, part", [
    ("Images/x.png", "it has 0"),
    ("{}/{}.png", "it has 2"),
    ("{0}.png", "no name, index or !conversion"),
    ("{name}.png", "no name, index or !conversion"),
    ("{!r}.png", "no name, index or !conversion"),
    ("{:06q}.png", "is not a format spec"),
    ("{.png", "is not a template"),
])
def test_template_problems(fmt: str, part: str) -> None:
    why = template_problem(fmt)
    assert why is not None and part in why and repr(fmt) in why


def test_replace_problems() -> None:
    assert replace_problem(()) is None and replace_problem(("^bus_", "mask_")) is None
    assert "two strings" in (replace_problem(("^bus_",)) or "")
    assert "missing ), unterminated subpattern" in (replace_problem(("(bus", "x")) or "")
    assert "invalid group reference" in (replace_problem(("^(bus)", "\\2")) or "")


def test_cell_templates_as_the_public_sets_name_their_files() -> None:
    bus_bra_mask = CellTemplate("Masks/{}.png", ("^bus_", "mask_"))
    assert bus_bra_mask.names("bus_0001-l") == ["Masks/mask_0001-l.png"]
    assert CellTemplate("GT/{:06d}.png").names("163") == ["GT/000163.png"]
    breast = CellTemplate("folder/{}", (), "&")
    assert breast.names("case010_other1.png&case010_other2.png") == ["folder/case010_other1.png",
                                                                      "folder/case010_other2.png"]
    assert breast.names(" a.png & &b.png ") == ["folder/a.png", "folder/b.png"]  # blanks and empty parts dropped
    assert breast.names("") == [] and CellTemplate().names("  ") == []
    assert CellTemplate("{}", ("^(\\w+)_(\\d+)$", "\\2/\\1")).names("ALWI_000") == ["000/ALWI"]
