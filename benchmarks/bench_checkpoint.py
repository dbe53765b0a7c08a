"""Issue #6: time to write a resumable checkpoint of ResNet50 at 224 px.

``busi.train.checkpoint.Checkpointer.save`` exactly as the training loop calls it: the model's
variables, the Adam optimizer's variables (built, and after one real step so its slots hold
values), the best weights so far, the loop state; written to a temp folder, fsynced, renamed,
``latest.json`` replaced, the previous checkpoint removed. Fine-tuning conv5 (job/busi.yaml)
and, as the worst case, everything unfrozen (Adam holds two slots per trainable weight).
Target: well inside the 30 s between SIGTERM and SIGKILL.

    .venv/bin/python benchmarks/bench_checkpoint.py [--repeats 5] [--dir DIR] [--size 224]
        [--unfreeze conv5,all] [--backbone resnet50 [--alpha 1.0]]

``--dir``: where the run directory goes (default: a temp folder under /tmp; try the shared file
system your runs write to). ``--backbone``/``--alpha``: the network checkpointed (default
ResNet50, the figures in docs/performance.md). Smallest run (tests/test_benchmarks.py):
``--size 32 --repeats 1 --unfreeze conv5 --backbone mobilenet --alpha 0.25``. Prints one line
per unfreeze setting; not a test.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import common


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224, help="image side, px (default 224)")
    ap.add_argument("--repeats", type=int, default=5, help="checkpoints written per setting (default 5)")
    ap.add_argument("--unfreeze", default="conv5,all", help="comma-separated: the trainable blocks of each setting")
    ap.add_argument("--dir", help="parent folder of the run directory")
    common.add_model_options(ap)
    ap.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    args = ap.parse_args()
    common.print_command()
    from busi.runtime.cores import detect_cores
    from busi.runtime.startup import start_tensorflow

    cores = detect_cores("auto")
    tf = start_tensorflow(cores, seed=0)
    import keras
    import numpy as np

    from busi.config.load import load_config
    from busi.model.network import build_model, set_trainable
    from busi.train.checkpoint import Checkpointer, TrainState

    root = common.scratch("busi-bench-ckpt-", Path(args.dir) if args.dir else None)
    print(f"# {args.size} px {args.backbone} (alpha {args.alpha:g}), run directory {root}, {cores.cores} cores")
    for unfreeze in args.unfreeze.split(","):
        cfg = load_config(None, base={"data": {"source": "unused", "image_size": args.size},
                                      "output": {"dir": str(root / unfreeze)},
                                      "model": {"weights": "none", "backbone": args.backbone, "alpha": args.alpha}})
        built = build_model(cfg.model, cfg.data.image_size, cfg.data.classes)
        model = built.model
        set_trainable(built, unfreeze, cfg.model.batchnorm)
        optimizer = keras.optimizers.Adam(1e-5)
        optimizer.build(model.trainable_variables)
        x = tf.zeros([2, args.size, args.size, 3])
        y = tf.constant([0, 1])
        with tf.GradientTape() as tape:  # one real step: Adam's slots hold values
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, model(x, training=True)))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        best = [np.array(w) for w in model.get_weights()]
        ckpt = Checkpointer(root / unfreeze, cfg)
        state = TrainState(phase="finetune", epoch=11, step=3, total_epochs=20)
        common.wait_for_quiet(skip=args.no_wait)
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            path = ckpt.save(state, model, optimizer, best)
            times.append(time.perf_counter() - t)
        assert path is not None
        size = sum(f.stat().st_size for f in path.iterdir()) / 2**20
        t = time.perf_counter()
        loaded = ckpt.load()
        t_load = time.perf_counter() - t
        assert loaded is not None and len(loaded.optimizer) == len(optimizer.variables)
        trainable = int(sum(np.prod(v.shape) for v in model.trainable_variables))
        print(f"unfreeze {unfreeze:<5}: {trainable:>10,} trainable, {len(optimizer.variables)} optimizer variables, "
              f"checkpoint {size:6.1f} MiB: save median {statistics.median(times):.2f} s, max {max(times):.2f} s "
              f"{[round(v, 2) for v in times]}; load {t_load:.2f} s", flush=True)
    print(f"# load average at end: {common.load1():.2f}")


if __name__ == "__main__":
    main()
