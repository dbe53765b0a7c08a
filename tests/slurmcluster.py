"""A real, private, one-node Slurm cluster for the tests (``tests/test_slurm.py``).

Starts only daemons, never installs anything (``.ci/run`` installs ``slurm-wlm`` and ``munge``
from Debian's packages). Everything lives in one temporary folder: its own ``munged`` (own key
and socket), a ``slurm.conf`` with free ports, ``slurmctld`` and ``slurmd``. So it touches no
system service and two test sessions on one machine do not collide. Jobs run as root.

Manual use (a shell on a private cluster, for trying the scripts in ``slurm/`` by hand)::

    python tests/slurmcluster.py start      # prints `export SLURM_CONF=...` and the folder
    python tests/slurmcluster.py stop DIR
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd", "munged")
# The JobStates (``scontrol show job``) of a job that has ended; only a requeue takes it out of one
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
            "DEADLINE", "PREEMPTED", "SPECIAL_EXIT"}
CLIENTS = ("sbatch", "scontrol", "squeue", "scancel", "sinfo", "srun")


def unavailable_reason() -> str | None:
    """Why this machine cannot run the private cluster, or None if it can."""
    if os.name != "posix" or os.geteuid() != 0:
        return "needs root to start munged, slurmctld and slurmd (a real one-node Slurm cluster)"
    missing = [c for c in (*DAEMONS, *CLIENTS) if shutil.which(c, path=_sbin_path()) is None]
    if missing:
        return (f"Slurm/munge not installed (missing {', '.join(missing)}); "
                "`apt-get install -y slurm-wlm munge` (.ci/run does this)")
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no 'munge' user (install the munge package)"
    return None


def _sbin_path() -> str:
    return os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def _which(name: str) -> str:
    path = shutil.which(name, path=_sbin_path())
    if path is None:
        raise RuntimeError(f"{name} not found")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SlurmCluster:
    """``start()`` / ``stop()`` a private cluster; ``env`` is what clients need (``SLURM_CONF``)."""

    # cred_expire: credentials' lifetime, also how long a requeued job waits before it starts
    # again (Slurm's default: 120 s); short so the requeue tests do not idle
    cred_expire = 10
    kill_wait = 10  # s between SIGTERM and SIGKILL when a job is ended (default 30)

    def __init__(self, root: Path | None = None, cpus: int = 2, memory_mb: int = 20000) -> None:
        # Short path: the munge socket path must fit a sockaddr_un (108 bytes).
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="busi-slurm-", dir="/tmp"))
        self.cpus, self.memory_mb = cpus, memory_mb
        self.nodes: tuple[str, ...] = ("localhost",)
        self.conf = self.root / "slurm.conf"
        self.munge_dir = self.root / "munge"
        self.munge_socket = self.munge_dir / "munge.socket"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    # ---- configuration -------------------------------------------------------------------
    def _write_munge(self) -> None:
        munge = pwd.getpwnam("munge")
        self.root.chmod(0o755)  # munged (user munge) must reach its folder
        self.munge_dir.mkdir(exist_ok=True)
        self.munge_dir.chmod(0o755)  # munged: clients need execute permission on the socket folder
        key = self.munge_dir / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        for p in (self.munge_dir, key):
            os.chown(p, munge.pw_uid, munge.pw_gid)

    def _controller(self) -> str:
        """slurm.conf's SlurmctldHost."""
        return "localhost"

    def _node_lines(self) -> list[str]:
        return [f"NodeName=localhost CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN",
                "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP"]

    def _write_conf(self) -> None:
        for d in ("state", "log", *(f"spool/{n}" for n in self.nodes)):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        r = self.root
        lines = [
            "ClusterName=busitest",
            f"SlurmctldHost={self._controller()}",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket},cred_expire={self.cred_expire}",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool' / '%n'}",  # %n: the node's name (one slurmd per node)
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd-%n.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "MpiDefault=none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "JobRequeue=1",
            "ReturnToService=2",
            f"KillWait={self.kill_wait}",
            "MinJobAge=600",
            "SchedulerParameters=sched_interval=2",
            *self._node_lines(),
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> "SlurmCluster":
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        self._write_munge()
        self._write_conf()
        self._run([
            "runuser", "-u", "munge", "--", _which("munged"), f"--socket={self.munge_socket}",
            f"--key-file={self.munge_dir / 'munge.key'}", f"--pid-file={self.munge_dir / 'munged.pid'}",
            f"--log-file={self.munge_dir / 'munged.log'}", f"--seed-file={self.munge_dir / 'munged.seed'}",
        ])
        self.wait_until(lambda: self.munge_socket.exists(), timeout, "munged socket")
        self._run([_which("slurmctld"), "-f", str(self.conf), "-c"])
        self.wait_until(lambda: self._ok(["scontrol", "ping"], "UP"), timeout, "slurmctld (scontrol ping)")
        self._start_slurmds()
        self.wait_until(lambda: self.idle_nodes() == set(self.nodes), timeout, "every node idle in sinfo")
        return self

    def _start_slurmds(self) -> None:
        self._run([_which("slurmd"), "-f", str(self.conf), "-N", "localhost"])

    def idle_nodes(self) -> set[str]:
        p = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=self.env, capture_output=True, text=True,
                           timeout=30)
        return {n for n, state in (ln.split() for ln in p.stdout.splitlines() if ln.strip()) if state == "idle"}

    def stop(self) -> None:
        """Cancel every job, then stop the daemons by their pid files. Leaves the folder."""
        if self.conf.exists() and (self.root / "slurmctld.pid").exists():
            subprocess.run(["scancel", "--user=root"], env=self.env, capture_output=True, timeout=30)
            self.wait_until(lambda: not self.job_ids(), 40, "jobs to end", fail=False)
        # each takes about 2 s to exit: the Slurm daemons together, then munged, which they talk to
        _kill_pidfiles([*(self.root / f"slurmd-{n}.pid" for n in self.nodes), self.root / "slurmctld.pid"])
        _kill_pidfiles([self.munge_dir / "munged.pid"])

    def job_ids(self) -> list[str]:
        p = subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env, capture_output=True, text=True, timeout=30)
        return p.stdout.split() if p.returncode == 0 else []

    def job_info(self, job: str) -> list[dict[str, str]]:
        """``scontrol show job -o JOB``: one dict of its fields per job (one per task of an array)."""
        p = subprocess.run(["scontrol", "show", "job", "-o", job], env=self.env, capture_output=True, text=True,
                           timeout=30)
        return [dict(kv.split("=", 1) for kv in line.split() if "=" in kv) for line in p.stdout.splitlines()]

    def wait_job(self, job: str, timeout: float) -> list[dict[str, str]] | None:
        """Poll each second until every task of ``job`` is in a TERMINAL state and return their
        fields; None on timeout. (Not ``sbatch --wait``: it polls at 2, 10 and 42 s, so a 12 s
        job returned after 42 s.)"""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            info = self.job_info(job)
            if info and all(j.get("JobState") in TERMINAL for j in info):
                return info
            time.sleep(1)
        return None

    def logs(self) -> str:
        """The tail of the daemon logs, for failure messages."""
        out = []
        for name in ("slurmctld.log", *(f"slurmd-{n}.log" for n in self.nodes)):
            p = self.root / "log" / name
            if p.exists():
                out.append(f"--- {p} (tail) ---\n" + "\n".join(p.read_text(errors="replace").splitlines()[-40:]))
        return "\n".join(out)

    # ---- helpers ----------------------------------------------------------------------------
    def _run(self, cmd: list[str]) -> None:
        p = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr}{p.stdout}\n{self.logs()}")

    def _ok(self, cmd: list[str], expect: str) -> bool:
        p = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=30)
        return p.returncode == 0 and expect in p.stdout

    def wait_until(self, cond, timeout: float, what: str, fail: bool = True) -> None:  # type: ignore[no-untyped-def]
        """Poll ``cond`` every 0.5 s; on timeout raise with the daemons' logs (unless not ``fail``)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return
            time.sleep(0.5)
        if fail:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.logs()}")


def _kill_pidfiles(pidfiles: list[Path], timeout: float = 15) -> None:
    """SIGTERM each pid file's process, wait up to ``timeout`` for all of them, SIGKILL the rest."""
    pids = []
    for pidfile in pidfiles:
        try:
            pid = int(pidfile.read_text().strip())
            os.kill(pid, signal.SIGTERM)
            pids.append(pid)
        except (OSError, ValueError):  # no file, no number, no such process
            pass
    end = time.monotonic() + timeout
    while pids and time.monotonic() < end:
        pids = [pid for pid in pids if _alive(pid)]
        time.sleep(0.1)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


if __name__ == "__main__":  # pragma: no cover - manual use
    if len(sys.argv) >= 2 and sys.argv[1] == "start":
        c = SlurmCluster().start()
        print(f"export SLURM_CONF={c.conf}\n# stop: python {sys.argv[0]} stop {c.root}")
    elif len(sys.argv) == 3 and sys.argv[1] == "stop":
        SlurmCluster(Path(sys.argv[2])).stop()
    else:
        sys.exit(__doc__)
