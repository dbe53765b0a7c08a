"""Data-parallel throughput: N Horovod ranks x (cores / N) threads against 1 rank x all cores,
at the same global batch, on busi's ResNet50 with every layer trainable (the fine-tuning case
that moves the most gradient bytes), plus the time of the gradient allreduce alone.

    .venv/bin/python benchmarks/bench_horovod.py [--size 96] [--global-batch 32] [--steps 12] [--np 2]
        [--backbone resnet50 [--alpha 1.0]]

Prints numbers; not a test. Random input tensors (no decoding), float32, so the figures are
model + allreduce only. The step is the one busi trains with (tape, ``Dist.average_gradients``
grouped allreduce inside the ``tf.function``, Adam). On a small machine use 96 or 128 px:
224 px takes minutes per configuration on 2 cores. ``--backbone``/``--alpha``: the network
trained (default ResNet50). Smallest run (tests/test_benchmarks.py, where Horovod is installed):
``--size 32 --global-batch 4 --steps 1 --warmup 1 --np 2 --backbone mobilenet --alpha 0.25``.

The script runs itself as the workers: once as one process with every core, once under
``horovodrun --gloo -np N -H localhost:N`` (runtime.cores auto: the node's cores divided among
its ranks).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import common

HERE = Path(__file__).resolve()


def worker(args: argparse.Namespace) -> None:
    """One rank: time ``--steps`` training steps after ``--warmup`` untimed ones (tracing),
    then the gradient allreduce alone. Rank 0 prints one JSON line."""
    from busi.config.load import load_config
    from busi.distributed.launchers import launched_local_size
    from busi.distributed.setup import init_dist
    from busi.runtime.cores import detect_cores
    from busi.runtime.startup import start_tensorflow

    dist = init_dist("auto")
    cores = detect_cores("auto", local_ranks=launched_local_size() if dist.size > 1 else 1)
    tf = start_tensorflow(cores, seed=0)
    import keras
    import numpy as np

    from busi.model.network import build_model, set_trainable

    cfg = load_config(None, ["data.source=unused", "output.dir=unused", f"data.image_size={args.size}",
                             "model.weights=none", "model.batchnorm=train", "train.precision=float32",
                             f"model.backbone={args.backbone}", f"model.alpha={args.alpha}"])
    built = build_model(cfg.model, cfg.data.image_size, cfg.data.classes)
    set_trainable(built, "all", "train")
    model = built.model
    optimizer = keras.optimizers.Adam(1e-4)
    optimizer.build(model.trainable_variables)
    dist.broadcast_model(model, optimizer)

    per_rank = args.global_batch // dist.size
    rng = np.random.default_rng(dist.rank)
    x = tf.constant(rng.uniform(0, 255, (per_rank, args.size, args.size, 3)).astype("float32"))
    y = tf.constant(rng.integers(0, 3, per_rank).astype("int32"))

    @tf.function
    def step(x, y):  # type: ignore[no-untyped-def]
        variables = model.trainable_variables
        with tf.GradientTape() as tape:
            probs = model(x, training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, probs))
        grads = dist.average_gradients(tape.gradient(loss, variables))
        optimizer.apply(grads, variables)
        return loss

    shapes = [v.shape for v in model.trainable_variables]
    fake_grads = [tf.ones(s, tf.float32) for s in shapes]

    @tf.function
    def allreduce_only(grads):  # type: ignore[no-untyped-def]
        return dist.average_gradients(grads)

    for _ in range(args.warmup):
        float(step(x, y))
    dist.sum_scalars([0.0])  # line the ranks up before timing
    t0 = time.perf_counter()
    for _ in range(args.steps):
        float(step(x, y))
    dist.sum_scalars([0.0])
    step_s = (time.perf_counter() - t0) / args.steps

    allreduce_s = 0.0
    if dist.size > 1:
        for _ in range(2):
            [g.numpy() for g in allreduce_only(fake_grads)[:1]]
        dist.sum_scalars([0.0])
        t0 = time.perf_counter()
        for _ in range(args.steps):
            out = allreduce_only(fake_grads)
            out[-1].numpy()
        allreduce_s = (time.perf_counter() - t0) / args.steps

    if dist.is_primary:
        print("BENCH " + json.dumps({
            "ranks": dist.size, "threads_per_rank": cores.intra_op_threads, "global_batch": per_rank * dist.size,
            "per_rank_batch": per_rank, "step_s": step_s, "img_s": per_rank * dist.size / step_s,
            "allreduce_s": allreduce_s, "gradient_mb": sum(int(np.prod(s)) for s in shapes) * 4 / 1e6,
        }), flush=True)


def result(output: str) -> dict[str, float] | None:
    """Rank 0's figures from a worker's output: its ``BENCH {json}`` line (horovodrun prefixes
    each line with the rank), or None."""
    for line in output.splitlines():
        if "BENCH " in line:
            return json.loads(line.split("BENCH ", 1)[1])
    return None


def run(cmd: list[str]) -> dict[str, float]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("BUSI_FAIL_AT_STEP", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    found = result(proc.stdout + proc.stderr)
    if found is not None:
        return found
    sys.exit(f"benchmark worker failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=96, help="image side, px (default 96)")
    p.add_argument("--global-batch", type=int, default=32, help="images per step over all ranks (default 32)")
    p.add_argument("--steps", type=int, default=12, help="timed steps (default 12)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first: tracing (default 3)")
    p.add_argument("--np", type=int, default=2, help="ranks of the Horovod run (default 2)")
    common.add_model_options(p)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    flags = ["--size", str(args.size), "--global-batch", str(args.global_batch), "--steps", str(args.steps),
             "--warmup", str(args.warmup), "--backbone", args.backbone, "--alpha", str(args.alpha), "--worker"]
    me = [sys.executable, str(HERE), *flags]
    results = [
        run(me),
        run([sys.executable, "-m", "horovod.runner.launch", "--gloo", "-np", str(args.np), "-H",
             f"localhost:{args.np}", *me]),
    ]
    print(f"{args.backbone} (alpha {args.alpha:g}), all layers trainable, {args.size} px, float32, global batch {args.global_batch}, "
          f"{args.steps} timed steps, {os.cpu_count()} CPUs")
    print(f"{'ranks x threads':>16} {'per-rank batch':>15} {'s/step':>8} {'img/s':>7} {'allreduce s/step':>17}")
    for r in results:
        print(f"{r['ranks']:>10} x {r['threads_per_rank']:<3} {r['per_rank_batch']:>15} {r['step_s']:>8.3f} "
              f"{r['img_s']:>7.1f} {r['allreduce_s']:>17.3f}")
    print(f"gradients per step: {results[0]['gradient_mb']:.1f} MB float32")


if __name__ == "__main__":
    main()
