"""Issue #8 item 5: what it costs to start the job.

1. ``busi-job train`` from process start to the end of the first training step, measured from
   outside without changing busi: the run gets ``BUSI_FAIL_AT_STEP=0:2:kill`` (busi's test hook:
   SIGKILL itself just before global step 2), so the process lives exactly until step 1 is
   done. Log lines are time-stamped as they arrive, which splits the time into: Python and busi
   imports + config + data scan/de-duplication/split (``data:`` line), TensorFlow start
   (``runtime:``), model build (``phase head:``), the feature-cache pass over train + val
   (``feature cache (...)`` line) and the first step (tracing + one step). job/busi.yaml at 224 px
   (``weights: none``) on 96 BUSI-sized synthetic PNGs (the feature-cache pass grows with the
   data: ~1 s per 25 images here; everything else does not).
2. ``busi-job --help`` and ``busi-job config job/busi.yaml``: wall time (median of 5), and that
   neither imports TensorFlow (``python -X importtime``), against ``python -c 'import tensorflow'``.
3. ``busi-job predict`` of one image with a model folder as training writes it (224 px, ``openvino/``
   beside ``model.keras``): process wall, ``--engine openvino`` (no TensorFlow imported) against
   ``--engine tensorflow``, the two alternated, median of 5 each.

    .venv/bin/python benchmarks/bench_startup.py [--images 96] [--size 224] [--runs 5]
        [--backbone resnet50 [--alpha 1.0]]

``--runs``: the runs each median of sections 2 and 3 takes; ``--backbone``/``--alpha``: the
network of sections 1 and 3 (default ResNet50, the figures in docs/performance.md). Smallest run
(tests/test_benchmarks.py): ``--images 12 --size 32 --runs 1 --backbone mobilenet --alpha 0.25``.
Prints numbers; not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import common

BIN = Path(sys.executable).parent


def first_step(args: argparse.Namespace, folder: Path) -> None:
    out = common.scratch("busi-bench-startup-") / "run"
    cmd = [str(BIN / "busi-job"), "train", "job/busi.yaml", "--set", f"data.source={folder}",
           "--set", "model.weights=none", "--set", f"data.image_size={args.size}",
           "--set", f"output.dir={out}", "--set", f"train.precision={args.precision}",
           "--set", f"model.backbone={args.backbone}", "--set", f"model.alpha={args.alpha}"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "BUSI_FAIL_AT_STEP": "0:2:kill"}
    marks: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=common.REPO)

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            marks.append((time.perf_counter() - t0, line.rstrip()))

    th = threading.Thread(target=read)
    th.start()
    proc.wait()
    total = time.perf_counter() - t0
    th.join()
    if proc.returncode != -9:
        sys.exit(f"expected the run to kill itself at step 2 (SIGKILL), got exit {proc.returncode}:\n"
                 + "\n".join(m[1] for m in marks[-20:]))

    def at(prefix: str) -> float | None:
        for t, line in marks:
            if f" INFO {prefix}" in line:
                return t
        return None

    print(f"\n# busi-job train job/busi.yaml --set model.weights=none ... ({args.size} px {args.backbone}, {args.precision}), "
          f"killed by BUSI_FAIL_AT_STEP=0:2:kill right after step 1")
    steps = [("data: (imports, config, scan, de-duplication, split)", at("data:")),
             ("runtime: (TensorFlow started)", at("runtime:")),
             ("phase head: (model built, optimizer built)", at("phase head:")),
             ("feature cache: (backbone pass over train + val)", at("feature cache ("))]
    prev = 0.0
    for name, t in steps:
        if t is None:
            print(f"{name:<55} (no log line)")
            continue
        print(f"{name:<55} at {t:6.1f} s  (+{t - prev:5.1f} s)")
        prev = t
    print(f"{'first training step done (tracing + 1 step)':<55} at {total:6.1f} s  (+{total - prev:5.1f} s)")
    fc = [line for _, line in marks if " INFO feature cache (" in line]
    if fc:
        print(f"#   {fc[0].split(' INFO ')[-1]}")
    data = [line for _, line in marks if " INFO data:" in line]
    if data:
        print(f"#   {data[0].split(' INFO ')[-1]}")


def wall(cmd: list[str], n: int = 5) -> tuple[float, list[float]]:
    runs = []
    for _ in range(n):
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=common.REPO, check=False)
        runs.append(time.perf_counter() - t)
        if proc.returncode != 0:  # a failing command's time says nothing
            sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return statistics.median(runs), runs


def imports_tensorflow(args_: list[str]) -> bool:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "busi", *args_], capture_output=True,
                          text=True, cwd=common.REPO)
    if proc.returncode != 0:
        sys.exit(f"busi-job {' '.join(args_)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    names = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    return any(n.split(".")[0] in ("tensorflow", "keras") for n in names)


def predict_start(size: int, image: Path, repeats: int = 5, backbone: str = "resnet50", alpha: float = 1.0) -> None:
    """Section 3: one image predicted, from process start to exit, on each engine (alternated)."""
    from busi.config.schema import ModelConfig
    from busi.files.rundir import RunDir
    from busi.model.folder import write_model_dir
    from busi.model.network import build_model
    from busi.runtime.cores import detect_cores
    from busi.runtime.startup import start_tensorflow

    start_tensorflow(detect_cores("auto"), seed=0)  # this process builds the model folder (quietly)
    folder = common.scratch("busi-bench-predict-start-")
    built = build_model(ModelConfig(backbone=backbone, alpha=alpha, weights="none"), size, ("normal", "benign", "malignant"))
    write_model_dir(RunDir(folder / "run"), built.model, ("normal", "benign", "malignant"), size, "stretch",
                    backbone=backbone, alpha=alpha)
    runs: dict[str, list[float]] = {"openvino": [], "tensorflow": []}
    for i in range(repeats):
        for engine in ("openvino", "tensorflow") if i % 2 == 0 else ("tensorflow", "openvino"):
            out = folder / f"{engine}-{i}.csv"
            t = time.perf_counter()
            proc = subprocess.run([str(BIN / "busi-job"), "predict", "--model", str(folder / "run"), "--input",
                                   str(image), "--output", str(out), "--engine", engine], capture_output=True, text=True,
                                  cwd=common.REPO)
            runs[engine].append(time.perf_counter() - t)
            if proc.returncode != 0:
                sys.exit(f"busi-job predict --engine {engine} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    print(f"\n# busi-job predict, one {size}-px image, {backbone} model folder with openvino/ (process wall, "
          f"median of {repeats}, alternated)")
    for engine, label in (("openvino", "--engine openvino"), ("tensorflow", "--engine tensorflow")):
        print(f"{label:<32} {statistics.median(runs[engine]):6.3f} s  {[round(r, 3) for r in runs[engine]]}")
    print(f"ratio tensorflow / openvino        {statistics.median(runs['tensorflow']) / statistics.median(runs['openvino']):.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=96, help="BUSI-sized synthetic PNGs of the training run (default 96)")
    ap.add_argument("--size", type=int, default=224, help="image side, px (default 224)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--runs", type=int, default=5, help="runs per median of sections 2 and 3 (default 5)")
    common.add_model_options(ap)
    ap.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    args = ap.parse_args()
    common.print_command()
    folder = common.busi_sized_folder(args.images, seed=4, name=f"startup-{args.images}")
    common.wait_for_quiet(skip=args.no_wait)
    first_step(args, folder)

    print(f"\n# command start-up (median of {args.runs} runs, wall)")
    for label, cmd, check in (
        ("busi-job --help", [str(BIN / "busi-job"), "--help"], ["--help"]),
        ("busi-job config job/busi.yaml", [str(BIN / "busi-job"), "config", "job/busi.yaml"], ["config", "job/busi.yaml"]),
        ("python -c 'import tensorflow'", [sys.executable, "-c", "import tensorflow"], None),
    ):
        med, runs = wall(cmd, args.runs)
        tf = "" if check is None else ("  imports TensorFlow: " + ("YES" if imports_tensorflow(check) else "no"))
        print(f"{label:<32} {med:6.3f} s  {[round(r, 3) for r in runs]}{tf}")
    predict_start(args.size, next(p for p in sorted(folder.rglob("*.png")) if "_mask" not in p.name), args.runs,
                  args.backbone, args.alpha)
    print(f"# load average at end: {common.load1():.2f}")


if __name__ == "__main__":
    main()
