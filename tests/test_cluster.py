"""Two Slurm nodes for real on one host (``tests/netcluster.py``): each node a network, UTS
and mount namespace with its own address, host name and ``slurmd``, joined by veths on a
bridge. The harness is what the multi-node tests stand on: both nodes idle in ``sinfo``, a job
step runs a task on each under its own name and address, a lost link is noticed and the job
requeued, and nothing of the cluster is left on the host afterwards, even after a failure.

Skips where the cluster cannot be built (not root, no Slurm, munge or iproute2), as
``tests/test_slurm.py`` does.
"""

from __future__ import annotations

import subprocess
import time
from typing import Iterator

import pytest
from netcluster import NamespaceCluster, unavailable_reason

pytestmark = pytest.mark.system


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


def test_a_lost_node_is_noticed_and_its_job_requeued_within_a_bound(cluster: NamespaceCluster) -> None:
    """A two-node job; node2's link goes down: Slurm marks node2 not responding and requeues the
    job (SlurmdTimeout 10 s here), instead of the job waiting for its time limit. Link up again:
    node2 returns to service."""
    p = _run(["sbatch", "--parsable", "--nodes=2", "--requeue", "--time=00:10:00", "--output=/dev/null",
              "--wrap", "srun sleep 300"], cluster)
    assert p.returncode == 0, p.stderr
    job = p.stdout.strip().split(";")[0]
    cluster.wait_until(lambda: _job_field(cluster, job, "JobState") == "RUNNING", 60, "the job to run")
    lost = time.monotonic()
    cluster.link("node2", up=False)
    try:
        cluster.wait_until(lambda: _job_field(cluster, job, "Restarts") == "1", 90, "the job's requeue")
        noticed = time.monotonic() - lost
        state = _run(["sinfo", "-h", "-n", "node2", "-o", "%T"], cluster).stdout.strip()
    finally:
        cluster.link("node2", up=True)
    assert state.startswith("down") or state.endswith("*"), f"node2 is {state!r} with its link down"
    print(f"node2's link down: job {job} requeued after {noticed:.1f} s")
    _run(["scancel", job], cluster)
    cluster.wait_until(lambda: cluster.idle_nodes() == {"node1", "node2"}, 90, "node2 back in service")


def _job_field(cluster: NamespaceCluster, job: str, key: str) -> str | None:
    p = _run(["scontrol", "show", "job", "-o", job], cluster)
    fields = dict(kv.split("=", 1) for kv in p.stdout.split() if "=" in kv)
    return fields.get(key)
