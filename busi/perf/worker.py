"""One configuration of ``busi-job bench``, measured in a fresh process of its own
(``python -m busi.perf.worker --worker SPEC``): pinned to N cores before TensorFlow starts,
busi's model and training step timed on in-memory batches after untimed warm-up calls."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import asdict
from typing import Any, Sequence

from busi.errors import BusiError, ConfigError
from busi.perf.bench import BenchResult

# ------------------------------------------------------------------- the worker (child)


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one configuration in this (fresh) process; returns a ``BenchResult`` dict."""
    t_start = time.perf_counter()
    cores = int(spec["cores"])
    allowed = sorted(os.sched_getaffinity(0))
    if cores > len(allowed):
        raise ConfigError(f"--cores {cores}: this process may use only {len(allowed)} core(s)")
    os.sched_setaffinity(0, allowed[:cores])  # before TensorFlow sizes its pools

    from busi.runtime.cores import detect_cores
    from busi.runtime.startup import start_tensorflow

    decision = detect_cores(cores)
    tf = start_tensorflow(decision, seed=0)

    import numpy as np

    size, bs, ibs = int(spec["image_size"]), int(spec["batch_size"]), int(spec["infer_batch_size"])
    precision, unfreeze, batchnorm = spec["precision"], spec["unfreeze"], spec["batchnorm"]
    steps, repeats = int(spec["steps"]), int(spec["repeats"])
    net, alpha = str(spec.get("backbone", "resnet50")), float(spec.get("alpha", 1.0))
    _, train_step, forward = build_bench_model(size, precision, unfreeze, batchnorm, backbone=net, alpha=alpha)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (bs, size, size, 3)).astype(np.float32))
    y = tf.constant(rng.integers(0, 3, bs).astype(np.int32))
    w = tf.constant(np.ones(bs, np.float32))
    xi = tf.constant(rng.uniform(0, 255, (ibs, size, size, 3)).astype(np.float32))

    train_trace, train_runs = time_calls(train_step, (x, y, w), bs, steps, repeats)
    infer_trace, infer_runs = time_calls(forward, (xi,), ibs, steps, repeats)
    result = BenchResult(
        cores=cores, precision=precision, image_size=size, batch_size=bs, infer_batch_size=ibs,
        unfreeze=unfreeze, batchnorm=batchnorm,
        train_images_per_second=round(statistics.median(train_runs), 3),
        infer_images_per_second=round(statistics.median(infer_runs), 3),
        train_runs=";".join(f"{r:.3f}" for r in train_runs),
        infer_runs=";".join(f"{r:.3f}" for r in infer_runs),
        intra_op_threads=decision.intra_op_threads, inter_op_threads=decision.inter_op_threads,
        train_trace_seconds=round(train_trace, 2), infer_trace_seconds=round(infer_trace, 2),
        worker_seconds=round(time.perf_counter() - t_start, 1), backbone=net, alpha=alpha,
    )
    return asdict(result)


def build_bench_model(size: int, precision: str, unfreeze: str = "all", batchnorm: str = "frozen",
                      learning_rate: float = 1e-5, backbone: str = "resnet50",
                      alpha: float = 1.0) -> tuple[Any, Any, Any]:
    """busi's model (``weights: none``) at ``size`` px under ``precision``, ``unfreeze`` blocks
    trainable, with busi's training step and a ``training=False`` forward pass, both
    ``tf.function``s: (model, train_step(x, y, w) -> (loss, correct), forward(x) -> probs).
    TensorFlow must already be started (``runtime.start_tensorflow``) by the caller."""
    import keras
    import tensorflow as tf

    from busi.config.schema import DEFAULT_CLASSES, ModelConfig
    from busi.model.network import build_model, set_trainable
    from busi.train.steps import make_optimizer, make_train_step

    keras.mixed_precision.set_global_policy(precision)
    built = build_model(ModelConfig(backbone=backbone, alpha=alpha, weights="none", batchnorm=batchnorm), size,
                        DEFAULT_CLASSES)
    model = built.model
    set_trainable(built, unfreeze, batchnorm)
    optimizer = make_optimizer(learning_rate, model.trainable_variables)
    train_step = make_train_step(model, optimizer, lambda x, training: model(x, training=training))

    @tf.function
    def forward(x: Any) -> Any:
        return model(x, training=False)

    return model, train_step, forward


def time_calls(fn: Any, args: tuple[Any, ...], n_images: int, steps: int, repeats: int) -> tuple[float, list[float]]:
    """(seconds of the first call: tracing, images/s of each repeat of ``steps`` calls) after a
    second untimed warm-up call. Each call's result is read back, as the training loop does."""
    t = time.perf_counter()
    _sync(fn(*args))
    trace = time.perf_counter() - t
    _sync(fn(*args))  # allocator and oneDNN primitive caches settle
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            _sync(fn(*args))
        runs.append(steps * n_images / (time.perf_counter() - t))
    return trace, runs


def _sync(out: Any) -> None:
    """Wait for a result (a tensor or a tuple of tensors) to be computed."""
    first = out[0] if isinstance(out, (tuple, list)) else out
    first.numpy()


def _worker_main(argv: Sequence[str]) -> int:
    spec = json.loads(argv[1])
    try:
        result = worker(spec)
    except BusiError as e:
        print(f"busi-job bench: error: {e}", file=sys.stderr)
        return e.exit_code
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":  # python -m busi.perf.worker --worker SPEC
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[1:]))
    print("usage: busi-job bench ... (python -m busi.perf.worker --worker SPEC is internal)", file=sys.stderr)
    sys.exit(2)
