"""The stages after training (``busi.train.job``): the evaluated split and its operating point
(``evaluate``), the INT8 model and the reduced precisions' contracts (``quantize``), and
everything the run directory shows of them (``publish``)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from busi.config.schema import JobConfig
from busi.errors import ConfigError
from busi.evaluate.writer import Layout, score, write_evaluation
from busi.files.rundir import RUN_FILES, TENSORBOARD_DIR, RunDir
from busi.model.engines import Engine, tensorflow_info
from busi.train.context import Built, Calibration, Evaluation, Job, Started, TrainingData
from busi.train.loop import TrainResult

log = logging.getLogger("busi")

TEST_SPLIT = Layout(predictions=RUN_FILES["test_predictions"], metrics=RUN_FILES["metrics"])


def evaluate(job: Job, data: TrainingData, built: Built, started: Started, calibration: Calibration) -> Evaluation:
    """The evaluated split's probabilities (on ``train.engine``), the positive class's operating
    point chosen on the validation split, and the metrics: intervals, calibration before the
    temperature, the positive class vs the rest, Grad-CAM against the masks."""
    from busi.evaluate.calibration import calibration_metrics, with_temperature
    from busi.evaluate.forward import predict_probs
    from busi.evaluate.screening import OperatingPoint, choose_operating_point

    cfg, run = job.cfg, job.run
    classes, name, bs = cfg.data.classes, data.test_name, cfg.train.batch_size
    engine = evaluation_engine(cfg, run, started)
    probs = predict_probs(built.model, built.pipelines[name], bs, engine)
    val_probs = calibration.val_probs
    if val_probs is None and data.labels("val"):
        val_probs = predict_probs(built.model, built.pipelines["val"], bs, engine)
    point = choose_operating_point(data.labels("val"), val_probs, classes, cfg.evaluate.positive_class,
                                   cfg.evaluate.target_sensitivity)
    root = data.prepared.root
    paths = [s.key for s, _ in data.prepared.split(name)]  # a frame of a cine loop: path#frame-N
    scored = score(paths, data.labels(name), probs, classes, name, cfg.runtime.seed, OperatingPoint.from_json(point))
    metrics = scored.metrics
    if calibration.temperature is not None:
        metrics["temperature"] = calibration.temperature
        metrics["calibration_before_temperature"] = calibration_metrics(
            data.labels(name), with_temperature(probs, 1 / calibration.temperature))
    if cfg.train.gradcam_masks and run.primary:  # gradients: on TensorFlow
        from busi.evaluate.explain import gradcam_vs_masks

        metrics["gradcam_vs_masks"] = gradcam_vs_masks(
            built.model, [(root / s.path, classes.index(s.label), [root / m for m in s.masks], s.frame)
                          for s, _ in data.prepared.split(name)], classes, cfg.data.image_size, cfg.data.resize,
            cfg.data.dicom)
    metrics["engine"] = (engine.info if engine is not None else tensorflow_info(built.model)).as_dict()
    job.manifest.record(engines={**job.manifest.data.get("engines", {}), "evaluate": metrics["engine"]})
    return Evaluation(scored, point)


def quantize(job: Job, data: TrainingData, built: Built, started: Started, evaluation: Evaluation) -> dict[str, Any]:
    """The INT8 model and each reduced precision's accuracy contract on the evaluated split
    (``busi.train.quantize``): float32's probabilities are the evaluation's where it ran in float32."""
    from busi.train.quantize import Evaluated, quantize_and_check

    scored, name = evaluation.scored, data.test_name
    float32 = scored.metrics["engine"].get("precision") == "float32"
    split = Evaluated(built.pipelines[name], data.labels(name), scored.probs if float32 else None,
                      scored.metrics.get("ci95", {}), scored.classes)
    return quantize_and_check(job.cfg, job.run, built.model, split, data.splits["train"].images(), started.host)


def publish(job: Job, data: TrainingData, result: TrainResult, evaluation: Evaluation,
            precisions: dict[str, Any]) -> None:
    """thresholds.json, history.csv, the evaluation with the precisions' contracts
    (``busi.evaluate.writer``), the training curves, the model card, report.html and the test
    results in TensorBoard."""
    from busi.evaluate.plots import plot_curves
    from busi.model.folder import write_thresholds
    from busi.report.html import run_report
    from busi.report.modelcard import model_card
    from busi.train.loop import HISTORY_COLUMNS
    from busi.train.tensorboard import TensorBoardLog

    cfg, run = job.cfg, job.run
    scored = dataclasses.replace(evaluation.scored, metrics={**evaluation.scored.metrics, "precisions": precisions})
    metrics = scored.metrics
    write_thresholds(run, evaluation.operating_point)
    history = [r.row() for r in result.history]
    run.write_csv("history", HISTORY_COLUMNS, history)
    plots = write_evaluation(run.files, TEST_SPLIT, scored)
    run.write_file_with("plot_accuracy", lambda p: plot_curves(history, "accuracy", p), ".png")
    run.write_file_with("plot_loss", lambda p: plot_curves(history, "loss", p), ".png")
    run.write_text("model_card", model_card(cfg, data.prepared.report, metrics, result,
                                            job.manifest.data.get("weights")))
    figures = {"accuracy": run.path("plot_accuracy"), "loss": run.path("plot_loss"), **plots}
    run.write_text("report_html", run_report(metrics, data.prepared.report, job.manifest.data, figures,
                                             f"busi run {run.root.name}"))
    board = TensorBoardLog(run.root / TENSORBOARD_DIR, enabled=job.dist.is_primary)
    board.test_results(metrics, {"confusion_matrix": run.path("plot_confusion"), "roc": run.path("plot_roc"),
                                 "calibration": run.path("plot_calibration")},
                       step=result.history[-1].epoch if result.history else 0)
    board.close()


def evaluation_engine(cfg: JobConfig, run: RunDir, started: Started) -> Engine | None:
    """The engine of the test-split evaluation (``train.engine``): OpenVINO runs the
    ``model/openvino/`` training has just written (no conversion of its own), in the training
    policy's precision; None: TensorFlow. Ranks other than the primary write no model, so they
    evaluate on TensorFlow (their metrics are not kept)."""
    from busi.model.engines import OpenVINOEngine, choose_engine, policy_precision
    from busi.model.openvino import OPENVINO_XML, openvino_available, read_openvino_dir

    name = choose_engine(cfg.train.engine, started.host.gpu, openvino_available(), key="train.engine")
    folder = run.path("openvino")
    if name == "tensorflow" or not run.primary or not (folder / OPENVINO_XML).is_file():
        return None
    try:
        return OpenVINOEngine(read_openvino_dir(folder), cfg.train.batch_size, policy_precision(started.policy),
                              started.host.threads)
    except ConfigError:
        raise
    except Exception as e:  # hours of training never end in a failure for want of the faster engine
        log.warning("engine: cannot run %s (%s: %s); evaluating on TensorFlow", folder, type(e).__name__, str(e)[:200])
        return None
