"""Group-aware, stratified K-fold cross-validation: ``busi-job cv`` and ``busi-job cv-report``.

One split of BUSI tests on ~113 images; K-fold predicts every image once, by a model whose
training never saw it or any of its duplicates. ``assign_folds`` uses scikit-learn's
``StratifiedGroupKFold`` (seeded) over the groups of ``data.dedupe`` joined by patient
(``data.table.group``, ``data.group_pattern``): a patient or a duplicate group is never in two
folds; label-conflict groups are dropped or kept as training drops or keeps them
(``data.conflicts``). A label table's fold column (``data.table.fold``, BUS-BRA's official
partitions) replaces the assignment; ``--folds`` must equal its number of folds. The assignment is written once into ``OUT/folds.csv``
(``path,label,group,fold``) and reused by every task, so array tasks on different nodes agree.

Fold I is a complete training run in ``OUT/fold-I/`` (the usual run directory, so signals,
walltime budget and resume work per fold): its test split is fold I; its validation split is
carved group-aware and stratified from the other folds (``data.split.val`` of their images);
the rest trains. The fold's split is handed to training as ``data.splits``
(``OUT/splits/fold-I.csv``). Without ``--fold`` the folds run in turn and completed ones are
skipped, so a requeued job continues where it stopped. ``cv-report`` gathers the folds.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Mapping

from busi.config.schema import JobConfig
from busi.data.folds import FoldRow, assign_folds, fold_splits, folds_text, read_folds
from busi.data.split import splits_text
from busi.errors import ConfigError, DataError
from busi.files.atomic import atomic_write_text
from busi.files.cvdir import (
    CV_LOCK_FILE,
    FOLDS_FILE,
    fold_dir,
    fold_status,
    splits_file,
)
from busi.runtime.schedulers import SLURM

log = logging.getLogger("busi")


def prepare_folds(cfg: JobConfig, k: int) -> list[FoldRow]:
    """``OUT/folds.csv``: read where an earlier task wrote it (checked against the data and K),
    else assigned now and written, under a lock so that concurrent array tasks write it once."""
    from busi.data.prepare import prepare_data
    from busi.runtime.locks import exclusive_lock

    root = Path(cfg.output.dir)
    root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(root / CV_LOCK_FILE, f"cv folder {root}", wait=True,
                        on_wait=lambda who: log.info("cv: waiting for %s to write %s", who, FOLDS_FILE)):
        # folds, not the table's split column: every image is in one fold's test split
        table = None if cfg.data.table is None else dataclasses.replace(cfg.data.table, split=None)
        data = dataclasses.replace(cfg.data, split=dataclasses.replace(cfg.data.split, train=1.0, val=0.0, test=0.0),
                                   splits=None, table=table)
        prepared = prepare_data(data, cfg.runtime.seed, exclude=[root])
        rows = list(prepared.rows)
        given = _given_folds(prepared.folds, k)
        path = root / FOLDS_FILE
        if path.exists():
            folds = read_folds(path)
            if {(r.key, r.label) for r in folds} != {(r.key, r.label) for r in rows}:
                raise DataError(path, f"assigned for other data than {cfg.data.source} holds now (images added, "
                                "removed or relabelled); use a new output.dir, or remove folds.csv and the fold-* "
                                "folders to start the cross-validation again")
            if len({r.fold for r in folds}) != k:
                raise ConfigError(f"--folds: {k}, but {path} holds {len({r.fold for r in folds})} folds; give "
                                  "that number or use a new output.dir")
            return folds
        folds = given or assign_folds(rows, k, cfg.runtime.seed)
        for i in range(k):
            val = cfg.data.split.val / max(cfg.data.split.train + cfg.data.split.val, 1e-9)
            text = splits_text(fold_splits(folds, i, val, cfg.runtime.seed))
            splits_file(root, i).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(splits_file(root, i), text)
        atomic_write_text(path, folds_text(folds))  # last: its presence says every fold's split is there
        sizes = [sum(r.fold == i for r in folds) for i in range(k)]
        log.info("cv: %d images in %d groups over %d folds (%s images) -> %s", len(folds), len({r.group for r in folds}),
                 k, ", ".join(map(str, sizes)), path)
        return folds


def _given_folds(folds: tuple[FoldRow, ...], k: int) -> list[FoldRow]:
    """The table's fold column's folds (``data.table.fold``), checked against ``--folds``; else none."""
    if not folds:
        return []
    found = len({r.fold for r in folds})
    if found != k:
        raise ConfigError(f"--folds: {k}, but data.table.fold's column holds {found} folds; give --folds {found}",
                          keys=("data.table.fold",))
    return list(folds)


def fold_config(cfg: JobConfig, fold: int) -> JobConfig:
    root = Path(cfg.output.dir)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, splits=str(splits_file(root, fold))),
                               output=dataclasses.replace(cfg.output, dir=str(fold_dir(root, fold))))


def array_fold(env: Mapping[str, str]) -> int | None:
    """The fold of a Slurm array task: its task ID (``busi.runtime.schedulers``), or None outside
    an array."""
    task = SLURM.array_task(env)
    return None if task is None else task.fold


def run_cv(cfg: JobConfig, k: int, fold: int | None, argv: list[str] | None = None) -> list[int]:
    """Run fold ``fold``, or every fold not yet completed in turn. Returns the folds run."""
    from busi.train.job import run_training

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
