"""Sphinx configuration: MyST Markdown pages, the Furo theme, and the reference pages generated
from the code at every build (configuration keys, the run-directory layout, the command line),
so none of them is ever kept by hand. `make docs` builds with -W: a warning fails the build."""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))

import busi  # noqa: E402

project = "busi"
author = "the busi authors"
copyright = "the busi authors, Apache-2.0"
release = version = busi.__version__
extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
html_theme = "furo"
html_title = f"busi {release}"
myst_heading_anchors = 3  # "page.md#a-heading" links resolve (and are checked)
suppress_warnings: list[str] = []


def write_reference(app: object = None) -> None:
    """docs/reference/*.md from the code: the schema's doc lines, RUN_LAYOUT, the parser."""
    from busi.config.reference import reference_markdown
    from busi.files.rundir import RUN_LAYOUT

    out = DOCS / "reference"
    out.mkdir(exist_ok=True)
    (out / "configuration.md").write_text(reference_markdown(), encoding="utf-8")
    kinds = {"file": "file, replaced atomically", "folder": "folder, replaced whole", "dir": "folder, written inside"}
    rows = ["| path | what | it holds |", "|---|---|---|"]
    rows += [f"| `OUT/{e.path}{'/' if e.kind != 'file' else ''}` | {kinds[e.kind]} | {e.doc.replace('|', '/')} |"
             for e in RUN_LAYOUT]
    (out / "run-layout.md").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (out / "cli.md").write_text(cli_markdown(), encoding="utf-8")


def cli_markdown() -> str:
    import argparse

    from busi.cli import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: the same width on every machine
    parser = build_parser()
    parser.prog = "busi-job"
    parts = ["# Command-line reference", "", "Generated from `busi-job`'s own parser.", "",
             "```text", parser.format_help().rstrip(), "```", ""]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        parts += [f"## `busi-job {name}`", "", "```text", p.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def setup(app: object) -> None:
    app.connect("builder-inited", write_reference)  # type: ignore[attr-defined]
