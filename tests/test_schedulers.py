"""Batch schedulers: which one runs the job, its array task (a cv fold is the task ID, a shard
subtracts the lowest ID), CPUs per task and the job's end time (squeue faked: no subprocess)."""

from __future__ import annotations

import datetime as dt
import subprocess
from types import SimpleNamespace
from typing import Any, Callable

import pytest

from busi.errors import ConfigError
from busi.predict.shards import Shard, shard_from_env
from busi.runtime.cores import detect_cores
from busi.runtime.schedulers import SCHEDULERS, ArrayTask, AwsBatch, GcpBatch, Slurm, detect_scheduler
from busi.runtime.walltime import resolve_deadline
from busi.train.cv import array_fold

SLURM_ARRAY = {"SLURM_JOB_ID": "41", "SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "8",
               "SLURM_ARRAY_TASK_MIN": "1"}


@pytest.mark.parametrize(("env", "name"), [
    ({}, None),
    ({"HOME": "/home/u", "PMIX_RANK": "0"}, None),  # a launcher's rank is not a scheduler's
    ({"SLURM_JOB_ID": "41"}, "slurm"),
    ({"SLURM_CPUS_PER_TASK": "4"}, "slurm"),
    ({"AWS_BATCH_JOB_ID": "abc"}, "aws-batch"),
    ({"AWS_BATCH_JOB_ARRAY_INDEX": "3"}, "aws-batch"),
    ({"BATCH_TASK_INDEX": "0", "BATCH_TASK_COUNT": "1"}, "gcp-batch"),
    ({"SLURM_JOB_ID": "", "BATCH_TASK_INDEX": "0"}, "gcp-batch"),  # empty is unset
])
def test_detection(env: dict[str, str], name: str | None) -> None:
    found = detect_scheduler(env)
    assert (found.name if found else None) == name


def test_one_class_per_scheduler_each_reading_its_own_variables() -> None:
    assert [type(s) for s in SCHEDULERS] == [Slurm, AwsBatch, GcpBatch]
    names = [set(s.variables()) for s in SCHEDULERS]
    assert all(not a & b for i, a in enumerate(names) for b in names[i + 1:])


def test_array_tasks_as_each_scheduler_numbers_them() -> None:
    assert Slurm().array_task(SLURM_ARRAY) == ArrayTask(7, 8, 1, "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT")
    # AWS exports only the index: the job definition sets the size
    assert AwsBatch().array_task({"AWS_BATCH_JOB_ARRAY_INDEX": "3"}) == ArrayTask(
        3, None, 0, "AWS_BATCH_JOB_ARRAY_INDEX", "AWS_BATCH_JOB_ARRAY_SIZE")
    assert GcpBatch().array_task({"BATCH_TASK_INDEX": "2", "BATCH_TASK_COUNT": "4"}) == ArrayTask(
        2, 4, 0, "BATCH_TASK_INDEX", "BATCH_TASK_COUNT")
    for scheduler in SCHEDULERS:
        assert scheduler.array_task({}) is None
    assert Slurm().array_task({"SLURM_JOB_ID": "41", "SLURM_ARRAY_TASK_ID": ""}) is None  # not an array job


@pytest.mark.parametrize(("array", "folds", "shards"), [
    ("0-4", [0, 1, 2, 3, 4], [0, 1, 2, 3, 4]),
    ("1-8", [1, 2, 3, 4, 5, 6, 7, 8], [0, 1, 2, 3, 4, 5, 6, 7]),
    ("2", [2], [0]),
])
def test_a_fold_is_the_task_id_and_a_shard_its_place_in_the_array(array: str, folds: list[int],
                                                                   shards: list[int]) -> None:
    """``sbatch --array=<array>``: the tasks' SLURM_ARRAY_TASK_ID, _MIN and _COUNT."""
    lo, hi = (int(v) for v in (array.split("-") * 2)[:2])
    tasks = [{"SLURM_ARRAY_TASK_ID": str(i), "SLURM_ARRAY_TASK_MIN": str(lo),
              "SLURM_ARRAY_TASK_COUNT": str(hi - lo + 1)} for i in range(lo, hi + 1)]
    assert [array_fold(env) for env in tasks] == folds
    assert [shard_from_env(env) for env in tasks] == [Shard(i, len(tasks), "slurm") for i in shards]


def test_outside_an_array_there_is_no_fold_and_one_shard() -> None:
    assert array_fold({}) is None and array_fold({"SLURM_JOB_ID": "41"}) is None
    assert shard_from_env({"SLURM_JOB_ID": "41"}) == Shard(0, 1, "none")
    assert shard_from_env({"SLURM_JOB_ID": "41", "PMIX_RANK": "1", "PMIX_SIZE": "2"}) == Shard(1, 2, "pmix")
    # cv folds come from Slurm's array only: Google Batch numbers a plain job's one task too
    assert array_fold({"BATCH_TASK_INDEX": "0", "BATCH_TASK_COUNT": "1"}) is None


@pytest.mark.parametrize(("env", "var"), [
    ({"SLURM_ARRAY_TASK_ID": "x"}, "SLURM_ARRAY_TASK_ID"),
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "1.0"}, "SLURM_ARRAY_TASK_MIN"),
    ({"AWS_BATCH_JOB_ARRAY_INDEX": "3", "AWS_BATCH_JOB_ARRAY_SIZE": "eight"}, "AWS_BATCH_JOB_ARRAY_SIZE"),
    ({"BATCH_TASK_INDEX": "two", "BATCH_TASK_COUNT": "4"}, "BATCH_TASK_INDEX"),
])
def test_a_value_that_is_not_an_integer_names_the_variable(env: dict[str, str], var: str) -> None:
    scheduler = detect_scheduler(env)
    assert scheduler is not None
    with pytest.raises(ConfigError, match=f"{var}=.* is not an integer") as err:
        scheduler.array_task(env)
    assert err.value.exit_code == 2
    with pytest.raises(ConfigError, match=var):
        shard_from_env(env)


def test_a_bad_fold_task_id_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="SLURM_ARRAY_TASK_ID='x'"):
        array_fold({"SLURM_ARRAY_TASK_ID": "x"})


def test_cpus_per_task() -> None:
    assert Slurm().cpus_per_task({"SLURM_CPUS_PER_TASK": "4"}) == 4
    assert Slurm().cpus_per_task({"SLURM_JOB_ID": "41"}) is None
    assert AwsBatch().cpus_per_task({"AWS_BATCH_JOB_ID": "abc"}) is None
    assert GcpBatch().cpus_per_task({"BATCH_TASK_INDEX": "0"}) is None
    with pytest.raises(ConfigError, match="SLURM_CPUS_PER_TASK='four' is not an integer"):
        Slurm().cpus_per_task({"SLURM_CPUS_PER_TASK": "four"})
    with pytest.raises(ConfigError, match="SLURM_CPUS_PER_TASK"):
        detect_cores("auto", env={"SLURM_CPUS_PER_TASK": "four"})
    assert detect_cores("auto", env={"AWS_BATCH_JOB_ID": "abc"}).slurm_cpus_per_task is None


def squeue(stdout: str = "", error: Exception | None = None) -> tuple[Callable[..., Any], list[list[str]]]:
    """A fake ``subprocess.run`` for squeue, and the commands it was given."""
    calls: list[list[str]] = []

    def run(cmd: list[str], **kwargs: Any) -> SimpleNamespace:
        calls.append(cmd)
        if error:
            raise error
        return SimpleNamespace(returncode=0, stdout=stdout, stderr="")

    return run, calls


def test_slurm_job_end_time_from_the_environment_without_squeue() -> None:
    run, calls = squeue("2030-01-01T00:00:00\n")
    assert Slurm().job_end_time({"SLURM_JOB_END_TIME": "7000", "SLURM_JOB_ID": "41"}, run) == 7000.0
    assert calls == []
    assert Slurm().job_end_time({}, run) is None and calls == []  # no job: nothing to ask


def test_slurm_job_end_time_from_squeue() -> None:
    run, calls = squeue("2030-01-02T03:04:05\n")
    end = dt.datetime(2030, 1, 2, 3, 4, 5).timestamp()  # squeue prints local time
    assert Slurm().job_end_time({"SLURM_JOB_ID": "41", "SLURM_JOB_END_TIME": "N/A"}, run) == end
    assert calls == [["squeue", "-h", "-j", "41", "-o", "%e"]]


@pytest.mark.parametrize("run", [
    squeue("N/A\n")[0],
    squeue("UNLIMITED\n")[0],
    squeue("")[0],  # squeue failed: nothing on stdout
    squeue(error=FileNotFoundError("squeue"))[0],
    squeue(error=subprocess.TimeoutExpired("squeue", 20))[0],
])
def test_slurm_job_end_time_unknown(run: Callable[..., Any]) -> None:
    assert Slurm().job_end_time({"SLURM_JOB_ID": "41"}, run) is None


def test_the_cloud_schedulers_say_no_end_time() -> None:
    run, calls = squeue("2030-01-01T00:00:00")
    assert AwsBatch().job_end_time({"AWS_BATCH_JOB_ID": "abc"}, run) is None
    assert GcpBatch().job_end_time({"BATCH_TASK_INDEX": "0"}, run) is None
    assert calls == []


def test_the_deadline_names_the_scheduler() -> None:
    assert resolve_deadline("auto", 100.0, {"SLURM_JOB_END_TIME": "7000"}) == (7000.0, "slurm")
    assert resolve_deadline("auto", 100.0, {"AWS_BATCH_JOB_ID": "abc"}) == (None, "none")
