"""Group-aware, stratified K-fold cross-validation: ``busi-job cv`` and ``busi-job cv-report``.

One split of BUSI tests on ~113 images; K-fold predicts every image once, by a model whose
training never saw it or any of its duplicates. ``assign_folds`` uses scikit-learn's
``StratifiedGroupKFold`` (seeded) over the duplicate groups of ``data.dedupe``: a group is never
in two folds; label-conflict groups are dropped or kept as training drops or keeps them
(``data.conflicts``). The assignment is written once into ``OUT/folds.csv``
(``path,label,group,fold``) and reused by every task, so array tasks on different nodes agree.

Fold I is a complete training run in ``OUT/fold-I/`` (the usual run directory, so signals,
walltime budget and resume work per fold): its test split is fold I; its validation split is
carved group-aware and stratified from the other folds (``data.split.val`` of their images);
the rest trains. The fold's split is handed to training as ``data.splits``
(``OUT/splits/fold-I.csv``). Without ``--fold`` the folds run in turn and completed ones are
skipped, so a requeued job continues where it stopped. ``cv-report`` gathers the folds.
"""

from __future__ import annotations

import csv
import dataclasses
from collections import Counter
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from busi.artifacts import RUN_FILES, RunDir, atomic_write_text, atomic_write_with, csv_text, json_text, text_of
from busi.config import JobConfig
from busi.data.split import SPLITS_COLUMNS, SplitRow
from busi.errors import ConfigError, DataError
from busi.safeio import read_regular_file

log = logging.getLogger("busi")

FOLDS_FILE = "folds.csv"
FOLDS_COLUMNS = ("path", "label", "group", "fold")
OOF_FILE = "oof.csv"
REPORT_FILE = "cv-metrics.json"
LOCK_FILE = ".busi-cv.lock"
MAX_FOLDS = 20


@dataclass(frozen=True)
class FoldRow:
    path: str
    label: str
    group: str
    fold: int


def fold_dir(root: Path, fold: int) -> Path:
    return root / f"fold-{fold}"


def splits_file(root: Path, fold: int) -> Path:
    return root / "splits" / f"fold-{fold}.csv"


def assign_folds(rows: Sequence[SplitRow], k: int, seed: int) -> list[FoldRow]:
    """Each used image's fold: stratified by label, whole duplicate groups per fold (seeded)."""
    from sklearn.model_selection import StratifiedGroupKFold

    if not 2 <= k <= MAX_FOLDS:
        raise ConfigError(f"--folds: {k}; give 2 to {MAX_FOLDS}")
    groups = {r.group for r in rows}
    if len(groups) < k:
        raise DataError(f"cv: {len(groups)} duplicate group(s) cannot fill {k} folds; use fewer folds")
    labels = np.array([r.label for r in rows])
    smallest = min(Counter(labels.tolist()).values())
    if smallest < k:
        raise DataError(f"cv: the smallest class has {smallest} image(s), too few for {k} folds (each fold tests "
                        f"every class); use at most {smallest} folds")
    fold = np.zeros(len(rows), np.int64)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for i, (_, test) in enumerate(splitter.split(np.zeros(len(rows)), labels, [r.group for r in rows])):
        fold[test] = i
    return [FoldRow(r.path, r.label, r.group, int(f)) for r, f in zip(rows, fold)]


def fold_splits(folds: Sequence[FoldRow], fold: int, val_fraction: float, seed: int) -> list[SplitRow]:
    """Fold ``fold``'s train/val/test rows: test is the fold; val is carved group-aware and
    stratified from the others (``val_fraction`` of their images; none at 0)."""
    from sklearn.model_selection import StratifiedGroupKFold

    rest = [r for r in folds if r.fold != fold]
    val_groups: set[str] = set()
    if val_fraction > 0 and rest:
        # one part of round(1 / val_fraction) stratified group parts; fewer parts where a class is
        # too small for that many (each part holds every class)
        smallest = min(Counter(r.label for r in rest).values())
        parts = min(max(2, round(1 / val_fraction)), smallest)
        if parts >= 2 and len({r.group for r in rest}) >= parts:
            splitter = StratifiedGroupKFold(n_splits=parts, shuffle=True, random_state=seed + 1 + fold)
            _, val = next(splitter.split(np.zeros(len(rest)), [r.label for r in rest], [r.group for r in rest]))
            val_groups = {rest[i].group for i in val}
    out = []
    for r in folds:
        split = "test" if r.fold == fold else "val" if r.group in val_groups else "train"
        out.append(SplitRow(r.path, r.label, r.group, split))
    return out


def folds_text(rows: Sequence[FoldRow]) -> str:
    return csv_text(FOLDS_COLUMNS, ([r.path, r.label, r.group, r.fold] for r in rows))


def read_folds(path: Path) -> list[FoldRow]:
    try:
        reader = csv.DictReader(io.StringIO(text_of(read_regular_file(path)), newline=""))
        if tuple(reader.fieldnames or ()) != FOLDS_COLUMNS:
            raise ValueError(f"columns {reader.fieldnames}, expected {','.join(FOLDS_COLUMNS)}")
        return [FoldRow(r["path"], r["label"], r["group"], int(r["fold"])) for r in reader]
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run `busi-job cv JOB.yaml --folds K` first") from None
    except (OSError, ValueError, KeyError, TypeError, csv.Error) as e:
        raise DataError(f"{path}: not a busi folds file: {e}; remove it to assign the folds again") from None


def prepare_folds(cfg: JobConfig, k: int) -> list[FoldRow]:
    """``OUT/folds.csv``: read where an earlier task wrote it (checked against the data and K),
    else assigned now and written, under a lock so that concurrent array tasks write it once."""
    from busi.data.prepare import prepare_data
    from busi.locks import exclusive_lock

    root = Path(cfg.output.dir)
    root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(root / LOCK_FILE, f"cv folder {root}", wait=True,
                        on_wait=lambda who: log.info("cv: waiting for %s to write %s", who, FOLDS_FILE)):
        data = dataclasses.replace(cfg.data, split=dataclasses.replace(cfg.data.split, train=1.0, val=0.0, test=0.0),
                                   splits=None)
        prepared = prepare_data(data, cfg.runtime.seed, exclude=[root])
        rows = list(prepared.rows)
        path = root / FOLDS_FILE
        if path.exists():
            folds = read_folds(path)
            if {(r.path, r.label) for r in folds} != {(r.path, r.label) for r in rows}:
                raise DataError(f"{path}: assigned for other data than {cfg.data.source} holds now (images added, "
                                "removed or relabelled); use a new output.dir, or remove folds.csv and the fold-* "
                                "folders to start the cross-validation again")
            if len({r.fold for r in folds}) != k:
                raise ConfigError(f"--folds: {k}, but {path} holds {len({r.fold for r in folds})} folds; give "
                                  "that number or use a new output.dir")
            return folds
        folds = assign_folds(rows, k, cfg.runtime.seed)
        for i in range(k):
            val = cfg.data.split.val / max(cfg.data.split.train + cfg.data.split.val, 1e-9)
            text = csv_text(SPLITS_COLUMNS, ([r.path, r.label, r.group, r.split]
                                             for r in fold_splits(folds, i, val, cfg.runtime.seed)))
            splits_file(root, i).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(splits_file(root, i), text)
        atomic_write_text(path, folds_text(folds))  # last: its presence says every fold's split is there
        sizes = [sum(r.fold == i for r in folds) for i in range(k)]
        log.info("cv: %d images in %d groups over %d folds (%s images) -> %s", len(folds), len({r.group for r in folds}),
                 k, ", ".join(map(str, sizes)), path)
        return folds


def fold_config(cfg: JobConfig, fold: int) -> JobConfig:
    root = Path(cfg.output.dir)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, splits=str(splits_file(root, fold))),
                               output=dataclasses.replace(cfg.output, dir=str(fold_dir(root, fold))))


def fold_status(root: Path, fold: int) -> str:
    """The fold run's manifest status (``missing`` where it has not started)."""
    manifest = fold_dir(root, fold) / RUN_FILES["manifest"]
    if not manifest.exists():
        return "missing"
    try:
        return str((RunDir(manifest.parent).read_manifest() or {}).get("status", "unknown"))
    except ConfigError:
        return "unreadable"


def array_fold(env: dict[str, str]) -> int | None:
    """The fold of a Slurm array task (``SLURM_ARRAY_TASK_ID``), or None outside an array."""
    value = env.get("SLURM_ARRAY_TASK_ID")
    if value is None or value == "":
        return None
    if not value.isdigit():
        raise ConfigError(f"SLURM_ARRAY_TASK_ID={value!r}: expected a fold number 0..K-1 (sbatch --array=0-K-1)")
    return int(value)


def run_cv(cfg: JobConfig, k: int, fold: int | None, argv: list[str] | None = None) -> list[int]:
    """Run fold ``fold``, or every fold not yet completed in turn. Returns the folds run."""
    from busi.job import run_training

    folds = prepare_folds(cfg, k)
    root = Path(cfg.output.dir)
    if fold is not None and not 0 <= fold < k:
        raise ConfigError(f"--fold: {fold}; give 0 to {k - 1}")
    todo = [fold] if fold is not None else list(range(k))
    ran = []
    for i in todo:
        status = fold_status(root, i)
        if status == "completed":
            log.info("cv: fold %d of %d already completed (%s); skipped", i, k, fold_dir(root, i))
            continue
        n_test = sum(r.fold == i for r in folds)
        log.info("cv: fold %d of %d (%d test images) -> %s", i, k, n_test, fold_dir(root, i))
        run_training(fold_config(cfg, i), restart=False, argv=argv)
        ran.append(i)
    return ran


# ------------------------------------------------------------------ the report


def _fold_results(root: Path, k: int) -> list[tuple[dict[str, Any], list[dict[str, str]]]]:
    missing = [i for i in range(k) if fold_status(root, i) != "completed"]
    if missing:
        raise DataError(f"{root}: fold(s) {', '.join(map(str, missing))} of {k} not completed "
                        f"({', '.join(f'{i}: {fold_status(root, i)}' for i in missing)}); run `busi-job cv JOB.yaml "
                        f"--folds {k} --fold I` for each, then the report again")
    out = []
    for i in range(k):
        run = fold_dir(root, i)
        metrics = RunDir(run).read_json("metrics")
        # the rule the CSV was written with: non-UTF-8 names keep their bytes
        text = text_of(read_regular_file(run / RUN_FILES["test_predictions"]))
        out.append((metrics, list(csv.DictReader(io.StringIO(text, newline="")))))
    return out


def across_folds(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sd and the 95% t-interval of the mean of one metric over the folds (clipped to the
    metrics' range, 0-1: with few folds the t-interval can overrun it)."""
    from scipy.stats import t

    v = np.array([x for x in values if x is not None], np.float64)
    if len(v) == 0:
        return {"mean": None, "sd": None, "ci95": None, "folds": 0}
    mean = float(v.mean())
    if len(v) == 1:
        return {"mean": mean, "sd": None, "ci95": None, "folds": 1}
    sd = float(v.std(ddof=1))
    half = float(t.ppf(0.975, len(v) - 1) * sd / math.sqrt(len(v)))
    return {"mean": round(mean, 6), "sd": round(sd, 6),
            "ci95": [round(max(0.0, mean - half), 6), round(min(1.0, mean + half), 6)],
            "folds": int(len(v)), "values": [round(float(x), 6) for x in v]}


def cv_report(root: Path, seed: int = 0) -> dict[str, Any]:
    """Gather the folds of ``root``: per-metric mean, sd and 95% interval across folds; the
    out-of-fold predictions (``oof.csv``) and the metrics and plots pooled over them."""
    from busi.bootstrap import bootstrap_intervals
    from busi.evaluate import compute_metrics, plot_calibration, plot_confusion, plot_roc
    from busi.screening import screening_metrics

    folds = read_folds(root / FOLDS_FILE)
    k = len({r.fold for r in folds})
    results = _fold_results(root, k)
    classes = tuple(results[0][0]["classes"])
    headline = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro")
    per_metric: dict[str, Any] = {m: across_folds([r[0].get(m) for r in results]) for m in headline}
    per_metric["per_class"] = {
        c: {m: across_folds([r[0]["per_class"][c][m] for r in results]) for m in ("precision", "recall", "f1", "roc_auc")}
        for c in classes
    }
    oof: list[list[Any]] = []
    fold_of = {r.path: r.fold for r in folds}
    seen: dict[str, int] = {}
    for i, (_, rows) in enumerate(results):
        for row in rows:
            if fold_of.get(row["path"]) != i:
                raise DataError(f"{fold_dir(root, i)}: predicts {row['path']!r}, which is not in fold {i} of "
                                f"{root / FOLDS_FILE}; the fold was trained on another assignment")
            seen[row["path"]] = seen.get(row["path"], 0) + 1
            oof.append([row["path"], row["true_label"], row["label"], *[row[f"prob_{c}"] for c in classes], i])
    twice = [p for p, n in seen.items() if n > 1]
    absent = [r.path for r in folds if r.path not in seen]
    if twice or absent:
        raise DataError(f"{root}: out-of-fold predictions cover {len(seen)} of {len(folds)} images "
                        f"({len(absent)} missing, {len(twice)} twice, e.g. {(absent or twice)[0]!r})")
    y = [classes.index(r[1]) for r in oof]
    probs = np.array([[float(v) for v in r[3 : 3 + len(classes)]] for r in oof])
    pooled = compute_metrics(y, probs, classes)
    pooled["ci95"] = bootstrap_intervals(y, probs, classes, seed=seed)
    pooled["malignant_vs_rest"] = screening_metrics(y, probs, classes, None, seed)
    report = {"folds": k, "images": len(oof), "across_folds": per_metric, "pooled_out_of_fold": pooled,
              "fold_sizes": [sum(r.fold == i for r in folds) for i in range(k)]}
    columns = ["path", "true_label", "label", *[f"prob_{c}" for c in classes], "fold"]
    atomic_write_text(root / OOF_FILE, csv_text(columns, oof))
    (root / "plots").mkdir(exist_ok=True)
    atomic_write_with(root / "plots" / "oof_confusion_matrix.png",
                      lambda p: plot_confusion(pooled["confusion_matrix"], classes, p, "out of fold"), ".png")
    atomic_write_with(root / "plots" / "oof_roc.png", lambda p: plot_roc(y, probs, classes, p, "out of fold"), ".png")
    atomic_write_with(root / "plots" / "oof_calibration.png",
                      lambda p: plot_calibration(y, probs, p, "out of fold"), ".png")
    atomic_write_text(root / REPORT_FILE, json_text(report))
    from busi.report import cv_page

    plots = {"confusion matrix": root / "plots" / "oof_confusion_matrix.png", "ROC": root / "plots" / "oof_roc.png",
             "reliability": root / "plots" / "oof_calibration.png"}
    atomic_write_text(root / "report.html", cv_page(report, plots, f"busi cross-validation {root.name}"))
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report's headline, one line per metric: mean ± sd [95% interval] across folds, pooled."""
    lines = [f"cross-validation: {report['folds']} folds, {report['images']} images out of fold"]
    pooled = report["pooled_out_of_fold"]
    for m, s in report["across_folds"].items():
        if m == "per_class" or s["mean"] is None:
            continue
        spread = f" ± {s['sd']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]" if s["ci95"] else ""
        ci = pooled["ci95"].get(m)
        pooled_text = f"{pooled[m]:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") if pooled.get(m) is not None else "n/a"
        lines.append(f"  {m:<18} folds {s['mean']:.3f}{spread}; pooled {pooled_text}")
    return "\n".join(lines)
