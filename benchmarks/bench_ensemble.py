"""Issue #32 item 6: do the folds predicting together (and test-time flips) beat one fold model?

On the whole real BUSI: busi holds out a test split (15%, whole duplicate groups, stratified by
class, seeded: ``data.split`` as training makes it) that the cross-validation never sees, runs
``busi-job cv --folds K`` on the rest (the recipe of ``bench_accuracy.py``), then predicts the
held-out images with ``busi-job predict`` four ways: each fold's model alone, each with
``--tta flip``, the ensemble (``--model CV_DIR``: the mean of the folds' probabilities), and the
ensemble with ``--tta flip``. Prints macro and malignant-vs-rest ROC AUC, balanced accuracy, the
Brier score and ECE (lower is better for both) for each (a single fold: the mean over the K fold models), with 95% bootstrap intervals over
the held-out images, and the paired difference of each against a single fold (the same resample
for both sides, so the interval is of the difference itself).

    .venv/bin/python benchmarks/bench_ensemble.py --data /path/Dataset_BUSI_with_GT \\
        --config mobilenet_v2:../shared/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.tfslim.h5

A finished cross-validation is not run again. ``--folds``, ``--size``, ``--set KEY=VALUE`` and
``--resamples`` (bootstrap resamples, default 2000) as in ``bench_accuracy.py``. Smallest run
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
from pathlib import Path
from typing import Callable

import numpy as np

import bench_accuracy
import common

BIN = Path(sys.executable).parent
METRICS = ("macro_auc", "malignant_auc", "balanced_accuracy", "brier", "ece")


def hold_out(data: Path, work: Path, seed: int) -> tuple[Path, Path, int, int]:
    """Folders of hard links: ``work/cv`` (train and val of busi's split) and ``work/test`` (its test
    split), each image with its masks. Returns them and their image counts."""
    from busi.config.load import load_config
    from busi.data.prepare import prepare_data

    cfg = load_config([common.REPO / "job" / "busi.yaml"], [f"data.source={data}", f"output.dir={work / 'unused'}",
                                                            f"runtime.seed={seed}"])
    prepared = prepare_data(cfg.data, seed)
    counts = {"cv": 0, "test": 0}
    for sample, row in prepared.split("train") + prepared.split("val") + prepared.split("test"):
        side = "test" if row.split == "test" else "cv"
        counts[side] += 1
        for rel in (sample.path, *sample.masks):
            target = work / side / rel
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(prepared.root / rel, target)  # a hard link: the same file, read as a regular file
    return work / "cv", work / "test", counts["cv"], counts["test"]


def predict(model: Path, images: Path, out: Path, tta: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(true labels, probabilities, classes) of ``busi-job predict`` over ``images`` (class folders)."""
    if not out.is_file():
        cmd = [str(BIN / "busi-job"), "predict", "--model", str(model), "--input", str(images), "--output", str(out),
               "--engine", "openvino", *(["--tta", "flip"] if tta else [])]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=common.REPO,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    with out.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if not r["error"]]
    rows.sort(key=lambda r: r["path"])
    probs, classes = bench_accuracy.probabilities(rows)
    return np.array([classes.index(Path(r["path"]).parent.name) for r in rows]), probs, classes


def measures(classes: list[str]) -> dict[str, Callable[[np.ndarray, np.ndarray], float]]:
    from sklearn.metrics import balanced_accuracy_score

    from busi.evaluate.calibration import expected_calibration_error

    return {
        **bench_accuracy.auc_measures(classes),
        "balanced_accuracy": lambda y, p: float(balanced_accuracy_score(y, p.argmax(axis=1))),
        # the multi-class Brier score: a proper scoring rule (calibration and sharpness), unbiased
        # under the bootstrap, where the binned ECE's resamples run high (ties fill its bins)
        "brier": lambda y, p: float(np.mean(np.sum((p - np.eye(len(classes))[y]) ** 2, axis=1))),
        "ece": lambda y, p: float(expected_calibration_error(y, p)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="the whole BUSI (class folders, or its zip)")
    p.add_argument("--config", required=True, help="BACKBONE[@ALPHA]:WEIGHTS")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--resamples", type=int, default=None, help="bootstrap resamples of the intervals (default busi's 2000)")
    p.add_argument("--out", type=Path, default=Path("bench-ensemble"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a recipe change (repeatable)")
    p.add_argument("--no-wait", action="store_true", help="start at once, however busy the machine")
    args = p.parse_args()
    args.recipe = "auto"
    common.print_command()
    common.wait_for_quiet(skip=args.no_wait)
    from busi.evaluate.bootstrap import RESAMPLES

    args.resamples = args.resamples or RESAMPLES
    work = args.out.resolve()
    cv_data, test_data, n_cv, n_test = hold_out(args.data.resolve(), work / "data", args.seed)
    print(f"# held out: {n_test} images (busi's test split, whole duplicate groups); cross-validation on {n_cv}")
    name, alpha, weights = bench_accuracy.parse_config(args.config)
    args.data = cv_data
    cv_dir = work / "cv"
    bench_accuracy.run_cv(name, alpha, weights, args, cv_dir)
    preds = work / "predictions"
    preds.mkdir(exist_ok=True)
    variants: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"single fold": [], "single fold + flip": []}
    for i in range(args.folds):
        for tta, label in ((False, "single fold"), (True, "single fold + flip")):
            y, probs, classes = predict(cv_dir / f"fold-{i}", test_data, preds / f"fold-{i}{'-flip' * tta}.csv", tta)
            variants[label].append((y, probs))
    for tta, label in ((False, f"ensemble of {args.folds}"), (True, f"ensemble of {args.folds} + flip")):
        variants[label] = [predict(cv_dir, test_data, preds / f"ensemble{'-flip' * tta}.csv", tta)[:2]]
    y = variants["single fold"][0][0]
    assert all(np.array_equal(v[0], y) for vs in variants.values() for v in vs), "the variants saw other images"
    fns = measures(classes)

    def value(label: str, metric: str, index: np.ndarray) -> float:  # a single fold: the mean over the folds
        return float(np.mean([fns[metric](y[index], probs[index]) for _y, probs in variants[label]]))

    everything = np.arange(len(y))
    rng = np.random.default_rng(args.seed)
    resamples = [i for i in (rng.integers(0, len(y), len(y)) for _ in range(args.resamples))
                 if len(set(y[i])) == len(classes)]
    boot = {(label, metric): np.array([value(label, metric, i) for i in resamples])
            for label in variants for metric in METRICS}
    print(f"\n## {name} alpha {alpha:g}, weights {weights}: {n_test} held-out images, {args.folds} fold models, "
          f"{args.size} px; 95% intervals from {len(resamples)} bootstrap resamples of the held-out images")
    print(f"{'variant':22s}" + "".join(f"{m:>26s}" for m in METRICS))
    result: dict[str, dict[str, list[float]]] = {}
    for label in variants:
        cells, result[label] = [], {}
        for metric in METRICS:
            point, b = value(label, metric, everything), boot[(label, metric)]
            lo, hi = np.percentile(b, [2.5, 97.5])
            cells.append(f"{point:.3f} [{lo:.3f}, {hi:.3f}]")
            result[label][metric] = [point, float(lo), float(hi)]
        print(f"{label:22s}" + "".join(f"{c:>26s}" for c in cells))
    print("\npaired difference against a single fold (the same resamples; an interval that holds 0: no difference shown)")
    for label in list(variants)[1:]:
        cells = []
        for metric in METRICS:
            d = boot[(label, metric)] - boot[("single fold", metric)]
            point = value(label, metric, everything) - value("single fold", metric, everything)
            lo, hi = np.percentile(d, [2.5, 97.5])
            cells.append(f"{point:+.3f} [{lo:+.3f}, {hi:+.3f}]")
            result[label][f"{metric}_minus_single"] = [point, float(lo), float(hi)]
        print(f"{label:22s}" + "".join(f"{c:>26s}" for c in cells))
    (work / "result.json").write_text(json.dumps({"held_out": n_test, "cv_images": n_cv, **result}, indent=1))


if __name__ == "__main__":
    main()
