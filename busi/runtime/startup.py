"""Starting TensorFlow for a job: the one place that first imports it.

Thread pools must be set before TensorFlow starts (``busi.runtime.cores`` decides them with
the standard library only); ``start_tensorflow`` applies them, seeds Python, NumPy and
TensorFlow with one seed, and keeps TensorFlow's C++ start-up lines (absl's "All log messages
before absl::InitializeLog()...", the oneDNN notice, the CPU-instructions notice) out of the
job's log unless the user asked for every line (``TF_CPP_MIN_LOG_LEVEL=0``). absl prints those
lines before any log level applies (``TF_CPP_MIN_LOG_LEVEL=2``, the usual advice, does not hide
them with TensorFlow 2.21), so they are filtered from the process's stderr while TensorFlow
loads; every other line written meanwhile is passed on.
"""

from __future__ import annotations

import os
import random
import re
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from busi.runtime.cores import CoreDecision, thread_env
from busi.runtime.cpu import CPUINFO, cpu_has_bf16

# TensorFlow's start-up lines on a CPU node (they say nothing a job can act on)
STARTUP_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I0000 .*\] (oneDNN custom operations are on|This TensorFlow binary is optimized to use)"
    r"|To enable the following instructions: .* in other operations, rebuild TensorFlow)"
)


def start_tensorflow(decision: CoreDecision, seed: int, deterministic: bool = False) -> Any:
    """Set thread pools and seeds, import TensorFlow (quietly), and return the module."""
    everything = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip() == "0"
    os.environ.update(thread_env(decision))
    with (_nothing() if everything or "tensorflow" in sys.modules else filtered_stderr(STARTUP_NOISE)):
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(decision.intra_op_threads)
            tf.config.threading.set_inter_op_parallelism_threads(decision.inter_op_threads)
        except RuntimeError:
            pass  # already initialised in this process (tests); the env vars covered a fresh start
        tf.constant(0.0) + 1.0  # the first op loads the oneDNN kernels, which announce themselves too
    seed_everything(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    return tf


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextmanager
def filtered_stderr(noise: re.Pattern[str]) -> Iterator[None]:
    """Capture what is written to file descriptor 2 (C++ libraries write there directly) during
    the block; afterwards write it back, less the lines ``noise`` matches."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not noise.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def seed_everything(seed: int) -> None:
    """One seed for Python, NumPy, TensorFlow and Keras."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    import keras

    keras.utils.set_random_seed(seed)


def resolve_precision(setting: str, has_gpu: bool, cpuinfo: Path = CPUINFO) -> str:
    """``auto``: bf16 on CPUs that have fast bf16 (flags read from ``cpuinfo``), fp16 on a GPU,
    else float32."""
    if setting != "auto":
        return setting
    if has_gpu:
        return "mixed_float16"
    return "mixed_bfloat16" if cpu_has_bf16(cpuinfo) else "float32"
