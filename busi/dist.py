"""Who we are among the ranks of a job. The one place that decides the primary rank.

``init_dist`` returns a ``Dist``; everything else asks it (``dist.is_primary``, the
gradient and metric reductions) instead of looking at ranks itself. A single-process
run gets a ``Dist`` whose reductions are identities.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from busi.errors import ConfigError

# Environment variables that launchers set with the world size of a multi-rank job.
WORLD_SIZE_VARS = ("HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE")

# Test hook (failure injection): BUSI_FAIL_AT_STEP=<rank>:<step>[:kill] makes that rank raise
# RuntimeError (or, with ``kill``, die at once by SIGKILL, as the OOM killer does it) just
# before its training step <step> (1-based, counted across epochs and phases). The tests use
# it to prove that one failing rank ends the whole job; it is read here, once, and nowhere
# else. Never set it in a production job.
FAIL_AT_STEP_VAR = "BUSI_FAIL_AT_STEP"

# ``log.info(..., extra=ALL_RANKS)``: a record every rank logs (others log warnings only).
ALL_RANKS = {"all_ranks": True}


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


def failure_injection(rank: int, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``Dist`` fields for ``BUSI_FAIL_AT_STEP`` (test hook): the step at which ``rank`` fails
    and how (``raise`` or ``kill``); empty when unset or meant for another rank."""
    env = os.environ if env is None else env
    raw = env.get(FAIL_AT_STEP_VAR, "").strip()
    if not raw:
        return {}
    parts = [p.strip() for p in raw.split(":")]
    if not (
        len(parts) in (2, 3) and parts[0].isdigit() and parts[1].isdigit() and int(parts[1]) >= 1
        and (len(parts) == 2 or parts[2] in ("raise", "kill"))
    ):
        raise ConfigError(f"{FAIL_AT_STEP_VAR}={raw!r}: expected <rank>:<step>[:kill], e.g. 1:2 (a test hook)")
    if int(parts[0]) != rank:
        return {}
    return {"fail_at_step": int(parts[1]), "fail_by": parts[2] if len(parts) == 3 else "raise"}


@dataclass(frozen=True)
class Dist:
    """Rank, size and the collective operations the training loop needs."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    backend: str = "none"
    fail_at_step: int | None = None  # test hook, from BUSI_FAIL_AT_STEP
    fail_by: str = "raise"  # raise | kill

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

    def average_model_state(self, model: Any) -> None:
        """Average the state that training changes without gradients (BatchNorm moving mean
        and variance) over ranks, so every rank validates and keeps the same model. Each rank
        updates those statistics from its own shard; called once per epoch (timm's
        ``distribute_bn``). No-op on one rank."""

    def check_step(self, step: int) -> None:
        """Test hook (``BUSI_FAIL_AT_STEP``): raise on this rank before global step ``step``."""
        if self.fail_at_step is None or step != self.fail_at_step:
            return
        if self.fail_by == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"{FAIL_AT_STEP_VAR}: injected failure on rank {self.rank} at step {step}")

    def shutdown(self) -> None:
        """Leave the job promptly after an error: peers blocked in a collective get an error
        instead of waiting for this rank forever. No-op on one rank."""

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the ranks of the run."""
        return {"backend": self.backend, "size": self.size, "local_size": self.local_size}


def init_dist(mode: str = "auto", env: Mapping[str, str] | None = None) -> Dist:
    """``none``: one process. ``horovod``: initialise Horovod. ``auto``: Horovod when the
    launcher started more than one rank."""
    if mode not in ("auto", "none", "horovod"):
        raise ConfigError(f"runtime.distributed: expected auto, none or horovod, got {mode!r}")
    launched = launched_size(env)
    if mode == "none" and launched > 1:
        raise ConfigError(
            f"runtime.distributed: none, but the launcher started {launched} ranks: each would train alone "
            "and write the same output.dir; use auto or horovod, or launch one process"
        )
    if mode == "none" or (mode == "auto" and launched <= 1):
        return Dist(**failure_injection(0, env))
    try:
        from busi.hvd import HorovodDist  # imports Horovod lazily, only here
    except ImportError as e:
        raise ConfigError(
            f"runtime.distributed: {mode} needs Horovod with TensorFlow support ({launched} ranks "
            f"launched), but it does not import ({e}); build it with `make horovod` "
            "(scripts/build_horovod.sh), or set runtime.distributed: none and launch one process"
        ) from None
    return HorovodDist.create(env)


def configure_rank_logging(dist: Dist, logger: logging.Logger, all_ranks: bool = False) -> None:
    """One log, not N copies: ranks other than the primary log warnings and errors only
    (and records marked ``extra=ALL_RANKS``) unless ``all_ranks`` (``runtime.log_all_ranks``);
    every line of a multi-rank run names its rank. Applied to the handlers, so it covers
    child loggers (``busi.data...``) and libraries too."""
    if dist.size > 1:
        rank_filter = _RankFilter(dist.rank, dist.is_primary or all_ranks)
        for handler in {*logger.handlers, *logging.getLogger().handlers}:
            handler.addFilter(rank_filter)


class _RankFilter(logging.Filter):
    def __init__(self, rank: int, verbose: bool) -> None:
        super().__init__()
        self.rank, self.verbose = rank, verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.verbose and record.levelno < logging.WARNING and not getattr(record, "all_ranks", False):
            return False
        if not getattr(record, "rank_prefixed", False):
            record.msg, record.rank_prefixed = f"rank {self.rank}: {record.msg}", True
        return True
