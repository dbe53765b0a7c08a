"""How numbers look wherever busi shows them (the model card, report.html, log lines, the
cross-validation summary): a value with its 95% interval, and the rows of the
positive-class-vs-rest table."""

from __future__ import annotations

from typing import Any


def format_interval(value: float | None, interval: list[float] | None, digits: int = 3) -> str:
    """``0.620 [0.530, 0.710]`` (``n/a`` for a missing value; the value alone without an interval)."""
    if value is None:
        return "n/a"
    text = f"{value:.{digits}f}"
    return f"{text} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]" if interval else text


def rule_rows(screen: dict[str, Any]) -> list[tuple[str, ...]]:
    """(rule name, sensitivity, specificity, PPV, NPV with intervals) per rule of
    ``screening_metrics``' result: the table of the model card and of report.html."""
    rows = []
    for rule in ("argmax", "at_threshold"):
        rates = screen.get(rule)
        if rates:
            name = "top class" if rule == "argmax" else f"probability >= {screen['threshold']:.3f}"
            # the rates in the order screening computed their intervals (sensitivity, specificity, PPV, NPV)
            rows.append((name, *(format_interval(rates[k], interval) for k, interval in rates["ci95"].items())))
    return rows
