"""Headless prediction over many files: the decode-and-classify loop, and the prediction job
(threads, shards, signals, the done marker). Loading the model: ``busi.model.predictor``.

One row per input image, whatever happens: a file that cannot be decoded gets a row with its
error, and prediction goes on; a DICOM cine loop under ``--dicom-frame all`` gets a row per
frame. Rows are written as batches finish, a file's rows together (``busi.predict.output``,
the CSV and its merge); ``resume`` skips paths already in the CSV, so a walltime-killed run
continues without duplicates. Memory stays bounded: only a few batches are decoded ahead.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np

from busi.config.schema import DicomConfig
from busi.data.dicom import DicomSource
from busi.data.images import decode_frames
from busi.data.inputs import InputFile
from busi.errors import ConfigError, DataError, Interrupted
from busi.model.ensemble import Ensemble, fold_runs, spread
from busi.model.folder import find_model_file
from busi.model.predictor import Predictor, forward_batches, load_predictor
from busi.predict.output import (
    CsvSink,
    own_outputs,
    prediction_columns,
    prediction_row,
    write_done_marker,
)

log = logging.getLogger("busi")


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

    @classmethod
    def of_rows(cls, rows: Sequence[dict[str, str]]) -> "Summary":
        """The counts of rows already in the CSV (a resumed run continues them)."""
        summary = cls()
        for row in rows:
            summary.rows += 1
            if row.get("error"):
                summary.errors += 1
            else:
                summary.classified += 1
                summary.per_class[row["label"]] += 1
        return summary

    def add(self, f: InputFile, probs: np.ndarray | None, decoded: "Decoded", classes: Sequence[str],
            spread: float | None = None, ensemble: bool = False) -> list[Any]:
        """Count one file's outcome; its CSV row (``ensemble``: with the folds' spread)."""
        self.rows += 1
        if probs is None:
            self.errors += 1
            return prediction_row(f.path, None, classes, decoded.error or "could not decode", decoded.source,
                                  ensemble=ensemble)
        self.classified += 1
        self.per_class[classes[int(np.argmax(probs))]] += 1
        return prediction_row(f.path, probs, classes, source=decoded.source, spread=spread, ensemble=ensemble)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows, "classified": self.classified, "errors": self.errors,
            "skipped_resume": self.skipped_resume, "per_class": dict(self.per_class),
            "seconds": round(self.seconds, 3), "images_per_second": round(self.images_per_second, 2),
        }


class Decoded(NamedTuple):
    """One image decoded for the model, or its file's error; ``source``: a DICOM file's UIDs and frame."""

    image: np.ndarray | None
    error: str = ""
    source: DicomSource | None = None


class Item(NamedTuple):
    """One image of the loop: its file, the decoded image (or the file's error), and where it
    stands among the file's images (``count`` of them: several for a cine loop under ``all``)."""

    file: InputFile
    decoded: Decoded
    count: int
    last: bool

    def frame(self) -> int | None:
        """The frame number that names this image's outputs, where its file gave several."""
        return self.decoded.source.frame if self.count > 1 and self.decoded.source is not None else None


def _decode(f: InputFile, size: int, resize: str, dicom: DicomConfig) -> list[Decoded]:
    """Every image of ``f`` (one, or each frame of a cine loop under ``all``), or one error."""
    try:
        return [Decoded(image, "", source) for image, source in decode_frames(f.file, size, resize, dicom)]
    except DataError as e:
        return [Decoded(None, e.reason)]
    except Exception as e:  # a bad file must never stop the other ten thousand rows
        return [Decoded(None, f"{type(e).__name__}: {e}")]


def _decode_thread_priority(niceness: int = 19) -> None:
    """Run this decode thread at the lowest CPU priority (Linux: the nice value is per thread).

    TensorFlow's intra-op threads already take every core; decode threads competing with them
    at equal priority preempt its workers and stall each parallel op for its slowest thread.
    At low priority they run in the gaps the model leaves (ops that use one core, the Python
    between batches), and at full speed whenever the model waits for a batch (the effect,
    measured by benchmarks/bench_predict.py: docs, "Performance")."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):  # not Linux, or not allowed: equal priority, still correct
        pass


def _items(files: Sequence[InputFile], size: int, resize: str, pool: ThreadPoolExecutor, ahead: int,
           dicom: DicomConfig = DicomConfig()) -> Iterator[Item]:
    """Every image of ``files`` in order, up to ``ahead`` files decoding in the background and at
    most about ``ahead`` decoded images waiting (bounded memory, cine loops included)."""
    todo = iter(files)
    pending: deque[tuple[InputFile, Future[list[Decoded]]]] = deque()

    def fill() -> None:
        waiting = sum(len(fu.result()) for _, fu in pending if fu.done())
        while len(pending) < ahead and waiting < ahead:
            f = next(todo, None)
            if f is None:
                return
            pending.append((f, pool.submit(_decode, f, size, resize, dicom)))

    fill()
    while pending:
        f, future = pending.popleft()
        fill()
        images = future.result()
        for k, d in enumerate(images):
            yield Item(f, d, len(images), k == len(images) - 1)


def _batches(items: Iterator[Item], batch_size: int) -> Iterator[list[Item]]:
    """``items`` in batches of ``batch_size`` (a cine loop's frames may span batches)."""
    batch: list[Item] = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_files(
    predictor: Predictor,
    files: Sequence[InputFile],
    sink: CsvSink,
    batch_size: int = 32,
    workers: int = 2,
    gradcam_dir: Path | None = None,
    stopper: Any = None,
    sr_dir: Path | None = None,
) -> Summary:
    """Classify ``files`` (skipping those already in ``sink``) with ``predictor.engine``,
    writing rows batch by batch. Stops after the batch in progress when ``stopper`` (a
    ``busi.runtime.stopper.Stopper``) says so, with ``summary.interrupted`` set; the CSV then
    holds every row written so far."""
    summary = Summary.of_rows(sink.previous_rows)
    todo = [f for f in files if f.path not in sink.done]
    summary.skipped_resume = len(files) - len(todo)
    cam = None
    if gradcam_dir is not None:
        from busi.model.gradcam import GradCam

        cam = GradCam(predictor.model)  # gradients: always TensorFlow
    started = time.perf_counter()  # engines trace and compile when they are made, before this
    images = 0
    ensemble = predictor.members > 1
    of_file: list[tuple[Item, np.ndarray | None, float | None]] = []  # the current file's images, until its last
    with ThreadPoolExecutor(
        max_workers=max(1, workers), thread_name_prefix="decode", initializer=_decode_thread_priority
    ) as pool:
        items = _items(todo, predictor.image_size, predictor.resize, pool, ahead=3 * batch_size,
                       dicom=predictor.dicom)
        engine = predictor.engine  # a cross-validation's fold models: each one's output, for their spread
        run = engine.run_members if ensemble and isinstance(engine, Ensemble) else engine.run
        for batch, out in forward_batches(run, _batches(items, batch_size), _images):
            probs, spreads = _by_index(batch, out, ensemble)
            if cam is not None and gradcam_dir is not None:
                _overlays(cam, batch, probs, gradcam_dir)
            if sr_dir is not None:
                _reports(predictor, batch, probs, sr_dir)
            rows = []
            for i, item in enumerate(batch):  # a file's rows are written together, once its last image is in
                of_file.append((item, probs.get(i), spreads.get(i)))
                if item.last:
                    rows += [summary.add(it.file, p, it.decoded, predictor.classes, sd, ensemble)
                             for it, p, sd in of_file]
                    of_file = []
            sink.write(rows)
            images += len(probs)
            reason = stopper.reason() if stopper is not None else None
            if reason:
                summary.interrupted = reason
                break
    summary.seconds = time.perf_counter() - started
    summary.images_per_second = images / summary.seconds if summary.seconds > 0 else 0.0
    return summary


def _images(batch: Sequence[Item]) -> list[np.ndarray]:
    """The decoded images of a batch, its undecodable files left out."""
    return [item.decoded.image for item in batch if item.decoded.image is not None]


def _by_index(batch: Sequence[Item], out: np.ndarray | None,
              ensemble: bool) -> tuple[dict[int, np.ndarray], dict[int, float]]:
    """The probabilities of each decoded image of a batch, by its index in the batch, from ``out``
    (the engine's output for ``_images(batch)``); for the fold models of a cross-validation
    (``ensemble``: ``out`` holds each fold's) their mean and also their spread (``busi.model.ensemble``)."""
    if out is None:
        return {}, {}
    ok = [i for i, item in enumerate(batch) if item.decoded.image is not None]
    if ensemble:
        mean, sd = out.mean(axis=0), spread(out)
        return {i: mean[j] for j, i in enumerate(ok)}, {i: float(sd[j]) for j, i in enumerate(ok)}
    return {i: out[j] for j, i in enumerate(ok)}, {}


def _overlays(cam: Any, batch: Sequence[Item], probs: dict[int, np.ndarray], out_dir: Path) -> None:
    from busi.predict.overlays import write_overlay

    for i, p in probs.items():
        item = batch[i]
        try:
            write_overlay(cam, item.decoded.image, int(np.argmax(p)), item.file, out_dir, item.frame())
        except OSError as e:  # an overlay that cannot be written never costs the rows
            log.warning("gradcam: no overlay for %s: %s", item.file.path, e.strerror or e)


def _reports(predictor: Predictor, batch: Sequence[Item], probs: dict[int, np.ndarray], out_dir: Path) -> None:
    """A structured report per classified DICOM image of the batch (``busi.predict.sr``)."""
    from busi import __version__
    from busi.predict.sr import write_sr

    for i, p in probs.items():
        item = batch[i]
        source = item.decoded.source
        if source is None:
            continue
        try:
            write_sr(item.file, source, p, predictor.classes, out_dir, predictor.source, __version__, item.frame())
        except OSError as e:  # a report that cannot be written never costs the rows
            log.warning("dicom_sr: no SR for %s: %s", item.file.path, e.strerror or e)


# -------------------------------------------------------------------- the job


def _output_folder(value: str | None, option: str, what: str) -> Path | None:
    """An optional output folder, refused (ConfigError) where something else already has its name."""
    folder = Path(value) if value else None
    if folder is not None and (folder.exists() or folder.is_symlink()) and not folder.is_dir():
        raise ConfigError(f"{option} {folder} exists and is not a folder; give a folder for {what}")
    return folder


def run_predict(cfg: Any) -> Summary:
    """``busi-job predict``: tune threads, load the model, expand and shard the inputs, stream
    the CSV, write the done marker, log a summary. ``cfg`` is a ``PredictJobConfig``."""
    from busi.data.inputs import expand_inputs
    from busi.data.staging import ArchiveLimits
    from busi.predict.shards import shard_of, shard_output_path
    from busi.runtime.cores import detect_cores
    from busi.runtime.startup import start_tensorflow
    from busi.runtime.stopper import Stopper
    from busi.runtime.walltime import process_start_time, resolve_deadline

    p = cfg.predict
    shard = shard_of(p.shard)
    output = shard_output_path(Path(p.output), shard)
    if fold_runs(Path(p.model)) is None:  # a cross-validation's folds are checked as they load
        find_model_file(p.model)  # a missing model, or a run that did not complete, fails before any work
    gradcam = _output_folder(p.gradcam, "--gradcam", "the overlays")
    sr_dir = _output_folder(p.dicom_sr, "--dicom-sr", "the reports")
    own = own_outputs(Path(p.output), gradcam, sr_dir)  # never inputs, even inside an input folder
    found = expand_inputs(p.inputs, p.include_masks, p.staging_dir, ArchiveLimits.from_config(p), skip=own)
    files = shard.select(found)
    cores = detect_cores(cfg.runtime.cores)
    # TensorFlow starts only where the engine or --gradcam needs it (busi.model.predictor)
    predictor = load_predictor(p.model, p.engine, p.precision, p.batch_size, cores.cores, gradients=gradcam is not None,
                               start=lambda: start_tensorflow(cores, cfg.runtime.seed), tta=p.tta)
    if sr_dir is not None and predictor.members > 1:
        raise ConfigError(f"--dicom-sr: {p.model} is a cross-validation; a structured report names one model: give "
                          "one fold's run directory")
    if p.dicom_frame is not None:  # else as the model was trained (its preprocessing.json)
        predictor.dicom = dataclasses.replace(predictor.dicom, frame=p.dicom_frame)
    engine = predictor.engine.info
    log.info(
        "predict: %d files (shard %d/%d from %s) with %s, %d px, %d cores (%s), batch %d, engine %s -> %s",
        len(files), shard.index, shard.count, shard.source, predictor.source, predictor.image_size,
        cores.cores, cores.source, p.batch_size, engine.label(), output,
    )
    sink = CsvSink(output, prediction_columns(predictor.classes, predictor.members > 1), resume=p.resume,
                   overwrite=p.overwrite,
                   model=predictor.source)
    deadline, _ = resolve_deadline(cfg.runtime.walltime, process_start_time())
    try:
        with Stopper(cfg.runtime.signals, deadline, cfg.runtime.walltime_margin) as stopper:
            summary = predict_files(
                predictor, files, sink, p.batch_size, workers=cores.cores,
                gradcam_dir=gradcam, stopper=stopper, sr_dir=sr_dir,
            )
    finally:
        sink.close()
    if summary.interrupted:
        raise Interrupted(
            f"prediction stopped on {summary.interrupted} after {summary.rows} rows of {len(files)}; "
            f"{output} holds them: run again with --resume to continue"
        )
    write_done_marker(output, summary.as_dict(), shard, len(files), predictor.classes, predictor.source,
                      engine.as_dict())
    per_class = ", ".join(f"{c} {summary.per_class.get(c, 0)}" for c in predictor.classes)
    log.info(
        "predict: %d rows (%d classified, %d errors, %d already done): %s; %.1f img/s (%s)",
        summary.rows, summary.classified, summary.errors, summary.skipped_resume, per_class,
        summary.images_per_second, engine.label(),
    )
    return summary
