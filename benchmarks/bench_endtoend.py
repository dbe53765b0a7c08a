"""Issue #8 item 3: ``busi-job train`` + ``busi-job predict`` against a notebook-style
implementation on the same data, split, model, epochs and image size.

Notebook style, as the original Jupyter tutorial and most transfer-learning notebooks do it:
load every image into one numpy array (``keras.utils.load_img(target_size=...)``), build the
model, ``model.fit`` on the arrays for the head phase (backbone frozen), unfreeze, recompile,
``model.fit`` again, save, then ``model.predict`` one image at a time; TensorFlow's default
thread settings. Same architecture (``busi.model.network.build_model``), same train/val/test split
(read from the busi run's ``data/splits.csv``), same class weights, optimizer, learning rates,
batch size and epochs. Both use ``model.weights: none`` (no ImageNet file here).

busi: ``busi-job train`` (a real subprocess: data scan and de-duplication, feature cache for the
frozen phase, the custom loop, evaluation, plots, model.keras + SavedModel), then
``busi-job predict`` over the whole folder. Wall-clock times of whole processes on both sides.

Two recipes (``--recipe``):

* ``busi`` (default): job/busi.yaml's schedule and model settings (10 + 10 epochs, 224 px,
  batch 32, BatchNorm frozen, fine-tune conv5, lr 1e-3 then 1e-5) on 780 BUSI-sized synthetic
  PNGs (BUSI's count): the timing the issue asks about, about 20 minutes per precision here.
  With ``weights: none`` (no ImageNet file here) a frozen-BatchNorm random backbone learns
  little, so accuracy is near chance on both sides: this recipe is for time.
* ``demo``: scaled down so that a random backbone learns: 240 images at 128 px, 3 + 2 epochs,
  the demo's settings (BatchNorm trained, fine-tune all, lr 1e-3): accuracy of both sides.

Early stopping is off on both sides (patience above the epochs): the same epochs run.

    .venv/bin/python benchmarks/bench_endtoend.py [--recipe busi|demo] [--precision float32,mixed_bfloat16] [--quick]
        [--images N] [--size PX] [--head EPOCHS] [--finetune EPOCHS] [--backbone resnet50 [--alpha 1.0]]
        [--set KEY=VALUE ...]

``--images``, ``--size``, ``--head``, ``--finetune`` and the other recipe options override the
recipe's values; ``--backbone``/``--alpha`` change the network on both sides (default ResNet50,
the figures in docs/performance.md); ``--set KEY=VALUE`` (repeatable) is a change to busi's run
only, after the benchmark's own settings (e.g. ``train.quantize=none``: no INT8 model, which the
notebook never makes either). Smallest run (tests/test_benchmarks.py): ``--recipe demo --images 24
--size 32 --head 1 --finetune 0 --batch-size 8 --backbone mobilenet --alpha 0.25``
(a 0-epoch phase is skipped on both sides). Prints one
table per precision; not a test.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import common

BUSI_JOB = str(Path(sys.executable).parent / "busi-job")
RECIPES = {
    "busi": dict(images=780, size=224, head=10, finetune=10, unfreeze="conv5", batchnorm="frozen",
                 lr_head=1e-3, lr_finetune=1e-5, dropout=0.3, batch_size=32),
    "demo": dict(images=240, size=128, head=3, finetune=2, unfreeze="all", batchnorm="train",
                 lr_head=1e-3, lr_finetune=1e-3, dropout=0.2, batch_size=16),
}


def overrides(args: argparse.Namespace, folder: Path, out: Path, precision: str) -> list[str]:
    sets = {
        "data.source": str(folder), "data.image_size": args.size, "model.weights": "none",
        "model.backbone": args.backbone, "model.alpha": args.alpha,
        "model.batchnorm": args.batchnorm, "model.dropout": args.dropout,
        "train.batch_size": args.batch_size, "train.precision": precision,
        "train.head.epochs": args.head, "train.head.learning_rate": args.lr_head, "train.head.patience": 100,
        "train.finetune.epochs": args.finetune, "train.finetune.learning_rate": args.lr_finetune,
        "train.finetune.unfreeze": args.unfreeze, "train.finetune.patience": 100,
        "output.dir": str(out), "runtime.seed": args.seed,
    }
    return [a for k, v in sets.items() for a in ("--set", f"{k}={v}")] + [a for s in args.set for a in ("--set", s)]


def timed_run(cmd: list[str]) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:3])} ... failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, proc.stderr


# --------------------------------------------------------------------- notebook style


def notebook(args: argparse.Namespace) -> dict:
    """The notebook-style run, in this (fresh) process: TensorFlow's default threads."""
    t0 = time.perf_counter()
    import keras
    import numpy as np

    from busi.config.schema import ModelConfig
    from busi.data.pipeline import balanced_class_weights
    from busi.model.network import build_model, set_trainable

    t_import = time.perf_counter() - t0
    keras.utils.set_random_seed(args.seed)
    keras.mixed_precision.set_global_policy(args.precision)
    classes = ["normal", "benign", "malignant"]
    root = Path(args.folder)
    rows = list(csv.DictReader(open(args.splits)))

    def load(split: str) -> tuple[np.ndarray, np.ndarray, list[Path]]:
        sel = [r for r in rows if r["split"] == split]
        paths = [root / r["path"] for r in sel]
        x = np.stack([keras.utils.img_to_array(keras.utils.load_img(p, target_size=(args.size, args.size)))
                      for p in paths])
        return x, np.array([classes.index(r["label"]) for r in sel], np.int32), paths

    t = time.perf_counter()
    x_tr, y_tr, _ = load("train")
    x_val, y_val, _ = load("val")
    _, y_te, test_paths = load("test")
    t_load = time.perf_counter() - t

    model_cfg = ModelConfig(backbone=args.backbone, alpha=args.alpha, weights="none", batchnorm=args.batchnorm,
                            dropout=args.dropout)
    built = build_model(model_cfg, args.size, ("normal", "benign", "malignant"))
    model = built.model
    cw = balanced_class_weights(y_tr.tolist(), 3)
    class_weight = {i: float(w) for i, w in enumerate(cw)}
    t = time.perf_counter()
    set_trainable(built, "none", args.batchnorm)
    model.compile(keras.optimizers.Adam(args.lr_head), "sparse_categorical_crossentropy", metrics=["accuracy"])
    if args.head:
        model.fit(x_tr, y_tr, batch_size=args.batch_size, epochs=args.head, validation_data=(x_val, y_val),
                  class_weight=class_weight, verbose=0)
    set_trainable(built, args.unfreeze, args.batchnorm)
    model.compile(keras.optimizers.Adam(args.lr_finetune), "sparse_categorical_crossentropy", metrics=["accuracy"])
    if args.finetune:
        model.fit(x_tr, y_tr, batch_size=args.batch_size, epochs=args.finetune, validation_data=(x_val, y_val),
                  class_weight=class_weight, verbose=0)
    t_fit = time.perf_counter() - t
    out = Path(args.out)
    t = time.perf_counter()
    model.save(str(out / "notebook.keras"))
    t_save = time.perf_counter() - t

    def predict_one(p: Path) -> int:
        x = keras.utils.img_to_array(keras.utils.load_img(p, target_size=(args.size, args.size)))
        return int(np.argmax(model.predict(x[None], verbose=0)[0]))

    # test accuracy, the notebook way
    t = time.perf_counter()
    pred_te = [predict_one(p) for p in test_paths]
    t_test = time.perf_counter() - t
    accuracy = float(np.mean(np.array(pred_te) == y_te))
    t_train_total = time.perf_counter() - t0
    # prediction over the whole folder, one image at a time
    files = common.image_files(root)
    t = time.perf_counter()
    predict_one(files[0])
    first = time.perf_counter() - t
    t = time.perf_counter()
    for p in files[1:]:
        predict_one(p)
    t_pred = time.perf_counter() - t
    return {
        "import": t_import, "load": t_load, "fit": t_fit, "save": t_save, "test_predict": t_test,
        "train_total_in_process": t_train_total, "accuracy": accuracy, "n_test": len(test_paths),
        "predict_files": len(files) - 1, "predict_seconds": t_pred, "predict_first_call": first,
        "predict_img_s": (len(files) - 1) / t_pred,
    }


# --------------------------------------------------------------------------- parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", choices=["busi", "demo"], default="busi")
    ap.add_argument("--images", type=int, help="synthetic BUSI-sized PNGs (busi: 780, demo: 240)")
    ap.add_argument("--size", type=int, help="image side, px (busi: 224, demo: 128)")
    ap.add_argument("--head", type=int, help="head-phase epochs")
    ap.add_argument("--finetune", type=int, help="fine-tuning epochs")
    ap.add_argument("--unfreeze")
    ap.add_argument("--batchnorm")
    ap.add_argument("--lr-head", type=float)
    ap.add_argument("--lr-finetune", type=float)
    ap.add_argument("--dropout", type=float)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default="float32", help="comma-separated: one table each")
    common.add_model_options(ap)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a change to busi's run only, after the benchmark's settings (repeatable)")
    ap.add_argument("--quick", action="store_true", help="96 images, 2 + 1 epochs")
    ap.add_argument("--no-wait", action="store_true")
    ap.add_argument("--notebook-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--splits", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.notebook_worker:
        print(json.dumps(notebook(args)))
        return
    recipe = RECIPES[args.recipe]
    for k, v in recipe.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.quick:
        args.images, args.head, args.finetune = 96, 2, 1
    common.print_command()
    folder = common.busi_sized_folder(args.images, seed=2, name=f"endtoend-{args.images}")
    print(f"# data: {len(common.image_files(folder))} synthetic BUSI-sized PNGs in {folder}; {args.size} px, "
          f"batch {args.batch_size}, {args.head} + {args.finetune} epochs, {args.backbone} (alpha {args.alpha:g}) "
          f"weights none, batchnorm {args.batchnorm}, "
          f"fine-tune {args.unfreeze}, lr {args.lr_head} / {args.lr_finetune}, recipe {args.recipe}")
    for precision in args.precision.split(","):
        tmp = common.scratch("busi-bench-e2e-")
        common.wait_for_quiet(skip=args.no_wait)
        run = tmp / "run"
        train_wall, log = timed_run([BUSI_JOB, "train", "job/busi.yaml", *overrides(args, folder, run, precision)])
        manifest = json.loads((run / "manifest.json").read_text())
        metrics = json.loads((run / "metrics.json").read_text())
        pred_wall, plog = timed_run([BUSI_JOB, "predict", "--model", str(run), "--input", str(folder),
                                     "--output", str(tmp / "pred.csv")])
        m = re.search(r"([\d.]+) img/s", plog.strip().splitlines()[-1])
        busi_pred_rate = float(m.group(1)) if m else float("nan")
        n_files = len(common.image_files(folder))
        nb_cmd = [sys.executable, __file__, "--notebook-worker", "--folder", str(folder), "--splits",
                  str(run / "data" / "splits.csv"), "--out", str(tmp), "--precision", precision,
                  "--size", str(args.size), "--head", str(args.head), "--finetune", str(args.finetune),
                  "--unfreeze", args.unfreeze, "--batchnorm", args.batchnorm, "--lr-head", str(args.lr_head),
                  "--lr-finetune", str(args.lr_finetune), "--dropout", str(args.dropout),
                  "--batch-size", str(args.batch_size), "--seed", str(args.seed),
                  "--backbone", args.backbone, "--alpha", str(args.alpha)]
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                                                                "TF_NUM_INTEROP_THREADS")}
        t = time.perf_counter()
        proc = subprocess.run(nb_cmd, capture_output=True, text=True, env={**env, "TF_CPP_MIN_LOG_LEVEL": "2"})
        nb_wall = time.perf_counter() - t
        if proc.returncode != 0:
            sys.exit(proc.stderr[-3000:])
        nb = json.loads(proc.stdout.strip().splitlines()[-1])
        nb_train_wall = nb_wall - nb["predict_seconds"] - nb["predict_first_call"]  # process start to test accuracy
        sec = manifest["seconds"]
        print(f"\n## {precision} (busi precision {manifest.get('precision')}, threads "
              f"{manifest['cores']['intra_op_threads']}/{manifest['cores']['inter_op_threads']}; notebook: TF defaults)")
        print(f"{'':<10} {'train (process wall)':>22} {'test accuracy':>14} {'predict ' + str(n_files) + ' files':>20}")
        print(f"{'busi':<10} {train_wall:>20.1f} s {metrics['accuracy']:>14.3f} "
              f"{pred_wall:>9.1f} s wall, {busi_pred_rate:.1f} img/s")
        print(f"{'notebook':<10} {nb_train_wall:>20.1f} s {nb['accuracy']:>14.3f} "
              f"{nb['predict_seconds'] + nb['predict_first_call']:>9.1f} s loop, {nb['predict_img_s']:.1f} img/s")
        print(f"speedup   training end to end {nb_train_wall / train_wall:.2f}x; prediction {busi_pred_rate / nb['predict_img_s']:.2f}x "
              f"(images/s), {(nb['predict_seconds'] + nb['predict_first_call']) / pred_wall:.2f}x (busi process wall "
              f"incl. start-up vs the notebook's loop)")
        print(f"#   busi seconds: {json.dumps(sec)}; test split {metrics.get('split')} n="
              f"{sum(metrics['per_class'][c]['support'] for c in metrics['per_class'])}")
        print(f"#   notebook seconds: import {nb['import']:.1f}, load arrays {nb['load']:.1f}, fit {nb['fit']:.1f}, "
              f"save {nb['save']:.1f}, test predictions {nb['test_predict']:.1f} (n={nb['n_test']}); predict loop "
              f"{nb['predict_files']} images in {nb['predict_seconds']:.1f} s after a {nb['predict_first_call']:.2f} s first call")
        print(f"# load average now: {common.load1():.2f}", flush=True)


if __name__ == "__main__":
    main()
