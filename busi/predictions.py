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
import functools
import glob
import json
import os
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from busi.artifacts import (
    CsvWriter, atomic_write_text, csv_text, json_text, open_text, read_csv_text, text_bytes, text_of,
)
from busi.clock import utc_now
from busi.data.scan import natural_key
from busi.errors import ConfigError, DataError
from busi.inputs import Shard
from busi.locks import exclusive_lock
from busi.safeio import is_regular_file, read_regular_file


def prediction_columns(classes: Sequence[str]) -> list[str]:
    return ["path", "label", "label_index"] + [f"prob_{c}" for c in classes] + ["error"]


def prediction_row(path: str, probs: np.ndarray | None, classes: Sequence[str], error: str = "") -> list[Any]:
    """One CSV row: a classified file, or a failed one (empty label and probabilities, the error)."""
    if probs is None:
        return [path, "", ""] + [""] * len(classes) + [error]
    i = int(np.argmax(probs))
    return [path, classes[i], i] + [f"{float(p):.6f}" for p in probs] + [error]


class CsvSink:
    """Appends prediction rows to a CSV, flushed per batch; knows which paths are done.

    Holds an exclusive lock (``.<name>.lock`` beside the CSV, ``busi.locks``) until ``close``:
    a second job on the same output exits 2 naming the first one's host and pid. ``resume``
    continues only a CSV with this job's columns (and, if it has a done marker, this model);
    anything else is refused before a byte of it changes."""

    def __init__(self, path: Path, columns: Sequence[str], resume: bool, overwrite: bool = False,
                 model: Path | None = None) -> None:
        self.path = path
        self.columns = list(columns)
        self.done: set[str] = set()
        self.previous_rows: list[dict[str, str]] = []
        if path.is_dir():
            raise ConfigError(f"--output {path} is a folder; give the path of a CSV file (e.g. {path}/predictions.csv)")
        exists = path.exists() or path.is_symlink()
        if exists and not is_regular_file(path):
            raise ConfigError(f"--output {path} exists and is not a regular file; give another --output")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"--output {path}: cannot create its folder: {e.strerror or e}") from None
        self._stack = ExitStack()
        self._stack.enter_context(exclusive_lock(path.with_name(f".{path.name}.lock"), f"--output {path}"))
        try:
            if exists and resume:
                self._load_existing(model)
                self.fh = open_text(path, "a")
            elif exists and not overwrite:
                raise ConfigError(
                    f"--output {path} exists; pass --resume to continue it, or --overwrite to start again"
                )
            else:
                done_marker(path).unlink(missing_ok=True)
                atomic_write_text(path, csv_text(self.columns, []))
                self.fh = open_text(path, "a")
        except OSError as e:
            self._stack.close()
            raise ConfigError(f"--output {path}: cannot write it: {e.strerror or e}; choose a writable --output") from None
        except BaseException:
            self._stack.close()
            raise
        self.writer = CsvWriter(self.fh)

    def _load_existing(self, model: Path | None) -> None:
        """Read the CSV to continue; check first, change nothing unless it is this job's CSV."""
        data = read_regular_file(self.path)
        if not data:
            atomic_write_text(self.path, csv_text(self.columns, []))  # empty: nothing to lose
            return
        try:
            records = read_csv_text(text_of(data))
        except csv.Error as e:  # e.g. a field over the csv module's size limit: a binary file
            raise self._not_ours(f"it is not a CSV: {e}") from None
        if not records or records[0] != self.columns:
            shown = ",".join(records[0])[:120] if records else ""
            raise self._not_ours(f"its first line is {shown!r}, this job writes {','.join(self.columns)!r}")
        marker = done_marker(self.path)
        if model is not None and marker.exists():
            try:
                recorded = json.loads(marker.read_text(encoding="utf-8")).get("model")
            except (OSError, ValueError, AttributeError):
                recorded = None
            if recorded is not None and recorded != str(model):
                raise self._not_ours(f"its {marker.name} says model {recorded}, this job uses {model}")
        body = records[1:]
        complete = data.endswith(b"\n")
        # A run killed mid-write leaves a partial last row: drop it, it is predicted again.
        if body and (not complete or len(body[-1]) != len(self.columns)):
            body = body[:-1]
        bad = [i for i, r in enumerate(body, start=2) if len(r) != len(self.columns)]
        if bad:
            raise self._not_ours(f"record {bad[0]} has {len(body[bad[0] - 2])} fields, not {len(self.columns)}")
        text = csv_text(self.columns, body)
        if text_bytes(text) != data:
            atomic_write_text(self.path, text)
        for r in body:
            row = dict(zip(self.columns, r))
            self.done.add(row["path"])
            self.previous_rows.append(row)
        marker.unlink(missing_ok=True)

    def _not_ours(self, why: str) -> ConfigError:
        return ConfigError(f"--resume: {self.path} is not this job's prediction CSV ({why}); it is left as it was. "
                           "Give another --output, or --overwrite (without --resume) to replace it")

    def write(self, rows: Sequence[Sequence[Any]]) -> None:
        self.writer.writerows(rows)
        self._sync()

    def _sync(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        try:
            self.fh.close()
        finally:
            self._stack.close()


def own_outputs(output: Path, gradcam: Path | None = None) -> Callable[[Path], bool]:
    """A test for files a prediction job writes (its CSV and every shard's, their done markers
    and locks, Grad-CAM overlays): never inputs, even where ``--output`` lies in an input folder."""
    folder = os.path.realpath(output.parent)
    stem, suffix = output.stem, output.suffix or ".csv"
    cams = os.path.realpath(gradcam) if gradcam is not None else None
    real = functools.lru_cache(maxsize=4096)(os.path.realpath)  # once per folder, not per file

    def owned(path: Path) -> bool:
        where = real(str(path.parent))
        if cams is not None and (where == cams or where.startswith(cams + os.sep)):
            return True
        if where != folder:
            return False
        name = path.name.removesuffix(".done.json")
        return name == output.name or (name.startswith(f"{stem}.part-") and name.endswith(suffix))

    return owned


def done_marker(csv_path: Path) -> Path:
    return csv_path.with_name(csv_path.name + ".done.json")


def write_done_marker(csv_path: Path, summary: dict[str, Any], shard: Shard, inputs: int,
                      classes: Sequence[str], model: Path, engine: dict[str, str] | None = None) -> None:
    """Marks a CSV complete: the row count ``merge_shards`` checks against the file, and the
    engine (name, version, precision) whose probabilities it holds."""
    atomic_write_text(
        done_marker(csv_path),
        json_text({
            "rows": summary["rows"],
            "inputs": inputs,
            "shard": {"index": shard.index, "count": shard.count, "source": shard.source},
            "classes": list(classes),
            "model": str(model),
            "engine": engine,
            "finished_at": utc_now(),
            "summary": summary,
        }),
    )


def merge_shards(output: Path, allow_mixed_engines: bool = False) -> int:
    """Join ``<stem>.part-IIIII-of-NNNNN.csv`` files into ``output`` (atomically), in sorted path
    order. Fails naming every shard that is missing or incomplete, and (unless
    ``allow_mixed_engines``) shards whose probabilities came from different engines or
    precisions. Returns the row count."""
    if output.is_dir():
        raise ConfigError(f"merge: {output} is a folder; give the CSV path the shards were written for")
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
    engines: dict[str, list[str]] = {}  # "openvino bfloat16" -> shard names
    for i in range(n):
        part = output.with_name(f"{output.stem}.part-{i:05d}-of-{n:05d}{output.suffix or '.csv'}")
        marker = done_marker(part)
        if not part.exists():
            problems.append(f"{part.name}: missing")
            continue
        if not marker.exists():
            problems.append(f"{part.name}: incomplete (no {marker.name}; resume that shard with --resume)")
            continue
        try:
            records = read_csv_text(text_of(read_regular_file(part)))
        except (OSError, csv.Error) as e:
            problems.append(f"{part.name}: unreadable ({e})")
            continue
        if not records:
            problems.append(f"{part.name}: empty (not even a header); run that shard again")
            continue
        h, body = records[0], records[1:]
        meta = _read_marker(marker)
        expected = None if meta is None else meta["rows"]
        if expected is None:
            problems.append(f"{marker.name}: not a done marker with a row count (damaged); run that shard again "
                            "with --resume")
            continue
        if len(body) != expected:
            problems.append(f"{part.name}: {len(body)} rows but its marker says {expected}")
            continue
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
        raise DataError(f"cannot merge into {output}: " + "; ".join(problems))
    assert header is not None
    seen = Counter(r[0] for r in rows)
    if len(seen) != len(rows):
        dup = sorted(p for p, k in seen.items() if k > 1)[:5]
        raise DataError(f"cannot merge into {output}: paths in more than one shard, e.g. {dup}")
    rows.sort(key=lambda r: natural_key(r[0]))
    try:
        atomic_write_text(output, csv_text(header, rows))
    except OSError as e:
        raise ConfigError(f"merge: cannot write {output}: {e.strerror or e}") from None
    return len(rows)


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
