"""Process runtime: how many cores we really have, thread pools, precision, seeds.

Thread pools must be set before TensorFlow starts, so ``detect_cores`` and
``thread_env`` use only the standard library; ``start_tensorflow`` applies them and
is the one place that first imports TensorFlow for a job.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from busi.runtime.schedulers import detect_scheduler

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class CoreDecision:
    """How many cores this process uses, and why (recorded in the manifest)."""

    cores: int
    source: str  # config | affinity | cgroup | slurm
    affinity: int
    cgroup_quota: float | None
    slurm_cpus_per_task: int | None
    local_ranks: int = 1
    intra_op_threads: int = 1
    inter_op_threads: int = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by the cgroup CPU quota (v2 ``cpu.max`` or v1 ``cfs_quota_us``); None if unlimited."""
    try:
        text = (root / "cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
        if text:
            return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def affinity_cores() -> int:
    """CPUs in this process's affinity mask (taskset, Slurm's task/affinity, cpusets)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # non-Linux
        return os.cpu_count() or 1


def detect_cores(
    setting: int | str = "auto",
    env: Mapping[str, str] | None = None,
    local_ranks: int = 1,
    cgroup_root: Path = CGROUP_ROOT,
) -> CoreDecision:
    """Cores for this process: the configured integer, or the smallest of the affinity mask,
    the cgroup quota (rounded up) and the batch scheduler's CPUs per task
    (``busi.runtime.schedulers``: Slurm's ``--cpus-per-task``); then divided among the ranks
    sharing the node (``local_ranks``) when ``auto``."""
    env = os.environ if env is None else env
    affinity = affinity_cores()
    quota = cgroup_cpu_quota(cgroup_root)
    scheduler = detect_scheduler(env)
    per_task = scheduler.cpus_per_task(env) if scheduler else None
    if setting != "auto":
        cores, source = int(setting), "config"
    else:
        candidates = [(affinity, "affinity")]
        if quota is not None:
            candidates.append((max(1, math.ceil(quota - 1e-9)), "cgroup"))
        if scheduler and per_task is not None and per_task > 0:
            candidates.append((per_task, scheduler.name))
        cores, source = min(candidates, key=lambda c: c[0])
        # the scheduler's CPUs per task are already per rank; the others are per node and shared.
        if source in ("affinity", "cgroup") and local_ranks > 1:
            cores = max(1, cores // local_ranks)
    intra, inter = thread_split(cores)
    return CoreDecision(
        cores=cores,
        source=source,
        affinity=affinity,
        cgroup_quota=quota,
        slurm_cpus_per_task=per_task,
        local_ranks=local_ranks,
        intra_op_threads=intra,
        inter_op_threads=inter,
    )


def thread_split(cores: int) -> tuple[int, int]:
    """(intra-op, inter-op) threads. Intra-op does the math in each op (convolutions): give it
    every core. Inter-op runs independent ops side by side; ResNet is a chain, so a couple of
    threads suffice, and more only oversubscribe the cores."""
    return cores, 1 if cores <= 2 else 2


def thread_env(decision: CoreDecision) -> dict[str, str]:
    """Environment for OpenMP/oneDNN and TensorFlow, to set before TensorFlow is imported."""
    return {
        "OMP_NUM_THREADS": str(decision.intra_op_threads),
        "TF_NUM_INTRAOP_THREADS": str(decision.intra_op_threads),
        "TF_NUM_INTEROP_THREADS": str(decision.inter_op_threads),
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),  # hide oneDNN banners
    }
