"""Core detection and thread pools: affinity, cgroup quota, Slurm, and what TensorFlow gets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from busi.runtime.cores import cgroup_cpu_quota, detect_cores, thread_env, thread_split
from busi.runtime.startup import resolve_precision


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == pytest.approx(1.5)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path) == pytest.approx(0.5)


def test_cgroup_quota_limits_cores(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    d = detect_cores("auto", env={}, cgroup_root=tmp_path)
    assert (d.cores, d.source) == (1, "cgroup")
    assert d.cgroup_quota == pytest.approx(0.5)


def test_slurm_cpus_per_task_limits_cores(tmp_path: Path) -> None:
    d = detect_cores("auto", env={"SLURM_CPUS_PER_TASK": "1"}, cgroup_root=tmp_path)
    assert (d.cores, d.source, d.slurm_cpus_per_task) == (1, "slurm", 1)
    assert thread_env(d)["OMP_NUM_THREADS"] == "1"


def test_integer_setting_overrides(tmp_path: Path) -> None:
    d = detect_cores(3, env={"SLURM_CPUS_PER_TASK": "1"}, cgroup_root=tmp_path)
    assert (d.cores, d.source) == (3, "config")


def test_local_ranks_share_the_node(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    d = detect_cores("auto", env={}, local_ranks=2, cgroup_root=tmp_path)
    assert d.cores == max(1, affinity // 2)


def test_thread_split() -> None:
    assert thread_split(1) == (1, 1)
    assert thread_split(2) == (2, 1)
    assert thread_split(16) == (16, 2)


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset (util-linux) not installed")
def test_taskset_one_core_is_detected() -> None:
    code = "import json; from busi.runtime.cores import detect_cores; d = detect_cores(); print(json.dumps(d.as_dict()))"
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CPUS_PER_TASK"}
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    d = json.loads(out.stdout)
    assert d["cores"] == 1 and d["affinity"] == 1 and d["source"] in ("affinity", "cgroup")


# One fresh Python per TF_CPP_MIN_LOG_LEVEL, as a job starts: busi's start-up under
# SLURM_CPUS_PER_TASK=1, a line of the program's own on stderr, the thread pools on stdout.
# Each run is made once and read by both tests below (a TensorFlow start-up costs seconds).
STARTUP = (
    "import os, sys; from busi.runtime.cores import detect_cores; from busi.runtime.startup import start_tensorflow\n"
    "d = detect_cores()\n"
    "tf = start_tensorflow(d, 0); print('own line', file=sys.stderr)\n"
    "print(d.cores, d.source, tf.config.threading.get_intra_op_parallelism_threads(),"
    " tf.config.threading.get_inter_op_parallelism_threads(), os.environ['OMP_NUM_THREADS'])\n"
)


@pytest.fixture(scope="module")
def started() -> Callable[[str | None], subprocess.CompletedProcess[str]]:
    """``run(level)``: the completed STARTUP process with TF_CPP_MIN_LOG_LEVEL=level (None: unset)."""
    runs: dict[str | None, subprocess.CompletedProcess[str]] = {}

    def run(level: str | None) -> subprocess.CompletedProcess[str]:
        if level not in runs:
            env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
            env["SLURM_CPUS_PER_TASK"] = "1"
            if level is not None:
                env["TF_CPP_MIN_LOG_LEVEL"] = level
            runs[level] = subprocess.run([sys.executable, "-c", STARTUP], capture_output=True, text=True, env=env,
                                         check=True)
        return runs[level]

    return run


@pytest.mark.integration
def test_tensorflow_gets_the_threads(started: Callable[[str | None], subprocess.CompletedProcess[str]]) -> None:
    """Under SLURM_CPUS_PER_TASK=1 the TF pools and OpenMP get one thread, set before TF starts."""
    assert started("2").stdout.split() == ["1", "slurm", "1", "1", "1"]


@pytest.mark.integration
@pytest.mark.parametrize("level", [None, "2", "0"])
def test_tensorflows_start_up_lines_show_only_when_asked_for(
    level: str | None, started: Callable[[str | None], subprocess.CompletedProcess[str]]
) -> None:
    """start_tensorflow keeps absl's "All log messages before absl::InitializeLog()..." line out of
    stderr whether TF_CPP_MIN_LOG_LEVEL is unset or 2 (which does not hide it); 0 asks for every
    line, and it is there. A line of the program's own written meanwhile always passes."""
    err = started(level).stderr
    assert "own line" in err
    assert ("absl::InitializeLog" in err) == (level == "0"), err[-2000:]


def _cpuinfo(tmp_path: Path, name: str, flags: str) -> Path:
    """A /proc/cpuinfo with two processors carrying ``flags``."""
    block = f"processor\t: {{}}\nvendor_id\t: GenuineIntel\nflags\t\t: {flags}\n\n"
    path = tmp_path / name
    path.write_text(block.format(0) + block.format(1))
    return path


def test_precision_resolution(tmp_path: Path) -> None:
    amx = _cpuinfo(tmp_path, "amx", "fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile")
    avx512_bf16 = _cpuinfo(tmp_path, "avx512bf16", "fpu sse2 avx2 avx512f avx512_bf16")
    plain = _cpuinfo(tmp_path, "plain", "fpu sse2 avx2 avx512f avx512_vnni")
    assert resolve_precision("float32", has_gpu=True, cpuinfo=amx) == "float32"
    assert resolve_precision("mixed_bfloat16", has_gpu=False, cpuinfo=plain) == "mixed_bfloat16"
    assert resolve_precision("auto", has_gpu=True, cpuinfo=amx) == "mixed_float16"
    assert resolve_precision("auto", has_gpu=False, cpuinfo=amx) == "mixed_bfloat16"
    assert resolve_precision("auto", has_gpu=False, cpuinfo=avx512_bf16) == "mixed_bfloat16"
    assert resolve_precision("auto", has_gpu=False, cpuinfo=plain) == "float32"
    # no cpuinfo to read (another OS, a locked-down container): float32, the safe answer
    assert resolve_precision("auto", has_gpu=False, cpuinfo=tmp_path / "missing") == "float32"
