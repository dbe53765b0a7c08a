"""``busi-job bench``: training and inference images/s per core count and precision on this
node, and from them the walltime a job will need (``--estimate JOB.yaml``).

Each configuration runs in a subprocess of its own (``python -m busi.perf.worker --worker SPEC``).
The child pins itself to N cores (``os.sched_setaffinity``) and sets its thread pools
(``busi.runtime.cores.detect_cores(N)`` -> ``busi.runtime.startup.start_tensorflow``) before
TensorFlow starts, so ``--cores 1`` measures one core, as a job given one core would run. It
builds busi's model (``busi.model.network.build_model``, ``model.weights: none``: same compute
as ImageNet weights),
unfreezes the backbone as asked (``all`` by default: the costliest fine-tuning step) and times

* training: busi's step (gradient tape, class-weighted sparse cross-entropy, Adam, the
  loss read back every step as the loop does) on an in-memory batch;
* inference: ``model(x, training=False)`` in a ``tf.function``,

after untimed warm-up calls (the first traces the function: seconds, reported apart), as the
median of ``--repeats`` runs of ``--steps`` batches. Input decoding is not included: the
pipeline costs a few percent (docs, "Performance").

This module imports only the standard library at load time: ``busi-job bench --help`` and
``--estimate`` from a saved ``bench.csv`` (``--rates``) never start TensorFlow in this process.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

from busi.config.schema import POLICIES
from busi.errors import BusiError, ConfigError, DataError
from busi.perf.estimate import estimate, format_estimate, split_counts


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
    backbone: str = "resnet50"  # rows of a bench.csv written before backbones were a key: ResNet50
    alpha: float = 1.0

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


# --------------------------------------------------------------------- the parent


@dataclass(frozen=True)
class BenchRequest:
    """What ``busi-job bench`` was asked for: the command line's options, None where not given
    (the job file's settings or the defaults apply then, ``make_plan``)."""

    cores: str | None = None  # comma-separated core counts
    precision: str | None = None  # comma-separated precisions
    image_size: int | None = None
    batch_size: int | None = None
    infer_batch_size: int | None = None
    unfreeze: str | None = None
    steps: int = 5
    repeats: int = 3
    out: str = "bench"
    estimate: str | None = None  # a job file
    images: int | None = None
    rates: str | None = None  # an earlier bench.csv
    overrides: tuple[str, ...] = ()


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
    backbone: str = "resnet50"
    alpha: float = 1.0


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


def make_plan(args: BenchRequest, job: Any | None) -> BenchPlan:
    """Settings to measure: the command line's, else the job file's (``--estimate``), else defaults."""
    from busi.runtime.cores import affinity_cores
    from busi.runtime.cpu import cpu_has_bf16
    from busi.runtime.startup import resolve_precision

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
            if p not in POLICIES:
                raise ConfigError(f"--precision: {p!r} is not one of auto, {', '.join(POLICIES)}")
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
        unfreeze = "all" if job is None else "top"
    batchnorm = job.model.batchnorm if job is not None else "frozen"
    net, alpha = (job.model.backbone, job.model.alpha) if job is not None else ("resnet50", 1.0)
    for name, value, lo in (("--image-size", image_size, 32), ("--batch-size", batch_size, 1),
                            ("--infer-batch-size", infer_bs, 1), ("--steps", args.steps, 1),
                            ("--repeats", args.repeats, 1)):
        if value < lo:
            raise ConfigError(f"{name}: expected an integer >= {lo}, got {value}")
    return BenchPlan(cores, precisions, image_size, batch_size, infer_bs, unfreeze, batchnorm, args.steps, args.repeats,
                     backbone=net, alpha=alpha)


def run_worker(spec: dict[str, Any]) -> BenchResult:
    """Run one configuration in a fresh Python process; its last stdout line is the JSON result."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    for var in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        env.pop(var, None)  # the child sets its own, from its core count
    proc = subprocess.run(
        [sys.executable, "-m", "busi.perf.worker", "--worker", json.dumps(spec)],
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
                "steps": plan.steps, "repeats": plan.repeats, "backbone": plan.backbone, "alpha": plan.alpha,
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
        f"{r0.backbone} {r0.image_size} px, training batch {r0.batch_size} (unfreeze {r0.unfreeze}), "
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
    from busi.files.atomic import atomic_write_text
    from busi.files.text import csv_text

    atomic_write_text(path, csv_text(COLUMNS, ([getattr(r, c) for c in COLUMNS] for r in results)))


def read_csv(path: Path) -> list[BenchResult]:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            return [BenchResult.from_row(row) for row in csv.DictReader(fh)]
    except (OSError, ValueError, TypeError) as e:
        raise DataError(path, f"not a bench.csv written by busi-job bench: {e}") from None


def write_plot(results: Sequence[BenchResult], path: Path) -> None:
    """Training and inference images/s against cores, one line per precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    precisions = sorted({r.precision for r in results}, key=lambda p: POLICIES.index(p) if p in POLICIES else 9)
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
        fig.suptitle(f"busi {r0.backbone}, {r0.image_size} px, batch {r0.batch_size}/{r0.infer_batch_size}", fontsize=10)
    fig.tight_layout()
    from busi.files.atomic import atomic_write_with

    atomic_write_with(path, lambda p: fig.savefig(p, dpi=110), ".png")
    plt.close(fig)


# ---------------------------------------------------------------------- entry points


def run_bench(args: BenchRequest) -> int:
    """``busi-job bench``: measure (or read ``--rates``), print, write CSV and PNG, estimate."""
    job = None
    if args.estimate:
        from busi.config.load import load_config

        job = load_config(args.estimate, args.overrides)
    elif args.overrides:
        raise ConfigError("bench: --set needs --estimate JOB.yaml")
    if args.images is not None and not args.estimate:
        raise ConfigError("bench: --images needs --estimate JOB.yaml")
    counts = split_counts(job, args.images) if job is not None else None  # fails before minutes of measuring
    if args.rates:
        results = read_csv(Path(args.rates))
        if not results:
            raise DataError(args.rates, "no measurements in it")
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
