"""Who this process is among the ranks of a job: the one table of launcher environment
variables, and the ``Dist`` value every other module asks.

Lightning's ``ClusterEnvironment`` is the model: one place answers world size, rank and local
size for each launcher (horovodrun, Open MPI's mpirun, PMI/PMIx under ``srun --mpi``), so no
other module reads launcher variables (``busi.inputs`` shards prediction by the same table).
``busi.dist`` builds a ``Dist`` (one process) or a ``busi.hvd.HorovodDist`` (Horovod ranks);
both import from here, never from each other at import time.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from busi.errors import ConfigError


@dataclass(frozen=True)
class Launcher:
    """The environment variables one launcher sets in each rank it starts."""

    name: str
    rank: str
    size: str
    local_size: str | None


# In the order they are consulted: a launcher that sets its own variables and those of the MPI
# below it (horovodrun over mpirun) is recognised by its own.
LAUNCHERS = (
    Launcher("horovod", "HOROVOD_RANK", "HOROVOD_SIZE", "HOROVOD_LOCAL_SIZE"),
    Launcher("mpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE"),
    Launcher("pmi", "PMI_RANK", "PMI_SIZE", "MPI_LOCALNRANKS"),
    Launcher("pmix", "PMIX_RANK", "PMIX_SIZE", None),
)


def _first_int(env: Mapping[str, str], names: Sequence[str | None]) -> int | None:
    for name in names:
        raw = env.get(name) if name else None
        if raw and raw.isdigit():
            return int(raw)
    return None


def launched_size(env: Mapping[str, str] | None = None) -> int:
    """The number of ranks the launcher started (horovodrun, mpirun, srun --mpi), or 1."""
    env = os.environ if env is None else env
    return _first_int(env, [launcher.size for launcher in LAUNCHERS]) or 1


def launched_local_size(env: Mapping[str, str] | None = None) -> int:
    """Ranks sharing this node, from the launcher's environment, or 1."""
    env = os.environ if env is None else env
    return _first_int(env, [launcher.local_size for launcher in LAUNCHERS]) or 1


# Test hook (failure injection): BUSI_FAIL_AT_STEP=<rank>:<step>[:kill] makes that rank raise
# RuntimeError (or, with ``kill``, die at once by SIGKILL, as the OOM killer does it) just
# before its training step <step> (1-based, counted across epochs and phases). The tests use
# it to prove that one failing rank ends the whole job; it is read here, once, and nowhere
# else. Never set it in a production job.
FAIL_AT_STEP_VAR = "BUSI_FAIL_AT_STEP"

# ``log.info(..., extra=ALL_RANKS)``: a record every rank logs (others log warnings only).
ALL_RANKS = {"all_ranks": True}


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


