"""Two Slurm nodes for real on one host (``tests/netcluster.py``): each node a network, UTS
and mount namespace with its own address, host name and ``slurmd``, joined by veths on a
bridge. The harness is what the multi-node tests stand on: both nodes idle in ``sinfo``, a job
step runs a task on each under its own name and address, a task on one node reaches the other,
and nothing of the cluster is left on the host afterwards, even after a failure.

On it, ``sbatch --nodes=2 --ntasks-per-node=1 slurm/train-horovod.sh`` as users submit it: one
Horovod rank per node (srun, Gloo rendezvous), equal final weights, the run directory written
by rank 0 on node1, the archive unpacked on each node's own scratch; ``scancel --signal=USR1``
stops both ranks at one step, the job requeues and ends with the uninterrupted run's weights;
a node killed mid-epoch ends the job within a bound, the log names the lost rank and host, and
the requeued job resumes from the last checkpoint once the node is back; the same training with
every task in a podman container of the image (``BUSI_ENGINE=podman``, where CI built one); a
rendezvous address the other node cannot reach is refused with what to set.

Skips where the cluster cannot be built (not root, no Slurm, munge or iproute2), as
``tests/test_slurm.py`` does.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import REPO, SMALL
from netcluster import NamespaceCluster, unavailable_reason

pytestmark = pytest.mark.system

SCRIPT = REPO / "slurm" / "train-horovod.sh"
# Tiny two-rank training: 32 px, head phase only, the small model, 3 epochs of 3 steps
# (60 images, batch 8 per rank); test_slurm.py's TINY.
EPOCHS = 3
TRAIN = ["--set", "data.image_size=32", "--set", "train.batch_size=8", "--set", "train.finetune.epochs=0",
         "--set", "train.quantize=none", *SMALL, "--set", f"train.head.epochs={EPOCHS}",
         "--set", f"train.head.patience={EPOCHS}", "--set", "runtime.checkpoint_minutes=0"]
NOISE = ("I0000 ", "WARNING: All log messages", "To enable the following", "oneDNN custom operations")


@pytest.fixture(scope="module")
def cluster() -> Iterator[NamespaceCluster]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    c = NamespaceCluster(n=2).start()
    try:
        yield c
    finally:
        c.stop()
    assert c.leftovers() == [], f"left on the host: {c.leftovers()}"


def _run(cmd: list[str], cluster: NamespaceCluster, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=timeout)


def test_both_nodes_are_idle_and_a_step_runs_a_task_on_each_under_its_own_name(cluster: NamespaceCluster) -> None:
    assert cluster.idle_nodes() == {"node1", "node2"}
    script = ("import os, socket; n = socket.gethostname(); "
              "print(n, os.environ['SLURMD_NODENAME'], socket.gethostbyname(n), os.environ['SLURM_JOB_NODELIST'])")
    p = _run(["srun", "-N2", "--ntasks-per-node=1", "-l", "python3", "-c", script], cluster)
    assert p.returncode == 0, p.stderr + cluster.logs()
    rows = sorted(line.split(": ", 1)[1].split() for line in p.stdout.splitlines())
    assert rows == [["node1", "node1", cluster.address["node1"], "node[1-2]"],
                    ["node2", "node2", cluster.address["node2"], "node[1-2]"]], p.stdout


def test_a_task_on_one_node_reaches_the_other_through_the_bridge(cluster: NamespaceCluster) -> None:
    """node2 listens on its own address, node1 connects to it by name: the path a Gloo
    rendezvous and its allreduce take between two hosts."""
    server = ("import socket; s = socket.create_server(('0.0.0.0', 47001)); s.settimeout(30); "
              "c, a = s.accept(); c.sendall(socket.gethostname().encode()); c.close()")
    client = ("import socket, time\n"
              "for _ in range(100):\n"
              "    try:\n"
              "        print(socket.create_connection(('node2', 47001), timeout=5).recv(64).decode()); break\n"
              "    except OSError:\n"
              "        time.sleep(0.1)\n")
    listener = subprocess.Popen(["srun", "-N1", "-w", "node2", "python3", "-c", server], env=cluster.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        p = _run(["srun", "-N1", "-w", "node1", "python3", "-c", client], cluster)
        assert p.returncode == 0 and p.stdout.strip() == "node2", p.stdout + p.stderr
    finally:
        out, err = listener.communicate(timeout=60)
    assert listener.returncode == 0, out + err


def _job_field(cluster: NamespaceCluster, job: str, key: str) -> str | None:
    info = cluster.job_info(job)
    return info[0].get(key) if info else None


# --- two-node Horovod training ----------------------------------------------------------------

@pytest.fixture(scope="module")
def training(cluster: NamespaceCluster, horovod: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The dataset archive and what an uninterrupted two-node run ended with (filled by the
    first training test; the fault tests compare against it)."""
    from busi.data.synth import write_synthetic_dataset

    root = tmp_path_factory.mktemp("two-nodes")
    data = write_synthetic_dataset(root / "busi-synth", per_class=20, size=32, seed=1)
    archive = Path(shutil.make_archive(str(root / "busi-synth"), "zip", root_dir=root, base_dir=data.name))
    shutil.rmtree(data)
    return {"root": root, "archive": archive}


def _submit(cluster: NamespaceCluster, training: dict[str, Any], name: str, **env: str) -> tuple[str, Path, Path]:
    """sbatch --nodes=2 --ntasks-per-node=1 slurm/train-horovod.sh, as a user submits it, with
    node-local scratch; returns the job id, its log and its run directory."""
    job_env = dict(cluster.env)
    for key in [k for k in job_env if k.startswith(("SLURM_", "HOROVOD_", "BUSI_")) and k != "SLURM_CONF"]:
        job_env.pop(key)  # pytest inside a Slurm job or a Horovod rank, a user's busi settings: not this test's
    job_env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "BUSI_SCRATCH": str(cluster.scratch), "BUSI_VENV": sys.prefix, **env})
    work = training["root"] / name
    work.mkdir()
    p = subprocess.run(["sbatch", "--parsable", f"--chdir={work}", "--nodes=2", "--ntasks-per-node=1",
                        "--cpus-per-task=1", "--mem=1500M", "--time=00:20:00", str(SCRIPT),
                        str(REPO / "job" / "demo.yaml"), "--set", f"data.source={training['archive']}",
                        "--set", f"output.dir={work / 'run'}", *TRAIN],
                       env=job_env, cwd=work, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    job = p.stdout.strip().split(";")[0]
    return job, work / f"busi-hvd-{job}.out", work / "run"


def _log(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else ""


def _tail(log: Path, n: int = 60) -> str:
    lines = [ln for ln in _log(log).splitlines() if not ln.startswith(NOISE)]
    return f"--- {log.name} (last {n} lines) ---\n" + "\n".join(lines[-n:])


def _wait_done(cluster: NamespaceCluster, job: str, log: Path, timeout: float = 600) -> dict[str, str]:
    info = cluster.wait_job(job, timeout)
    if info is None:
        _run(["scancel", job], cluster)
        pytest.fail(f"job {job} not done after {timeout:.0f} s: {cluster.job_info(job)}\n{_tail(log)}")
    return info[0]


def _wait_for_line(cluster: NamespaceCluster, job: str, log: Path, line: str, timeout: float = 300) -> None:
    def seen() -> bool:
        info = cluster.job_info(job)
        assert info and info[0].get("JobState") not in ("COMPLETED", "FAILED", "CANCELLED"), \
            f"job {job} ended before logging {line!r}: {info}\n{_tail(log)}"
        return line in _log(log)
    end = time.monotonic() + timeout
    while not seen():
        if time.monotonic() > end:
            _run(["scancel", job], cluster)
            pytest.fail(f"no {line!r} in {timeout:.0f} s\n{_tail(log)}")
        time.sleep(0.5)


def _final_weights(text: str) -> dict[str, str]:
    """rank -> the sha256 of its final weights, from the ranks' log lines."""
    return dict(re.findall(r"rank (\d): final weights sha256 ([0-9a-f]{64})", text))


def _manifest(run: Path) -> dict[str, Any]:
    return json.loads((run / "manifest.json").read_text())


def _epochs(run: Path) -> list[int]:
    with (run / "history.csv").open(newline="") as fh:
        return [int(row["epoch"]) for row in csv.DictReader(fh)]


def _assert_resumed_as_if_never_stopped(run: Path, training: dict[str, Any], resumed_from: dict[str, int]) -> None:
    """A run started twice: the second start resumed from ``resumed_from``, every epoch is in
    history.csv once, and the final weights are the uninterrupted run's."""
    m = _manifest(run)
    assert [a["resumed_from"] for a in m["attempts"]] == [None, resumed_from], m["attempts"]
    assert _epochs(run) == list(range(1, EPOCHS + 1))
    assert m["weights_sha256"] == training["weights"], "the resumed run ended with other weights"


def test_two_nodes_train_with_one_rank_each_to_equal_weights(cluster: NamespaceCluster, training: dict[str, Any]) -> None:
    job, log, run = _submit(cluster, training, "plain")
    info = _wait_done(cluster, job, log)
    text = _log(log)
    assert (info["JobState"], info.get("ExitCode")) == ("COMPLETED", "0:0"), f"{info}\n{_tail(log)}\n{cluster.logs()}"
    assert "2 ranks x 1 threads on node[1-2]; launcher gloo" in text, _tail(log)
    rendezvous = re.search(r"Gloo rendezvous at ([\d.]+):\d+ for node1:1,node2:1", text)
    assert rendezvous and rendezvous.group(1) == cluster.address["node1"], _tail(log)
    assert "rank 0: 2 ranks: 0 on node1, 1 on node2" in text, _tail(log)  # one rank on each node
    hashes = _final_weights(text)
    assert set(hashes) == {"0", "1"} and hashes["0"] == hashes["1"], f"{hashes}\n{_tail(log)}"
    m = _manifest(run)
    assert m["status"] == "completed" and m["weights_sha256"] == hashes["0"]
    assert m["distributed"] == {"backend": "horovod", "size": 2, "local_size": 1, "controller": "gloo",
                                "hosts": ["node1", "node2"]}
    assert m["host"] == "node1" and [a["host"] for a in m["attempts"]] == ["node1"]  # written by rank 0 alone
    assert _epochs(run) == list(range(1, EPOCHS + 1))
    # the archive was unpacked on each node's own scratch; the host's view of that path is empty
    p = _run(["srun", "-N2", "--ntasks-per-node=1", "-l", "sh", "-c",
              f"cd {cluster.scratch}/busi-staging && ls -d busi-synth-*/ && cat busi-synth-*/.busi-staged.json"], cluster)
    assert p.returncode == 0, p.stdout + p.stderr
    staged = sorted(ln.split(": ", 1)[1] for ln in p.stdout.splitlines() if ln.endswith("/"))
    assert len(staged) == 2 and staged[0] == staged[1], p.stdout  # one folder on each node
    assert not any(cluster.scratch.iterdir()), "node-local scratch visible from the host"
    training["weights"] = hashes["0"]


def test_usr1_stops_both_ranks_at_one_step_and_the_requeued_job_ends_as_if_never_stopped(
    cluster: NamespaceCluster, training: dict[str, Any]
) -> None:
    """``scancel --signal=USR1 --batch`` (the walltime warning, --signal=B:USR1@180) while rank 0
    waits before its 5th step (epoch 2; the hook fires in the job's first start only): both ranks
    stop at that step, exit 75, the script requeues the job, and the requeued job resumes on
    both nodes to the same final weights as the uninterrupted run."""
    if "weights" not in training:
        pytest.skip("needs the uninterrupted run of test_two_nodes_train_with_one_rank_each_to_equal_weights")
    job, log, run = _submit(cluster, training, "usr1", BUSI_FAIL_AT_STEP="0:5:wait")
    _wait_for_line(cluster, job, log, "rank 0 waiting at step 5 for a stop signal")
    assert _run(["scancel", "--signal=USR1", "--batch", job], cluster).returncode == 0
    info = _wait_done(cluster, job, log)
    text = _log(log)
    assert (info["JobState"], info["Restarts"]) == ("COMPLETED", "1"), f"{info}\n{_tail(log)}"
    # srun passed the signal to both ranks; they agreed on the step (2 of epoch 2, the 5th)
    stops = re.findall(r"rank (\d): interrupted: stopped on signal SIGUSR1 at epoch (\d+), step (\d+)", text)
    assert sorted(stops) == [("0", "2", "2"), ("1", "2", "2")], f"{stops}\n{_tail(log)}"
    assert re.search(r"srun: error: node1: task 0: Exited with exit code 75", text), _tail(log)
    assert re.search(r"srun: error: node2: task 1: Exited with exit code 75", text), _tail(log)
    assert f"requeueing job {job} (restart 1)" in text and "restart 1; 2 ranks" in text
    _assert_resumed_as_if_never_stopped(run, training, {"epoch": 1, "step": 2})


def test_a_node_lost_mid_epoch_ends_the_job_in_bounded_time_and_the_requeued_job_resumes(
    cluster: NamespaceCluster, training: dict[str, Any]
) -> None:
    """Rank 1 (node2) waits before its 5th step (epoch 2, after epoch 1's checkpoint) while rank 0
    waits for it in the step's allreduce; then node2 dies: everything in it killed, its link
    down. The job ends within a bound with a line naming the lost rank and host (not at its
    time limit), Slurm requeues it, and once node2 is back the job resumes from epoch 1's
    checkpoint on both nodes and ends with the uninterrupted run's weights."""
    if "weights" not in training:
        pytest.skip("needs the uninterrupted run of test_two_nodes_train_with_one_rank_each_to_equal_weights")
    job, log, run = _submit(cluster, training, "lost", BUSI_FAIL_AT_STEP="1:5:wait")
    _wait_for_line(cluster, job, log, "rank 1 waiting at step 5 for a stop signal")
    lost = time.monotonic()
    assert cluster.kill_node("node2"), "nothing was running in node2"
    try:
        cluster.wait_until(lambda: _job_field(cluster, job, "Restarts") == "1", 120, "the job's requeue")
        ended = time.monotonic() - lost
    finally:
        cluster.restore_node("node2")
    print(f"node2 lost: job {job} ended and was requeued after {ended:.1f} s")
    info = _wait_done(cluster, job, log)
    text = _log(log)
    assert info["JobState"] == "COMPLETED", f"{info}\n{_tail(log)}\n{cluster.logs()}"
    # the batch script names the node Slurm lost and its rank; srun and Slurm say it too
    assert re.search(rf"busi-slurm\[{job}\]: lost node node2 \(rank 1\): Slurm reports it down", text), _tail(log)
    assert "srun: error: Node failure on node2" in text
    assert text.count("rank 0: 2 ranks: 0 on node1, 1 on node2") == 2, _tail(log)  # both starts on both nodes
    assert ended < 90, f"the job took {ended:.0f} s to end after node2 was lost"
    _assert_resumed_as_if_never_stopped(run, training, {"epoch": 1, "step": 0})


def test_a_rendezvous_address_the_other_node_cannot_reach_is_refused(
    cluster: NamespaceCluster, training: dict[str, Any]
) -> None:
    """BUSI_RENDEZVOUS_ADDR=127.0.0.1 on two nodes (as a host name resolving to 127.0.1.1 would
    give): the job exits 2 with a message saying what to set, before any rank starts."""
    job, log, run = _submit(cluster, training, "loopback", BUSI_RENDEZVOUS_ADDR="127.0.0.1")
    info = _wait_done(cluster, job, log, timeout=120)
    text = _log(log)
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "2:0"), f"{info}\n{_tail(log)}"
    assert "127.0.0.1, which the other nodes cannot reach; set BUSI_RENDEZVOUS_ADDR" in text, _tail(log)
    assert "the Gloo rendezvous server did not start (its message is above)" in text
    assert "Traceback" not in text and not run.exists()


def test_two_nodes_train_in_the_image_one_container_per_rank(
    cluster: NamespaceCluster, training: dict[str, Any], tmp_path: Path
) -> None:
    """The same two-node run with every task in a podman container of the image CI built
    (``BUSI_TEST_IMAGE``; ``BUSI_ENGINE=podman``): the probe, the rendezvous server and each rank
    run in the image, in their node's network and host name. This machine's limits for podman
    go in a containers.conf, as a site's would."""
    import resource

    tag = os.environ.get("BUSI_TEST_IMAGE")
    if not tag or not shutil.which("podman"):
        pytest.skip("no image to run: BUSI_TEST_IMAGE names the one `make image` built (.ci/run does), with podman")
    nofile, nproc = resource.getrlimit(resource.RLIMIT_NOFILE)[1], resource.getrlimit(resource.RLIMIT_NPROC)[1]
    limits = [f'"nofile=1024:{nofile}"'] if 0 < nofile < 1048576 else []
    if nproc != resource.RLIM_INFINITY:  # tests/test_image.py's limits: podman's defaults are above the host's
        limits.append(f'"nproc={min(nproc, 32768)}:{min(nproc, 32768)}"')
    conf = tmp_path / "containers.conf"
    conf.write_text(f"[containers]\ndefault_ulimits = [{', '.join(limits)}]\n"
                    + ('[engine]\nruntime = "runc"\n' if shutil.which("runc") else ""))  # crun fails on hybrid cgroups
    job, log, run = _submit(cluster, training, "image", BUSI_ENGINE="podman", BUSI_IMAGE=tag,
                            BUSI_BIND=f"{REPO},{training['root']}", CONTAINERS_CONF=str(conf))
    info = _wait_done(cluster, job, log)
    text = _log(log)
    assert (info["JobState"], info.get("ExitCode")) == ("COMPLETED", "0:0"), f"{info}\n{_tail(log)}"
    assert "launcher gloo" in text and "rank 0: 2 ranks: 0 on node1, 1 on node2" in text, _tail(log)
    hashes = _final_weights(text)
    assert set(hashes) == {"0", "1"} and hashes["0"] == hashes["1"], f"{hashes}\n{_tail(log)}"
    m = _manifest(run)
    assert m["status"] == "completed" and m["host"] == "node1" and m["weights_sha256"] == hashes["0"]
    image_python = subprocess.run(["podman", "run", "--rm", "--no-healthcheck", "--entrypoint", "python", tag, "-c",
                                   "import platform; print(platform.python_version())"],
                                  env={**os.environ, "CONTAINERS_CONF": str(conf)}, capture_output=True, text=True)
    assert m["python"] == image_python.stdout.strip(), (m["python"], image_python.stderr)  # the image's Python ran it
    left = subprocess.run(["podman", "ps", "-a", "-q", "--filter", f"label=busi.slurm-job={job}"],
                          env={**os.environ, "CONTAINERS_CONF": str(conf)}, capture_output=True, text=True)
    assert left.returncode == 0 and not left.stdout.strip(), f"containers left: {left.stdout}{left.stderr}"
    assert "Traceback" not in text
