"""The prediction CSV: its columns, the streaming sink and the done marker (the merge of shards:
``busi.predict.merge``).

Columns: ``path,label,label_index,prob_<class>...,study_instance_uid,series_instance_uid,
sop_instance_uid,frame,error``, the classes from the model's ``labels.json`` (never a hard-coded
list); a file that could not be classified has an empty label and probabilities and its error.
The DICOM columns (``busi.data.dicom.DicomSource``: the UIDs a PACS joins results on and the
1-based frame number) are empty for other images; no other header value ever reaches a row.
``CsvSink`` appends rows and fsyncs them batch by batch, and on ``--resume`` knows which paths are
done (a CSV written with other columns, e.g. by a busi from before the DICOM columns, is refused;
the last file's frame rows are predicted again, since a kill may have cut a cine loop's rows).
A row is one image: ``row_key`` (path, frame). A finished CSV gets ``<csv>.done.json``, which
``merge_shards`` requires of every shard. Training's ``predictions/test.csv`` uses the same
columns plus ``true_label``.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from busi.data.dicom import DicomSource
from busi.errors import ConfigError
from busi.files.atomic import atomic_write_text
from busi.files.text import (
    CsvWriter,
    csv_text,
    json_text,
    open_text,
    read_csv_text,
    text_bytes,
    text_of,
)
from busi.predict.shards import Shard, is_shard_file
from busi.runtime.clock import utc_now
from busi.runtime.locks import exclusive_lock
from busi.runtime.safeio import is_regular_file, read_regular_file


DONE_SUFFIX = ".done.json"
SOURCE_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(DicomSource))  # UIDs, frame


SPREAD_COLUMN = "fold_sd"  # an ensemble's disagreement (busi.model.ensemble.spread)


def prediction_columns(classes: Sequence[str], ensemble: bool = False) -> list[str]:
    """The CSV's columns; ``ensemble``: with the folds' ``fold_sd`` after the probabilities."""
    spread = [SPREAD_COLUMN] if ensemble else []
    return ["path", "label", "label_index"] + [f"prob_{c}" for c in classes] + spread + [*SOURCE_COLUMNS, "error"]


def prediction_row(path: str, probs: np.ndarray | None, classes: Sequence[str], error: str = "",
                   source: DicomSource | None = None, spread: float | None = None, ensemble: bool = False) -> list[Any]:
    """One CSV row: a classified file, or a failed one (empty label and probabilities, the error);
    ``source``: the DICOM file's UIDs and frame (empty columns for other images); ``ensemble``:
    with the ``fold_sd`` cell (``spread``, empty on an error row)."""
    where = list(dataclasses.astuple(source)) if source is not None else [""] * len(SOURCE_COLUMNS)
    sd = ([f"{spread:.6f}" if spread is not None else ""]) if ensemble else []
    if probs is None:
        return [path, "", ""] + [""] * len(classes) + sd + where + [error]
    i = int(np.argmax(probs))
    return [path, classes[i], i] + [f"{float(p):.6f}" for p in probs] + sd + where + [error]


def row_key(record: Sequence[str], columns: Sequence[str]) -> tuple[str, int]:
    """A row's identity: its path and frame number (0 where it has none): one row per image, so a
    cine loop predicted under ``--dicom-frame all`` has one row per frame under one path. A CSV
    without a ``frame`` column (written before DICOM frames, or by hand) has no frames."""
    if "frame" not in columns:
        return record[columns.index("path")], 0
    at = columns.index("frame")
    frame = record[at] if at < len(record) else ""
    return record[columns.index("path")], int(frame) if frame.isdigit() else 0


def _without_last_loop(body: list[list[str]], columns: Sequence[str]) -> list[list[str]]:
    """``body`` less the rows of its last file where they are DICOM frame rows: a file's rows are
    written together, but a run killed mid-write may have left only some frames of a cine loop,
    so that one file is predicted again (a PNG's single row is whole or dropped as partial)."""
    last, frame = row_key(body[-1], columns) if body else ("", 0)
    if not frame:
        return body
    end = len(body)
    while end and row_key(body[end - 1], columns)[0] == last:
        end -= 1
    return body[:end]


class CsvSink:
    """Appends prediction rows to a CSV, flushed per batch; knows which paths are done.

    Holds an exclusive lock (``.<name>.lock`` beside the CSV, ``busi.runtime.locks``) until ``close``:
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
        body = _without_last_loop(body, self.columns)
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


def own_outputs(output: Path, gradcam: Path | None = None, *more: Path | None) -> Callable[[Path], bool]:
    """A test for files a prediction job writes (its CSV and every shard's, their done markers
    and locks, Grad-CAM overlays, the folders in ``more``: structured reports): never inputs,
    even where ``--output`` lies in an input folder."""
    folder = os.path.realpath(output.parent)
    dirs = [os.path.realpath(d) for d in (gradcam, *more) if d is not None]
    real = functools.lru_cache(maxsize=4096)(os.path.realpath)  # once per folder, not per file

    def owned(path: Path) -> bool:
        where = real(str(path.parent))
        if any(where == d or where.startswith(d + os.sep) for d in dirs):
            return True
        if where != folder:
            return False
        return is_shard_file(output, path.name.removesuffix(DONE_SUFFIX))

    return owned


def done_marker(csv_path: Path) -> Path:
    """``<csv>.done.json``: written once a CSV is complete (what ``merge`` requires of a shard)."""
    return csv_path.with_name(csv_path.name + DONE_SUFFIX)


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
