"""What the stages of one training run (``busi.train.job``) hand each other: the job itself,
the prepared data, the started runtime, the built model and its pipelines, the calibration and
the evaluation; and the clock that times each stage into the manifest."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from busi.config.schema import JobConfig
from busi.data.pipeline import Pipeline, SplitData
from busi.data.prepare import PreparedData
from busi.distributed.group import Dist
from busi.evaluate.writer import Scored
from busi.files.manifest import Manifest
from busi.files.rundir import RunDir
from busi.model.engines import Host
from busi.model.network import BuiltModel
from busi.runtime.cores import CoreDecision
from busi.runtime.stopper import Stopper
from busi.train.checkpoint import Checkpoint, Checkpointer


@dataclass
class Job:
    """What every stage of one training run may ask for."""

    cfg: JobConfig
    run: RunDir
    dist: Dist
    cores: CoreDecision
    manifest: Manifest
    stopper: Stopper
    checkpointer: Checkpointer
    resume: Checkpoint | None


@dataclass(frozen=True)
class TrainingData:
    """The prepared dataset, each split's files and labels, and the split's fingerprint."""

    prepared: PreparedData
    splits: dict[str, SplitData]
    splits_sha256: str

    def labels(self, name: str) -> list[int]:
        return list(self.splits[name].labels)

    @property
    def test_name(self) -> str:
        """The evaluated split: test, or val when the job keeps no test split."""
        return "test" if len(self.splits["test"]) else "val"


@dataclass(frozen=True)
class Started:
    """The node TensorFlow started on (GPU or not, threads) and the Keras dtype policy."""

    host: Host
    policy: str


@dataclass(frozen=True)
class Built:
    """The model with its weights, and each split's input pipeline."""

    net: BuiltModel
    pipelines: dict[str, Pipeline]

    @property
    def model(self) -> Any:
        return self.net.model


@dataclass(frozen=True)
class Calibration:
    """The fitted temperature and the calibrated validation probabilities; None, None: off, or
    no validation split."""

    temperature: float | None = None
    val_probs: np.ndarray | None = None


@dataclass(frozen=True)
class Evaluation:
    """The evaluated split, scored (``metrics.json`` without ``precisions``), and the positive
    class's operating point (``thresholds.json``)."""

    scored: Scored
    operating_point: dict[str, Any]


class StageClock:
    """Seconds per stage into the manifest (``seconds[name]``, added up when a name recurs)."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds = seconds

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t, 3)
