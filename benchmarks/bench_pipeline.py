"""Issue #3: what busi's input pipeline costs in training throughput.

Training images/s of busi's fine-tuning step fed by the real pipeline
(``busi.data.pipeline.Pipeline.train_dataset``: Pillow decode of PNGs of BUSI's sizes in
parallel ``tf.data`` map calls, resize, in-memory cache, per-epoch shuffle, the default
augmentation: flip, rotation, zoom, brightness, contrast), against the same step on an
in-memory batch of the same shape. 224 px, float32 and mixed_bfloat16, each in its own process
with busi's thread settings (``runtime.cores: auto``).

    .venv/bin/python benchmarks/bench_pipeline.py [--images 128] [--epochs 3] [--quick] [--size 224]
        [--precision float32,mixed_bfloat16] [--backbone resnet50 [--alpha 1.0]]

Epoch 1 decodes and fills the cache (reported apart); epochs 2.. read the cache, as every
later epoch of a run does: the target (pipeline costs < 10%) is about those. Timed epochs
alternate with in-memory runs of the same number of steps, so drift hits both alike. The step
is traced before timing. ``--backbone``/``--alpha``: the network trained (default ResNet50, the
figures in docs/performance.md). Smallest run (tests/test_benchmarks.py): ``--images 8 --size 32
--batch-size 4 --epochs 1 --precision float32 --backbone mobilenet --alpha 0.25``. Prints one row
per precision; not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common


def worker(args: argparse.Namespace) -> dict:
    from busi.runtime.cores import detect_cores
    from busi.runtime.startup import start_tensorflow

    cores = detect_cores("auto")
    tf = start_tensorflow(cores, seed=0)
    import numpy as np

    from busi.config.schema import AugmentConfig
    from busi.data.pipeline import Pipeline, SplitData
    from busi.perf.worker import build_bench_model

    files = common.image_files(Path(args.folder))[: args.images]
    classes = ["normal", "benign", "malignant"]
    labels = tuple(classes.index(p.parent.name) for p in files)
    bs, size = args.batch_size, args.size
    steps = len(files) // bs
    files, labels = files[: steps * bs], labels[: steps * bs]  # whole batches: one traced shape
    _, train_step, _ = build_bench_model(size, args.precision, args.unfreeze, "frozen", backbone=args.backbone,
                                         alpha=args.alpha)
    pipe = Pipeline(SplitData(tuple(map(str, files)), labels), size, "stretch", cache=True)
    augment = AugmentConfig()  # busi's defaults: flip, rotation 0.05, zoom 0.1, brightness 0.1, contrast 0.1
    weights = np.ones(3, np.float32)

    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (bs, size, size, 3)).astype(np.float32))
    y = tf.constant(rng.integers(0, 3, bs).astype(np.int32))
    w = tf.constant(np.ones(bs, np.float32))
    t = time.perf_counter()
    float(train_step(x, y, w)[0])
    trace = time.perf_counter() - t
    float(train_step(x, y, w)[0])

    def pipeline_epoch(epoch: int) -> float:
        t = time.perf_counter()
        n = 0
        for xb, yb, wb in pipe.train_dataset(bs, 0, epoch, augment, weights):
            float(train_step(xb, yb, wb)[0])  # the loop reads the loss every step
            n += int(xb.shape[0])
        return n / (time.perf_counter() - t)

    def memory_run() -> float:
        t = time.perf_counter()
        for _ in range(steps):
            float(train_step(x, y, w)[0])
        return steps * bs / (time.perf_counter() - t)

    first = pipeline_epoch(1)  # decode + cache fill
    cached, memory = [], []
    for e in range(args.epochs):
        memory.append(memory_run())
        cached.append(pipeline_epoch(e + 2))
    memory.append(memory_run())
    return {
        "precision": args.precision, "images": len(files), "batch": bs, "steps_per_epoch": steps,
        "threads": f"{cores.intra_op_threads}/{cores.inter_op_threads}", "trace_s": round(trace, 1),
        "first_epoch": first, "cached": cached, "memory": memory,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=128, help="training images (whole batches are used)")
    ap.add_argument("--size", type=int, default=224, help="image side, px (default 224)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=3, help="timed cached epochs (after the decoding epoch)")
    ap.add_argument("--precision", default="float32,mixed_bfloat16")
    ap.add_argument("--unfreeze", default="conv5", help="blocks trained (job/busi.yaml fine-tunes conv5)")
    common.add_model_options(ap)
    ap.add_argument("--quick", action="store_true", help="64 images, 2 cached epochs")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.quick:
        args.images, args.epochs = 64, 2
    common.print_command()
    folder = common.busi_sized_folder(args.images, seed=3, name=f"pipeline-{args.images}")
    files = common.image_files(folder)
    from PIL import Image

    widths = sorted(Image.open(p).size[0] for p in files)
    print(f"# data: {len(files)} synthetic PNGs in {folder}, widths {widths[0]}-{widths[-1]} px "
          f"(median {widths[len(widths) // 2]}); {args.size} px {args.backbone}, batch {args.batch_size}, "
          f"unfreeze {args.unfreeze}")
    common.wait_for_quiet(skip=args.no_wait)
    print(f"{'precision':<15} {'threads':>7} {'epoch 1 (decode)':>16} {'pipeline (cached)':>18} "
          f"{'in-memory':>10} {'pipeline cost':>13}")
    for precision in args.precision.split(","):
        cmd = [sys.executable, __file__, "--worker", "--folder", str(folder), "--precision", precision,
               "--images", str(args.images), "--size", str(args.size), "--batch-size", str(args.batch_size),
               "--epochs", str(args.epochs), "--unfreeze", args.unfreeze, "--backbone", args.backbone,
               "--alpha", str(args.alpha)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        if proc.returncode != 0:
            sys.exit(proc.stderr[-3000:])
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        cached, memory = statistics.median(r["cached"]), statistics.median(r["memory"])
        print(f"{precision:<15} {r['threads']:>7} {r['first_epoch']:>12.2f} img/s {cached:>12.2f} img/s "
              f"{memory:>6.2f} img/s {100 * (1 - cached / memory):>12.1f}%", flush=True)
        print(f"#   runs: cached {[round(v, 2) for v in r['cached']]}, in-memory {[round(v, 2) for v in r['memory']]}; "
              f"{r['images']} images = {r['steps_per_epoch']} steps/epoch; tracing {r['trace_s']} s (excluded)", flush=True)
    print(f"# load average at end: {common.load1():.2f}")


if __name__ == "__main__":
    main()
