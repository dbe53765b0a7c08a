"""``busi-job evaluate``: a trained model on another labelled dataset (external validation).

The dataset is any folder or archive in the class-folder layout (``normal/``, ``benign/``,
``malignant/``, or the model's own class names), staged and scanned as training scans its data
(corrupt and non-image files are reported and left out). Before anything is counted, every
image is checked against the model's training and validation images (``busi.leakage``):
duplicates and near-duplicates are listed in ``overlap.csv`` and, unless ``--keep-overlap``,
left out of the metrics, which the log and ``metrics.json`` say. The metrics are those of a
training run's test split (``busi.evaluate``, ``busi.bootstrap``, ``busi.calibration``,
``busi.screening`` with the model's own threshold).

The output folder is written whole (built beside it, then renamed into place): it holds
``metrics.json``, ``predictions.csv``, ``overlap.csv``, ``plots/`` and ``evaluation.json`` (what
was evaluated, by which model and engine). An existing folder is replaced only when it is an
earlier evaluation's and ``--overwrite`` is given.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from busi.artifacts import atomic_write_dir, csv_text, json_text, text_bytes
from busi.errors import ConfigError, DataError

log = logging.getLogger("busi")

MARKER = "evaluation.json"
OVERLAP_COLUMNS = ("path", "training_path", "training_split", "distance", "kind")


@dataclass(frozen=True)
class EvaluateRequest:
    model: str
    data: str
    output: str | None = None
    engine: str = "auto"
    precision: str = "auto"
    batch_size: int = 32
    keep_overlap: bool = False
    leakage_check: bool = True
    overwrite: bool = False


def default_output(data: str) -> Path:
    name = Path(data.rstrip("/")).name
    for suffix in (".zip", ".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return Path(f"evaluation-{name or 'data'}")


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
    from busi.modeldir import MODEL_DIR

    return model_file.parent.parent if model_file.parent.name == MODEL_DIR else None


def _near_threshold(run: Path | None) -> int:
    """The run's ``data.near_threshold`` (its config.yaml), else the default."""
    import yaml

    from busi.artifacts import RUN_FILES
    from busi.config import DataConfig

    default = DataConfig.__dataclass_fields__["near_threshold"].default
    if run is None:
        return int(default)  # type: ignore[arg-type]
    try:
        cfg = yaml.safe_load((run / RUN_FILES["config"]).read_text(encoding="utf-8")) or {}
        return int(cfg.get("data", {}).get("near_threshold", default))
    except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError):
        return int(default)  # type: ignore[arg-type]


def run_evaluate(req: EvaluateRequest, threads: int | None = None) -> dict[str, Any]:
    """Evaluate, write the output folder, return its metrics."""
    from busi.artifacts import RUN_FILES
    from busi.bootstrap import bootstrap_intervals, format_interval
    from busi.data.scan import scan_dataset
    from busi.data.staging import stage_source
    from busi.evaluate import compute_metrics
    from busi.leakage import find_overlap, read_hashes
    from busi.modeldir import THRESHOLDS_FILE, find_model_file
    from busi.predict import load_predictor
    from busi.screening import screening_metrics

    out = Path(req.output) if req.output else default_output(req.data)
    _check_output(out, req.overwrite)
    model_file = find_model_file(req.model)
    run = _run_dir_of(model_file)
    training = []
    if req.leakage_check:
        if run is None:
            raise DataError(f"--model {req.model}: no run directory around {model_file}, so no training hashes "
                            f"({RUN_FILES['hashes']}) to check the data against; pass the run directory, or "
                            "--no-leakage-check to evaluate without the check")
        training = read_hashes(run / RUN_FILES["hashes"])
    predictor = load_predictor(req.model, req.engine, req.precision, req.batch_size, threads)
    classes = predictor.classes
    root = stage_source(req.data)
    scan = scan_dataset(root, classes)
    if not scan.samples:
        raise DataError(f"{req.data}: no images in class folders {', '.join(classes)} (the model's classes); "
                        "external data must use the class-folder layout")
    threshold = _near_threshold(run)
    overlap = find_overlap([s.path for s in scan.samples], [s.sha256 for s in scan.samples],
                           [s.phash for s in scan.samples], training, threshold) if req.leakage_check else []
    overlapping = {o.path for o in overlap}
    used = [s for s in scan.samples if req.keep_overlap or s.path not in overlapping]
    if overlap:
        log.warning("evaluate: %d of %d image(s) duplicate the model's training or validation images (%d exact, "
                    "%d within %d bits); %s (overlap.csv)", len(overlap), len(scan.samples),
                    sum(o.kind == "exact" for o in overlap), sum(o.kind == "near" for o in overlap), threshold,
                    "kept in the metrics (--keep-overlap)" if req.keep_overlap else "left out of the metrics")
    if not used:
        raise DataError(f"{req.data}: every image duplicates a training image; nothing left to evaluate "
                        "(--keep-overlap counts them anyway)")
    probs = _classify(predictor, [root / s.path for s in used], req.batch_size)
    y = [s.label_index for s in used]
    metrics = compute_metrics(y, probs, classes)
    metrics["split"] = "external"
    metrics["ci95"] = bootstrap_intervals(y, probs, classes, seed=0)
    point = _thresholds(model_file.parent / THRESHOLDS_FILE)
    metrics["malignant_vs_rest"] = screening_metrics(y, probs, classes, point, seed=0)
    metrics["engine"] = predictor.engine.info.as_dict()
    metrics["overlap"] = {"checked": req.leakage_check, "images": len(scan.samples), "overlapping": len(overlap),
                          "excluded": 0 if req.keep_overlap else len(overlap), "near_threshold": threshold}
    about = {"model": str(model_file), "data": req.data, "root": str(root), "engine": metrics["engine"],
             "images_used": len(used), "not_images": len(scan.skipped), "corrupt": [list(c) for c in scan.corrupt]}
    if scan.corrupt:
        log.warning("evaluate: %d file(s) could not be decoded and are left out (evaluation.json lists them)",
                    len(scan.corrupt))
    _write(out, metrics, about, used, y, probs, classes, overlap)
    ci = metrics["ci95"]
    log.info("evaluate: %d image(s): accuracy %s, balanced accuracy %s, macro F1 %s (95%% bootstrap intervals) -> %s",
             len(used), *(format_interval(metrics.get(k), ci.get(k)) for k in ("accuracy", "balanced_accuracy",
                                                                                "macro_f1")), out)
    return metrics


def _thresholds(path: Path) -> float | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("threshold")
        return None if value is None else float(value)
    except (OSError, ValueError, AttributeError, TypeError):
        return None  # a model without an operating point: the argmax rule only


def _classify(predictor: Any, files: list[Path], batch_size: int) -> np.ndarray:
    from busi.data.images import load_image

    out = []
    for i in range(0, len(files), batch_size):
        x = np.stack([load_image(f, predictor.image_size, predictor.resize) for f in files[i : i + batch_size]])
        out.append(predictor.engine.probabilities(x.astype(np.float32, copy=False)))
    return np.concatenate(out)


def _write(out: Path, metrics: dict[str, Any], about: dict[str, Any], used: list[Any], y: list[int],
           probs: np.ndarray, classes: tuple[str, ...], overlap: list[Any]) -> None:
    from busi.evaluate import plot_calibration, plot_confusion, plot_roc
    from busi.predictions import prediction_columns, prediction_row

    def fill(tmp: Path) -> None:
        (tmp / "plots").mkdir()
        (tmp / "metrics.json").write_bytes(text_bytes(json_text(metrics)))
        rows = [prediction_row(s.path, p, classes) + [classes[t]] for s, p, t in zip(used, probs, y)]
        (tmp / "predictions.csv").write_bytes(text_bytes(csv_text(prediction_columns(classes) + ["true_label"], rows)))
        (tmp / "overlap.csv").write_bytes(text_bytes(csv_text(
            OVERLAP_COLUMNS, ([o.path, o.training_path, o.training_split, o.distance, o.kind] for o in overlap))))
        plot_confusion(metrics["confusion_matrix"], classes, tmp / "plots" / "confusion_matrix.png", "external")
        plot_roc(y, probs, classes, tmp / "plots" / "roc.png", "external")
        plot_calibration(y, probs, tmp / "plots" / "calibration.png", "external")
        from busi.report import metrics_section, page

        findings = (f"<h2>Overlap with the training data</h2><p>{len(overlap)} of {metrics['overlap']['images']} "
                    f"image(s) duplicate a training or validation image ({metrics['overlap']['excluded']} left out "
                    "of the metrics); overlap.csv lists them.</p>")
        figures = "".join(
            f"<p>{name}</p><img alt=\"{name}\" src=\"data:image/png;base64,"
            f"{base64.b64encode((tmp / 'plots' / f'{name}.png').read_bytes()).decode('ascii')}\">"
            for name in ("confusion_matrix", "roc", "calibration"))
        (tmp / "report.html").write_bytes(text_bytes(page(f"busi external evaluation of {about['model']}",
                                                          metrics_section(metrics, "External validation")
                                                          + findings + figures)))
        (tmp / MARKER).write_bytes(text_bytes(json_text(about)))

    atomic_write_dir(out, fill)
