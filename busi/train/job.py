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

Each stage returns what the later ones take (``busi.train.context``) and writes nothing another
stage writes; ``StageClock`` times each into the manifest's ``seconds`` under the stage's name.
The stages after training (evaluate, quantize, publish) are in ``busi.train.results``.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import socket
import sys
import time
from typing import Any

import numpy as np

from busi import __version__
from busi.config.load import dump_config
from busi.config.schema import JobConfig
from busi.data.pipeline import Pipeline, SplitData, balanced_class_weights
from busi.data.prepare import prepare_data
from busi.data.split import splits_text
from busi.distributed.group import Dist
from busi.distributed.launchers import launched_local_size
from busi.distributed.setup import ALL_RANKS, configure_rank_logging, init_dist
from busi.errors import ConfigError, Interrupted
from busi.evaluate.leakage import hashes_text, training_fingerprints
from busi.files.manifest import Manifest
from busi.files.rundir import TENSORBOARD_DIR, RunDir
from busi.files.text import text_bytes
from busi.model.engines import Host
from busi.report.format import format_interval
from busi.runtime.cores import detect_cores
from busi.runtime.faults import failure_from_env
from busi.runtime.startup import resolve_precision, start_tensorflow
from busi.runtime.stopper import Stopper
from busi.runtime.walltime import process_start_time, resolve_deadline
from busi.train.checkpoint import Checkpointer
from busi.train.context import Built, Calibration, Job, StageClock, Started, TrainingData
from busi.train.loop import TrainResult
from busi.train.results import evaluate, publish, quantize

log = logging.getLogger("busi")

SPLIT_NAMES = ("train", "val", "test")


def run_training(cfg: JobConfig, restart: bool = False, argv: list[str] | None = None) -> dict[str, Any]:
    """Train, evaluate and write the run directory. Returns the final manifest."""
    t_start = time.perf_counter()
    dist = init_dist(cfg.runtime.distributed)
    configure_rank_logging(dist, log, cfg.runtime.log_all_ranks)
    if dist.size > 1:  # where each rank runs: what a lost rank's error is read against
        log.info("%d ranks: %s", dist.size, ", ".join(f"{r} on {h}" for r, h in enumerate(dist.hosts)))
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
                lost = dist.lost(e)
                job.manifest.finish("failed", error=f"{type(lost or e).__name__}: {lost or e}")
                dist.shutdown()  # peers waiting in a collective fail now instead of hanging
                if lost is not None:
                    raise lost from None
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

    injected = failure_from_env(job.dist.rank, signalled=lambda: job.stopper.received is not None)
    trainer = Trainer(cfg, built.net, built.pipelines["train"], built.pipelines["val"], class_weights, job.dist,
                      on_epoch, stopper=job.stopper, checkpointer=job.checkpointer, host=started.host,
                      on_step=injected)
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
