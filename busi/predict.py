"""Headless prediction over many files, streamed to CSV: one row per input file, whatever happens.

CSV columns: ``path,label,label_index,prob_<class>...,error``, the classes from the model's
``labels.json`` (never a hard-coded list). A file that cannot be decoded gets a row with its
error and empty probabilities, and prediction goes on. Rows are written and flushed as
batches finish; ``resume`` skips paths already in the CSV, so a walltime-killed run
continues without duplicates. Memory stays bounded: only a few batches are decoded ahead.
A finished CSV gets a ``<csv>.done.json`` marker, which ``merge_shards`` requires.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import os
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from busi.artifacts import atomic_write_text, json_text
from busi.data.images import load_image
from busi.errors import ConfigError, DataError, Interrupted
from busi.inputs import InputFile, Shard

log = logging.getLogger("busi")


def prediction_columns(classes: Sequence[str]) -> list[str]:
    return ["path", "label", "label_index"] + [f"prob_{c}" for c in classes] + ["error"]


def prediction_row(path: str, probs: np.ndarray | None, classes: Sequence[str], error: str = "") -> list[Any]:
    """One CSV row: a classified file, or a failed one (empty label and probabilities, the error)."""
    if probs is None:
        return [path, "", ""] + [""] * len(classes) + [error]
    i = int(np.argmax(probs))
    return [path, classes[i], i] + [f"{float(p):.6f}" for p in probs] + [error]


# ---------------------------------------------------------------------- the model


@dataclass
class Predictor:
    """A loaded model and what its inputs must look like."""

    model: Any
    classes: tuple[str, ...]
    image_size: int
    resize: str
    source: Path


def find_model_files(model_arg: str | Path) -> tuple[Path, Path]:
    """``RUN_DIR`` or ``.../model.keras`` -> (model.keras, labels.json). DataError naming what is missing."""
    p = Path(model_arg)
    if p.is_dir():
        model_dir = p / "model" if (p / "model" / "model.keras").exists() else p
        model_file = model_dir / "model.keras"
    else:
        model_file = p
    if not model_file.is_file():
        raise DataError(f"--model {model_arg}: no model.keras found (give a run directory or a model.keras file)")
    labels = model_file.parent / "labels.json"
    if not labels.is_file():
        raise DataError(f"{labels}: labels.json not found beside the model; it maps indices to class names")
    return model_file, labels


def read_labels(path: Path) -> tuple[str, ...]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        classes = tuple(raw[str(i)] for i in range(len(raw)))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: expected {{\"0\": \"class\", \"1\": ...}}: {e}") from None
    return classes


def load_predictor(model_arg: str | Path) -> Predictor:
    """Load a busi model with its labels and preprocessing settings."""
    from busi.model import load_saved_model

    model_file, labels_file = find_model_files(model_arg)
    classes = read_labels(labels_file)
    prep_file = model_file.parent / "preprocessing.json"
    prep = json.loads(prep_file.read_text()) if prep_file.is_file() else {}
    model = load_saved_model(model_file)
    size = int(model.input_shape[1])
    if model.output_shape[-1] != len(classes):
        raise DataError(f"{labels_file}: {len(classes)} classes, but the model outputs {model.output_shape[-1]}")
    return Predictor(model=model, classes=classes, image_size=size, resize=prep.get("resize", "stretch"), source=model_file)


# ------------------------------------------------------------------------ the CSV


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


# --------------------------------------------------------------------- the loop


@dataclass
class Summary:
    rows: int = 0
    classified: int = 0
    errors: int = 0
    skipped_resume: int = 0
    per_class: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    images_per_second: float = 0.0
    interrupted: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows, "classified": self.classified, "errors": self.errors,
            "skipped_resume": self.skipped_resume, "per_class": dict(self.per_class),
            "seconds": round(self.seconds, 3), "images_per_second": round(self.images_per_second, 2),
        }


def _decode(f: InputFile, size: int, resize: str) -> tuple[np.ndarray | None, str]:
    try:
        return load_image(f.file, size, resize), ""
    except DataError as e:
        return None, str(e).split(": ", 1)[-1]
    except Exception as e:  # a bad file must never stop the other ten thousand rows
        return None, f"{type(e).__name__}: {e}"


def _decode_thread_priority(niceness: int = 19) -> None:
    """Run this decode thread at the lowest CPU priority (Linux: the nice value is per thread).

    TensorFlow's intra-op threads already take every core; decode threads competing with them
    at equal priority preempt its workers and stall each parallel op for its slowest thread.
    At low priority they run in the gaps the model leaves (ops that use one core, the Python
    between batches), and at full speed whenever the model waits for a batch. Measured on 2
    cores, 224 px, BUSI-sized PNGs: end to end 0.88 -> 0.96 of the in-memory forward pass in
    float32 (benchmarks/bench_predict.py)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):  # not Linux, or not allowed: equal priority, still correct
        pass


def _batches(
    files: Sequence[InputFile], batch_size: int, size: int, resize: str, pool: ThreadPoolExecutor, ahead: int = 2
) -> Iterator[tuple[list[InputFile], list[tuple[np.ndarray | None, str]]]]:
    """Decoded batches in order, ``ahead`` batches decoding in the background (bounded memory)."""
    chunks = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
    pending: list[tuple[list[InputFile], list[Future[tuple[np.ndarray | None, str]]]]] = []
    for chunk in chunks:
        pending.append((list(chunk), [pool.submit(_decode, f, size, resize) for f in chunk]))
        if len(pending) > ahead:
            c, futs = pending.pop(0)
            yield c, [fu.result() for fu in futs]
    for c, futs in pending:
        yield c, [fu.result() for fu in futs]


def predict_files(
    predictor: Predictor,
    files: Sequence[InputFile],
    sink: CsvSink,
    batch_size: int = 32,
    workers: int = 2,
    gradcam_dir: Path | None = None,
    stopper: Any = None,
) -> Summary:
    """Classify ``files`` (skipping those already in ``sink``), writing rows batch by batch.
    Stops after the batch in progress when ``stopper`` (a ``busi.stopper.Stopper``) says so,
    with ``summary.interrupted`` set; the CSV then holds every row written so far."""
    import tensorflow as tf

    summary = Summary()
    for row in sink.previous_rows:
        summary.rows += 1
        if row.get("error"):
            summary.errors += 1
        else:
            summary.classified += 1
            summary.per_class[row["label"]] += 1
    todo = [f for f in files if f.path not in sink.done]
    summary.skipped_resume = len(files) - len(todo)
    size, classes = predictor.image_size, predictor.classes
    model = predictor.model

    @tf.function(input_signature=[tf.TensorSpec([batch_size, size, size, 3], tf.float32)])
    def forward(x: Any) -> Any:
        return model(x, training=False)

    cam = None
    if gradcam_dir is not None:
        from busi.gradcam import GradCam

        cam = GradCam(model)
    if todo:
        forward(tf.zeros([batch_size, size, size, 3]))  # trace once, outside the timing
    started = time.perf_counter()
    images = 0
    with ThreadPoolExecutor(
        max_workers=max(1, workers), thread_name_prefix="decode", initializer=_decode_thread_priority
    ) as pool:
        for chunk, decoded in _batches(todo, batch_size, size, predictor.resize, pool):
            ok = [i for i, (im, _) in enumerate(decoded) if im is not None]
            probs: dict[int, np.ndarray] = {}
            if ok:
                x = np.zeros((batch_size, size, size, 3), np.float32)  # fixed shape: one trace
                for j, i in enumerate(ok):
                    x[j] = decoded[i][0]
                out = forward(tf.constant(x)).numpy()
                probs = {i: out[j] for j, i in enumerate(ok)}
                if cam is not None and gradcam_dir is not None:
                    for i in ok:
                        cam.write_overlay(decoded[i][0], int(np.argmax(probs[i])), chunk[i], gradcam_dir)
            rows = []
            for i, f in enumerate(chunk):
                if i in probs:
                    rows.append(prediction_row(f.path, probs[i], classes))
                    summary.classified += 1
                    summary.per_class[classes[int(np.argmax(probs[i]))]] += 1
                else:
                    rows.append(prediction_row(f.path, None, classes, decoded[i][1] or "could not decode"))
                    summary.errors += 1
            sink.write(rows)
            summary.rows += len(rows)
            images += len(ok)
            reason = stopper.reason() if stopper is not None else None
            if reason:
                summary.interrupted = reason
                break
    summary.seconds = time.perf_counter() - started
    summary.images_per_second = images / summary.seconds if summary.seconds > 0 else 0.0
    return summary


def write_done_marker(csv_path: Path, summary: Summary, shard: Shard, inputs: int, predictor: Predictor) -> None:
    """Marks a CSV complete: the row count ``merge_shards`` checks against the file."""
    atomic_write_text(
        done_marker(csv_path),
        json_text({
            "rows": summary.rows,
            "inputs": inputs,
            "shard": {"index": shard.index, "count": shard.count, "source": shard.source},
            "classes": list(predictor.classes),
            "model": str(predictor.source),
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "summary": summary.as_dict(),
        }),
    )


# -------------------------------------------------------------------- merging


def merge_shards(output: Path) -> int:
    """Join ``<stem>.part-IIIII-of-NNNNN.csv`` files into ``output`` (atomically), in sorted path
    order. Fails naming every shard that is missing or incomplete. Returns the row count."""
    from busi.data.scan import natural_key

    parts = sorted(output.parent.glob(f"{output.stem}.part-*-of-*{output.suffix or '.csv'}"))
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
    from busi.artifacts import csv_text

    atomic_write_text(output, csv_text(header, rows))
    return len(rows)


# -------------------------------------------------------------------- the job


def run_predict(cfg: Any) -> Summary:
    """``busi-job predict``: tune threads, load the model, expand and shard the inputs, stream
    the CSV, write the done marker, log a summary. ``cfg`` is a ``PredictJobConfig``."""
    from busi.data.staging import ArchiveLimits
    from busi.inputs import expand_inputs, parse_shard, shard_from_env, shard_output_path
    from busi.runtime import detect_cores, start_tensorflow
    from busi.stopper import Stopper, process_start_time, resolve_deadline

    p = cfg.predict
    if p.shard == "auto":
        shard = shard_from_env()
    elif p.shard == "none":
        shard = Shard(0, 1, "none")
    else:
        shard = parse_shard(p.shard)
    output = shard_output_path(Path(p.output), shard)
    files = shard.select(expand_inputs(p.inputs, p.include_masks, p.staging_dir, ArchiveLimits()))
    cores = detect_cores(cfg.runtime.cores)
    start_tensorflow(cores, cfg.runtime.seed)
    predictor = load_predictor(p.model)
    log.info(
        "predict: %d files (shard %d/%d from %s) with %s, %d px, %d cores (%s), batch %d -> %s",
        len(files), shard.index, shard.count, shard.source, predictor.source, predictor.image_size,
        cores.cores, cores.source, p.batch_size, output,
    )
    sink = CsvSink(output, prediction_columns(predictor.classes), resume=p.resume, overwrite=p.overwrite)
    deadline, _ = resolve_deadline(cfg.runtime.walltime, process_start_time())
    try:
        with Stopper(cfg.runtime.signals, deadline, cfg.runtime.walltime_margin) as stopper:
            summary = predict_files(
                predictor, files, sink, p.batch_size, workers=cores.cores,
                gradcam_dir=Path(p.gradcam) if p.gradcam else None, stopper=stopper,
            )
    finally:
        sink.close()
    if summary.interrupted:
        raise Interrupted(
            f"prediction stopped on {summary.interrupted} after {summary.rows} rows of {len(files)}; "
            f"{output} holds them: run again with --resume to continue"
        )
    write_done_marker(output, summary, shard, len(files), predictor)
    per_class = ", ".join(f"{c} {summary.per_class.get(c, 0)}" for c in predictor.classes)
    log.info(
        "predict: %d rows (%d classified, %d errors, %d already done): %s; %.1f img/s",
        summary.rows, summary.classified, summary.errors, summary.skipped_resume, per_class,
        summary.images_per_second,
    )
    return summary
