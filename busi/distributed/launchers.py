"""Who this process is among the ranks of a job: the one table of launcher environment
variables.

Lightning's ``ClusterEnvironment`` is the model: one place answers world size, rank and local
size for each launcher (horovodrun, Open MPI's mpirun, PMI/PMIx under ``srun --mpi``), so no
other module reads launcher variables (``busi.predict.shards`` shards prediction by the same
table). Standard library only: a login node answers without Horovod or TensorFlow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence


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


