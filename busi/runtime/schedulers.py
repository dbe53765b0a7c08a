"""Which batch scheduler runs this job, and what it says about the job: the one place that reads
batch-scheduler environment variables.

Lightning's ``ClusterEnvironment`` is the model: one class per scheduler (``Slurm``, ``AwsBatch``,
``GcpBatch``) behind one interface (``Scheduler``), and ``detect_scheduler`` finds the one whose
variables are present. The ranks of a multi-process launch are ``busi.distributed.launchers``'
table, not this one. Standard library only: a login node answers without TensorFlow.

An array task comes as the scheduler numbers it (``ArrayTask``: the task ID, the count, the
lowest ID); the rules that differ between its readers are stated here, once:

* A cross-validation fold IS the task ID (``ArrayTask.fold``): ``sbatch --array=0-4`` runs folds
  0..4 and ``--array=2`` runs fold 2 alone. Only Slurm's array gives folds
  (``busi.train.cv.array_fold``): Google Cloud Batch numbers the one task of a plain job too, where
  a cross-validation runs every fold in turn.
* A prediction shard is the task's place in the array (``ArrayTask.shard_index``): the ID minus
  ``SLURM_ARRAY_TASK_MIN``, so ``--array=1-8`` gives shards 0..7 of 8 (``busi.predict.shards``).
* AWS Batch exports only the index (``AWS_BATCH_JOB_ARRAY_INDEX``); the job definition sets the
  size (``AWS_BATCH_JOB_ARRAY_SIZE``, docs: clusters and clouds). Google Cloud Batch sets both.
* Only Slurm says the job's CPUs per task (already per rank) and its end time; a cloud job's
  walltime comes from ``BUSI_WALLTIME`` (``busi.runtime.walltime``).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping

from busi.errors import ConfigError


def env_int(env: Mapping[str, str], name: str | None) -> int | None:
    """The integer in variable ``name``; None where it is unset or empty (or ``name`` is None)."""
    raw = env.get(name) if name else None
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from None


@dataclass(frozen=True)
class ArrayTask:
    """One task of an array job, numbered as its scheduler numbers it."""

    id: int
    count: int | None  # None where the scheduler (or the job definition) does not export it
    min: int  # the array's lowest task ID: 0 where the scheduler numbers from 0
    id_var: str  # the variables the numbers came from, for messages
    count_var: str

    @property
    def fold(self) -> int:
        """The cross-validation fold this task runs: its ID."""
        return self.id

    @property
    def shard_index(self) -> int:
        """The prediction shard this task predicts: its place in the array, from 0."""
        return self.id - self.min


class Scheduler:
    """A batch scheduler: the environment variables it sets in a job, and what they say."""

    name: ClassVar[str]
    task_id_var: ClassVar[str]
    task_count_var: ClassVar[str]
    task_min_var: ClassVar[str | None] = None
    cpus_var: ClassVar[str | None] = None
    other_vars: ClassVar[tuple[str, ...]] = ()  # read by ``detect`` (and subclasses) only

    def variables(self) -> tuple[str, ...]:
        """Every variable of this scheduler that busi reads."""
        named = (self.task_id_var, self.task_count_var, self.task_min_var, self.cpus_var)
        return (*(v for v in named if v), *self.other_vars)

    def detect(self, env: Mapping[str, str]) -> bool:
        """Whether any of this scheduler's variables is set."""
        return any(env.get(v) for v in self.variables())

    def array_task(self, env: Mapping[str, str]) -> ArrayTask | None:
        """This job's array task, or None outside an array job."""
        task_id = env_int(env, self.task_id_var)
        if task_id is None:
            return None
        return ArrayTask(task_id, env_int(env, self.task_count_var), env_int(env, self.task_min_var) or 0,
                         self.task_id_var, self.task_count_var)

    def cpus_per_task(self, env: Mapping[str, str]) -> int | None:
        """The CPUs the scheduler gave each task, or None where it does not say."""
        return env_int(env, self.cpus_var)

    def job_end_time(self, env: Mapping[str, str], run: Callable[..., Any] = subprocess.run) -> float | None:
        """When the scheduler ends the job (epoch seconds), or None where it does not say."""
        return None


class Slurm(Scheduler):
    """Slurm: ``sbatch`` jobs and ``--array`` tasks (``slurm/``)."""

    name = "slurm"
    task_id_var = "SLURM_ARRAY_TASK_ID"
    task_count_var = "SLURM_ARRAY_TASK_COUNT"
    task_min_var = "SLURM_ARRAY_TASK_MIN"
    cpus_var = "SLURM_CPUS_PER_TASK"
    job_id_var: ClassVar[str] = "SLURM_JOB_ID"
    end_time_var: ClassVar[str] = "SLURM_JOB_END_TIME"
    other_vars = (job_id_var, end_time_var)

    def job_end_time(self, env: Mapping[str, str], run: Callable[..., Any] = subprocess.run) -> float | None:
        """``SLURM_JOB_END_TIME``, else ``squeue -h -j $SLURM_JOB_ID -o %e`` (None: no job, no
        squeue, or no end: ``N/A``, ``UNLIMITED``)."""
        raw = env.get(self.end_time_var)
        if raw and raw.isdigit():
            return float(raw)
        job = env.get(self.job_id_var)
        if not job:
            return None
        try:
            out = run(["squeue", "-h", "-j", job, "-o", "%e"], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        try:
            return dt.datetime.fromisoformat((out.stdout or "").strip()).timestamp()  # local time, as squeue prints it
        except ValueError:
            return None


class AwsBatch(Scheduler):
    """AWS Batch: array children get an index; the size is the job definition's (module docstring)."""

    name = "aws-batch"
    task_id_var = "AWS_BATCH_JOB_ARRAY_INDEX"
    task_count_var = "AWS_BATCH_JOB_ARRAY_SIZE"
    other_vars = ("AWS_BATCH_JOB_ID",)


class GcpBatch(Scheduler):
    """Google Cloud Batch: every task of a job gets its index and the job's task count."""

    name = "gcp-batch"
    task_id_var = "BATCH_TASK_INDEX"
    task_count_var = "BATCH_TASK_COUNT"


SLURM = Slurm()
# In the order they are consulted.
SCHEDULERS: tuple[Scheduler, ...] = (SLURM, AwsBatch(), GcpBatch())


def detect_scheduler(env: Mapping[str, str] | None = None) -> Scheduler | None:
    """The first scheduler of ``SCHEDULERS`` whose variables are set, or None outside a batch job."""
    env = os.environ if env is None else env
    return next((s for s in SCHEDULERS if s.detect(env)), None)
