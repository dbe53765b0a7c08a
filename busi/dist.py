"""Who we are among the ranks of a job. The one place that decides the primary rank.

``init_dist`` returns a ``Dist``; everything else asks it (``dist.is_primary``, the
gradient and metric reductions) instead of looking at ranks itself. A single-process
run gets a ``Dist`` whose reductions are identities.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from busi.errors import ConfigError

# Environment variables that launchers set with the world size of a multi-rank job.
WORLD_SIZE_VARS = ("HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE")


def launched_size(env: Mapping[str, str] | None = None) -> int:
    """The number of ranks the launcher started (horovodrun, mpirun, srun --mpi), or 1."""
    env = os.environ if env is None else env
    for var in WORLD_SIZE_VARS:
        raw = env.get(var)
        if raw and raw.isdigit():
            return int(raw)
    return 1


def launched_local_size(env: Mapping[str, str] | None = None) -> int:
    """Ranks sharing this node, from the launcher's environment, or 1."""
    env = os.environ if env is None else env
    for var in ("HOROVOD_LOCAL_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"):
        raw = env.get(var)
        if raw and raw.isdigit():
            return int(raw)
    return 1


@dataclass(frozen=True)
class Dist:
    """Rank, size and the collective operations the training loop needs."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    backend: str = "none"

    @property
    def is_primary(self) -> bool:
        """The rank that logs and writes files. Decided here and nowhere else."""
        return self.rank == 0

    def average_gradients(self, grads: Sequence[Any]) -> Sequence[Any]:
        """Average gradients across ranks (identity on one rank); called inside tf.function."""
        return grads

    def sum_scalars(self, values: Sequence[float]) -> list[float]:
        """Sum Python floats over ranks (identity on one rank)."""
        return [float(v) for v in values]

    def broadcast_model(self, model: Any, optimizer: Any) -> None:
        """Make every rank start from rank 0's weights and optimizer state (no-op on one rank)."""

    def any_flag(self, flag: bool) -> bool:
        """True if ``flag`` is true on any rank (used to agree on stopping)."""
        return flag


def init_dist(mode: str = "auto", env: Mapping[str, str] | None = None) -> Dist:
    """``none``: one process. ``horovod``: initialise Horovod. ``auto``: Horovod when the
    launcher started more than one rank."""
    if mode == "none" or (mode == "auto" and launched_size(env) <= 1):
        return Dist()
    from busi.hvd import HorovodDist  # imports Horovod lazily, only here

    if mode not in ("auto", "horovod"):
        raise ConfigError(f"runtime.distributed: expected auto, none or horovod, got {mode!r}")
    return HorovodDist.create()
