"""The prediction CSV: its columns, the streaming sink, the done marker and the merge of shards.

Columns: ``path,label,label_index,prob_<class>...,error``, the classes from the model's
``labels.json`` (never a hard-coded list); a file that could not be classified has an empty
label and probabilities and its error. ``CsvSink`` appends rows and fsyncs them batch by batch,
and on ``--resume`` knows which paths are done. A finished CSV gets ``<csv>.done.json``, which
``merge_shards`` requires of every shard. Training's ``predictions/test.csv`` uses the same
columns plus ``true_label``.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from busi.artifacts import atomic_write_text, csv_text, json_text, utc_now
from busi.data.scan import natural_key
from busi.errors import ConfigError, DataError
from busi.inputs import Shard


def prediction_columns(classes: Sequence[str]) -> list[str]:
    return ["path", "label", "label_index"] + [f"prob_{c}" for c in classes] + ["error"]


def prediction_row(path: str, probs: np.ndarray | None, classes: Sequence[str], error: str = "") -> list[Any]:
    """One CSV row: a classified file, or a failed one (empty label and probabilities, the error)."""
    if probs is None:
        return [path, "", ""] + [""] * len(classes) + [error]
    i = int(np.argmax(probs))
    return [path, classes[i], i] + [f"{float(p):.6f}" for p in probs] + [error]


class CsvSink:
    """Appends prediction rows to a CSV, flushed per batch; knows which paths are done."""

    def __init__(self, path: Path, columns: Sequence[str], resume: bool, overwrite: bool = False) -> None:
        self.path = path
        self.columns = list(columns)
        self.done: set[str] = set()
        self.previous_rows: list[dict[str, str]] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        marker = done_marker(path)
        if path.exists() and resume:
            self._load_existing()
            self.fh = path.open("a", newline="", encoding="utf-8")
        elif path.exists() and not overwrite:
            raise ConfigError(
                f"--output {path} exists; pass --resume to continue it, or --overwrite to start again"
            )
        else:
            marker.unlink(missing_ok=True)
            self.fh = path.open("w", newline="", encoding="utf-8")
            csv.writer(self.fh, lineterminator="\n").writerow(self.columns)
            self._sync()
        self.writer = csv.writer(self.fh, lineterminator="\n")

    def _load_existing(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            # A run killed mid-write leaves a partial last line: drop it, it is predicted again.
            cut = data.rfind(b"\n") + 1
            with self.path.open("r+b") as fh:
                fh.truncate(cut)
            data = data[:cut]
        lines = data.decode("utf-8").splitlines()
        if not lines:
            with self.path.open("w", newline="", encoding="utf-8") as fh:
                csv.writer(fh, lineterminator="\n").writerow(self.columns)
            return
        header = next(csv.reader([lines[0]]))
        if header != self.columns:
            raise ConfigError(
                f"--resume: {self.path} has columns {header}, this model writes {self.columns}; "
                "use another --output"
            )
        for row in csv.DictReader(lines):
            self.done.add(row["path"])
            self.previous_rows.append(row)
        done_marker(self.path).unlink(missing_ok=True)

    def write(self, rows: Sequence[Sequence[Any]]) -> None:
        self.writer.writerows(rows)
        self._sync()

    def _sync(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


def done_marker(csv_path: Path) -> Path:
    return csv_path.with_name(csv_path.name + ".done.json")


def write_done_marker(csv_path: Path, summary: dict[str, Any], shard: Shard, inputs: int,
                      classes: Sequence[str], model: Path) -> None:
    """Marks a CSV complete: the row count ``merge_shards`` checks against the file."""
    atomic_write_text(
        done_marker(csv_path),
        json_text({
            "rows": summary["rows"],
            "inputs": inputs,
            "shard": {"index": shard.index, "count": shard.count, "source": shard.source},
            "classes": list(classes),
            "model": str(model),
            "finished_at": utc_now(),
            "summary": summary,
        }),
    )


def merge_shards(output: Path) -> int:
    """Join ``<stem>.part-IIIII-of-NNNNN.csv`` files into ``output`` (atomically), in sorted path
    order. Fails naming every shard that is missing or incomplete. Returns the row count."""
    # glob.escape: a name such as br[1].csv holds glob characters
    parts = sorted(output.parent.glob(f"{glob.escape(output.stem)}.part-*-of-*{output.suffix or '.csv'}"))
    if not parts:
        raise DataError(f"{output}: no shard files {output.stem}.part-*-of-*.csv beside it")
    counts = {p.name.rsplit("-of-", 1)[1].split(".")[0] for p in parts}
    if len(counts) != 1:
        raise DataError(f"{output}: shard files from runs with different shard counts: {sorted(counts)}")
    n = int(counts.pop())
    problems = []
    header: list[str] | None = None
    rows: list[list[str]] = []
    for i in range(n):
        part = output.with_name(f"{output.stem}.part-{i:05d}-of-{n:05d}{output.suffix or '.csv'}")
        marker = done_marker(part)
        if not part.exists():
            problems.append(f"{part.name}: missing")
            continue
        if not marker.exists():
            problems.append(f"{part.name}: incomplete (no {marker.name}; resume that shard with --resume)")
            continue
        with part.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            h = next(reader, None)
            body = list(reader)
        expected = json.loads(marker.read_text())["rows"]
        if len(body) != expected:
            problems.append(f"{part.name}: {len(body)} rows but its marker says {expected}")
            continue
        if header is not None and h != header:
            problems.append(f"{part.name}: columns differ from the other shards")
            continue
        header = h
        rows.extend(body)
    if problems:
        raise DataError(f"cannot merge into {output}: " + "; ".join(problems))
    assert header is not None
    paths = [r[0] for r in rows]
    if len(set(paths)) != len(paths):
        dup = sorted({p for p in paths if paths.count(p) > 1})[:5]
        raise DataError(f"cannot merge into {output}: paths in more than one shard, e.g. {dup}")
    rows.sort(key=lambda r: natural_key(r[0]))
    atomic_write_text(output, csv_text(header, rows))
    return len(rows)
