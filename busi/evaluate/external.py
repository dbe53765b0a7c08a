"""``busi-job evaluate``: a trained model on another labelled dataset (external validation).

The dataset is a folder or archive in the class-folder layout (the model's class names), or
whatever a job file's ``data:`` section reads (a label table with its joins, templates and label
map), staged and read as training reads its data (``busi.evaluate.external_data``; corrupt and
non-image files are reported and left out). A set that holds only some of the model's classes is
evaluated on those: per-class and macro metrics over the classes present, the positive class
against the rest where both are there, the absent classes named (``classes_absent``). Before
anything is counted, every image is checked against the model's training and validation images
(``busi.evaluate.leakage``): duplicates and near-duplicates are listed in ``overlap.csv`` and,
unless ``--keep-overlap``, left out of the metrics, which the log and ``metrics.json`` say. The metrics are those of a
training run's test split (``busi.evaluate.writer``, with the model's own threshold).

The output folder is written whole (built beside it, then renamed into place): it holds
``metrics.json``, ``predictions.csv``, ``overlap.csv``, ``plots/`` and ``evaluation.json`` (what
was evaluated, by which model and engine). An existing folder is replaced only when it is an
earlier evaluation's and ``--overwrite`` is given.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from busi.data.archives import archive_suffix
from busi.errors import ConfigError, DataError
from busi.evaluate.leakage import Overlap, count_kinds
from busi.evaluate.screening import OperatingPoint
from busi.evaluate.writer import Layout, Scored, score, write_evaluation
from busi.files.atomic import AtomicFolder, atomic_write_dir
from busi.files.text import csv_text, json_text

log = logging.getLogger("busi")

MARKER = "evaluation.json"
OVERLAP_FILE = "overlap.csv"
OVERLAP_COLUMNS = ("path", "training_path", "training_split", "distance", "kind")
REPORT_FILE = "report.html"
EXTERNAL = Layout(predictions="predictions.csv")


@dataclass(frozen=True)
class EvaluateRequest:
    model: str
    data: str | None  # --data; None: the job files' data.source
    output: str | None = None
    jobs: tuple[str, ...] = ()  # job files whose data: section describes the set
    overrides: tuple[str, ...] = ()  # --set KEY=VALUE
    engine: str = "auto"
    precision: str = "auto"
    batch_size: int = 32
    keep_overlap: bool = False
    leakage_check: bool = True
    overwrite: bool = False
    group_pattern: str | None = None  # patients from the file names; None: the run's data.group_pattern


def default_output(data: str | None, jobs: Sequence[str] = ()) -> Path:
    """``./evaluation-<data name>`` (else the first job file's name), an archive's suffix left out."""
    name = Path(data.rstrip("/")).name if data is not None else Path(jobs[0]).stem if jobs else "data"
    name = name[: len(name) - len(archive_suffix(name) or "")]
    return Path(f"evaluation-{name or 'data'}")


def run_evaluate(req: EvaluateRequest, threads: int | None = None,
                 start: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Evaluate, write the output folder, return its metrics. ``start``: run before TensorFlow is
    first imported, where the engine needs it (``busi.model.predictor.load_predictor``)."""
    from busi.evaluate.external_data import read_external
    from busi.model.folder import find_model_file, read_thresholds
    from busi.model.predictor import load_predictor
    from busi.report.format import format_interval

    out = Path(req.output) if req.output else default_output(req.data, req.jobs)
    _check_output(out, req.overwrite)
    model_file = find_model_file(req.model)
    run = _run_dir_of(model_file)
    threshold, pattern = _run_rules(run, req.group_pattern)
    training = _training_hashes(req, model_file, run)
    predictor = load_predictor(req.model, req.engine, req.precision, req.batch_size, threads, start=start)
    classes = predictor.classes
    # patients: --group-pattern; else the job files' own (a group column or pattern); else the run's pattern
    from_job = bool(req.jobs or req.overrides)
    ext = read_external(req.data, req.jobs, req.overrides, classes, predictor.dicom,
                        req.group_pattern if req.group_pattern is not None else None if from_job else pattern)
    if ext.absent:
        log.info("evaluate: the set has no images of %s; metrics over %s (the model's other outputs still count "
                 "as errors where it picks them)", ", ".join(ext.absent), ", ".join(ext.present))
    scan, root = ext.scan, ext.scan.root
    overlap = _overlap(req, scan.samples, ext.patients, training, threshold)
    left_out = set() if req.keep_overlap else {o.path for o in overlap}
    used = [(s, y) for s, y in zip(scan.samples, ext.y_true) if s.key not in left_out]
    if not used:
        raise DataError(ext.source, "every image overlaps the training data (a copy, or a training patient); "
                        "nothing left to evaluate (--keep-overlap counts them anyway)")
    probs = _probabilities(predictor, [(root / s.path, s.frame) for s, _y in used], req.batch_size)
    scored = score([s.key for s, _y in used], [y for _s, y in used], probs, classes, "external", 0,
                   OperatingPoint.from_json(read_thresholds(model_file)))
    metrics = scored.metrics
    metrics["classes_present"], metrics["classes_absent"] = list(ext.present), list(ext.absent)
    metrics["engine"] = predictor.engine.info.as_dict()
    metrics["overlap"] = {"checked": req.leakage_check, "images": len(scan.samples), "overlapping": len(overlap),
                          "excluded": 0 if req.keep_overlap else len(overlap),
                          "near_threshold": threshold, "group_pattern": ext.group_pattern,
                          "patients_from": ext.patient_source,
                          "by_kind": count_kinds(overlap)}
    about = {"model": str(model_file), "data": ext.source, "jobs": list(req.jobs), "root": str(root),
             "engine": metrics["engine"], "images_used": len(used), "not_images": len(scan.skipped),
             "corrupt": [list(c) for c in scan.corrupt], "table": ext.table}
    if scan.corrupt:
        log.warning("evaluate: %d file(s) could not be decoded and are left out (evaluation.json lists them)",
                    len(scan.corrupt))
    if ext.table and ext.table["rows_left_out"]:
        log.warning("evaluate: %d row(s) of the label table left out or flagged (evaluation.json lists them)",
                    len(ext.table["rows_left_out"]))
    atomic_write_dir(out, lambda tmp: _fill(AtomicFolder(tmp), scored, about, overlap))
    ci = metrics["ci95"]
    log.info("evaluate: %d image(s): accuracy %s, balanced accuracy %s, macro F1 %s (95%% bootstrap intervals) -> %s",
             len(used), *(format_interval(metrics.get(k), ci.get(k)) for k in ("accuracy", "balanced_accuracy",
                                                                                "macro_f1")), out)
    return metrics


def _check_output(out: Path, overwrite: bool) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"--output {out}: exists and is not a folder; choose another --output")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise ConfigError(f"--output {out}: the folder holds files that are not a busi evaluation; "
                              "choose another --output (busi never replaces files it did not write)")
        if not overwrite:
            raise ConfigError(f"--output {out}: holds an earlier evaluation; pass --overwrite to replace it")


def _run_dir_of(model_file: Path) -> Path | None:
    """The run directory around a model folder (``RUN/model/model.keras``), if there is one."""
    from busi.model.folder import MODEL_DIR

    return model_file.parent.parent if model_file.parent.name == MODEL_DIR else None


def _training_hashes(req: EvaluateRequest, model_file: Path, run: Path | None) -> list[Any]:
    """The fingerprints of the model's training and validation images (``data/hashes.csv``)."""
    from busi.evaluate.leakage import read_hashes
    from busi.files.rundir import RUN_FILES

    if not req.leakage_check:
        return []
    if run is None:
        raise DataError(req.model, f"no run directory around {model_file}, so no training hashes "
                        f"({RUN_FILES['hashes']}) to check the data against; pass the run directory, or "
                        "--no-leakage-check to evaluate without the check", option="--model")
    return read_hashes(run / RUN_FILES["hashes"])


def _run_rules(run: Path | None, group_pattern: str | None) -> tuple[int, str | None]:
    """The run's ``data.near_threshold`` and the patient pattern (``--group-pattern``, else the
    run's ``data.group_pattern``), from its config.yaml read as busi reads job files; the
    defaults where there is none."""
    from busi.config.load import load_config
    from busi.config.schema import DataConfig
    from busi.config.validate import check_group_pattern
    from busi.files.rundir import RUN_FILES

    if group_pattern is not None:
        check_group_pattern(group_pattern, "--group-pattern")
    default = int(DataConfig.__dataclass_fields__["near_threshold"].default)  # type: ignore[arg-type]
    if run is None:
        return default, group_pattern
    try:
        data = load_config(run / RUN_FILES["config"]).data
    except ConfigError as e:  # a config of another busi version: the default rule, said so
        log.warning("evaluate: cannot read the run's %s (%s); near duplicates within %d bits", RUN_FILES["config"],
                    e, default)
        return default, group_pattern
    return data.near_threshold, group_pattern if group_pattern is not None else data.group_pattern


def _overlap(req: EvaluateRequest, samples: Sequence[Any], patients: Sequence[str | None] | None,
             training: Sequence[Any], threshold: int) -> list[Overlap]:
    from busi.evaluate.leakage import find_overlap
    from busi.files.rundir import RUN_FILES

    if not req.leakage_check:
        return []
    if patients is not None and not any(f.patient for f in training):
        log.warning("evaluate: the run's %s holds no patient IDs (trained without data.table.group or "
                    "data.group_pattern): images are compared, patients are not", RUN_FILES["hashes"])
    overlap = find_overlap([s.key for s in samples], [s.sha256 for s in samples], [s.phash for s in samples],
                           training, threshold, patients)
    if overlap:
        count = count_kinds(overlap)
        log.warning("evaluate: %d of %d image(s) overlap the model's training or validation data (%d exact copies, "
                    "%d within %d bits, %d other images of a training patient); %s (%s)", len(overlap), len(samples),
                    count["exact"], count["near"], threshold, count["patient"],
                    "kept in the metrics (--keep-overlap)" if req.keep_overlap else "left out of the metrics",
                    OVERLAP_FILE)
    return overlap


def _probabilities(predictor: Any, images: list[tuple[Path, int | None]], batch_size: int) -> np.ndarray:
    """Probabilities of ``images`` ((file, frame of a cine loop or None)), batch by batch."""
    from busi.data.images import load_image
    from busi.model.predictor import forward_batches

    def decoded(chunk: list[tuple[Path, int | None]]) -> list[np.ndarray]:
        return [load_image(f, predictor.image_size, predictor.resize, predictor.dicom, frame) for f, frame in chunk]

    chunks = (images[i : i + batch_size] for i in range(0, len(images), batch_size))
    return np.concatenate([p for _, p in forward_batches(predictor.engine.run, chunks, decoded) if p is not None])


def _fill(folder: AtomicFolder, scored: Scored, about: dict[str, Any], overlap: Sequence[Overlap]) -> None:
    """The evaluation folder's files, built in a temp folder that is then published whole."""
    from busi.report.html import evaluation_page

    plots = write_evaluation(folder, EXTERNAL, scored)
    folder.write_text(OVERLAP_FILE, csv_text(
        OVERLAP_COLUMNS, ([o.path, o.training_path, o.training_split, "" if o.distance is None else o.distance, o.kind]
        for o in overlap)))
    o = scored.metrics["overlap"]
    findings = (f"<h2>Overlap with the training data</h2><p>{o['overlapping']} of {o['images']} image(s) duplicate "
                f"a training or validation image ({o['excluded']} left out of the metrics); {OVERLAP_FILE} lists "
                "them.</p>")
    absent = scored.metrics.get("classes_absent")
    if absent:
        findings += (f"<h2>Classes the set does not have</h2><p>No image of {html.escape(', '.join(absent))}: balanced "
                     f"accuracy, macro F1 and macro ROC AUC are over {html.escape(', '.join(scored.metrics['classes_present']))}; "
                     "an image the model assigns to an absent class counts as an error.</p>")
    folder.write_text(REPORT_FILE, evaluation_page(f"busi external evaluation of {about['model']}", scored.metrics,
                                                   plots, findings))
    folder.write_text(MARKER, json_text(about))
