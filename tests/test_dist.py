"""Data-parallel training (busi.distributed: launchers, group, horovod): rank detection and logging without Horovod, then
real two-rank Horovod runs (``horovodrun --gloo -np 2``) on synthetic data: the ranks end with
the same weights, the run directory is written once, and a failing rank ends the job.

The Horovod tests skip where ``import horovod.tensorflow`` fails; CI builds it (``make horovod``).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO

from busi.distributed.group import Dist
from busi.distributed.launchers import horovod_env_from_slurm, launched_local_size, launched_size, tasks_per_node
from busi.distributed.setup import ALL_RANKS, configure_rank_logging, init_dist
from busi.errors import ConfigError, RankLost
from busi.runtime.faults import FailAtStep, failure_from_env

# ------------------------------------------------------------------ one process, no Horovod


def test_launched_size_from_launcher_env() -> None:
    assert launched_size({}) == 1
    assert launched_size({"HOROVOD_SIZE": "4"}) == 4
    assert launched_size({"OMPI_COMM_WORLD_SIZE": "8"}) == 8
    assert launched_size({"PMI_SIZE": "2"}) == 2
    assert launched_size({"HOROVOD_SIZE": ""}) == 1
    assert launched_local_size({}) == 1
    assert launched_local_size({"HOROVOD_LOCAL_SIZE": "2"}) == 2
    assert launched_local_size({"OMPI_COMM_WORLD_LOCAL_SIZE": "4"}) == 4


def test_tasks_per_node_expands_slurms_counts() -> None:
    assert tasks_per_node("1") == [1]
    assert tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert tasks_per_node("4,2(x2)") == [4, 2, 2]
    for bad in ("", "x", "2(x)", "2(xa)", "-1"):
        with pytest.raises(ConfigError, match="SLURM_STEP_TASKS_PER_NODE"):
            tasks_per_node(bad)


def _srun_tasks(counts: list[int], nodes: list[str]) -> list[dict[str, str]]:
    """The variables srun gives each task of a step with ``counts`` tasks on ``nodes`` (block
    distribution), plus the rendezvous address the batch script adds."""
    spec = ",".join(str(c) for c in counts)
    tasks, rank = [], 0
    for node_id, (count, node) in enumerate(zip(counts, nodes)):
        for local in range(count):
            tasks.append({"SLURM_PROCID": str(rank), "SLURM_NODEID": str(node_id), "SLURM_LOCALID": str(local),
                          "SLURM_STEP_TASKS_PER_NODE": spec, "SLURMD_NODENAME": node,
                          "HOROVOD_GLOO_RENDEZVOUS_ADDR": "10.0.0.1"})
            rank += 1
    return tasks


@pytest.mark.parametrize("counts", [[1, 1], [2, 2], [4, 2, 3], [1]])
def test_srun_tasks_get_the_ranks_horovodrun_would_give_them(counts: list[int]) -> None:
    """A task srun started for a Gloo rendezvous gets the rank, local and cross rank and sizes
    of Horovod's own plan for the same hosts (``get_host_assignments``, which the rendezvous
    server is given): otherwise the ranks would wait in scopes of the wrong size."""
    hosts_util = pytest.importorskip("horovod.runner.common.util.hosts")
    nodes = [f"node{i + 1}" for i in range(len(counts))]
    plan = hosts_util.get_host_assignments(hosts_util.parse_hosts(",".join(f"{n}:{c}" for n, c in zip(nodes, counts))),
                                           sum(counts))
    for task, slot in zip(_srun_tasks(counts, nodes), plan, strict=True):
        assert horovod_env_from_slurm(task) == {
            "HOROVOD_RANK": str(slot.rank), "HOROVOD_SIZE": str(slot.size),
            "HOROVOD_LOCAL_RANK": str(slot.local_rank), "HOROVOD_LOCAL_SIZE": str(slot.local_size),
            "HOROVOD_CROSS_RANK": str(slot.cross_rank), "HOROVOD_CROSS_SIZE": str(slot.cross_size),
            "HOROVOD_HOSTNAME": slot.hostname}
        assert launched_size(task) == sum(counts) and launched_local_size(task) == slot.local_size


def test_srun_ranks_only_where_the_batch_script_set_a_rendezvous() -> None:
    task = _srun_tasks([2], ["node1"])[1]
    assert horovod_env_from_slurm({k: v for k, v in task.items() if k != "HOROVOD_GLOO_RENDEZVOUS_ADDR"}) == {}
    assert horovod_env_from_slurm({**task, "HOROVOD_RANK": "1"}) == {}  # horovodrun's own ranks
    assert launched_size({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}) == 1  # a batch step is one process
    with pytest.raises(ConfigError, match="SLURMD_NODENAME is missing"):
        horovod_env_from_slurm({k: v for k, v in task.items() if k != "SLURMD_NODENAME"})
    with pytest.raises(ConfigError, match="--distribution=block"):  # cyclic: task 1 on node 1
        horovod_env_from_slurm({**_srun_tasks([1, 1], ["a", "b"])[1], "SLURM_PROCID": "0"})


def test_rendezvous_refuses_an_address_other_nodes_cannot_reach() -> None:
    pytest.importorskip("horovod.runner.http.http_server")
    from busi.distributed.rendezvous import main, serve

    with pytest.raises(ConfigError, match="which the other nodes cannot reach; set BUSI_RENDEZVOUS_ADDR"):
        serve("node1:1,node2:1", "127.0.0.1")
    assert main(["--hosts", "node1:x"]) == 2


def test_a_lost_peer_is_named_with_the_hosts_of_the_ranks() -> None:
    assert Dist().lost(RuntimeError("Horovod has been shut down")) is None  # one process has no peers
    err = RankLost(0, "node1", {1: "node2", 2: "node3"}, "Horovod has been shut down")
    assert (err.rank, err.host, err.peers, err.exit_code) == (0, "node1", {1: "node2", 2: "node3"}, 1)
    assert str(err).startswith("rank 0 on node1 lost contact with the other ranks (1 on node2, 2 on node3)")


@pytest.mark.parametrize("mode", ["none", "auto"])
def test_single_process_dist(mode: str) -> None:
    d = init_dist(mode, env={})
    assert type(d) is Dist
    assert (d.rank, d.size, d.local_size, d.backend, d.is_primary) == (0, 1, 1, "none", True)
    grads = [1.0, None, 3.0]
    assert d.average_gradients(grads) is grads
    assert d.sum_scalars([1, 2.5]) == [1.0, 2.5]
    assert d.any_flag(True) and not d.any_flag(False)
    assert d.describe() == {"backend": "none", "size": 1, "local_size": 1}
    assert d.hosts == () and d.lost(RuntimeError("x")) is None
    d.broadcast_model(None, None)
    d.average_model_state(None)
    d.shutdown()


def test_none_refuses_a_multi_rank_launch() -> None:
    # N independent copies would all write the same output.dir
    with pytest.raises(ConfigError, match="launcher started 2 ranks"):
        init_dist("none", env={"HOROVOD_SIZE": "2"})


def test_unknown_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="runtime.distributed"):
        init_dist("mpi", env={})


def test_failure_injection_hook() -> None:
    """The test-only hook: built only when BUSI_FAIL_AT_STEP names this rank; the production
    Dist knows nothing of it."""
    assert failure_from_env(0, {}) is None
    assert failure_from_env(1, {"BUSI_FAIL_AT_STEP": "1:2"}) == FailAtStep(1, 2, "raise")
    assert failure_from_env(0, {"BUSI_FAIL_AT_STEP": "1:2"}) is None
    assert failure_from_env(1, {"BUSI_FAIL_AT_STEP": "1:3:kill"}) == FailAtStep(1, 3, "kill")
    # injected once per Slurm job: its requeued starts run clean
    assert failure_from_env(1, {"BUSI_FAIL_AT_STEP": "1:2", "SLURM_RESTART_COUNT": "0"}) == FailAtStep(1, 2, "raise")
    assert failure_from_env(1, {"BUSI_FAIL_AT_STEP": "1:2", "SLURM_RESTART_COUNT": "1"}) is None
    for bad in ("1", "a:2", "1:0", "1:2:explode", "1:2:3:4"):
        with pytest.raises(ConfigError, match="BUSI_FAIL_AT_STEP"):
            failure_from_env(1, {"BUSI_FAIL_AT_STEP": bad})
    hook = failure_from_env(0, {"BUSI_FAIL_AT_STEP": "0:2"})
    assert hook is not None
    hook(1)
    with pytest.raises(RuntimeError, match="injected failure on rank 0 at step 2"):
        hook(2)
    hook(3)
    assert not hasattr(init_dist("none", env={"BUSI_FAIL_AT_STEP": "0:2"}), "check_step")


def test_a_waiting_hook_holds_its_step_until_the_signal(monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """``<rank>:<step>:wait`` logs the line a test waits for, returns once the job is signalled
    (the step then runs and the loop stops as for any signal) and fails rather than wait forever."""
    from busi.runtime import faults

    asked: list[int] = []

    def signalled() -> bool:
        asked.append(1)
        return len(asked) >= 3  # the signal comes while the hook waits

    hook = failure_from_env(0, {"BUSI_FAIL_AT_STEP": "0:2:wait"}, signalled=signalled)
    assert hook == FailAtStep(0, 2, "wait")
    hook(1)
    assert asked == [] and not caplog.records
    with caplog.at_level(logging.WARNING, logger="busi"):
        hook(2)
    assert len(asked) == 3
    assert [r.getMessage() for r in caplog.records] == ["BUSI_FAIL_AT_STEP: rank 0 waiting at step 2 for a stop signal"]
    monkeypatch.setattr(faults, "WAIT_LIMIT", 0.0)
    never = failure_from_env(0, {"BUSI_FAIL_AT_STEP": "0:2:wait"})
    assert never is not None
    with pytest.raises(RuntimeError, match="rank 0 waited 0 s at step 2 and no stop signal came"):
        never(2)


def _log_lines(dist: Dist, all_ranks: bool = False) -> list[str]:
    stream: list[str] = []

    class ListHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            stream.append(self.format(record))

    logger = logging.getLogger(f"busi-test-{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(ListHandler())
    configure_rank_logging(dist, logger, all_ranks)
    logger.info("epoch line")
    logger.warning("a warning")
    logger.info("sha %s", "abc", extra=ALL_RANKS)
    return stream


def test_rank_logging() -> None:
    # one process: untouched
    assert _log_lines(Dist()) == ["epoch line", "a warning", "sha abc"]
    # the primary of two: everything, named
    assert _log_lines(Dist(rank=0, size=2)) == ["rank 0: epoch line", "rank 0: a warning", "rank 0: sha abc"]
    # another rank: warnings and all-rank records only
    assert _log_lines(Dist(rank=1, size=2)) == ["rank 1: a warning", "rank 1: sha abc"]
    # runtime.log_all_ranks: everything
    assert _log_lines(Dist(rank=1, size=2), all_ranks=True) == ["rank 1: epoch line", "rank 1: a warning", "rank 1: sha abc"]


@pytest.mark.integration
def test_launched_without_horovod_says_how_to_build_it() -> None:
    """Where Horovod is not built (a user's laptop, a fresh venv): a multi-rank launch exits 2
    saying how to build it. Run in a process where ``import horovod`` fails, so this runs where
    Horovod is installed too (CI builds it)."""
    code = (
        "import sys\n"
        "sys.modules['horovod'] = None  # import horovod raises ImportError, as where it is not installed\n"
        "from busi.distributed.setup import init_dist\n"
        "from busi.errors import ConfigError\n"
        "try:\n"
        "    init_dist('auto', env={'HOROVOD_SIZE': '2'})\n"
        "except ConfigError as e:\n"
        "    print(e)\n"
        "    print('tensorflow imported:', 'tensorflow' in sys.modules)\n"
        "    sys.exit(2)\n"
        "print('no error')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "make horovod" in proc.stdout and "runtime.distributed" in proc.stdout and "2 ranks" in proc.stdout
    assert "tensorflow imported: False" in proc.stdout  # refused before any TensorFlow work


# ------------------------------------------------------------------ two ranks under horovodrun

NP = 2
# A failing rank must end the whole job within this, counted from the moment training starts
# (rank 0 logs "phase head"), so the bound does not depend on how long start-up takes.
FAIL_BOUND_SECONDS = 120
TRAINING_STARTED = "rank 0: phase head"


def horovodrun(out: Path, data: Path, *sets: str, env: dict[str, str] | None = None, timeout: float = 900,
               audit: Path | None = None, bound_after: str | None = None,
               ) -> tuple[subprocess.CompletedProcess[str], float]:
    """``horovodrun --gloo -np 2 -H localhost:2 python -m busi train <tiny job>``: (process with
    the ranks' output, seconds). The tiny job: 32 px synthetic images, conftest's small model
    (MobileNet at width 0.25; tests/test_image.py's Horovod run trains ResNet50's head), no
    pretrained weights, BatchNorm trained (its moving statistics must be kept equal across
    ranks), 1 head + 1 fine-tuning epoch of batch 4. ``audit``: run each rank under tests/audit_writes.py, which
    records every write under ``out`` in ``<audit>rank<N>.txt``. ``bound_after``: the seconds
    count from the first output line holding this text, and the job is killed (TimeoutExpired)
    ``FAIL_BOUND_SECONDS`` after it; else from the launch, killed after ``timeout``."""
    job = {
        "data": {"source": str(data), "image_size": 32},
        "model": {"weights": "none", "batchnorm": "train", "backbone": "mobilenet", "alpha": 0.25},
        "train": {"batch_size": 4, "precision": "float32", "head": {"epochs": 1, "learning_rate": 1e-3},
                  "finetune": {"epochs": 1, "learning_rate": 1e-3, "unfreeze": "conv5"}},
        "output": {"dir": str(out)},  # the SavedModel too: every file of the run directory, by rank 0 only
        "runtime": {"seed": 0},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    job_file = out.parent / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    rank_cmd = [sys.executable, "-m", "busi"]
    if audit is not None:
        rank_cmd = [sys.executable, str(REPO / "tests" / "audit_writes.py"), f"{audit}rank", str(out), "busi"]
    cmd = [sys.executable, "-m", "horovod.runner.launch", "--gloo", "-np", str(NP), "-H", f"localhost:{NP}",
           *rank_cmd, "train", str(job_file)]
    for s in sets:
        cmd += ["--set", s]
    full_env = {k: v for k, v in os.environ.items() if k != "BUSI_FAIL_AT_STEP"}
    full_env.update({"TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env,
                            cwd=REPO, start_new_session=True)
    lines: list[str] = []
    marked: list[float] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if bound_after is not None and not marked and bound_after in line:
                marked.append(time.monotonic())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while proc.poll() is None:
        now = time.monotonic()
        if now > t0 + timeout or (marked and now > marked[0] + FAIL_BOUND_SECONDS):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise subprocess.TimeoutExpired(cmd, now - (marked[0] if marked else t0), output="".join(lines))
        time.sleep(0.2)
    reader.join(timeout=30)
    end = time.monotonic()
    seconds = end - (marked[0] if marked else t0)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout="".join(lines), stderr=""), seconds


def rank_lines(output: str, rank: int) -> list[str]:
    """The lines rank ``rank`` printed (horovodrun prefixes them with ``[rank]<stdout|stderr>:``)."""
    prefix = re.compile(rf"^\[{rank}\]<(?:stdout|stderr)>:")
    return [prefix.sub("", line) for line in output.splitlines() if prefix.match(line)]


@pytest.fixture(scope="module")
def data(synth_data: Any) -> Path:
    return synth_data(8, 32, 0)


@pytest.fixture(scope="module")
def two_ranks(horovod: None, tmp_path_factory: pytest.TempPathFactory, data: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("hvd-run")
    out = root / "run"
    # train.engine openvino: each rank converts the frozen part after rank 0's weights are broadcast, so
    # both ranks fill the same caches (identical final weights below check that)
    proc, seconds = horovodrun(out, data, "runtime.log_all_ranks=true", "train.engine=openvino", timeout=900,
                               audit=root / "writes-")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    writes = {rank: root / f"writes-rank{rank}.txt" for rank in range(NP)}
    return {"out": out, "output": output, "seconds": seconds, "writes": writes}


@pytest.mark.system
def test_ranks_end_with_identical_weights(two_ranks: dict[str, Any]) -> None:
    sums = {}
    for rank in range(NP):
        found = [m.group(1) for line in rank_lines(two_ranks["output"], rank)
                 if (m := re.search(r"final weights sha256 ([0-9a-f]{64})", line))]
        assert len(found) == 1, f"rank {rank} did not log its weights checksum once: {found}"
        sums[rank] = found[0]
    assert sums[0] == sums[1], f"the ranks drifted apart: {sums}"
    manifest = json.loads((two_ranks["out"] / "manifest.json").read_text())
    assert manifest["weights_sha256"] == sums[0]


@pytest.mark.system
def test_ranks_log_identical_epoch_metrics(two_ranks: dict[str, Any]) -> None:
    # "head epoch 1/2 loss ... val_accuracy ... lr ..." up to the timing fields (img/s, ETA)
    pattern = re.compile(r"rank \d: ((?:head|finetune) epoch \d+/\d+ .* lr \S+) [\d.]+ img/s")
    per_rank = [[m.group(1) for line in rank_lines(two_ranks["output"], r) if (m := pattern.search(line))]
                for r in range(NP)]
    assert len(per_rank[0]) == 2, two_ranks["output"][-3000:]
    assert per_rank[0] == per_rank[1]
    with (two_ranks["out"] / "history.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["phase"] for r in rows] == ["head", "finetune"]
    # train.scale_lr (default true): each phase's rate times the number of ranks
    assert [float(r["lr"]) for r in rows] == pytest.approx([1e-3 * NP, 1e-3 * NP])


@pytest.mark.system
def test_primary_writes_the_run_directory_once(two_ranks: dict[str, Any]) -> None:
    from busi.files.rundir import RUN_FILES
    from busi.runtime.cores import detect_cores

    out = two_ranks["out"]
    missing = [rel for rel in RUN_FILES.values() if not (out / rel).exists()]
    assert not missing
    # Every write under the run directory came from rank 0 (an audit hook saw each open for
    # writing, rename, mkdir and delete of each rank: tests/audit_writes.py).
    primary = two_ranks["writes"][0].read_text().splitlines()
    assert any(line.endswith("manifest.json'") for line in primary), primary[:20]  # the hook sees the writes
    other = two_ranks["writes"][1]
    written = other.read_text().splitlines() if other.exists() else []
    assert not written, f"rank 1 wrote into the run directory: {written[:20]}"
    leftovers = [str(p) for p in out.rglob("*") if ".tmp" in p.name]
    assert not leftovers, f"temp files left behind: {leftovers}"
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "completed"
    assert {p: e["name"] for p, e in m["engines"]["feature_cache"].items()} == {"head": "openvino", "finetune": "openvino"}
    assert (m["distributed"]["backend"], m["distributed"]["size"], m["distributed"]["local_size"]) == ("horovod", NP, NP)
    assert m["distributed"]["controller"] in ("gloo", "mpi")
    # the node's cores are divided among its ranks: on 2 cores, 1 intra-op thread per rank
    expected = detect_cores("auto", local_ranks=NP)
    assert m["cores"]["local_ranks"] == NP
    assert m["cores"]["intra_op_threads"] == expected.intra_op_threads


def _failed_fast(out: Path, data: Path, fail_at: str, what: str) -> str:
    """The output of a job whose rank fails as ``BUSI_FAIL_AT_STEP=fail_at`` says: it must end,
    failed, within ``FAIL_BOUND_SECONDS`` of training's start."""
    try:
        proc, seconds = horovodrun(out, data, env={"BUSI_FAIL_AT_STEP": fail_at}, bound_after=TRAINING_STARTED)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} left the job hanging for more than {FAIL_BOUND_SECONDS} s after training started")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert seconds < FAIL_BOUND_SECONDS
    return output


@pytest.mark.system
def test_a_rank_that_raises_ends_the_job(horovod: None, tmp_path: Path, data: Path) -> None:
    out = tmp_path / "run"
    output = _failed_fast(out, data, "1:2", "a failing rank")
    assert "injected failure on rank 1 at step 2" in "\n".join(rank_lines(output, 1))
    # rank 0, blocked in the step's allreduce, failed too, naming the rank it lost, and recorded it
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "failed" and m["error"].startswith("RankLost: rank 0 on "), m["error"]
    rank0 = "\n".join(rank_lines(output, 0))
    assert "lost contact with the other ranks (1 on " in rank0 and "Traceback" not in rank0, rank0[-3000:]
    # ranks other than the primary log warnings only (runtime.log_all_ranks is off)
    assert not [line for line in rank_lines(output, 1) if " INFO " in line]
    assert [line for line in rank_lines(output, 0) if " INFO rank 0: phase head" in line]


@pytest.mark.system
def test_a_rank_that_dies_ends_the_job(horovod: None, tmp_path: Path, data: Path) -> None:
    """SIGKILL, as the OOM killer does it: no exception handler, no Horovod shutdown on that rank."""
    out = tmp_path / "run"
    output = _failed_fast(out, data, "1:2:kill", "a killed rank")
    rank0 = "\n".join(rank_lines(output, 0))
    assert "busi-job: error: rank 0 on " in rank0 and "Traceback" not in rank0, rank0[-3000:]
