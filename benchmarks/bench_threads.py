"""Issue #8 item 4: thread settings under fewer cores than the machine has.

Every configuration runs in a fresh process under ``taskset -c 0`` (one core of the machine's
two), as a Slurm job or container given one core runs:

* ``busi auto``: ``runtime.cores: auto`` (``detect_cores`` sees the affinity mask: 1 core ->
  1 intra-op / 1 inter-op thread, ``OMP_NUM_THREADS=1``), set before TensorFlow starts;
* manual settings: intra-op 1, 2, 4 x inter-op 1, 2 (through the same call, as a user would
  set ``tf.config.threading``);
* TensorFlow's defaults: nothing set at all (no thread variables in the environment).

Each measures busi's training step (batch 16, fine-tuning conv5, BatchNorm frozen) and the
inference forward pass (batch 32) at 128 px: median images/s of ``--repeats`` runs after
warm-up; the sweep runs ``--rounds`` times in alternating order (this VM's speed drifts by
10-20% over minutes), each setting's figure the median over rounds. Prints numbers; not a test.

    .venv/bin/python benchmarks/bench_threads.py [--size 128] [--rounds 2] [--quick] [--cpu 0,1]
        [--modes auto,defaults,2x1] [--backbone resnet50 [--alpha 1.0]]

``--backbone``/``--alpha``: the network measured (default ResNet50, the figures in
docs/performance.md). Smallest run (tests/test_benchmarks.py): ``--size 32 --train-steps 1
--infer-steps 1 --repeats 1 --rounds 1 --modes auto,1x1,defaults --backbone mobilenet --alpha 0.25``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import common

THREAD_VARS = ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def worker(args: argparse.Namespace) -> dict:
    from busi.runtime.cores import CoreDecision, detect_cores

    if args.mode == "defaults":
        import tensorflow as tf

        info = "TF defaults"
    else:
        from busi.runtime.startup import start_tensorflow

        if args.mode == "auto":
            decision = detect_cores("auto")
        else:
            intra, inter = (int(v) for v in args.mode.split("x"))
            base = detect_cores("auto")
            decision = CoreDecision(cores=intra, source="config", affinity=base.affinity, cgroup_quota=None,
                                    slurm_cpus_per_task=None, intra_op_threads=intra, inter_op_threads=inter)
        tf = start_tensorflow(decision, seed=0)
        info = f"{decision.intra_op_threads}/{decision.inter_op_threads}"
    import numpy as np

    from busi.perf.worker import build_bench_model, time_calls

    size = args.size
    _, train_step, forward = build_bench_model(size, "float32", args.unfreeze, "frozen", backbone=args.backbone,
                                               alpha=args.alpha)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (16, size, size, 3)).astype(np.float32))
    y = tf.constant(rng.integers(0, 3, 16).astype(np.int32))
    w = tf.constant(np.ones(16, np.float32))
    xi = tf.constant(rng.uniform(0, 255, (32, size, size, 3)).astype(np.float32))
    _, train = time_calls(train_step, (x, y, w), 16, args.train_steps, args.repeats)
    _, infer = time_calls(forward, (xi,), 32, args.infer_steps, args.repeats)
    return {
        "threads": info, "affinity": len(os.sched_getaffinity(0)),
        "tf_intra": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter": tf.config.threading.get_inter_op_parallelism_threads(),
        "train": train, "infer": infer,
    }


def run_mode(args: argparse.Namespace, mode: str, env: dict) -> dict:
    cmd = ["taskset", "-c", args.cpu, sys.executable, __file__, "--worker", "--mode", mode,
           "--size", str(args.size), "--unfreeze", args.unfreeze, "--train-steps", str(args.train_steps),
           "--infer-steps", str(args.infer_steps), "--repeats", str(args.repeats), "--backbone", args.backbone,
           "--alpha", str(args.alpha)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--unfreeze", default="conv5")
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--infer-steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpu", default="0", help="taskset CPU list (default: core 0)")
    ap.add_argument("--rounds", type=int, default=2, help="sweeps over the settings, alternating their order "
                    "(the machine's speed drifts by minutes); each setting's figure is the median over rounds")
    ap.add_argument("--quick", action="store_true", help="one round of auto, 1x1, 2x1, 2x2, 4x2 and defaults")
    ap.add_argument("--modes", help="comma-separated subset: auto, defaults, INTRAxINTER (e.g. auto,2x1)")
    common.add_model_options(ap)
    ap.add_argument("--no-wait", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    common.print_command()
    modes = ["auto", "1x1", "1x2", "2x1", "2x2", "4x1", "4x2", "defaults"]
    if args.quick:
        modes, args.rounds = ["auto", "1x1", "2x1", "2x2", "4x2", "defaults"], 1
    if args.modes:
        modes = args.modes.split(",")
    print(f"# taskset -c {args.cpu}: {args.size} px {args.backbone}, float32, train batch 16 (unfreeze {args.unfreeze}), "
          f"inference batch 32; median of {args.repeats} repeats ({args.train_steps} / {args.infer_steps} batches)")
    common.wait_for_quiet(skip=args.no_wait)
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    print(f"{'setting':<22} {'TF intra/inter':>14} {'train img/s':>12} {'infer img/s':>12}  runs (train; infer)")
    results: dict[str, list[dict]] = {m: [] for m in modes}
    for rnd in range(args.rounds):
        for mode in (modes if rnd % 2 == 0 else modes[::-1]):
            results[mode].append(run_mode(args, mode, env))
            r = results[mode][-1]
            print(f"#   round {rnd + 1} {mode:<8} train {statistics.median(r['train']):6.2f} "
                  f"infer {statistics.median(r['infer']):6.2f}", flush=True)
    rows = {}
    for mode in modes:
        rs = results[mode]
        r = rs[0]
        if mode in ("auto", "defaults"):
            label = {"auto": "busi auto (cores: auto)", "defaults": "TensorFlow defaults"}[mode]
        else:
            label = "manual intra {} inter {}".format(*mode.split("x"))
        per_round = [(statistics.median(x["train"]), statistics.median(x["infer"])) for x in rs]
        tr, inf = statistics.median(v[0] for v in per_round), statistics.median(v[1] for v in per_round)
        rows[mode] = (tr, inf)
        print(f"{label:<22} {str(r['tf_intra']) + '/' + str(r['tf_inter']):>14} {tr:>12.2f} {inf:>12.2f}  "
              f"{[round(v[0], 2) for v in per_round]}; {[round(v[1], 2) for v in per_round]} (per round)", flush=True)
    manual = {m: v for m, v in rows.items() if "x" in m}
    if manual:
        best_t = max(manual.items(), key=lambda kv: kv[1][0])
        best_i = max(manual.items(), key=lambda kv: kv[1][1])
    a = rows.get("auto")
    if a and manual:
        print(f"# busi auto vs best manual: training {a[0] / best_t[1][0]:.3f} ({best_t[0]}), "
              f"inference {a[1] / best_i[1][1]:.3f} ({best_i[0]})")
    if a and "defaults" in rows:
        d = rows["defaults"]
        print(f"# TensorFlow defaults vs busi auto: training {d[0] / a[0]:.3f}, inference {d[1] / a[1]:.3f}")
    print(f"# load average at end: {common.load1():.2f}")


if __name__ == "__main__":
    main()
