"""Who this process is among the ranks of a job: the one table of launcher environment
variables.

Lightning's ``ClusterEnvironment`` is the model: one place answers world size, rank and local
size for each launcher (horovodrun, Open MPI's mpirun, PMI/PMIx under ``srun --mpi``), so no
other module reads launcher variables (``busi.predict.shards`` shards prediction by the same
table). Standard library only: a login node answers without Horovod or TensorFlow.

One launcher sets no variables of its own: ``srun`` starting the ranks of a Gloo job
(``slurm/train-horovod.sh``), where each task meets the others at the rendezvous server its
batch step runs (``busi.distributed.rendezvous``). ``horovod_env_from_slurm`` turns what Slurm
tells each task into the variables horovodrun would have given it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence

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


def _launch_env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    """The launcher's variables: ``env`` (default ``os.environ``), with those horovodrun would
    have set for a rank that srun started to join a Gloo rendezvous."""
    env = os.environ if env is None else env
    return {**env, **horovod_env_from_slurm(env)}


def launched_size(env: Mapping[str, str] | None = None) -> int:
    """The number of ranks the launcher started (horovodrun, mpirun, srun --mpi, srun with a
    Gloo rendezvous), or 1."""
    return _first_int(_launch_env(env), [launcher.size for launcher in LAUNCHERS]) or 1


def launched_local_size(env: Mapping[str, str] | None = None) -> int:
    """Ranks sharing this node, from the launcher's environment, or 1."""
    return _first_int(_launch_env(env), [launcher.local_size for launcher in LAUNCHERS]) or 1


# Set (with its port) by slurm/train-horovod.sh for the tasks it starts with srun: the address
# of the rendezvous server of the job's batch step. Horovod's own name for it.
RENDEZVOUS_ADDR = "HOROVOD_GLOO_RENDEZVOUS_ADDR"


def tasks_per_node(spec: str) -> list[int]:
    """Slurm's compressed count of tasks per node (``SLURM_STEP_TASKS_PER_NODE``), one number
    per node of the step: ``2(x3),1`` -> ``[2, 2, 2, 1]``."""
    counts: list[int] = []
    for part in spec.split(","):
        count, _, repeat = part.strip().partition("(x")
        if not count.isdigit() or (repeat and not repeat.rstrip(")").isdigit()):
            raise ConfigError(f"SLURM_STEP_TASKS_PER_NODE={spec!r}: expected counts like 2(x3),1")
        counts += [int(count)] * (int(repeat.rstrip(")")) if repeat else 1)
    return counts


def horovod_env_from_slurm(env: Mapping[str, str]) -> dict[str, str]:
    """Horovod's rank variables for a task that ``srun`` started to join a Gloo rendezvous
    (``HOROVOD_GLOO_RENDEZVOUS_ADDR`` set, no ``HOROVOD_RANK``); ``{}`` for any other process.

    The same numbers horovodrun gives (Horovod's ``get_host_assignments``): ranks fill the
    nodes in order (srun's block distribution), local rank is the task's index on its node,
    and cross rank / cross size count the nodes that have a task of that local rank. The host
    name (``HOROVOD_HOSTNAME``) is the Slurm node name, which the rendezvous server's plan uses.
    """
    if not env.get(RENDEZVOUS_ADDR) or env.get("HOROVOD_RANK") or not env.get("SLURM_PROCID"):
        return {}
    try:
        rank, node, local = (int(env[v]) for v in ("SLURM_PROCID", "SLURM_NODEID", "SLURM_LOCALID"))
        counts = tasks_per_node(env["SLURM_STEP_TASKS_PER_NODE"])
        host = env["SLURMD_NODENAME"]
    except (KeyError, ValueError):
        raise ConfigError(f"{RENDEZVOUS_ADDR} is set for a task of srun, but SLURM_PROCID, SLURM_NODEID, "
                          "SLURM_LOCALID, SLURM_STEP_TASKS_PER_NODE or SLURMD_NODENAME is missing: start the "
                          "ranks with srun (slurm/train-horovod.sh does), or with horovodrun") from None
    if node >= len(counts) or rank != sum(counts[:node]) + local:
        raise ConfigError(f"srun placed task {rank} as task {local} of node {node} ({env['SLURM_STEP_TASKS_PER_NODE']} "
                          "tasks per node), not in blocks: launch the ranks with srun --distribution=block")
    nodes_with_local = [i for i, c in enumerate(counts) if c > local]
    return {
        "HOROVOD_RANK": str(rank),
        "HOROVOD_SIZE": str(sum(counts)),
        "HOROVOD_LOCAL_RANK": str(local),
        "HOROVOD_LOCAL_SIZE": str(counts[node]),
        "HOROVOD_CROSS_RANK": str(nodes_with_local.index(node)),
        "HOROVOD_CROSS_SIZE": str(len(nodes_with_local)),
        "HOROVOD_HOSTNAME": host,
    }
