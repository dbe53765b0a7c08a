"""Issue #32 item 5: how good a classifier busi makes, on the whole real BUSI.

For each configuration (a backbone and its weights: a real ImageNet file, or ``none``), runs
``busi-job cv job/busi.yaml --folds K`` (group-aware stratified folds: near-duplicate groups
and label conflicts as training handles them) at ``--size`` px, then ``busi-job cv-report``, and
prints per configuration, pooled out of fold (each image predicted once, by the fold that never
trained on it) with 95% bootstrap intervals and as mean +- sd across folds: macro ROC AUC,
malignant-vs-rest ROC AUC, balanced accuracy and ECE; the minutes each fold took (its manifest's
``seconds.total``) on this machine; and prediction img/s (``busi-job predict`` of fold 0's
model over every image, OpenVINO, process wall time including start-up).

    .venv/bin/python benchmarks/bench_accuracy.py --data /path/Dataset_BUSI_with_GT \\
        --config mobilenet_v2:../shared/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.tfslim.h5 \\
        --config mobilenet_v2:none [--folds 5] [--size 224] [--out bench-accuracy]

``--compare CV_A CV_B`` trains nothing: it pools the test predictions of the folds both output
folders completed and prints each one's ROC AUCs and their paired difference with 95% bootstrap
intervals (a from-scratch baseline costs 20+ minutes a fold here, so it may have run on some folds
only). ``--config BACKBONE[@ALPHA]:WEIGHTS`` (WEIGHTS: a file, ``imagenet`` or ``none``); ``--set KEY=VALUE``
(repeatable) changes the recipe for every configuration, ``--tag`` names the variant in the output; the job's
recipe for pretrained weights is job/busi.yaml's (head on the frozen backbone, then its top
stage); ``none`` trains every layer from the start (BatchNorm trained, ``unfreeze: all``), as
job/demo.yaml does (``--recipe pretrained``: the same job as the pretrained weights, only the
weights differ). A finished fold is not run again (``busi-job cv`` resumes), so an
interrupted benchmark continues. ``--resamples N``: the bootstrap resamples of the script's own
intervals (``--compare``'s and the ECE's; default 2000, busi's). Smallest run
(tests/test_benchmarks.py), on a synthetic dataset (``busi-job synth DIR --per-class 8 --size 32``):
``--data DIR --config mobilenet@0.25:none --folds 2 --size 32 --batch-size 8
--set train.head.epochs=1 --set train.finetune.epochs=1 --resamples 200``. Prints numbers; not a
test. Keep the data out of the repository.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import common

BIN = Path(sys.executable).parent
MALIGNANT = "malignant"

# The recipe of each kind of start, as --set overrides of job/busi.yaml: pretrained weights take the
# job file as it is (its defaults are the recipe this benchmark chose)
PRETRAINED: tuple[str, ...] = ()
FROM_SCRATCH = ("train.head.epochs=1", "train.finetune.epochs=20", "train.finetune.learning_rate=1e-3",
                "train.finetune.unfreeze=all", "train.finetune.patience=6", "model.batchnorm=train")


def recipe(weights: str, choice: str) -> tuple[str, ...]:
    """The recipe's overrides: ``auto`` trains from scratch for ``none``, else the pretrained recipe."""
    if choice == "scratch" or (choice == "auto" and weights == "none"):
        return FROM_SCRATCH
    return PRETRAINED


def parse_config(text: str) -> tuple[str, float, str]:
    head, _, weights = text.partition(":")
    name, _, alpha = head.partition("@")
    if not weights:
        raise SystemExit(f"--config {text}: expected BACKBONE[@ALPHA]:WEIGHTS")
    return name, float(alpha or 1.0), weights


def run_cv(name: str, alpha: float, weights: str, args: argparse.Namespace, out: Path) -> None:
    sets = [f"data.source={args.data}", f"output.dir={out}", f"data.image_size={args.size}",
            f"model.backbone={name}", f"model.alpha={alpha}", f"model.weights={weights}",
            f"train.batch_size={args.batch_size}", "train.quantize=none", "train.gradcam_masks=false",
            f"runtime.seed={args.seed}", *recipe(weights, args.recipe), *args.set]
    cmd = [str(BIN / "busi-job"), "cv", "job/busi.yaml", "--folds", str(args.folds),
           *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = out.parent / f"{out.name}.log"
    with log.open("a") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=common.REPO)
    if proc.returncode != 0:
        raise SystemExit(f"busi-job cv failed ({proc.returncode}); see {log}")
    subprocess.run([str(BIN / "busi-job"), "cv-report", str(out)], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env=env, cwd=common.REPO)


def probabilities(rows: list[dict[str, str]]) -> tuple[np.ndarray, list[str]]:
    """(probabilities, classes) of prediction CSV rows: the ``prob_<class>`` columns, in their order."""
    classes = [k[len("prob_"):] for k in rows[0] if k.startswith("prob_")]
    return np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows]), classes


def auc_measures(classes: list[str]) -> dict[str, Any]:
    """Macro (one vs rest, over ``classes``) and malignant-vs-rest ROC AUC of (labels, probabilities)."""
    from sklearn.metrics import roc_auc_score

    m = classes.index(MALIGNANT)
    return {"macro_auc": lambda y, p: float(np.mean([roc_auc_score(y == k, p[:, k]) for k in range(len(classes))])),
            "malignant_auc": lambda y, p: float(roc_auc_score(y == m, p[:, m]))}


def oof(out: Path) -> tuple[np.ndarray, np.ndarray, list[str], list[int]]:
    with (out / "oof.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    probs, classes = probabilities(rows)
    y = np.array([classes.index(r["true_label"]) for r in rows])
    return y, probs, classes, [int(r["fold"]) for r in rows]


def ece_interval(y: np.ndarray, probs: np.ndarray, seed: int, resamples: int) -> list[float]:
    from busi.evaluate.calibration import expected_calibration_error

    rng = np.random.default_rng(seed)
    values = [expected_calibration_error(y[i], probs[i]) for i in rng.integers(0, len(y), (resamples, len(y)))]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def summarise(out: Path, seed: int, resamples: int) -> dict[str, Any]:
    from busi.evaluate.calibration import expected_calibration_error

    report = json.loads((out / "cv-metrics.json").read_text())
    pooled, folds = report["pooled_out_of_fold"], report["across_folds"]
    y, probs, classes, fold_of = oof(out)
    k = report["folds"]
    fold_ece = [expected_calibration_error(y[np.array(fold_of) == i], probs[np.array(fold_of) == i]) for i in range(k)]
    minutes = []
    for i in range(k):
        manifest = json.loads((out / f"fold-{i}" / "manifest.json").read_text())
        minutes.append(manifest["seconds"]["total"] / 60)
    return {
        "images": report["images"], "folds": k,
        "macro_auc": (pooled["roc_auc_macro"], pooled["ci95"]["roc_auc_macro"], folds["roc_auc_macro"]),
        "malignant_auc": (pooled["per_class"][MALIGNANT]["roc_auc"], pooled["ci95"]["per_class"][MALIGNANT]["roc_auc"],
                          folds["per_class"][MALIGNANT]["roc_auc"]),
        "balanced_accuracy": (pooled["balanced_accuracy"], pooled["ci95"]["balanced_accuracy"],
                              folds["balanced_accuracy"]),
        "ece": (pooled["calibration"]["ece"], ece_interval(y, probs, seed, resamples),
                {"mean": float(np.mean(fold_ece)), "sd": float(np.std(fold_ece, ddof=1))}),
        "minutes_per_fold": minutes,
    }


def predict_rate(out: Path, data: Path) -> float:
    """Images per second of ``busi-job predict`` (fold 0's model, OpenVINO) over every image,
    process wall time from start to exit."""
    folder = common.scratch("busi-bench-accuracy-")
    csv_out = folder / "p.csv"
    images = [p for p in Path(data).rglob("*.png") if "_mask" not in p.name]
    (folder / "images.txt").write_text("".join(f"{p}\n" for p in images))
    t = time.perf_counter()
    subprocess.run([str(BIN / "busi-job"), "predict", "--model", str(out / "fold-0"), "--input",
                    f"@{folder / 'images.txt'}",
                    "--output", str(csv_out), "--engine", "openvino"], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, cwd=common.REPO)
    return len(images) / (time.perf_counter() - t)


def fold_predictions(out: Path, folds: list[int]) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """(paths, labels, probabilities, classes) of ``folds``' test splits pooled, in path order."""
    rows: list[dict[str, str]] = []
    for i in folds:
        with (out / f"fold-{i}" / "predictions" / "test.csv").open(newline="") as fh:
            rows += list(csv.DictReader(fh))
    rows.sort(key=lambda r: r["path"])
    probs, classes = probabilities(rows)
    return [r["path"] for r in rows], np.array([classes.index(r["true_label"]) for r in rows]), probs, classes


def compare(a: Path, b: Path, seed: int, resamples: int) -> None:
    """Two configurations on the folds both completed (the same test images, each predicted by the
    fold that never trained on it): macro and malignant-vs-rest ROC AUC of each with 95% bootstrap
    intervals, and of their paired difference (the same resamples for both)."""
    def completed(out: Path, i: int) -> bool:
        manifest = out / f"fold-{i}" / "manifest.json"
        return manifest.is_file() and json.loads(manifest.read_text()).get("status") == "completed"

    done = [i for i in range(64) if completed(a, i) and completed(b, i)]
    paths, y, pa, classes = fold_predictions(a, done)
    paths_b, y_b, pb, _ = fold_predictions(b, done)
    assert paths == paths_b and np.array_equal(y, y_b), "the two ran other folds"
    fns = auc_measures(classes)
    rng = np.random.default_rng(seed)
    samples = [i for i in (rng.integers(0, len(y), len(y)) for _ in range(resamples)) if len(set(y[i])) == len(classes)]
    print(f"\n## {a.name} against {b.name}: folds {', '.join(map(str, done))} ({len(y)} images, pooled out of fold)")
    for name, fn in fns.items():
        boot = np.array([(fn(y[i], pa[i]), fn(y[i], pb[i])) for i in samples])
        cells = [f"{fn(y, p):.3f} [{lo:.3f}, {hi:.3f}]" for p, (lo, hi) in
                 ((pa, np.percentile(boot[:, 0], [2.5, 97.5])), (pb, np.percentile(boot[:, 1], [2.5, 97.5])))]
        lo, hi = np.percentile(boot[:, 0] - boot[:, 1], [2.5, 97.5])
        print(f"{name:14s} {cells[0]}  against  {cells[1]}; difference {fn(y, pa) - fn(y, pb):+.3f} "
              f"[{lo:+.3f}, {hi:+.3f}]")


def fmt_row(value: tuple[float, Any, dict[str, Any]]) -> str:
    point, ci, spread = value
    interval = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "[n/a]"
    return f"{point:.3f} {interval}  {spread['mean']:.3f} +- {spread['sd']:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="the whole BUSI (class folders, or its zip)")
    p.add_argument("--config", action="append", default=[], help="BACKBONE[@ALPHA]:WEIGHTS, repeatable")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("CV_A", "CV_B"), help="no training: two configurations' "
                   "output folders on the folds both completed (a costly baseline run on some folds only)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--resamples", type=int, default=None, help="bootstrap resamples of this script's own intervals "
                   "(--compare's, the ECE's; default busi's 2000; cv-report's intervals keep 2000)")
    p.add_argument("--out", type=Path, default=Path("bench-accuracy"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a recipe change (repeatable)")
    p.add_argument("--recipe", choices=("auto", "pretrained", "scratch"), default="auto",
                   help="auto: from scratch (every layer) for weights none, else head then top (default)")
    p.add_argument("--no-wait", action="store_true", help="start at once, however busy the machine (the minutes "
                   "per fold then say less)")
    p.add_argument("--tag", default="", help="a name for the recipe variant (its output folder's suffix)")
    args = p.parse_args()
    common.print_command()
    if args.resamples is None:
        from busi.evaluate.bootstrap import RESAMPLES

        args.resamples = RESAMPLES
    if args.compare:
        compare(*args.compare, seed=args.seed, resamples=args.resamples)
        return
    if args.data is None or not args.config:
        p.error("--data and --config are required (or --compare)")
    common.wait_for_quiet(skip=args.no_wait)
    import platform

    from busi.runtime.cpu import cpu_flags

    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor())
    print(f"# CPU: {model}, {os.cpu_count()} cores; bf16: {bool(cpu_flags() & {'avx512_bf16', 'amx_bf16'})}")
    args.out.mkdir(parents=True, exist_ok=True)
    for text in args.config:
        name, alpha, weights = parse_config(text)
        label = f"{name}@{alpha:g}-{'none' if weights == 'none' else 'imagenet'}" + (f"-{args.tag}" if args.tag else "")
        label += "-scratch" if recipe(weights, args.recipe) is FROM_SCRATCH else ""
        out = (args.out / label).resolve()
        t = time.perf_counter()
        run_cv(name, alpha, weights, args, out)
        s = summarise(out, args.seed, args.resamples)
        rate = predict_rate(out, args.data)
        print(f"\n## {name} alpha {alpha:g}, weights {weights} ({s['images']} images, {s['folds']} folds, "
              f"{args.size} px; {(time.perf_counter() - t) / 60:.1f} min in all)"
              + (f"; recipe changes: {' '.join(args.set)}" if args.set else ""))
        print("metric                 pooled out of fold [95% CI]   across folds mean +- sd")
        for key in ("macro_auc", "malignant_auc", "balanced_accuracy", "ece"):
            print(f"{key:22s} {fmt_row(s[key])}")
        m = s["minutes_per_fold"]
        print(f"minutes per fold       {np.mean(m):.1f} ({', '.join(f'{x:.1f}' for x in m)})")
        print(f"predict img/s          {rate:.1f} (busi-job predict, OpenVINO, {args.size} px, process wall)", flush=True)
        (args.out / f"{label}.json").write_text(json.dumps({**s, "predict_images_per_second": rate}, indent=1))


if __name__ == "__main__":
    main()
