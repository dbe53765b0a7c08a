"""Shared by the benchmark scripts: a quiet machine, synthetic BUSI-like folders, printing.

Not a test and not part of busi: the scripts print figures, and the README quotes them.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CACHE = Path(os.environ.get("BUSI_BENCH_CACHE", "/tmp/busi-bench"))


def load1() -> float:
    return os.getloadavg()[0]


def wait_for_quiet(threshold: float = 0.8, poll: float = 30.0, limit: float = 900.0, skip: bool = False) -> float:
    """Wait (up to ``limit`` s) until the 1-minute load average is below ``threshold``; returns
    the load when measuring starts (printed). Other people's test runs skew timings."""
    start = time.monotonic()
    while not skip and load1() >= threshold and time.monotonic() - start < limit:
        print(f"# load average {load1():.2f} >= {threshold}: waiting {poll:.0f} s", file=sys.stderr, flush=True)
        time.sleep(poll)
    la = os.getloadavg()
    print(f"# load average at start: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}"
          + (" (waited the limit, measuring anyway)" if la[0] >= threshold and not skip else ""), flush=True)
    return la[0]


def print_command() -> None:
    print("# command: " + " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]), flush=True)


def scratch(prefix: str, parent: Path | None = None) -> Path:
    """A new temporary folder (under ``parent``, default the system's temp folder), removed when
    the benchmark exits, normally or by an exception or Ctrl-C: model folders and prediction CSVs
    of 100-400 MB each must not pile up in /tmp run after run."""
    import atexit
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def cached_dir(name: str, build: Callable[[Path], Any]) -> Path:
    """``CACHE/name``, built once by ``build(tmp)`` into a temp folder renamed into place."""
    target = CACHE / name
    if (target / ".complete").is_file():
        return target
    import shutil

    tmp = CACHE / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    tmp.mkdir(parents=True)
    build(tmp)
    (tmp / ".complete").write_text("ok\n")
    os.replace(tmp, target)
    return target


def busi_sized_folder(n_images: int, seed: int = 0, base_per_class: int | None = None, name: str | None = None) -> Path:
    """A folder of ``n_images`` BUSI-like PNGs (RGB, masks removed) of BUSI's sizes: synthetic
    images rendered at 500 px (``busi.data.synth``), each resized to a random width of 190-1050 px
    (most 430-780, as BUSI's) and height 0.7-1.0 x the width (BUSI's are wider than tall).
    Rendering is the slow part (~0.3 s per image), so ``base_per_class`` images per class are
    rendered and resized to several sizes each. Cached under ``$BUSI_BENCH_CACHE`` (/tmp/busi-bench)."""
    per_class = base_per_class or max(1, min(60, -(-n_images // 3)))
    name = name or f"busi-sized-{n_images}-s{seed}-b{per_class}"

    def build(tmp: Path) -> None:
        import numpy as np
        from PIL import Image

        from busi.data.synth import write_synthetic_dataset

        base = write_synthetic_dataset(tmp / "_base", per_class=per_class, size=500, seed=seed)
        rng = np.random.default_rng(seed)
        classes = ["normal", "benign", "malignant"]
        sources = {c: sorted(p for p in (base / c).glob("*.png") if "_mask" not in p.name) for c in classes}
        for c in classes:
            (tmp / c).mkdir()
        for i in range(n_images):
            c = classes[i % 3]
            src = sources[c][(i // 3) % len(sources[c])]
            u = rng.random()
            width = int(rng.uniform(190, 430)) if u < 0.1 else int(rng.uniform(780, 1050)) if u > 0.9 else int(rng.uniform(430, 780))
            height = max(150, int(width * rng.uniform(0.7, 1.0)))
            with Image.open(src) as im:
                im.convert("RGB").resize((width, height), Image.Resampling.BILINEAR).save(tmp / c / f"{c} ({i // 3 + 1}).png")
        import shutil

        shutil.rmtree(base)

    return cached_dir(name, build)


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.png") if "_mask" not in p.name)


def add_model_options(parser: Any) -> None:
    """``--backbone`` and ``--alpha``: the network a benchmark builds (``weights: none``), as
    ``model.backbone`` and ``model.alpha`` of a job file. The figures the docs quote are
    ResNet50's (the default); a smaller one (``--backbone mobilenet --alpha 0.25``) measures the
    backbone you train, or checks in seconds that the script runs (tests/test_benchmarks.py)."""
    from busi.config.schema import BACKBONES

    parser.add_argument("--backbone", default="resnet50", choices=BACKBONES,
                        help="the network measured, weights none (default resnet50, as job/busi.yaml)")
    parser.add_argument("--alpha", type=float, default=1.0,
                        help="width multiplier of mobilenet and mobilenet_v2 (default 1.0)")


def make_model_dir(root: Path, size: int, precision: str = "float32", classes: tuple[str, ...] = ("normal", "benign", "malignant"),
                   backbone: str = "resnet50", alpha: float = 1.0, openvino: bool = False) -> Path:
    """A run directory's model folder as training writes it (``busi.model.folder``, without the
    SavedModel), from a ``weights: none`` model (``backbone`` at width ``alpha``) under
    ``precision`` (the policy is saved with the model, so prediction runs in it too);
    ``openvino``: with its OpenVINO model (``openvino/``), as training writes it, so that no
    ``busi-job predict`` of it converts the model first (else the caller's own predictor
    converts it, outside its timings). TensorFlow must be started."""
    import keras

    from busi.config.schema import ModelConfig
    from busi.files.rundir import RunDir
    from busi.model.folder import write_model_dir
    from busi.model.network import build_model

    keras.mixed_precision.set_global_policy(precision)
    model = build_model(ModelConfig(backbone=backbone, alpha=alpha, weights="none"), size, classes).model
    write_model_dir(RunDir(root), model, classes, size, "stretch", saved_model=False, backbone=backbone, alpha=alpha,
                    openvino=openvino)
    keras.mixed_precision.set_global_policy("float32")
    return root


def fmt(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"
