"""``busi-job bench``: training and inference images/s per core count and precision on this
node, and from them the walltime a job will need (``--estimate JOB.yaml``).

Each configuration runs in a subprocess of its own (``python -m busi.bench --worker SPEC``).
The child pins itself to N cores (``os.sched_setaffinity``) and sets its thread pools
(``runtime.detect_cores(N)`` -> ``runtime.start_tensorflow``) before TensorFlow starts, so
``--cores 1`` measures one core, as a job given one core would run. It builds busi's model
(``busi.model.build_model``, ``model.weights: none``: same compute as ImageNet weights),
unfreezes the backbone as asked (``all`` by default: the costliest fine-tuning step) and times

* training: busi's step (gradient tape, class-weighted sparse cross-entropy, Adam, the
  loss read back every step as the loop does) on an in-memory batch;
* inference: ``model(x, training=False)`` in a ``tf.function``,

after untimed warm-up calls (the first traces the function: seconds, reported apart), as the
median of ``--repeats`` runs of ``--steps`` batches. Input decoding is not included: the
pipeline costs a few percent (README, "Performance").

This module imports only the standard library at load time: ``busi-job bench --help`` and
``--estimate`` from a saved ``bench.csv`` (``--rates``) never start TensorFlow in this process.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

from busi.errors import BusiError, ConfigError, DataError
from busi.features import cache_variants, cacheable

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
UNFREEZE = ("none", "conv5", "conv4", "all")

# The walltime model (``estimate``): constants measured on a 2-core node (README, "Performance").
FIXED_SECONDS = 120.0  # imports, data scan, model build, evaluation plots, saving model.keras + SavedModel
CHECKPOINT_SECONDS = 5.0  # one ResNet50 checkpoint with Adam state (measured ~1-3 s at 224 px)
HEAD_EPOCH_SECONDS = 1.0  # a head epoch on cached features (a dense layer on 2048-d vectors)
# Fine-tuning on the feature cache (busi.features): the share of a full-model training step and
# of an inference pass that the cached, frozen stages take. conv5: measured at 224 px on 2 cores
# (conv1-conv4 alone 13.6 img/s against 12.0 for the whole model; a cached conv5 epoch 38 s
# against 88.5 s uncached, README "Performance"). conv4: from ResNet50's per-stage FLOPs
# (conv1-conv3 ~45% of a forward pass), not measured.
PREFIX_SHARE = {"conv5": (0.53, 0.88), "conv4": (0.21, 0.45)}
MARGIN_FACTOR = 1.3
MARGIN_SECONDS = 600.0


@dataclass
class BenchResult:
    """One configuration's measurement: a row of ``bench.csv``."""

    cores: int
    precision: str
    image_size: int
    batch_size: int
    infer_batch_size: int
    unfreeze: str
    batchnorm: str
    train_images_per_second: float
    infer_images_per_second: float
    train_runs: str = ""  # each repeat's images/s, ";"-separated
    infer_runs: str = ""
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    train_trace_seconds: float = 0.0
    infer_trace_seconds: float = 0.0
    worker_seconds: float = 0.0

    @classmethod
    def from_row(cls, row: dict[str, str]) -> "BenchResult":
        kinds = {f.name: f.type for f in fields(cls)}
        out: dict[str, Any] = {}
        for k, v in row.items():
            if k not in kinds:
                continue
            t = kinds[k]
            out[k] = int(v) if t == "int" else float(v) if t == "float" else v
        return cls(**out)


COLUMNS = [f.name for f in fields(BenchResult)]


# ------------------------------------------------------------------- the worker (child)


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one configuration in this (fresh) process; returns a ``BenchResult`` dict."""
    t_start = time.perf_counter()
    cores = int(spec["cores"])
    allowed = sorted(os.sched_getaffinity(0))
    if cores > len(allowed):
        raise ConfigError(f"--cores {cores}: this process may use only {len(allowed)} core(s)")
    os.sched_setaffinity(0, allowed[:cores])  # before TensorFlow sizes its pools

    from busi.runtime import detect_cores, start_tensorflow

    decision = detect_cores(cores)
    tf = start_tensorflow(decision, seed=0)

    import numpy as np

    size, bs, ibs = int(spec["image_size"]), int(spec["batch_size"]), int(spec["infer_batch_size"])
    precision, unfreeze, batchnorm = spec["precision"], spec["unfreeze"], spec["batchnorm"]
    steps, repeats = int(spec["steps"]), int(spec["repeats"])
    _, train_step, forward = build_bench_model(size, precision, unfreeze, batchnorm)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (bs, size, size, 3)).astype(np.float32))
    y = tf.constant(rng.integers(0, 3, bs).astype(np.int32))
    w = tf.constant(np.ones(bs, np.float32))
    xi = tf.constant(rng.uniform(0, 255, (ibs, size, size, 3)).astype(np.float32))

    def timed(fn: Any, args: tuple[Any, ...], n_images: int) -> tuple[float, list[float]]:
        return time_calls(fn, args, n_images, steps, repeats)

    train_trace, train_runs = timed(train_step, (x, y, w), bs)
    infer_trace, infer_runs = timed(forward, (xi,), ibs)
    result = BenchResult(
        cores=cores, precision=precision, image_size=size, batch_size=bs, infer_batch_size=ibs,
        unfreeze=unfreeze, batchnorm=batchnorm,
        train_images_per_second=round(statistics.median(train_runs), 3),
        infer_images_per_second=round(statistics.median(infer_runs), 3),
        train_runs=";".join(f"{r:.3f}" for r in train_runs),
        infer_runs=";".join(f"{r:.3f}" for r in infer_runs),
        intra_op_threads=decision.intra_op_threads, inter_op_threads=decision.inter_op_threads,
        train_trace_seconds=round(train_trace, 2), infer_trace_seconds=round(infer_trace, 2),
        worker_seconds=round(time.perf_counter() - t_start, 1),
    )
    return asdict(result)


def build_bench_model(size: int, precision: str, unfreeze: str = "all", batchnorm: str = "frozen",
                      learning_rate: float = 1e-5) -> tuple[Any, Any, Any]:
    """busi's model (``weights: none``) at ``size`` px under ``precision``, ``unfreeze`` blocks
    trainable, with busi's training step and a ``training=False`` forward pass, both
    ``tf.function``s: (model, train_step(x, y, w) -> (loss, correct), forward(x) -> probs).
    TensorFlow must already be started (``runtime.start_tensorflow``) by the caller."""
    import keras
    import tensorflow as tf

    from busi.config import load_config
    from busi.model import build_model, set_trainable
    from busi.train import make_optimizer, make_train_step

    keras.mixed_precision.set_global_policy(precision)
    cfg = load_config(None, base={
        "data": {"source": "unused", "image_size": size},
        "output": {"dir": "unused"},
        "model": {"weights": "none", "batchnorm": batchnorm},
        "train": {"precision": precision},
    })
    built = build_model(cfg, 3)
    model = built.model
    set_trainable(built, unfreeze, batchnorm)
    optimizer = make_optimizer(learning_rate, model.trainable_variables)
    train_step = make_train_step(model, optimizer, lambda x, training: model(x, training=training))

    @tf.function
    def forward(x: Any) -> Any:
        return model(x, training=False)

    return model, train_step, forward


def time_calls(fn: Any, args: tuple[Any, ...], n_images: int, steps: int, repeats: int) -> tuple[float, list[float]]:
    """(seconds of the first call: tracing, images/s of each repeat of ``steps`` calls) after a
    second untimed warm-up call. Each call's result is read back, as the training loop does."""
    t = time.perf_counter()
    _sync(fn(*args))
    trace = time.perf_counter() - t
    _sync(fn(*args))  # allocator and oneDNN primitive caches settle
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            _sync(fn(*args))
        runs.append(steps * n_images / (time.perf_counter() - t))
    return trace, runs


def _sync(out: Any) -> None:
    """Wait for a result (a tensor or a tuple of tensors) to be computed."""
    first = out[0] if isinstance(out, (tuple, list)) else out
    first.numpy()


# --------------------------------------------------------------------- the parent


@dataclass
class BenchPlan:
    cores: list[int]
    precisions: list[str]
    image_size: int
    batch_size: int
    infer_batch_size: int
    unfreeze: str
    batchnorm: str
    steps: int
    repeats: int
    notes: list[str] = field(default_factory=list)


def parse_int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what}: expected comma-separated integers such as 1,2,4, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise ConfigError(f"{what}: expected positive integers, got {text!r}")
    return values


def default_cores(available: int) -> list[int]:
    """1, 2, 4, ... up to the cores available, and that count itself."""
    out, n = [], 1
    while n < available:
        out.append(n)
        n *= 2
    out.append(available)
    return out


def make_plan(args: argparse.Namespace, job: Any | None) -> BenchPlan:
    """Settings to measure: the command line's, else the job file's (``--estimate``), else defaults."""
    from busi.runtime import affinity_cores, cpu_has_bf16, resolve_precision

    available = affinity_cores()
    cores = parse_int_list(args.cores, "--cores") if args.cores else default_cores(available)
    too_many = [c for c in cores if c > available]
    if too_many:
        raise ConfigError(
            f"--cores {args.cores}: this process may use only {available} core(s) (affinity mask); "
            f"cannot measure {', '.join(map(str, too_many))}"
        )
    if args.precision:
        precisions = []
        for p in args.precision.split(","):
            p = p.strip()
            p = resolve_precision(p, has_gpu=False) if p == "auto" else p
            if p not in PRECISIONS:
                raise ConfigError(f"--precision: {p!r} is not one of auto, {', '.join(PRECISIONS)}")
            if p not in precisions:
                precisions.append(p)
    elif job is not None:
        precisions = [resolve_precision(job.train.precision, has_gpu=False)]
    else:
        precisions = ["float32", "mixed_bfloat16"] if cpu_has_bf16() else ["float32"]
    image_size = args.image_size or (job.data.image_size if job is not None else 224)
    batch_size = args.batch_size or (job.train.batch_size if job is not None else 16)
    infer_bs = args.infer_batch_size or (job.train.batch_size if job is not None else 32)
    unfreeze = args.unfreeze or (job.train.finetune.unfreeze if job is not None and job.train.finetune.epochs else "all")
    if unfreeze == "none":
        unfreeze = "all" if job is None else "conv5"
    batchnorm = job.model.batchnorm if job is not None else "frozen"
    for name, value, lo in (("--image-size", image_size, 32), ("--batch-size", batch_size, 1),
                            ("--infer-batch-size", infer_bs, 1), ("--steps", args.steps, 1),
                            ("--repeats", args.repeats, 1)):
        if value < lo:
            raise ConfigError(f"{name}: expected an integer >= {lo}, got {value}")
    return BenchPlan(cores, precisions, image_size, batch_size, infer_bs, unfreeze, batchnorm, args.steps, args.repeats)


def run_worker(spec: dict[str, Any]) -> BenchResult:
    """Run one configuration in a fresh Python process; its last stdout line is the JSON result."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    for var in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        env.pop(var, None)  # the child sets its own, from its core count
    proc = subprocess.run(
        [sys.executable, "-m", "busi.bench", "--worker", json.dumps(spec)],
        capture_output=True, text=True, env=env,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise BusiError(f"bench worker ({spec['cores']} cores, {spec['precision']}) failed "
                        f"with exit code {proc.returncode}:\n{tail}")
    return BenchResult(**json.loads(lines[-1]))


def measure(plan: BenchPlan, echo: Any = print) -> list[BenchResult]:
    results = []
    for cores in plan.cores:
        for precision in plan.precisions:
            spec = {
                "cores": cores, "precision": precision, "image_size": plan.image_size,
                "batch_size": plan.batch_size, "infer_batch_size": plan.infer_batch_size,
                "unfreeze": plan.unfreeze, "batchnorm": plan.batchnorm,
                "steps": plan.steps, "repeats": plan.repeats,
            }
            echo(f"bench: {cores} core(s), {precision} ...", file=sys.stderr)
            r = run_worker(spec)
            echo(f"bench: {cores} core(s), {precision}: train {r.train_images_per_second:.2f} img/s, "
                 f"inference {r.infer_images_per_second:.2f} img/s ({r.worker_seconds:.0f} s)", file=sys.stderr)
            results.append(r)
    return results


def format_table(results: Sequence[BenchResult]) -> str:
    if not results:
        return "(no results)\n"
    r0 = results[0]
    lines = [
        f"ResNet50 {r0.image_size} px, training batch {r0.batch_size} (unfreeze {r0.unfreeze}), "
        f"inference batch {r0.infer_batch_size}; median of repeats, warm-up excluded",
        f"{'cores':>5}  {'precision':<15} {'threads':>7}  {'train img/s':>11}  {'infer img/s':>11}  "
        f"{'train runs':<24} {'infer runs':<24}",
    ]
    for r in results:
        lines.append(
            f"{r.cores:>5}  {r.precision:<15} {f'{r.intra_op_threads}/{r.inter_op_threads}':>7}  "
            f"{r.train_images_per_second:>11.2f}  {r.infer_images_per_second:>11.2f}  "
            f"{r.train_runs.replace(';', ' '):<24} {r.infer_runs.replace(';', ' '):<24}"
        )
    return "\n".join(lines) + "\n"


def write_csv(results: Sequence[BenchResult], path: Path) -> None:
    from busi.artifacts import atomic_write_text, csv_text

    atomic_write_text(path, csv_text(COLUMNS, ([getattr(r, c) for c in COLUMNS] for r in results)))


def read_csv(path: Path) -> list[BenchResult]:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            return [BenchResult.from_row(row) for row in csv.DictReader(fh)]
    except (OSError, ValueError, TypeError) as e:
        raise DataError(f"{path}: not a bench.csv written by busi-job bench: {e}") from None


def write_plot(results: Sequence[BenchResult], path: Path) -> None:
    """Training and inference images/s against cores, one line per precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    precisions = sorted({r.precision for r in results}, key=lambda p: PRECISIONS.index(p) if p in PRECISIONS else 9)
    for ax, attr, title in ((axes[0], "train_images_per_second", "training"),
                            (axes[1], "infer_images_per_second", "inference")):
        for p in precisions:
            rows = sorted((r for r in results if r.precision == p), key=lambda r: r.cores)
            ax.plot([r.cores for r in rows], [getattr(r, attr) for r in rows], marker="o", label=p)
        ax.set_xlabel("cores")
        ax.set_ylabel("images / s")
        ax.set_title(title)
        ax.set_xticks(sorted({r.cores for r in results}))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    if results:
        r0 = results[0]
        fig.suptitle(f"busi ResNet50, {r0.image_size} px, batch {r0.batch_size}/{r0.infer_batch_size}", fontsize=10)
    fig.tight_layout()
    from busi.artifacts import atomic_write_with

    atomic_write_with(path, lambda p: fig.savefig(p, dpi=110), ".png")
    plt.close(fig)


# -------------------------------------------------------------------- the estimate


@dataclass
class SplitCounts:
    train: int
    val: int
    test: int
    source: str  # where the counts came from


def split_counts(job: Any, images: int | None) -> SplitCounts:
    """Images per split: from the data if ``data.source`` exists (as training would split it),
    else ``images`` split by ``data.split``'s fractions."""
    source = Path(os.path.expanduser(job.data.source))
    if source.exists():
        from busi.data.prepare import prepare_data

        prepared = prepare_data(job.data, job.runtime.seed)
        n = {s: sum(1 for r in prepared.rows if r.split == s) for s in ("train", "val", "test")}
        return SplitCounts(n["train"], n["val"], n["test"], f"{source} ({sum(n.values())} images after de-duplication)")
    if images is None:
        raise ConfigError(
            f"--estimate: data.source {source} does not exist here; give the number of images with --images N "
            "(BUSI: 780)"
        )
    if images < 1:
        raise ConfigError(f"--images: expected a positive integer, got {images}")
    n_train = round(images * job.data.split.train)
    n_val = round(images * job.data.split.val)
    return SplitCounts(n_train, n_val, max(0, images - n_train - n_val), f"--images {images}")


@dataclass
class Estimate:
    cores: int
    precision: str
    compute_seconds: float
    request_seconds: float
    parts: dict[str, float]


def estimate_seconds(job: Any, counts: SplitCounts, train_rate: float, infer_rate: float,
                     trace_seconds: float = 0.0) -> tuple[float, dict[str, float]]:
    """Seconds a job takes at these rates, every epoch run (early stopping only shortens it).

    head phase: with the feature cache (frozen backbone), one inference pass over train (per
    augmentation variant) and val, then epochs on 2048-d vectors; without it, every epoch a
    forward pass over train and val. Fine-tuning: every epoch a training pass over train and
    an inference pass over val, and an epoch checkpoint. Evaluation: inference over test.
    Fixed: start-up, data, model build, tracing, plots and saving."""
    t = job.train
    parts: dict[str, float] = {}
    n_tr, n_val = counts.train, counts.val
    if t.head.epochs:
        if cacheable(job, t.head.unfreeze) and t.head.unfreeze == "none":
            variants = cache_variants(job)
            parts["head"] = (variants * n_tr + n_val) / infer_rate + t.head.epochs * HEAD_EPOCH_SECONDS
        else:
            rate = infer_rate if t.head.unfreeze == "none" else train_rate
            parts["head"] = t.head.epochs * (n_tr / rate + n_val / infer_rate + CHECKPOINT_SECONDS)
    if t.finetune.epochs:
        if t.finetune.unfreeze == "none":
            parts["finetune"] = t.finetune.epochs * ((n_tr + n_val) / infer_rate + CHECKPOINT_SECONDS)
        elif _prefix_cached(job, counts):
            share_train, share_infer = PREFIX_SHARE[t.finetune.unfreeze]
            variants = cache_variants(job)
            cache_pass = (variants * n_tr + n_val) * share_infer / infer_rate
            epoch = n_tr * (1 - share_train) / train_rate + n_val * (1 - share_infer) / infer_rate
            parts["finetune"] = cache_pass + t.finetune.epochs * (epoch + CHECKPOINT_SECONDS)
        else:
            parts["finetune"] = t.finetune.epochs * (n_tr / train_rate + n_val / infer_rate + CHECKPOINT_SECONDS)
    parts["evaluate"] = counts.test / infer_rate
    parts["fixed"] = FIXED_SECONDS + trace_seconds
    return sum(parts.values()), parts


def _prefix_cached(job: Any, counts: SplitCounts) -> bool:
    """Whether fine-tuning runs on the feature cache: configured, a frozen prefix, and the cache
    within ``train.feature_cache_max_gb`` (busi.features decides the same at run time)."""
    t = job.train
    if not cacheable(job, t.finetune.unfreeze) or t.finetune.unfreeze not in PREFIX_SHARE:
        return False
    stride, channels = (16, 1024) if t.finetune.unfreeze == "conv5" else (8, 512)
    side = math.ceil(job.data.image_size / stride)
    itemsize = 2 if t.precision.startswith("mixed") else 4  # auto: assume float32, the larger
    variants = cache_variants(job)
    nbytes = side * side * channels * itemsize * (variants * counts.train + counts.val)
    return nbytes <= t.feature_cache_max_gb * 2**30


def with_margin(seconds: float) -> float:
    """+30% and 10 minutes, rounded up to whole minutes."""
    return math.ceil((seconds * MARGIN_FACTOR + MARGIN_SECONDS) / 60.0) * 60.0


def hms(seconds: float) -> str:
    """HH:MM:SS as ``sbatch --time`` takes it (hours may exceed 24)."""
    s = int(math.ceil(seconds))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def estimate(job: Any, counts: SplitCounts, results: Sequence[BenchResult]) -> tuple[list[Estimate], list[str]]:
    """Per core count, the walltime at the job's precision (or the closest measured)."""
    from busi.runtime import resolve_precision

    notes = []
    want = resolve_precision(job.train.precision, has_gpu=False)
    measured = {r.precision for r in results}
    precision = want if want in measured else ("float32" if "float32" in measured else sorted(measured)[0])
    if precision != want:
        notes.append(f"the job trains in {want}, not measured: estimated from {precision}")
    out = []
    for r in sorted((r for r in results if r.precision == precision), key=lambda r: r.cores):
        scale = (r.image_size / job.data.image_size) ** 2  # convolutions cost ~ pixels
        if r.image_size != job.data.image_size:
            note = f"measured at {r.image_size} px, the job uses {job.data.image_size} px: rates scaled by {scale:.3g}"
            if note not in notes:
                notes.append(note)
        if r.batch_size != job.train.batch_size:
            note = f"measured at batch {r.batch_size}, the job uses {job.train.batch_size}"
            if note not in notes:
                notes.append(note)
        if job.train.finetune.epochs and job.train.finetune.unfreeze not in ("none", r.unfreeze):
            note = f"training measured with unfreeze {r.unfreeze}, the job fine-tunes {job.train.finetune.unfreeze}"
            if note not in notes:
                notes.append(note)
        traces = 2 * (r.train_trace_seconds + r.infer_trace_seconds)  # ~ graph size, not pixels
        total, parts = estimate_seconds(job, counts, r.train_images_per_second * scale,
                                        r.infer_images_per_second * scale, traces)
        out.append(Estimate(r.cores, precision, total, with_margin(total), parts))
    return out, notes


def format_estimate(job_path: str, job: Any, counts: SplitCounts, estimates: Sequence[Estimate],
                    notes: Sequence[str]) -> str:
    t = job.train
    lines = [
        f"estimate for {job_path}: {counts.train} train / {counts.val} val / {counts.test} test images "
        f"({counts.source}), {job.data.image_size} px, batch {t.batch_size}, "
        f"head {t.head.epochs} epochs (feature cache {t.feature_cache}), "
        f"finetune {t.finetune.epochs} epochs (unfreeze {t.finetune.unfreeze}, "
        f"{'feature cache ' + t.feature_cache if _prefix_cached(job, counts) else 'uncached'})",
        "every epoch counted (early stopping only shortens a run); request = compute x "
        f"{MARGIN_FACTOR:g} + {MARGIN_SECONDS / 60:.0f} min",
    ]
    lines += [f"note: {n}" for n in notes]
    for e in estimates:
        p = e.parts
        detail = ", ".join(f"{k} {hms(v)}" for k, v in p.items())
        lines.append(f"{e.cores} core(s), {e.precision}: compute {hms(e.compute_seconds)} ({detail}); "
                     f"request --time={hms(e.request_seconds)} --cpus-per-task={e.cores}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- entry points


def run_bench(args: argparse.Namespace) -> int:
    """``busi-job bench``: measure (or read ``--rates``), print, write CSV and PNG, estimate."""
    job = None
    if args.estimate:
        from busi.config import load_config

        job = load_config(args.estimate, args.overrides)
    elif args.overrides:
        raise ConfigError("bench: --set needs --estimate JOB.yaml")
    if args.images is not None and not args.estimate:
        raise ConfigError("bench: --images needs --estimate JOB.yaml")
    counts = split_counts(job, args.images) if job is not None else None  # fails before minutes of measuring
    if args.rates:
        results = read_csv(Path(args.rates))
        if not results:
            raise DataError(f"{args.rates}: no measurements in it")
    else:
        plan = make_plan(args, job)
        print(f"bench: cores {plan.cores}, precision {plan.precisions}, {plan.image_size} px, "
              f"batch {plan.batch_size} (train, unfreeze {plan.unfreeze}) / {plan.infer_batch_size} (inference), "
              f"{plan.repeats} x {plan.steps} steps, one subprocess each", file=sys.stderr)
        results = measure(plan)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(results, out / "bench.csv")
        write_plot(results, out / "bench.png")
        sys.stdout.write(format_table(results))
        print(f"wrote {out / 'bench.csv'} and {out / 'bench.png'}")
    if job is not None and counts is not None:
        estimates, notes = estimate(job, counts, results)
        sys.stdout.write(format_estimate(args.estimate, job, counts, estimates, notes))
    return 0


def _worker_main(argv: Sequence[str]) -> int:
    spec = json.loads(argv[1])
    try:
        result = worker(spec)
    except BusiError as e:
        print(f"busi-job bench: error: {e}", file=sys.stderr)
        return e.exit_code
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":  # python -m busi.bench --worker SPEC
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[1:]))
    print("usage: busi-job bench ... (python -m busi.bench --worker SPEC is internal)", file=sys.stderr)
    sys.exit(2)
