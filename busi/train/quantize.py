"""The reduced-precision stage: the INT8 model and the accuracy contracts, after training
(``quantize_and_check``) or for an existing run (``export_int8``: ``busi-job export --format
openvino --precision int8``).

The OpenVINO model is quantized on a seeded sample of the run's training images
(``busi.model.quantize``) into ``model/openvino-int8/``; then, on the evaluated split and
against the float32 probabilities, the accuracy contract (``busi.evaluate.precision``) of INT8
and of bfloat16 (where this CPU has AMX or AVX512-BF16) is measured. The results go into
``model/precisions.json``, which ``--precision auto`` reads, and ``metrics.json``
(``precisions``). Primary rank only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from busi.config.schema import CONTRACT_PRECISIONS, DicomConfig, JobConfig
from busi.data.pipeline import Pipeline, SplitData
from busi.data.split import parse_splits
from busi.errors import ConfigError, DataError
from busi.evaluate.precision import not_measured, precision_contract
from busi.files.rundir import RUN_FILES, RunDir
from busi.model.engines import Host
from busi.runtime.cpu import cpu_has_bf16

log = logging.getLogger("busi")


@dataclass
class Evaluated:
    """The split a contract is measured on: its pipeline, labels, float32 probabilities (None:
    measured here on OpenVINO's float32 model) and float32's bootstrap intervals."""

    pipeline: Pipeline
    labels: list[int]
    reference: np.ndarray
    ci95: dict[str, Any]
    classes: tuple[str, ...]


def quantize_and_check(cfg: JobConfig, run: RunDir, model: Any, split: Evaluated,
                       train_images: Sequence[tuple[str, int | None]], host: Host) -> dict[str, Any]:
    """Training's stage: the INT8 model (calibrated on ``train_images``: (path, frame)) and the
    contracts on the evaluated ``split``, as ``model/precisions.json`` holds them; ``not_measured``
    for each with ``train.quantize: none``; {} off the primary rank."""
    if not run.primary:
        return {}
    if cfg.train.quantize == "none":
        results = {p: not_measured("train.quantize: none") for p in CONTRACT_PRECISIONS}
        run.write_json("precisions", results)
        return results
    results = _unmeasurable(run)
    if results is None:
        results = check_precisions(run, model, split, list(train_images), cfg.data.image_size, cfg.data.resize,
                                   cfg.runtime.seed, cfg.train.batch_size, host.threads, cfg.data.dicom)
    return results


def _unmeasurable(run: RunDir) -> dict[str, Any] | None:
    from busi.model.openvino import OPENVINO_XML, openvino_available

    if openvino_available() and (run.path("openvino") / OPENVINO_XML).is_file():
        return None
    results = {p: not_measured("no OpenVINO model (openvino is not installed)") for p in CONTRACT_PRECISIONS}
    run.write_json("precisions", results)
    return results


def check_precisions(run: RunDir, model: Any, split: Evaluated, train_images: Sequence[tuple[str, int | None]],
                     image_size: int,
                     resize: str, seed: int, batch_size: int, threads: int | None,
                     dicom: DicomConfig = DicomConfig()) -> dict[str, Any]:
    """Quantize into ``model/openvino-int8/``, measure the INT8 and bfloat16 contracts on
    ``split``, write ``model/precisions.json`` and log each verdict."""
    from busi.evaluate.forward import predict_probs
    from busi.model.engines import OpenVINOEngine
    from busi.model.openvino import openvino_model_for

    # the float model of this very model.keras: openvino/ where it was converted from it, else converted again
    float_model = openvino_model_for(run.path("model"), model)

    def contract(ov_model: Any, precision: str) -> dict[str, Any]:
        engine = OpenVINOEngine(ov_model, batch_size, precision, threads)
        probs = predict_probs(model, split.pipeline, batch_size, engine)
        return precision_contract(split.labels, split.reference, probs, split.ci95, split.classes)

    if split.reference is None:
        split.reference = predict_probs(model, split.pipeline, batch_size,
                                        OpenVINOEngine(float_model, batch_size, "float32", threads))
    results: dict[str, Any] = {}
    quantized, made = _quantize(run, float_model, train_images, image_size, resize, seed, dicom)
    results["int8"] = {**contract(quantized, "int8"), **made} if quantized is not None else made
    if not cpu_has_bf16():
        results["bfloat16"] = not_measured("this CPU has no AMX or AVX512-BF16")
    else:
        try:
            results["bfloat16"] = contract(float_model, "bfloat16")
        except ConfigError as e:  # OpenVINO disagrees with /proc/cpuinfo about bfloat16
            results["bfloat16"] = not_measured(str(e))
    run.write_json("precisions", results)
    for precision, r in results.items():
        verdict = "passed" if r["passed"] else ("missed" if r["measured"] else "did not measure")
        log.info("precision %s: %s its accuracy contract (%s)", precision, verdict, r["reason"])
    return results


def _quantize(run: RunDir, float_model: Any, train_images: Sequence[tuple[str, int | None]], image_size: int,
              resize: str, seed: int, dicom: DicomConfig = DicomConfig()) -> tuple[Any, dict[str, Any]]:
    """The INT8 model written to ``model/openvino-int8/`` and how it was made; (None, why not)."""
    from busi.files.digest import file_sha256
    from busi.model.openvino import write_openvino_dir
    from busi.model.quantize import NNCF_PIN, calibration_images, calibration_sample, nncf_available, quantize_int8

    if not nncf_available():
        return None, not_measured(f"nncf is not installed (pip install {NNCF_PIN}; make install does)")
    chosen = calibration_sample(list(train_images), seed)
    if not chosen:
        return None, not_measured("no training images to calibrate on")
    quantized, made = quantize_int8(float_model, calibration_images([p for p, _ in chosen], image_size, resize, dicom,
                                                                    [f for _, f in chosen]))
    made["quantization"].update(calibration_split="train", seed=seed)
    sha = file_sha256(run.path("model"))
    run.write_dir_with("openvino_int8", lambda p: write_openvino_dir(p, quantized, sha, made))
    log.info("quantize: INT8 model from %d training images in %.1f s", len(chosen), made["quantization"]["seconds"])
    return quantized, made


def export_int8(run_dir: str | Path, batch_size: int = 32, threads: int | None = None) -> Path:
    """``busi-job export RUN --format openvino --precision int8``: the INT8 model and the
    contracts of a completed run, from its own data (``data/splits.csv`` under the root its
    dataset report names). Missing images: DataError naming them (exit 3)."""
    from busi.config.load import load_config
    from busi.model.network import load_saved_model

    run = RunDir(run_dir)
    if (run.read_manifest() or {}).get("status") != "completed":
        raise ConfigError(f"export --precision int8: {run.root} is not a completed run directory (it needs the run's "
                          "data/splits.csv, metrics.json and model folder)")
    cfg = load_config(run.path("config"))
    splits = _read_splits(run)
    classes = tuple(cfg.data.classes)
    test = "test" if splits["test"] else "val"
    model = load_saved_model(run.path("model"))
    metrics = json.loads(run.path("metrics").read_text(encoding="utf-8"))
    if _unmeasurable(run) is not None:
        raise ConfigError("export --precision int8: needs OpenVINO and the run's model/openvino/ "
                          "(busi-job export --format openvino first)")
    split = Evaluated(Pipeline(SplitData(tuple(p for p, _, _ in splits[test]),
                                         tuple(classes.index(c) for _, c, _ in splits[test]),
                                         tuple(f for _, _, f in splits[test])),
                               cfg.data.image_size, cfg.data.resize, dicom=cfg.data.dicom),
                      [classes.index(c) for _, c, _ in splits[test]],
                      None, metrics.get("ci95", {}), classes)
    results = check_precisions(run, model, split, [(p, f) for p, _, f in splits["train"]], cfg.data.image_size,
                               cfg.data.resize, cfg.runtime.seed, batch_size, threads, cfg.data.dicom)
    metrics["precisions"] = results
    run.write_json("metrics", metrics)
    return run.path("openvino_int8")


def _read_splits(run: RunDir) -> dict[str, list[tuple[str, str, int | None]]]:
    """The run's split as absolute paths, labels and frames (of a cine loop's samples); DataError
    where its images are gone."""
    report = run.read_json("report") or {}
    root = Path(report.get("root", ""))
    out: dict[str, list[tuple[str, str, int | None]]] = {"train": [], "val": [], "test": []}
    for _, row in parse_splits(run.path("splits"), f"the run's {RUN_FILES['splits']}"):
        out[row.split].append((str(root / row.path), row.label, row.frame))
    missing = [p for rows in out.values() for p, _, _ in rows if not Path(p).is_file()]
    if missing:
        raise DataError(run.path("splits"), f"{len(missing)} of its images are not under {root} (e.g. {missing[0]}); "
                        "the INT8 model is calibrated and checked on the run's own images: unpack the training data "
                        f"there again (its dataset report, {RUN_FILES['report']}, names the root)")
    return out
