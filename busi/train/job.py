"""The training job, top to bottom: ``busi-job train`` in named stages.

``run_training`` claims the run directory and sets the run up (checkpoint to resume, weights,
cores, walltime, manifest); ``_stages`` then reads like the run it performs:

1. ``prepare``: stage, scan, group and split the data; write the split, its hashes and the
   dataset report (before TensorFlow starts, so a bad dataset fails in seconds);
2. ``start``: threads, seeds and precision; TensorFlow starts here;
3. ``build``: the model, its weights and the input pipelines;
4. ``fit``: both phases (``busi.train.loop``), checkpointing and stopping on signals;
5. ``calibrate``: the temperature on the validation split (``train.calibration``);
6. ``save_model``: the model folder (model.keras, SavedModel, OpenVINO);
7. ``evaluate``: the test split's metrics, intervals, operating point and explanations;
8. ``quantize``: the INT8 model and the reduced precisions' accuracy contracts
   (``busi.train.quantize``, ``train.quantize``);
9. ``publish``: thresholds, metrics, predictions, plots, model card, report.html, TensorBoard.

Each stage returns what the later ones take and writes nothing another stage writes;
``StageClock`` times each into the manifest's ``seconds`` under the stage's name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import platform
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from busi import __version__
from busi.config.load import dump_config
from busi.config.schema import JobConfig
from busi.data.pipeline import Pipeline, SplitData, balanced_class_weights
from busi.data.prepare import PreparedData, prepare_data
from busi.data.split import splits_text
from busi.distributed.group import Dist
from busi.distributed.launchers import launched_local_size
from busi.distributed.setup import ALL_RANKS, configure_rank_logging, init_dist
from busi.errors import ConfigError, Interrupted
from busi.evaluate.leakage import hashes_text, training_fingerprints
from busi.evaluate.writer import Layout, Scored, score, write_evaluation
from busi.files.manifest import Manifest
from busi.files.rundir import RUN_FILES, TENSORBOARD_DIR, RunDir
from busi.files.text import text_bytes
from busi.model.engines import Engine, Host, tensorflow_info
from busi.model.network import BuiltModel
from busi.report.format import format_interval
from busi.runtime.cores import CoreDecision, detect_cores
from busi.runtime.faults import failure_from_env
from busi.runtime.startup import resolve_precision, start_tensorflow
from busi.runtime.stopper import Stopper
from busi.runtime.walltime import process_start_time, resolve_deadline
from busi.train.checkpoint import Checkpoint, Checkpointer
from busi.train.loop import TrainResult

log = logging.getLogger("busi")

SPLIT_NAMES = ("train", "val", "test")
TEST_SPLIT = Layout(predictions=RUN_FILES["test_predictions"], metrics=RUN_FILES["metrics"])


@dataclass
class Job:
    """What every stage of one training run may ask for."""

    cfg: JobConfig
    run: RunDir
    dist: Dist
    cores: CoreDecision
    manifest: Manifest
    stopper: Stopper
    checkpointer: Checkpointer
    resume: Checkpoint | None


@dataclass(frozen=True)
class TrainingData:
    """The prepared dataset, each split's files and labels, and the split's fingerprint."""

    prepared: PreparedData
    splits: dict[str, SplitData]
    splits_sha256: str

    def labels(self, name: str) -> list[int]:
        return list(self.splits[name].labels)

    @property
    def test_name(self) -> str:
        """The evaluated split: test, or val when the job keeps no test split."""
        return "test" if len(self.splits["test"]) else "val"


@dataclass(frozen=True)
class Started:
    """The node TensorFlow started on (GPU or not, threads) and the Keras dtype policy."""

    host: Host
    policy: str


@dataclass(frozen=True)
class Built:
    """The model with its weights, and each split's input pipeline."""

    net: BuiltModel
    pipelines: dict[str, Pipeline]

    @property
    def model(self) -> Any:
        return self.net.model


@dataclass(frozen=True)
class Calibration:
    """The fitted temperature and the calibrated validation probabilities; None, None: off, or
    no validation split."""

    temperature: float | None = None
    val_probs: np.ndarray | None = None


@dataclass(frozen=True)
class Evaluation:
    """The evaluated split, scored (``metrics.json`` without ``precisions``), and the positive
    class's operating point (``thresholds.json``)."""

    scored: Scored
    operating_point: dict[str, Any]


class StageClock:
    """Seconds per stage into the manifest (``seconds[name]``, added up when a name recurs)."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds = seconds

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t, 3)


def run_training(cfg: JobConfig, restart: bool = False, argv: list[str] | None = None) -> dict[str, Any]:
    """Train, evaluate and write the run directory. Returns the final manifest."""
    t_start = time.perf_counter()
    dist = init_dist(cfg.runtime.distributed)
    configure_rank_logging(dist, log, cfg.runtime.log_all_ranks)
    run = RunDir(cfg.output.dir, primary=dist.is_primary)
    with run.claim(restart):  # the lock on output.dir, held to the end of the run
        check_output_dir(run, restart)
        job = set_up(cfg, run, dist, argv)
        with job.stopper:  # signals set a flag from here on; the loop checkpoints and exits 75
            try:
                return _stages(job, t_start)
            except Interrupted as e:
                job.manifest.finish("interrupted", interrupted=str(e))
                log.warning("interrupted: %s", e)
                raise
            except BaseException as e:
                job.manifest.finish("failed", error=f"{type(e).__name__}: {e}")
                dist.shutdown()  # peers waiting in a collective fail now instead of hanging
                raise


def _stages(job: Job, t_start: float) -> dict[str, Any]:
    clock = StageClock(job.manifest.seconds)
    with clock("prepare"):
        data = prepare(job)
    with clock("start"):
        started = start(job)
    with clock("build"):
        built = build(job, data)
    with clock("fit"):
        result = fit(job, data, built, started)
    with clock("calibrate"):
        calibration = calibrate(job, data, built)
    with clock("save_model"):
        save_model(job, built)
    with clock("evaluate"):
        evaluation = evaluate(job, data, built, started, calibration)
    with clock("quantize"):
        precisions = quantize(job, data, built, started, evaluation)
    with clock("publish"):
        publish(job, data, result, evaluation, precisions)
    job.manifest.seconds["total"] = round(time.perf_counter() - t_start, 3)
    job.manifest.finish("completed")
    job.checkpointer.remove()  # the final model replaces it
    metrics = evaluation.scored.metrics
    log.info("done: %s accuracy %s, balanced accuracy %s, macro F1 %s (95%% bootstrap intervals); run directory %s",
             data.test_name, *(format_interval(metrics.get(k), metrics["ci95"].get(k))
                               for k in ("accuracy", "balanced_accuracy", "macro_f1")), job.run.root)
    return job.manifest.data


# ------------------------------------------------------------------------ set-up


def check_output_dir(run: RunDir, restart: bool) -> None:
    """Refuse to overwrite a completed run unless asked to (``--restart``)."""
    manifest = run.read_manifest()
    if manifest and manifest.get("status") == "completed" and not restart:
        raise ConfigError(
            f"output.dir: {run.root} already holds a completed run; choose another output.dir "
            "(e.g. --set output.dir=runs/new) or pass --restart to replace it"
        )


def set_up(cfg: JobConfig, run: RunDir, dist: Dist, argv: list[str] | None) -> Job:
    """The checkpoint to resume (a checkpoint of other settings: exit 2), the weights file (a
    missing one fails now, not after data and TensorFlow), cores, the walltime deadline and the
    manifest, started before anything else is written (a folder with busi's files but no
    manifest is never busi's)."""
    from busi.model.backbones import check_model
    from busi.model.weights import find_weights

    checkpointer = Checkpointer(run.root, cfg, primary=dist.is_primary)
    resume = checkpointer.load()
    previous = run.read_json("manifest") if resume is not None else None
    check_model(cfg.model)
    find_weights(cfg.model.weights, cfg.model.backbone, cfg.model.alpha, cfg.data.image_size)
    cores = detect_cores(cfg.runtime.cores, local_ranks=launched_local_size() if dist.size > 1 else 1)
    deadline, deadline_source = resolve_deadline(cfg.runtime.walltime, process_start_time())
    stopper = Stopper(cfg.runtime.signals, deadline, cfg.runtime.walltime_margin)
    host = socket.gethostname()
    manifest = Manifest(run, {
        "busi_version": __version__, "command": argv if argv is not None else sys.argv, "host": host,
        "python": platform.python_version(), "platform": platform.platform(), "seed": cfg.runtime.seed,
        "deterministic": cfg.runtime.deterministic, "cores": cores.as_dict(), "distributed": dist.describe(),
        "walltime": {"deadline": deadline, "source": deadline_source, "margin": cfg.runtime.walltime_margin},
    }, previous, host=host, resumed_from={"epoch": resume.state.epoch, "step": resume.state.step} if resume else None)
    manifest.start()
    run.write_text("config", dump_config(cfg))
    return Job(cfg, run, dist, cores, manifest, stopper, checkpointer, resume)


# ------------------------------------------------------------------------ stages


def prepare(job: Job) -> TrainingData:
    """Stage, scan, group and split the data; write the split, the training hashes (for
    ``busi-job evaluate``'s overlap check) and the dataset report. A resumed run must find
    the split it trained on."""
    cfg, run = job.cfg, job.run
    prepared = prepare_data(cfg.data, cfg.runtime.seed, exclude=[run.root])
    splits_csv = splits_text(prepared.rows)
    splits_sha = hashlib.sha256(text_bytes(splits_csv)).hexdigest()
    if job.resume is not None and job.resume.state.splits_sha256 not in ("", splits_sha):
        raise ConfigError(
            f"output.dir: the checkpoint in {job.checkpointer.dir} was trained on another split of the data "
            "(the dataset's files changed); resume on the original data or pass --restart"
        )
    run.write_text("splits", splits_csv)
    run.write_text("hashes", hashes_text(training_fingerprints(prepared)))
    run.write_json("report", prepared.report)
    classes = cfg.data.classes
    splits = {name: SplitData(paths=tuple(str(prepared.root / s.path) for s, _ in prepared.split(name)),
                              labels=tuple(classes.index(s.label) for s, _ in prepared.split(name)),
                              frames=tuple(s.frame for s, _ in prepared.split(name)))
              for name in SPLIT_NAMES}
    log.info("data: %d train, %d val, %d test images from %s",
             len(splits["train"]), len(splits["val"]), len(splits["test"]), prepared.root)
    return TrainingData(prepared, splits, splits_sha)


def start(job: Job) -> Started:
    """Start TensorFlow with the job's threads and seed; the node (GPU or not, threads) and the
    Keras dtype policy (``train.precision``)."""
    cfg, cores = job.cfg, job.cores
    tf = start_tensorflow(cores, cfg.runtime.seed, cfg.runtime.deterministic)
    import keras  # after TensorFlow started with the job's threads
    gpu = bool(tf.config.list_physical_devices("GPU"))
    policy = resolve_precision(cfg.train.precision, gpu)
    keras.mixed_precision.set_global_policy(policy)
    job.manifest.record(tensorflow=tf.__version__, keras=keras.__version__, numpy=np.__version__, precision=policy)
    log.info("runtime: %d cores (source: %s), %d intra-op / %d inter-op threads, precision %s, %d rank(s)",
             cores.cores, cores.source, cores.intra_op_threads, cores.inter_op_threads, policy, job.dist.size)
    return Started(Host(gpu=gpu, threads=cores.cores), policy)


def build(job: Job, data: TrainingData) -> Built:
    """The classifier with its weights (``model.weights``), recorded in the manifest, and the
    splits' input pipelines."""
    from busi.model.network import build_model, count_params

    cfg = job.cfg
    net = build_model(cfg.model, cfg.data.image_size, cfg.data.classes)
    job.manifest.record(backbone={"name": cfg.model.backbone, "alpha": cfg.model.alpha}, weights={
        "setting": cfg.model.weights,
        "file": str(net.weights_file) if net.weights_file else None,
        "sha256": net.weights_sha256,
        "loaded_into": net.weights_loaded_into,
    }, parameters=count_params(net.model))
    log.info("model: %s (alpha %g), weights %s%s", cfg.model.backbone, cfg.model.alpha,
             net.weights_file or "none (random initialisation)",
             f" (sha256 {net.weights_sha256[:12]}..., into the {net.weights_loaded_into})"
             if net.weights_sha256 else "")
    d = cfg.data
    pipelines = {name: Pipeline(s, d.image_size, d.resize, d.cache, d.dicom) for name, s in data.splits.items()}
    return Built(net, pipelines)


def fit(job: Job, data: TrainingData, built: Built, started: Started) -> TrainResult:
    """Both phases (``busi.train.loop.Trainer``) with the class weights: history.csv and
    TensorBoard after every epoch, checkpoints as configured; ``Interrupted`` after checkpointing
    on a signal or the budget. The best epoch and each phase's seconds go into the manifest."""
    from busi.train.loop import HISTORY_COLUMNS, EpochRecord, Trainer
    from busi.train.tensorboard import TensorBoardLog

    cfg, run = job.cfg, job.run
    classes = cfg.data.classes
    if cfg.train.class_weights == "balanced":
        class_weights = balanced_class_weights(data.splits["train"].labels, len(classes))
    else:
        class_weights = np.ones(len(classes), np.float32)
    job.manifest.record(class_weights={c: float(w) for c, w in zip(classes, class_weights)})
    # Every write flushes, so a run that stops or fails keeps what it logged.
    board = TensorBoardLog(run.root / TENSORBOARD_DIR, enabled=job.dist.is_primary)
    board.start([EpochRecord(**h) for h in job.resume.state.history] if job.resume is not None else [])

    def on_epoch(record: Any, result: Any) -> None:
        run.write_csv("history", HISTORY_COLUMNS, [r.row() for r in result.history])
        board.epoch(record)

    trainer = Trainer(cfg, built.net, built.pipelines["train"], built.pipelines["val"], class_weights, job.dist,
                      on_epoch, stopper=job.stopper, checkpointer=job.checkpointer, host=started.host,
                      on_step=failure_from_env(job.dist.rank))
    trainer.state.splits_sha256 = data.splits_sha256
    result = trainer.fit(job.resume)
    board.close()
    job.manifest.seconds.update({f"phase_{k}": v for k, v in result.phase_seconds.items()})
    job.manifest.record(best_epoch=result.best_epoch, monitor=cfg.train.monitor, best_value=result.best_value,
                        engines={"feature_cache": result.cache_engines})
    return result


def calibrate(job: Job, data: TrainingData, built: Built) -> Calibration:
    """``train.calibration: temperature``: fit T on the validation split and divide the output
    layer by it (``busi.evaluate.calibration``)."""
    cfg, labels = job.cfg, data.labels("val")
    if cfg.train.calibration != "temperature":
        return Calibration()
    if not labels:
        log.warning("train.calibration: temperature needs a validation split; this run has none, so the model "
                    "is left uncalibrated")
        return Calibration()
    from busi.evaluate.calibration import (
        calibration_metrics,
        fit_temperature,
        scale_output_layer,
        separated,
        with_temperature,
    )
    from busi.evaluate.forward import predict_probs

    probs = predict_probs(built.model, built.pipelines["val"], cfg.train.batch_size)
    temperature = round(fit_temperature(labels, probs), 6)
    scale_output_layer(built.model, temperature)
    before, after = calibration_metrics(labels, probs), calibration_metrics(labels, with_temperature(probs, temperature))
    if separated(labels, probs):
        log.warning("calibration: all %d validation images are classified correctly, so no temperature minimises "
                    "their NLL (it falls without end as T -> 0); temperature 1 kept: the model as trained",
                    len(labels))
    else:
        log.info("calibration: temperature %.3f fitted on %d validation images (NLL %.4f -> %.4f, ECE %.3f -> %.3f)",
                 temperature, len(labels), before["nll"], after["nll"], before["ece"], after["ece"])
    job.manifest.record(temperature=temperature)
    return Calibration(temperature, with_temperature(probs, temperature))


def save_model(job: Job, built: Built) -> None:
    """The model folder: model.keras, labels, preprocessing, SavedModel (``output.saved_model``)
    and OpenVINO."""
    from busi.model.folder import write_model_dir
    from busi.model.network import weights_sha256

    cfg = job.cfg
    sha = weights_sha256(built.model)
    log.info("final weights sha256 %s", sha, extra=ALL_RANKS)
    write_model_dir(job.run, built.model, cfg.data.classes, cfg.data.image_size, cfg.data.resize,
                    saved_model=cfg.output.saved_model, dicom=cfg.data.dicom, backbone=cfg.model.backbone,
                    alpha=cfg.model.alpha)
    job.manifest.record(weights_sha256=sha)


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
