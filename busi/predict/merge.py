"""``busi-job merge``: the shards of an array job joined into one CSV, in sorted path (and frame) order, once
every shard is complete (its done marker) and all were predicted by one engine and precision."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

from busi.data.scan import natural_key
from busi.errors import ConfigError, DataError
from busi.files.atomic import atomic_write_text
from busi.files.text import csv_text, read_csv_text, text_of
from busi.predict.output import done_marker, row_key
from busi.predict.shards import shard_count, shard_file, shard_files
from busi.runtime.safeio import read_regular_file


def merge_shards(output: Path, allow_mixed_engines: bool = False) -> int:
    """Join ``<stem>.part-IIIII-of-NNNNN.csv`` files into ``output`` (atomically), in sorted path
    order. Fails naming every shard that is missing or incomplete, and (unless
    ``allow_mixed_engines``) shards whose probabilities came from different engines or
    precisions. Returns the row count."""
    if output.is_dir():
        raise ConfigError(f"merge: {output} is a folder; give the CSV path the shards were written for")
    parts = shard_files(output)
    if not parts:
        raise DataError(output, f"no shard files {shard_file(output, 0, 1).name.replace('00000-of-00001', '*-of-*')} "
                        "beside it")
    counts = {shard_count(p) for p in parts}
    if len(counts) != 1:
        raise DataError(output, f"shard files from runs with different shard counts: {sorted(counts)}")
    n = int(counts.pop())
    problems: list[str] = []
    header: list[str] | None = None
    rows: list[list[str]] = []
    engines: dict[str, list[str]] = {}  # "openvino bfloat16" -> shard names
    for i in range(n):
        part = shard_file(output, i, n)
        read = _read_shard(part)
        if isinstance(read, str):
            problems.append(read)
            continue
        h, body, meta = read
        if header is not None and h != header:
            problems.append(f"{part.name}: columns differ from the other shards")
            continue
        header = h
        rows.extend(body)
        engines.setdefault(_engine_label(meta), []).append(part.name)
    if len(engines) > 1 and not allow_mixed_engines and not problems:
        shown = "; ".join(f"{label}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                          for label, names in sorted(engines.items()))
        problems.append(f"shards predicted by different engines or precisions ({shown}); predict them again "
                        "with one --engine/--precision, or merge with --allow-mixed-engines")
    if problems:
        raise DataError(output, "cannot merge: " + "; ".join(problems))
    assert header is not None
    keyed = [(row_key(r, header), r) for r in rows]
    seen = Counter(key for key, _ in keyed)
    if len(seen) != len(rows):
        dup = sorted({p for (p, _), k in seen.items() if k > 1})[:5]
        raise DataError(output, f"cannot merge: paths in more than one shard, e.g. {dup}")
    keyed.sort(key=lambda kr: (natural_key(kr[0][0]), kr[0][1]))
    rows = [r for _, r in keyed]
    try:
        atomic_write_text(output, csv_text(header, rows))
    except OSError as e:
        raise ConfigError(f"merge: cannot write {output}: {e.strerror or e}") from None
    return len(rows)


def _read_shard(part: Path) -> tuple[list[str], list[list[str]], dict[str, Any]] | str:
    """A complete shard's header, rows and done marker, or what is wrong with it (naming the file)."""
    marker = done_marker(part)
    if not part.exists():
        return f"{part.name}: missing"
    if not marker.exists():
        return f"{part.name}: incomplete (no {marker.name}; resume that shard with --resume)"
    try:
        records = read_csv_text(text_of(read_regular_file(part)))
    except (OSError, csv.Error) as e:
        return f"{part.name}: unreadable ({e})"
    if not records:
        return f"{part.name}: empty (not even a header); run that shard again"
    if "path" not in records[0]:
        return f"{part.name}: no path column in its header ({','.join(records[0][:6])}); not a prediction CSV"
    meta = _read_marker(marker)
    if meta is None:
        return f"{marker.name}: not a done marker with a row count (damaged); run that shard again with --resume"
    if len(records) - 1 != meta["rows"]:
        return f"{part.name}: {len(records) - 1} rows but its marker says {meta['rows']}"
    return records[0], records[1:], meta


def _read_marker(marker: Path) -> dict[str, Any] | None:
    """A done marker, or None if it is damaged (no integer row count)."""
    try:
        meta = json.loads(marker.read_text(encoding="utf-8"))
        rows = meta["rows"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta if isinstance(rows, int) and not isinstance(rows, bool) else None


def _engine_label(meta: dict[str, Any] | None) -> str:
    """``openvino bfloat16``: the engine and precision a done marker records (markers written
    before engines existed: TensorFlow)."""
    engine = (meta or {}).get("engine")
    if not isinstance(engine, dict):
        return "tensorflow (unrecorded precision)"
    return f"{engine.get('name', '?')} {engine.get('precision', '?')}"
