"""Learning rate per epoch under data parallelism: linear scaling by the number of ranks, with an
optional linear warmup.

N ranks of ``train.batch_size`` images each take steps on a global batch N times bigger, so
there are N times fewer steps per epoch. ``train.scale_lr`` multiplies each phase's learning
rate by N to compensate (the linear scaling rule, Goyal et al. 2017, "Accurate, Large Minibatch
SGD"). A big rate on freshly initialised weights can diverge in the first epochs, so
``train.warmup_epochs`` ramps the head phase linearly, epoch by epoch, from the configured rate
(the one-rank rate) up to the scaled rate. On one rank both are no-ops.

``train.schedule: cosine`` then decays each phase's rate epoch by epoch along a half cosine, from
the phase's rate at its first epoch towards 0 at its last (``phase.epochs``), as a fixed function
of the epoch, so a resumed run continues on the same curve.
"""

from __future__ import annotations

import math

from busi.config.schema import TrainConfig


def epoch_learning_rate(train: TrainConfig, phase: str, base: float, epoch_in_phase: int, ranks: int) -> float:
    """``constant_rate`` times the cosine factor of ``train.schedule`` (1 under ``constant``)."""
    rate = constant_rate(train, phase, base, epoch_in_phase, ranks)
    if train.schedule == "cosine":
        epochs = (train.head if phase == "head" else train.finetune).epochs
        rate *= 0.5 * (1.0 + math.cos(math.pi * (epoch_in_phase - 1) / max(epochs, 1)))
    return rate


def constant_rate(train: TrainConfig, phase: str, base: float, epoch_in_phase: int, ranks: int) -> float:
    """The rate of epoch ``epoch_in_phase`` (1-based) of ``phase`` (``head`` or ``finetune``),
    whose configured rate is ``base``, on ``ranks`` ranks.

    Head phase with ``warmup_epochs = W``: epoch k <= W runs at ``base + (scaled - base) * (k - 1) / W``
    (epoch 1 at ``base``), epoch W + 1 and later at ``scaled``. The fine-tuning phase starts from the
    trained head and runs at its scaled rate throughout."""
    scaled = base * ranks if train.scale_lr else base
    if phase == "head" and epoch_in_phase <= train.warmup_epochs:
        return base + (scaled - base) * (epoch_in_phase - 1) / train.warmup_epochs
    return scaled
