"""Where srun-started Gloo ranks meet: Horovod's rendezvous server, run by a Slurm job's batch step.

``horovodrun`` starts this server itself and then its ranks, over ssh on other nodes. Under
Slurm, ``slurm/train-horovod.sh`` lets Slurm start every rank instead (``srun``: no ssh between
nodes, signals and a lost node handled by Slurm) and runs the server here::

    python -m busi.distributed.rendezvous --hosts node1:1,node2:1 [--address ADDR]

It prints ``ADDR PORT`` on one line once it listens, then serves until it gets SIGTERM or the
process that started it (the batch script) is gone. Each rank is given ``ADDR`` and ``PORT`` as
``HOROVOD_GLOO_RENDEZVOUS_ADDR``/``_PORT`` and works out the rest from Slurm's variables
(``busi.distributed.launchers.horovod_env_from_slurm``): the same plan horovodrun would make
(Horovod's ``get_host_assignments``), so the server knows every scope's size. Imports Horovod's
launcher (not TensorFlow).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import sys
import time
from typing import Sequence

from busi.errors import ConfigError


def own_address() -> str:
    """The address this host's name resolves to: the one the other nodes know it by."""
    return socket.gethostbyname(socket.gethostname())


def serve(hosts: str, address: str | None = None) -> None:
    """Start the server for the ranks of ``hosts`` (``node1:2,node2:2``: node and ranks on it),
    print ``ADDR PORT``, and serve until SIGTERM or the parent process is gone."""
    from horovod.runner.common.util.hosts import get_host_assignments, parse_hosts
    from horovod.runner.http.http_server import RendezvousServer

    try:
        parsed = parse_hosts(hosts)
    except ValueError as e:
        raise ConfigError(f"--hosts {hosts!r}: expected node:ranks,... ({e})") from None
    given = address
    try:
        address = socket.gethostbyname(given) if given else own_address()
    except OSError as e:
        raise ConfigError(f"cannot resolve the rendezvous address {given or socket.gethostname()!r} ({e}); "
                          "set BUSI_RENDEZVOUS_ADDR to this node's address") from None
    if len(parsed) > 1 and ipaddress.ip_address(address).is_loopback:
        what = f"the rendezvous address {given}" if given else f"this host's name ({socket.gethostname()})"
        raise ConfigError(f"{what} resolves to {address}, which the other nodes cannot reach; set "
                          "BUSI_RENDEZVOUS_ADDR to this node's address on the network the nodes share")
    plan = get_host_assignments(parsed, sum(h.slots for h in parsed))
    server = RendezvousServer()
    port = server.start()
    server.init(plan)
    print(f"{address} {port}", flush=True)
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    parent = os.getppid()
    while not stop and os.getppid() == parent:
        time.sleep(0.5)
    server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m busi.distributed.rendezvous", description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", required=True, help="node:ranks,... in rank order (srun's block distribution)")
    parser.add_argument("--address", default=None, help="the address ranks reach this host by (default: its name's)")
    args = parser.parse_args(argv)
    try:
        serve(args.hosts, args.address)
    except ConfigError as e:
        print(f"busi rendezvous: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
