"""The walltime model: from measured images/s (``busi-job bench``) to the seconds a training
job needs and the ``--time`` to ask the scheduler for (``busi-job bench --estimate JOB.yaml``).

Pure arithmetic over the job's settings, its split sizes and the rates: no TensorFlow, no
measuring (``busi.perf.bench`` measures). Every epoch is counted: early stopping only shortens a run.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from busi.errors import ConfigError
from busi.model.backbones import UNFREEZE_STAGE, backbone
from busi.model.features import (
    cache_feature_shape,
    cache_nbytes,
    cache_variants,
    cacheable,
)
from busi.runtime.walltime import format_hms

# The walltime model (``estimate``): constants measured on a 2-core node (README, "Performance").
FIXED_SECONDS = 120.0  # imports, data scan, model build, evaluation plots, saving model.keras + SavedModel
CHECKPOINT_SECONDS = 5.0  # one ResNet50 checkpoint with Adam state, with room to spare
HEAD_EPOCH_SECONDS = 1.0  # a head epoch on cached features (a dense layer on 2048-d vectors)
# Fine-tuning on the feature cache (busi.model.features): the share of a full-model training step and
# of an inference pass that the cached, frozen stages take. ResNet50's top (conv5): measured at 224 px
# on 2 cores (the figures: README, "Performance"); every other (backbone, stage): ``prefix_share``'s
# rule over the backbone table's FLOP shares, not measured.
MEASURED_PREFIX_SHARE = {("resnet50", "top"): (0.53, 0.88)}
MARGIN_FACTOR = 1.3
MARGIN_SECONDS = 600.0


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

        prepared = prepare_data(job.data, job.runtime.seed, exclude=[job.output.dir])
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
        if cacheable(t, t.head.unfreeze) and t.head.unfreeze == "none":
            variants = cache_variants(t)
            parts["head"] = (variants * n_tr + n_val) / infer_rate + t.head.epochs * HEAD_EPOCH_SECONDS
        else:
            rate = infer_rate if t.head.unfreeze == "none" else train_rate
            parts["head"] = t.head.epochs * (n_tr / rate + n_val / infer_rate + CHECKPOINT_SECONDS)
    if t.finetune.epochs:
        if t.finetune.unfreeze == "none":
            parts["finetune"] = t.finetune.epochs * ((n_tr + n_val) / infer_rate + CHECKPOINT_SECONDS)
        elif _prefix_cached(job, counts):
            share_train, share_infer = prefix_share(job.model.backbone, t.finetune.unfreeze)
            variants = cache_variants(t)
            cache_pass = (variants * n_tr + n_val) * share_infer / infer_rate
            epoch = n_tr * (1 - share_train) / train_rate + n_val * (1 - share_infer) / infer_rate
            parts["finetune"] = cache_pass + t.finetune.epochs * (epoch + CHECKPOINT_SECONDS)
        else:
            parts["finetune"] = t.finetune.epochs * (n_tr / train_rate + n_val / infer_rate + CHECKPOINT_SECONDS)
    parts["evaluate"] = counts.test / infer_rate
    parts["fixed"] = FIXED_SECONDS + trace_seconds
    return sum(parts.values()), parts


def prefix_share(backbone_name: str, unfreeze: str) -> tuple[float, float]:
    """The shares of a training step and of an inference pass that the frozen part of
    ``unfreeze`` takes: measured where ``MEASURED_PREFIX_SHARE`` has it, else from its FLOP share
    f, the inference share f and the training share f / (3 - 2f) (a trainable layer costs its
    forward pass and a backward pass of about twice that; a frozen one its forward pass only)."""
    measured = MEASURED_PREFIX_SHARE.get((backbone_name, UNFREEZE_STAGE[unfreeze] or ""))
    if measured is not None:
        return measured
    f = backbone(backbone_name).frozen_flops_share(unfreeze)
    return f / (3 - 2 * f), f


def _prefix_cached(job: Any, counts: SplitCounts) -> bool:
    """Whether fine-tuning runs on the feature cache: configured, a frozen prefix, and the cache
    within ``train.feature_cache_max_gb`` (busi.model.features decides the same at run time)."""
    t = job.train
    if not cacheable(t, t.finetune.unfreeze) or UNFREEZE_STAGE[t.finetune.unfreeze] not in ("top", "top2"):
        return False
    shape = cache_feature_shape(t.finetune.unfreeze, job.data.image_size, job.model)
    itemsize = 2 if t.precision.startswith("mixed") else 4  # auto: assume float32, the larger
    nbytes = cache_nbytes(shape, itemsize, counts.train, cache_variants(t), counts.val)
    return nbytes <= t.feature_cache_max_gb * 2**30


def with_margin(seconds: float) -> float:
    """+30% and 10 minutes, rounded up to whole minutes."""
    return math.ceil((seconds * MARGIN_FACTOR + MARGIN_SECONDS) / 60.0) * 60.0


def estimate(job: Any, counts: SplitCounts, results: Sequence[Any]) -> tuple[list[Estimate], list[str]]:
    """Per core count, the walltime at the job's precision (or the closest measured), from
    ``results``: the rows of a ``bench.csv`` (``busi.perf.bench.BenchResult``)."""
    from busi.runtime.startup import resolve_precision

    notes = []
    want = resolve_precision(job.train.precision, has_gpu=False)
    measured = {r.precision for r in results}
    precision = want if want in measured else ("float32" if "float32" in measured else sorted(measured)[0])
    if precision != want:
        notes.append(f"the job trains in {want}, not measured: estimated from {precision}")
    out = []
    for r in sorted((r for r in results if r.precision == precision), key=lambda r: r.cores):
        scale = (r.image_size / job.data.image_size) ** 2  # convolutions cost ~ pixels
        measured_on = backbone(r.backbone)
        if (r.backbone, r.alpha) != (job.model.backbone, job.model.alpha):
            ratio = measured_on.cost(224, r.alpha) / backbone(job.model.backbone).cost(224, job.model.alpha)
            scale *= ratio
            note = (f"measured on {r.backbone} (alpha {r.alpha:g}), the job trains {job.model.backbone} (alpha "
                    f"{job.model.alpha:g}): rates scaled by their GFLOPs per image, x{ratio:.3g} (a rough guide: "
                    "measure the job's own backbone with busi-job bench --estimate)")
            if note not in notes:
                notes.append(note)
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
        detail = ", ".join(f"{k} {format_hms(v)}" for k, v in p.items())
        lines.append(f"{e.cores} core(s), {e.precision}: compute {format_hms(e.compute_seconds)} ({detail}); "
                     f"request --time={format_hms(e.request_seconds)} --cpus-per-task={e.cores}")
    return "\n".join(lines) + "\n"
