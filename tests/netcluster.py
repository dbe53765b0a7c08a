"""A real, private Slurm cluster of N nodes on one host, each node made of Linux namespaces
(``tests/test_cluster.py``; docs/testing.md).

A node is a network namespace (its own interface ``eth0`` and address, joined by a veth pair to
a bridge on the host), a UTS namespace (its own host name, ``node1`` ...) and a mount namespace
(its own ``/etc/hosts``, naming every node, bind-mounted over the host's, which stays untouched,
and its own node-local scratch: a tmpfs at ``scratch``, one path on every node, empty seen from
the host).
One ``slurmd`` runs in each node (``slurmd -N nodeK``); ``slurmctld`` and ``munged`` run on the
host, as ``tests/slurmcluster.py`` runs them for one node (its configuration, with this one's
nodes). The file system is shared, as a cluster's project folder is.

What the namespaces need, found on this kind of machine (Slurm 22.05, as root):

* slurmd starts under ``nsenter --net``, not ``ip netns exec``: that one remounts ``/sys``
  without ``/sys/fs/cgroup``, and slurmd then stops ("No filesystem mounted on /sys/fs/cgroup");
* the node names resolve only through the bind-mounted hosts file (no DNS for them);
* one munged serves every node: its socket is a file, and files are not namespaced here;
* every slurmd has the same port (each network namespace has its own ports);
* ``ip netns add`` bind-mounts ``/run/netns`` onto itself; it is unmounted when no namespace is left.

Traffic goes only between the addresses given here, on links made here; ``stop()`` removes every
namespace, link and daemon it made, and kills whatever ran inside a node (a job step's leftovers)
even when a test failed. Names carry this process's id, and the subnet is one no interface of
the host uses, so two sessions on one machine do not collide.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

from slurmcluster import SlurmCluster, _which, unavailable_reason as slurm_unavailable

TOOLS = ("ip", "nsenter", "unshare", "mount")


def unavailable_reason() -> str | None:
    """Why this machine cannot build the namespace cluster, or None if it can."""
    reason = slurm_unavailable()
    if reason:
        return reason
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    missing = [t for t in TOOLS if shutil.which(t, path=path) is None]
    if missing:
        return f"missing {', '.join(missing)} (iproute2, util-linux) to make network namespaces"
    return None


def _free_subnet() -> str:
    """The first three octets of a /24 in 10.250-10.254 that no interface here uses."""
    used = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    nets = [ipaddress.ip_interface(w).network for w in used.split() if "/" in w and w[0].isdigit()]
    for second in range(250, 255):
        for third in range(os.getpid() % 200, 256):
            candidate = ipaddress.ip_network(f"10.{second}.{third}.0/24")
            if not any(candidate.overlaps(n) for n in nets):
                return f"10.{second}.{third}"
    raise RuntimeError("no free /24 in 10.250.0.0-10.254.255.0 for the test cluster")


class NamespaceCluster(SlurmCluster):
    """``start()`` / ``stop()`` an ``n``-node cluster; ``env`` is what clients on the host need."""

    cred_expire = 5  # the requeue tests wait for both
    kill_wait = 5

    def __init__(self, n: int = 2, cpus: int = 2, memory_mb: int = 4000) -> None:
        super().__init__(cpus=cpus, memory_mb=memory_mb)
        tag = str(os.getpid() % 100000)
        self.nodes = tuple(f"node{i}" for i in range(1, n + 1))
        self.bridge = f"bb{tag}"  # interface names: 15 bytes at most
        self.netns = {node: f"busi-{tag}-{node}" for node in self.nodes}
        self.veth = {node: f"bv{tag}n{i}" for i, node in enumerate(self.nodes, start=1)}
        self.subnet = ""
        self.address: dict[str, str] = {}
        self.scratch = self.root / "scratch"  # node-local: each node's own tmpfs here

    def _controller(self) -> str:
        # slurmctld starts only where the host's name is SlurmctldHost; the nodes reach it on the bridge
        return f"{socket.gethostname().split('.')[0]}({self.subnet}.1)"

    def _node_lines(self) -> list[str]:
        nodes = [f"NodeName={n} NodeAddr={self.address[n]} NodeHostname={n} CPUs={self.cpus} "
                 f"RealMemory={self.memory_mb} State=UNKNOWN" for n in self.nodes]
        # lost nodes noticed in seconds (Slurm's defaults wait minutes)
        return ["SlurmdTimeout=10", "MessageTimeout=5", *nodes,
                f"PartitionName=debug Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE State=UP"]

    def start(self, timeout: float = 60) -> "NamespaceCluster":
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        self.subnet = _free_subnet()
        self.address = {n: f"{self.subnet}.{10 + i}" for i, n in enumerate(self.nodes, start=1)}
        try:
            self._network_up()
            super().start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _network_up(self) -> None:
        self._ip("link", "add", self.bridge, "type", "bridge")
        self._ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        self._ip("link", "set", self.bridge, "up")
        for node in self.nodes:
            ns, veth = self.netns[node], self.veth[node]
            self._ip("netns", "add", ns)
            self._ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            self._ip("link", "set", veth, "master", self.bridge, "up")
            self._ip("-n", ns, "addr", "add", f"{self.address[node]}/24", "dev", "eth0")
            self._ip("-n", ns, "link", "set", "eth0", "up")
            self._ip("-n", ns, "link", "set", "lo", "up")
        hosts = self.root / "hosts"
        base = Path("/etc/hosts").read_text(encoding="utf-8")
        hosts.write_text(base + "".join(f"{self.address[n]} {n}\n" for n in self.nodes))
        hosts.chmod(0o644)

    def _start_slurmds(self) -> None:
        for node in self.nodes:
            self._start_slurmd(node)

    def _start_slurmd(self, node: str) -> None:
        """slurmd in ``node``'s namespaces, with a fresh node-local scratch (a booted node's)."""
        self.scratch.mkdir(exist_ok=True)
        inner = (f"hostname {node} && mount --bind {self.root / 'hosts'} /etc/hosts && "
                 f"mount -t tmpfs -o size=1g,mode=1777 busi-scratch-{node} {self.scratch} && "
                 f"exec {_which('slurmd')} -f {self.conf} -N {node}")
        self._run(["nsenter", f"--net=/run/netns/{self.netns[node]}", "unshare", "--uts", "--mount",
                   "--propagation", "private", "sh", "-c", inner])

    def link(self, node: str, up: bool) -> None:
        """Take ``node``'s link to the others down (a lost node) or up again."""
        self._ip("link", "set", self.veth[node], "up" if up else "down")

    def kill_node(self, node: str) -> list[int]:
        """``node`` dies: everything running in it (slurmd, job steps, ranks) killed at once,
        then its link taken down. Returns the pids killed."""
        killed = self._kill_inside(node)
        (self.root / f"slurmd-{node}.pid").unlink(missing_ok=True)  # its pid may be reused
        self.link(node, up=False)
        return killed

    def restore_node(self, node: str) -> None:
        """``node`` back after a reboot: link up, a new slurmd (and an empty scratch)."""
        self._kill_inside(node)  # a half-dead node's leftovers, if any
        self.link(node, up=True)
        self._start_slurmd(node)

    def _kill_inside(self, node: str) -> list[int]:
        pids = subprocess.run(["ip", "netns", "pids", self.netns[node]], capture_output=True, text=True).stdout.split()
        killed = []
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))
            except (ProcessLookupError, ValueError):
                pass
        return killed

    def stop(self) -> None:
        """Every job cancelled, every daemon stopped, then whatever still runs inside a node
        killed and every namespace, link and mount made here removed."""
        if self.conf.exists():
            super().stop()
        existing = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
        for node in self.nodes:
            ns = self.netns[node]
            if ns in existing:
                self._kill_inside(node)
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            subprocess.run(["ip", "link", "del", self.veth[node]], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        if not subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.strip():
            if subprocess.run(["mountpoint", "-q", "/run/netns"]).returncode == 0:
                subprocess.run(["umount", "/run/netns"], capture_output=True)

    def leftovers(self) -> list[str]:
        """What of this cluster is still on the host: namespaces, links (empty after ``stop``)."""
        spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
        names = [*self.netns.values(), *self.veth.values(), self.bridge]
        return [n for n in names if n in spaces.split() or f" {n}:" in links or f" {n}@" in links]

    def _ip(self, *args: str) -> None:
        p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
