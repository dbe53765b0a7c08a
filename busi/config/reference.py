"""The configuration reference, generated from the schema's own ``doc`` lines (the docs build
calls ``reference_markdown``; a test fails when a key lacks its line): one source, no copy
kept by hand."""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, Iterator

from busi.config.schema import JobConfig, PredictJobConfig
from busi.config.tree import join_key
from busi.config.validate import describe, optional_section


@dataclasses.dataclass(frozen=True)
class KeyDoc:
    key: str
    section: bool  # a mapping of keys (its keys follow it)
    allowed: str  # what a value may be ("" for a section)
    default: str  # "required", or the default as YAML would write it
    doc: str


def key_docs(cls: type = JobConfig, prefix: str = "", defaults: Any = None) -> Iterator[KeyDoc]:
    """Every key of ``cls``' schema, sections before their keys, in schema order."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, tp = join_key(prefix, f.name), hints[f.name]
        default = getattr(defaults, f.name) if defaults is not None else f.default
        doc = str(f.metadata.get("doc", ""))
        section = optional_section(tp)
        if section is not None:  # a section that may be null: its keys with their own defaults
            yield KeyDoc(key, True, "", "null", doc)
            yield from key_docs(section, key, None)
        elif dataclasses.is_dataclass(tp):
            yield KeyDoc(key, True, "", "required" if default is dataclasses.MISSING else "", doc)
            yield from key_docs(tp, key, None if default is dataclasses.MISSING else default)
        else:
            shown = "required" if default is dataclasses.MISSING else json.dumps(
                list(default) if isinstance(default, tuple) else default)
            yield KeyDoc(key, False, describe(tp, f.metadata), shown, doc)


def undocumented() -> list[str]:
    """Keys of the training and prediction schemas without a ``doc`` line."""
    return [d.key for cls in (JobConfig, PredictJobConfig) for d in key_docs(cls) if not d.doc.strip()]


def reference_markdown() -> str:
    """The reference page: one table per top-level section of each kind of job file."""
    out = ["# Configuration reference", "",
           "Generated from the schema (`busi/config/schema.py`): every key a job file may hold, what it accepts, "
           "its default and what it does. Unknown keys are an error (exit 2) naming the key.", ""]
    for title, cls in (("Training job files", JobConfig), ("Prediction job files", PredictJobConfig)):
        out += [f"## {title}", ""]
        for d in key_docs(cls):
            if d.section and "." not in d.key:
                out += ["", f"### `{d.key}:`", "", d.doc + (" (required)" if d.default == "required" else "") + ".", "",
                        "| key | accepts | default | what it does |", "|---|---|---|---|"]
            elif d.section and d.default == "null":
                out.append(f"| `{d.key}` | a section or null | `null` | {_cell(d.doc)} |")
            elif d.section:
                out.append(f"| `{d.key}` | a section | | {_cell(d.doc)} |")
            else:
                out.append(f"| `{d.key}` | {_cell(d.allowed)} | `{_cell(d.default)}` | {_cell(d.doc)} |")
        out.append("")
    return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")
