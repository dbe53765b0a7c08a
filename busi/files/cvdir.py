"""The cross-validation folder (``busi-job cv``'s output.dir): its layout, in one place::

    OUT/folds.csv          path,label,group,fold[,frame]: the assignment, written once (busi.data.folds)
    OUT/splits/fold-I.csv  fold I's train/val/test split, handed to its run as data.splits
    OUT/fold-I/            fold I's run directory (busi.files.rundir)
    OUT/cv-metrics.json    metrics across folds and pooled out of fold (busi.evaluate.crossval)
    OUT/oof.csv            the out-of-fold predictions: the prediction CSV's columns, true_label, fold
    OUT/plots/oof_*.png    confusion matrix, ROC, reliability of the pooled predictions
    OUT/report.html        the cross-validation's page
"""

from __future__ import annotations

from pathlib import Path

from busi.errors import ConfigError
from busi.files.rundir import RUN_FILES, RunDir

FOLDS_FILE = "folds.csv"
OOF_FILE = "oof.csv"
REPORT_FILE = "cv-metrics.json"
CV_LOCK_FILE = ".busi-cv.lock"


def fold_dir(root: Path, fold: int) -> Path:
    return root / f"fold-{fold}"


def splits_file(root: Path, fold: int) -> Path:
    return root / "splits" / f"fold-{fold}.csv"


def fold_status(root: Path, fold: int) -> str:
    """The fold run's manifest status (``missing`` where it has not started)."""
    manifest = fold_dir(root, fold) / RUN_FILES["manifest"]
    if not manifest.exists():
        return "missing"
    try:
        return str((RunDir(manifest.parent).read_manifest() or {}).get("status", "unknown"))
    except ConfigError:
        return "unreadable"
