"""Several forward passes as one engine: the fold models of a cross-validation, as nnU-Net
predicts with its five folds (``busi-job predict --model CV_DIR``), and test-time augmentation
(``predict.tta: flip``: each image and its mirror image, left to right; never upside down,
depth runs down an ultrasound image).

The probabilities are the mean over members and views; ``spread`` is the standard deviation
across the members of the probability of the label the mean gives, the CSV's ``fold_sd``: how
much the folds disagree about an image (0 where one model predicts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from busi.config.schema import TTA_MODES
from busi.errors import ConfigError
from busi.model.engines import Engine, EngineInfo


def fold_runs(path: Path) -> list[Path] | None:
    """The fold run directories of a cross-validation folder (``busi.files.cvdir``: folds.csv
    and ``fold-I/``), in fold order; None where ``path`` is not one. ConfigError where a fold of
    folds.csv has no run directory."""
    from busi.data.folds import read_folds
    from busi.files.cvdir import FOLDS_FILE, fold_dir

    if not (path.is_dir() and (path / FOLDS_FILE).is_file()):
        return None
    k = len({row.fold for row in read_folds(path / FOLDS_FILE)})
    missing = [i for i in range(k) if not fold_dir(path, i).is_dir()]
    if missing:
        raise ConfigError(f"--model {path}: a cross-validation of {k} folds without fold(s) "
                          f"{', '.join(map(str, missing))}; run `busi-job cv JOB.yaml --folds {k}` to finish it, "
                          "or give one fold's run directory")
    return [fold_dir(path, i) for i in range(k)]


class Ensemble:
    """``members`` (engines of one input size and class count) as one engine."""

    def __init__(self, members: Sequence[Engine], tta: str = "none") -> None:
        if tta not in TTA_MODES:
            raise ConfigError(f"predict.tta: {tta!r} is not one of {', '.join(TTA_MODES)}")
        self.members = list(members)
        self.tta = tta
        first = self.members[0]
        self.image_size, self.outputs = first.image_size, first.outputs
        what = f"{first.info.version}, mean of {len(self.members)} fold models" if len(self.members) > 1 \
            else first.info.version
        self.info = EngineInfo(first.info.name, what + (", flip TTA" if tta == "flip" else ""), first.info.precision)

    def run_members(self, batch: np.ndarray) -> np.ndarray:
        """Each member's probabilities (mean over the TTA views): members x N x classes."""
        views = [batch] if self.tta == "none" else [batch, np.ascontiguousarray(batch[:, :, ::-1])]
        return np.stack([np.mean([m.run(v) for v in views], axis=0) for m in self.members])

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.run_members(batch).mean(axis=0)


def spread(per_member: np.ndarray) -> np.ndarray:
    """Per image, the standard deviation across members of the probability of the label their
    mean gives (members x N x classes -> N)."""
    label = per_member.mean(axis=0).argmax(axis=1)
    return per_member[:, np.arange(per_member.shape[1]), label].std(axis=0)
