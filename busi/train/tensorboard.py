"""TensorBoard event logs of a training run: ``OUT/tensorboard/``, written with ``tf.summary``.

Layout (TensorBoard shows each subfolder as a run; ``tensorboard --logdir runs/`` shows the
runs of several run directories, e.g. a CV directory's folds, side by side)::

    OUT/tensorboard/train/        per epoch: <phase>/loss, <phase>/accuracy,
                                  <phase>/learning_rate, <phase>/images_per_second
    OUT/tensorboard/validation/   per epoch: <phase>/loss, <phase>/accuracy (same tags as train,
                                  so TensorBoard draws training and validation in one chart)
    OUT/tensorboard/test/         at the end: test/<metric> scalars, the metrics as a table
                                  (text), the confusion-matrix and ROC plots (images)

The step is the run's global epoch (continuous across phases: the fine-tuning phase's first
epoch follows the head phase's last). Only the primary rank writes.

Each attempt of a run starts its logs from the checkpoint it resumes: ``start`` replaces the
folder (built beside, renamed into place: ``busi.files.atomic.atomic_write_dir``) with one holding
exactly the checkpointed epochs, so epochs an interrupted attempt logged after its last
checkpoint, or a failed attempt's, never show twice and the logs always match ``history.csv``.
Then each epoch appends to TensorBoard's event files (append-only streams that TensorBoard
reads while they grow; every write is flushed, so a killed run keeps what it logged).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from busi.files.atomic import atomic_write_dir

TRAIN, VALIDATION, TEST = "train", "validation", "test"

# (tag under the phase, EpochRecord attribute) per TensorBoard run
EPOCH_SCALARS: dict[str, tuple[tuple[str, str], ...]] = {
    TRAIN: (("loss", "loss"), ("accuracy", "accuracy"), ("learning_rate", "lr"),
            ("images_per_second", "images_per_second")),
    VALIDATION: (("loss", "val_loss"), ("accuracy", "val_accuracy")),
}
TEST_SCALARS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro")


class TensorBoardLog:
    """The event logs of one run directory (``folder``); every method is a no-op unless
    ``enabled`` (the primary rank)."""

    def __init__(self, folder: Path, enabled: bool = True) -> None:
        self.folder = Path(folder)
        self.enabled = enabled
        self._writers: dict[str, Any] = {}

    def start(self, history: Sequence[Any]) -> None:
        """Begin this attempt: the logs hold exactly ``history`` (the resumed checkpoint's
        ``EpochRecord``s; none for a fresh run), whatever an earlier attempt logged."""
        if not self.enabled:
            return
        self.close()

        def build(tmp: Path) -> None:
            writers: dict[str, Any] = {}
            try:
                for record in history:
                    _epoch_scalars(writers, tmp, record)
            finally:
                for writer in writers.values():
                    writer.close()

        atomic_write_dir(self.folder, build)

    def epoch(self, record: Any) -> None:
        """One epoch's scalars (``busi.train.loop.EpochRecord``), tagged by its phase."""
        if self.enabled:
            _epoch_scalars(self._writers, self.folder, record)

    def test_results(self, metrics: Mapping[str, Any], plots: Mapping[str, Path], step: int) -> None:
        """The test-split metrics (scalars and a table) and the plots (PNG files) at ``step``."""
        if not self.enabled:
            return
        import tensorflow as tf

        split = metrics.get("split", TEST)
        writer = _writer(self._writers, self.folder, TEST)
        with writer.as_default(step=step):
            _scalars(((f"{split}/{k}", metrics.get(k)) for k in TEST_SCALARS))
            tf.summary.text(f"{split}/metrics", metrics_table(metrics))
            for name, path in plots.items():
                if path.is_file():
                    tf.summary.image(f"plots/{name}", tf.io.decode_png(path.read_bytes(), channels=3)[None])
        writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def _epoch_scalars(writers: dict[str, Any], folder: Path, record: Any) -> None:
    for run, pairs in EPOCH_SCALARS.items():
        writer = _writer(writers, folder, run)
        with writer.as_default(step=record.epoch):
            _scalars((f"{record.phase}/{tag}", getattr(record, attr)) for tag, attr in pairs)
        writer.flush()  # a killed run keeps every epoch it logged


def _scalars(values: Iterable[tuple[str, Any]]) -> None:
    """``tf.summary.scalar`` for each finite value (no validation split: no val_loss)."""
    import tensorflow as tf

    for tag, value in values:
        if isinstance(value, (int, float)) and math.isfinite(value):
            tf.summary.scalar(tag, float(value))


def _writer(writers: dict[str, Any], folder: Path, run: str) -> Any:
    if run not in writers:
        import tensorflow as tf

        (folder / run).mkdir(parents=True, exist_ok=True)
        writers[run] = tf.summary.create_file_writer(str(folder / run))
    return writers[run]


def metrics_table(metrics: Mapping[str, Any]) -> str:
    """The headline and per-class metrics as a Markdown table (TensorBoard's text tab renders it)."""
    def fmt(v: Any) -> str:
        return "n/a" if not isinstance(v, (int, float)) or not math.isfinite(v) else f"{v:.4f}"

    ci = metrics.get("ci95") or {}

    def interval(v: Any) -> str:
        return f"[{fmt(v[0])}, {fmt(v[1])}]" if isinstance(v, (list, tuple)) and len(v) == 2 else "n/a"

    lines = ["| metric | value | 95% interval |", "|---|---|---|"]
    lines += [f"| {k} | {fmt(metrics.get(k))} | {interval(ci.get(k))} |" for k in TEST_SCALARS]
    lines.append(f"| n | {metrics.get('n', 'n/a')} | |")
    per_class = metrics.get("per_class", {})
    if per_class:
        lines += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        lines += [f"| {c} | {fmt(m.get('precision'))} | {fmt(m.get('recall'))} | {fmt(m.get('f1'))} | "
                  f"{m.get('support', '')} |" for c, m in per_class.items()]
    return "\n".join(lines)
