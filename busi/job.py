"""The training job end to end: runtime, data, model, loop, evaluation, run directory.

``run_training`` wires the library together in the order a researcher reads a run:
config and data first (so a bad dataset fails before TensorFlow starts), then the model,
the two phases, the test-split evaluation and every artifact of the run directory.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from busi import __version__
from busi.artifacts import TENSORBOARD_DIR, Manifest, RunDir, csv_text, text_bytes
from busi.bootstrap import bootstrap_intervals, format_interval
from busi.checkpoint import Checkpoint, Checkpointer
from busi.config import JobConfig, dump_config
from busi.data.pipeline import Pipeline, SplitData, balanced_class_weights
from busi.data.prepare import PreparedData, prepare_data
from busi.data.split import SPLITS_COLUMNS
from busi.dist import configure_rank_logging, init_dist
from busi.engines import Engine, Host, tensorflow_info
from busi.ranks import ALL_RANKS, Dist, launched_local_size
from busi.errors import ConfigError
from busi.leakage import hashes_text, training_fingerprints
from busi.runtime import detect_cores, resolve_precision, start_tensorflow
from busi.stopper import Interrupted, Stopper, process_start_time, resolve_deadline

log = logging.getLogger("busi")


def check_output_dir(run: RunDir, restart: bool) -> None:
    """Refuse to overwrite a completed run unless asked to (``--restart``)."""
    manifest = run.read_manifest()
    if manifest and manifest.get("status") == "completed" and not restart:
        raise ConfigError(
            f"output.dir: {run.root} already holds a completed run; choose another output.dir "
            "(e.g. --set output.dir=runs/new) or pass --restart to replace it"
        )


def split_data(prepared: PreparedData, name: str, classes: tuple[str, ...]) -> SplitData:
    pairs = prepared.split(name)
    return SplitData(
        paths=tuple(str(prepared.root / s.path) for s, _ in pairs),
        labels=tuple(classes.index(s.label) for s, _ in pairs),
    )


def run_training(cfg: JobConfig, restart: bool = False, argv: list[str] | None = None) -> dict[str, Any]:
    """Train, evaluate and write the run directory. Returns the final manifest."""
    t_start = time.perf_counter()
    dist = init_dist(cfg.runtime.distributed)
    configure_rank_logging(dist, log, cfg.runtime.log_all_ranks)
    run = RunDir(cfg.output.dir, primary=dist.is_primary)
    with run.claim(restart):  # the lock on output.dir, held to the end of the run
        check_output_dir(run, restart)
        return _claimed(cfg, run, dist, argv, t_start)


def _claimed(cfg: JobConfig, run: RunDir, dist: Dist, argv: list[str] | None, t_start: float) -> dict[str, Any]:
    checkpointer = Checkpointer(run.root, cfg, primary=dist.is_primary)
    resume = checkpointer.load()  # a checkpoint of other settings is an error (exit 2) here
    previous = run.read_json("manifest") if resume is not None else None
    from busi.model import resolve_weights

    resolve_weights(cfg.model.weights)  # a missing weights file fails now, not after data and TF start
    cores = detect_cores(cfg.runtime.cores, local_ranks=launched_local_size() if dist.size > 1 else 1)
    deadline, deadline_source = resolve_deadline(cfg.runtime.walltime, process_start_time())
    stopper = Stopper(cfg.runtime.signals, deadline, cfg.runtime.walltime_margin)
    manifest = Manifest(run, {
        "busi_version": __version__,
        "command": argv if argv is not None else sys.argv,
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "seed": cfg.runtime.seed,
        "deterministic": cfg.runtime.deterministic,
        "cores": cores.as_dict(),
        "distributed": dist.describe(),
        "walltime": {"deadline": deadline, "source": deadline_source, "margin": cfg.runtime.walltime_margin},
    }, previous, host=socket.gethostname(),
        resumed_from={"epoch": resume.state.epoch, "step": resume.state.step} if resume else None)
    manifest.start()  # first: a folder with busi's files but no manifest is never busi's
    run.write_text("config", dump_config(cfg))
    # Signals set a flag from here on; the loop checkpoints and exits 75 at the next step.
    with stopper:
        try:
            result = _train(cfg, run, dist, cores, manifest, t_start, stopper, checkpointer, resume)
        except Interrupted as e:
            manifest.finish("interrupted", interrupted=str(e))
            log.warning("interrupted: %s", e)
            raise
        except BaseException as e:
            manifest.finish("failed", error=f"{type(e).__name__}: {e}")
            dist.shutdown()  # peers waiting in a collective fail now instead of hanging
            raise
    return result


def _train(
    cfg: JobConfig, run: RunDir, dist: Dist, cores: Any, manifest: Manifest, t_start: float,
    stopper: Stopper, checkpointer: Checkpointer, resume: Checkpoint | None,
) -> dict[str, Any]:
    seconds = manifest.seconds
    t = time.perf_counter()
    prepared = prepare_data(cfg.data, cfg.runtime.seed, exclude=[run.root])
    splits_text = csv_text(SPLITS_COLUMNS, ([r.path, r.label, r.group, r.split] for r in prepared.rows))
    splits_sha = hashlib.sha256(text_bytes(splits_text)).hexdigest()
    if resume is not None and resume.state.splits_sha256 not in ("", splits_sha):
        raise ConfigError(
            f"output.dir: the checkpoint in {checkpointer.dir} was trained on another split of the data "
            "(the dataset's files changed); resume on the original data or pass --restart"
        )
    run.write_text("splits", splits_text)
    run.write_text("hashes", hashes_text(training_fingerprints(prepared)))  # for busi-job evaluate's overlap check
    run.write_json("report", prepared.report)
    seconds["data"] = round(time.perf_counter() - t, 3)
    classes = cfg.data.classes
    splits = {name: split_data(prepared, name, classes) for name in ("train", "val", "test")}
    log.info(
        "data: %d train, %d val, %d test images from %s",
        len(splits["train"]), len(splits["val"]), len(splits["test"]), prepared.root,
    )

    tf = start_tensorflow(cores, cfg.runtime.seed, cfg.runtime.deterministic)
    import keras

    precision = resolve_precision(cfg.train.precision, bool(tf.config.list_physical_devices("GPU")))
    keras.mixed_precision.set_global_policy(precision)
    manifest.record(
        tensorflow=tf.__version__, keras=keras.__version__, numpy=np.__version__, precision=precision,
    )
    log.info(
        "runtime: %d cores (source: %s), %d intra-op / %d inter-op threads, precision %s, %d rank(s)",
        cores.cores, cores.source, cores.intra_op_threads, cores.inter_op_threads, precision, dist.size,
    )

    from busi.model import build_model, count_params, weights_sha256
    from busi.evaluate import predict_probs
    from busi.train import HISTORY_COLUMNS, EpochRecord, Trainer

    t = time.perf_counter()
    built = build_model(cfg.model, cfg.data.image_size, classes)
    manifest.record(weights={
        "setting": cfg.model.weights,
        "file": str(built.weights_file) if built.weights_file else None,
        "loaded_into": built.weights_loaded_into,
    }, parameters=count_params(built.model))
    seconds["model_build"] = round(time.perf_counter() - t, 3)

    pipelines = {name: Pipeline(s, cfg.data.image_size, cfg.data.resize, cfg.data.cache) for name, s in splits.items()}
    if cfg.train.class_weights == "balanced":
        class_weights = balanced_class_weights(splits["train"].labels, len(classes))
    else:
        class_weights = np.ones(len(classes), np.float32)
    manifest.record(class_weights={c: float(w) for c, w in zip(classes, class_weights)})

    from busi.tensorboard_log import TensorBoardLog

    # Every write flushes, so a run that stops or fails keeps what it logged.
    board = TensorBoardLog(run.root / TENSORBOARD_DIR, enabled=dist.is_primary)
    board.start([EpochRecord(**h) for h in resume.state.history] if resume is not None else [])

    def on_epoch(record: Any, result: Any) -> None:
        run.write_csv("history", HISTORY_COLUMNS, [r.row() for r in result.history])
        board.epoch(record)

    host = Host(gpu=bool(tf.config.list_physical_devices("GPU")), threads=cores.cores)
    trainer = Trainer(cfg, built, pipelines["train"], pipelines["val"], class_weights, dist, on_epoch,
                      stopper=stopper, checkpointer=checkpointer, host=host)
    trainer.state.splits_sha256 = splits_sha
    result = trainer.fit(resume)
    seconds.update({f"phase_{k}": v for k, v in result.phase_seconds.items()})
    val_labels = list(splits["val"].labels)
    calibrated = calibrate(cfg, built.model, pipelines["val"], val_labels)  # before the model is written
    temperature, val_probs = calibrated if calibrated is not None else (None, None)
    sha = weights_sha256(built.model)
    manifest.record(best_epoch=result.best_epoch, monitor=cfg.train.monitor, best_value=result.best_value,
                    weights_sha256=sha)
    log.info("final weights sha256 %s", sha, extra=ALL_RANKS)

    from busi.modeldir import write_model_dir, write_thresholds

    t = time.perf_counter()
    write_model_dir(run, built.model, classes, cfg.data.image_size, cfg.data.resize)  # and model/openvino/
    saved = time.perf_counter() - t

    t = time.perf_counter()
    test_name = "test" if len(splits["test"]) else "val"
    engine = evaluation_engine(cfg, run, host, precision)
    probs = predict_probs(built.model, pipelines[test_name], cfg.train.batch_size, engine)
    y_true = list(splits[test_name].labels)
    if val_probs is None and val_labels:
        val_probs = predict_probs(built.model, pipelines["val"], cfg.train.batch_size, engine)
    from busi.evaluate import compute_metrics
    from busi.screening import choose_operating_point, screening_metrics

    point = choose_operating_point(val_labels, val_probs, classes)
    write_thresholds(run, point)

    metrics = compute_metrics(y_true, probs, classes)
    metrics["split"] = test_name
    metrics["ci95"] = bootstrap_intervals(y_true, probs, classes, seed=cfg.runtime.seed)
    if temperature is not None:
        from busi.calibration import calibration_metrics, with_temperature

        metrics["temperature"] = temperature
        metrics["calibration_before_temperature"] = calibration_metrics(y_true, with_temperature(probs, 1 / temperature))
        manifest.record(temperature=temperature)
    metrics["malignant_vs_rest"] = screening_metrics(y_true, probs, classes, point["threshold"], cfg.runtime.seed)
    if cfg.train.gradcam_masks and run.primary:  # gradients: on TensorFlow
        from busi.explain import gradcam_vs_masks

        root = prepared.root
        metrics["gradcam_vs_masks"] = gradcam_vs_masks(
            built.model, [(root / s.path, classes.index(s.label), [root / m for m in s.masks])
                          for s, _ in prepared.split(test_name)], classes, cfg.data.image_size, cfg.data.resize)
    metrics["engine"] = (engine.info if engine is not None else tensorflow_info(built.model)).as_dict()
    manifest.record(engines={"feature_cache": result.cache_engines, "evaluate": metrics["engine"]})
    seconds["evaluate"] = round(time.perf_counter() - t, 3)

    t = time.perf_counter()
    _write_outputs(cfg, run, prepared, splits[test_name], y_true, probs, metrics, result, manifest.data)
    board.test_results(metrics, {"confusion_matrix": run.path("plot_confusion"), "roc": run.path("plot_roc"),
                                 "calibration": run.path("plot_calibration")},
                       step=result.history[-1].epoch if result.history else 0)
    board.close()
    seconds["save"] = round(saved + time.perf_counter() - t, 3)
    seconds["total"] = round(time.perf_counter() - t_start, 3)
    manifest.finish("completed")
    checkpointer.remove()  # the final model replaces it
    ci = metrics["ci95"]
    log.info(
        "done: %s accuracy %s, balanced accuracy %s, macro F1 %s (95%% bootstrap intervals); run directory %s",
        test_name, *(format_interval(metrics.get(k), ci.get(k)) for k in ("accuracy", "balanced_accuracy", "macro_f1")),
        run.root,
    )
    return manifest.data


def calibrate(cfg: JobConfig, model: Any, val: Pipeline, labels: list[int]) -> tuple[float, np.ndarray] | None:
    """``train.calibration: temperature``: fit T on the validation split and divide the output
    layer by it (``busi.calibration``); the fitted T and the calibrated model's validation
    probabilities, or None (off, or no validation split)."""
    if cfg.train.calibration != "temperature":
        return None
    if not labels:
        log.warning("train.calibration: temperature needs a validation split; this run has none, so the model "
                    "is left uncalibrated")
        return None
    from busi.calibration import calibration_metrics, fit_temperature, scale_output_layer, with_temperature
    from busi.evaluate import predict_probs

    probs = predict_probs(model, val, cfg.train.batch_size)
    temperature = round(fit_temperature(labels, probs), 6)
    scale_output_layer(model, temperature)
    before, after = calibration_metrics(labels, probs), calibration_metrics(labels, with_temperature(probs, temperature))
    log.info("calibration: temperature %.3f fitted on %d validation images (NLL %.4f -> %.4f, ECE %.3f -> %.3f)",
             temperature, len(labels), before["nll"], after["nll"], before["ece"], after["ece"])
    return temperature, with_temperature(probs, temperature)


def evaluation_engine(cfg: JobConfig, run: RunDir, host: Host, policy: str) -> Engine | None:
    """The engine of the test-split evaluation (``train.engine``): OpenVINO runs the
    ``model/openvino/`` training has just written (no conversion of its own), in the training
    policy's precision; None: TensorFlow. Ranks other than the primary write no model, so they
    evaluate on TensorFlow (their metrics are not kept)."""
    from busi.engines import OPENVINO_XML, OpenVINOEngine, choose_engine, openvino_available, policy_precision

    name = choose_engine(cfg.train.engine, host.gpu, openvino_available(), key="train.engine")
    xml = run.path("openvino") / OPENVINO_XML
    if name == "tensorflow" or not run.primary or not xml.is_file():
        return None
    import openvino as ov

    try:
        return OpenVINOEngine(ov.Core().read_model(str(xml)), cfg.train.batch_size, policy_precision(policy),
                              host.threads)
    except ConfigError:
        raise
    except Exception as e:  # hours of training never end in a failure for want of the faster engine
        log.warning("engine: cannot run %s (%s: %s); evaluating on TensorFlow", xml, type(e).__name__, str(e)[:200])
        return None


def _write_outputs(
    cfg: JobConfig, run: RunDir, prepared: PreparedData, test: SplitData, y_true: list[int],
    probs: np.ndarray, metrics: dict[str, Any], result: Any, manifest: dict[str, Any],
) -> None:
    from busi.evaluate import plot_calibration, plot_confusion, plot_curves, plot_roc
    from busi.modelcard import model_card
    from busi.predictions import prediction_columns, prediction_row
    from busi.train import HISTORY_COLUMNS

    classes = cfg.data.classes
    history = [r.row() for r in result.history]
    run.write_csv("history", HISTORY_COLUMNS, history)
    run.write_json("metrics", metrics)
    rel = [str(Path(p).relative_to(prepared.root)) for p in test.paths]
    columns = prediction_columns(classes) + ["true_label"]
    rows = [prediction_row(p, pr, classes) + [classes[t]] for p, pr, t in zip(rel, probs, y_true)]
    run.write_csv("test_predictions", columns, rows)
    run.write_file_with("plot_accuracy", lambda p: plot_curves(history, "accuracy", p), ".png")
    run.write_file_with("plot_loss", lambda p: plot_curves(history, "loss", p), ".png")
    if "confusion_matrix" in metrics:
        run.write_file_with("plot_confusion", lambda p: plot_confusion(metrics["confusion_matrix"], classes, p), ".png")
        run.write_file_with("plot_roc", lambda p: plot_roc(y_true, probs, classes, p), ".png")
        run.write_file_with("plot_calibration",
                            lambda p: plot_calibration(y_true, probs, p, metrics.get("split", "test")), ".png")
    run.write_text("model_card", model_card(cfg, prepared.report, metrics, result))
    from busi.report import run_report

    plots = {name: run.path(key) for name, key in (("accuracy", "plot_accuracy"), ("loss", "plot_loss"),
             ("confusion matrix", "plot_confusion"), ("ROC", "plot_roc"), ("reliability", "plot_calibration"))}
    run.write_text("report_html", run_report(metrics, prepared.report, manifest, plots, f"busi run {run.root.name}"))
