"""Two ranks on two nodes against two ranks on one node: the gradient allreduce and the training
step of ``bench_horovod.py``'s worker, launched as ``slurm/train-horovod.sh`` launches Gloo ranks
(srun, the batch step running ``busi.distributed.rendezvous``), on the cluster of network
namespaces the tests use (``tests/netcluster.py``: veth pairs on a bridge, one host).

    sudo .venv/bin/python benchmarks/bench_nodes.py [--size 64] [--steps 12] [--repeats 2]
        [--backbone resnet50 [--alpha 1.0]]

Smallest run (tests/test_benchmarks.py): ``--size 32 --global-batch 2 --steps 1 --repeats 1
--backbone mobilenet --alpha 0.25``. Prints numbers; not a test. Needs root, Slurm, munge, iproute2 and Horovod. The two layouts run
alternately, ``--repeats`` times each, in one cluster: two nodes (one rank each, Gloo over
``eth0``, the veth and the bridge) and one node (two ranks, Gloo over ``lo``). Both share the
host's cores, so the step times compare launch paths, not machines; the allreduce is the
figure the namespace link changes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import bench_horovod
import common

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]


def batch(args: argparse.Namespace) -> None:
    """The job's batch step: the rendezvous server, then srun of bench_horovod's worker."""
    hosts = os.environ["BENCH_HOSTS"]
    server = subprocess.Popen([sys.executable, "-m", "busi.distributed.rendezvous", "--hosts", hosts],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        addr, port = server.stdout.readline().split()
        env = {**os.environ, "HOROVOD_GLOO_RENDEZVOUS_ADDR": addr, "HOROVOD_GLOO_RENDEZVOUS_PORT": port,
               "HOROVOD_CONTROLLER": "gloo", "HOROVOD_CPU_OPERATIONS": "gloo", "TF_CPP_MIN_LOG_LEVEL": "2"}
        worker = [sys.executable, str(HERE.parent / "bench_horovod.py"), "--size", str(args.size),
                  "--global-batch", str(args.global_batch), "--steps", str(args.steps), "--warmup", "2",
                  "--backbone", args.backbone, "--alpha", str(args.alpha), "--worker"]
        p = subprocess.run(["srun", "--distribution=block", "--kill-on-bad-exit=1", *worker], env=env,
                           capture_output=True, text=True)
        print(p.stdout + p.stderr[-3000:], flush=True)
    finally:
        server.terminate()


def measure(cluster: Any, layout: str, args: argparse.Namespace, work: Path) -> dict[str, float]:
    """One sbatch of ``layout`` (``two nodes`` or ``one node``) on ``cluster`` (a started
    ``NamespaceCluster``): rank 0's BENCH figures."""
    nodes = ["--nodes=2", "--ntasks-per-node=1"] if layout == "two nodes" else ["--nodes=1", "--ntasks-per-node=2"]
    env = {**cluster.env, "BENCH_HOSTS": "node1:1,node2:1" if layout == "two nodes" else "node1:2",
           "PYTHONPATH": str(REPO)}
    if layout == "one node":
        env["HOROVOD_GLOO_IFACE"] = "lo"
    out = work / f"{layout.replace(' ', '-')}-%j.out"
    flags = ["--size", str(args.size), "--global-batch", str(args.global_batch), "--steps", str(args.steps),
             "--backbone", args.backbone, "--alpha", str(args.alpha), "--batch"]
    p = subprocess.run(["sbatch", "--parsable", *nodes, "--cpus-per-task=1", f"--output={out}", "--time=00:30:00",
                        "--wrap", " ".join([sys.executable, str(HERE), *flags])],
                       env=env, capture_output=True, text=True, cwd=work)
    job = p.stdout.strip().split(";")[0] or "?"
    if p.returncode == 0:
        cluster.wait_job(job, 1800)  # polls each second (sbatch --wait: at 2, 10, 42 s)
    log = Path(str(out).replace("%j", job))
    text = log.read_text(errors="replace") if log.exists() else p.stderr
    found = bench_horovod.result(text)
    if found is not None:
        return found
    sys.exit(f"{layout}: no result ({p.returncode})\n{text[-3000:]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64, help="image side, px (default 64)")
    p.add_argument("--global-batch", type=int, default=8, help="images per step over both ranks (default 8)")
    p.add_argument("--steps", type=int, default=12, help="timed steps (default 12)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each layout, alternating (default 2)")
    common.add_model_options(p)
    p.add_argument("--batch", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.batch:
        batch(args)
        return
    common.print_command()
    sys.path.insert(0, str(REPO / "tests"))
    from netcluster import NamespaceCluster, unavailable_reason

    reason = unavailable_reason()
    if reason:
        sys.exit(f"cannot build the namespace cluster: {reason}")
    cluster = NamespaceCluster(n=2).start()
    rows: list[tuple[str, dict[str, float]]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-nodes-") as tmp:
            for _ in range(args.repeats):
                for layout in ("two nodes", "one node"):
                    rows.append((layout, measure(cluster, layout, args, Path(tmp))))
    finally:
        cluster.stop()
    mb = rows[0][1]["gradient_mb"]
    print(f"{args.backbone} (alpha {args.alpha:g}), all layers trainable, {args.size} px, float32, global batch "
          f"{args.global_batch}, {args.steps} timed steps, {os.cpu_count()} CPUs; gradients {mb:.1f} MB per step")
    print(f"{'layout':>10} {'s/step':>8} {'allreduce s':>12} {'allreduce MB/s':>15}")
    for layout, r in rows:
        print(f"{layout:>10} {r['step_s']:>8.3f} {r['allreduce_s']:>12.4f} {mb / r['allreduce_s']:>15.0f}")
    mean = {lay: sum(r["allreduce_s"] for la, r in rows if la == lay) / args.repeats for lay in ("two nodes", "one node")}
    print(f"allreduce, two nodes / one node: {mean['two nodes'] / mean['one node']:.2f}")


if __name__ == "__main__":
    main()
