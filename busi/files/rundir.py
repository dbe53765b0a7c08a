"""The run directory: its layout (``RUN_LAYOUT``, the one table of its paths, which the docs'
run-directory page is generated from), the only writer of it (``RunDir``), and claiming it.

Every writer is a no-op off the primary rank (``RunDir(..., primary=False)``), so callers
need no rank checks. Every file is replaced atomically (``busi.files.atomic``): a run killed at
any moment leaves each file complete or absent. Files get the process umask (``umask 002``
makes a run group-readable and writable). TensorBoard event files are the one exception to
"replaced atomically": TensorBoard reads them as append-only streams while they grow
(``busi.train.tensorboard`` writes them, primary rank only).

A run directory is claimed (``RunDir.claim``) before anything is written: one lock per
directory (``OUT/.busi.lock``, ``busi.runtime.locks``), temp files of killed writers removed,
and a folder busi did not write refused (no ``manifest.json`` but other files) unless
``--restart``. busi deletes or replaces only the paths of this layout, never a file it did not
write. Text files follow ``busi.files.text``'s rule (UTF-8, a name's bytes kept).
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from busi.errors import ConfigError
from busi.files.atomic import (
    AtomicFolder,
    atomic_write_text,
    discard,
    is_temp_name,
    remove_path,
)
from busi.files.text import csv_text, json_text
from busi.runtime.clock import utc_now

log = logging.getLogger("busi")


@dataclass(frozen=True)
class Entry:
    """One path of the run directory: a file or a folder busi replaces whole (``file``,
    ``folder``), or a folder it writes inside (``dir``)."""

    key: str
    path: str
    kind: str
    doc: str


# The plots of an evaluation (a run's test split, a cross-validation's pooled predictions with a
# prefix, an external set): caption on the page -> file name stem under plots/ (busi.evaluate.writer)
EVALUATION_PLOTS = {"confusion matrix": "confusion_matrix", "ROC": "roc", "reliability": "calibration"}

RUN_LAYOUT: tuple[Entry, ...] = (
    Entry("config", "config.yaml", "file", "the resolved job config (`busi-job config` of the run)"),
    Entry("manifest", "manifest.json", "file", "versions, host, cores and threads and their source, precision, "
          "seed, engines, seconds per stage, one entry per attempt, status"),
    Entry("splits", "data/splits.csv", "file", "path,label,group,split of every image used; group: the "
          "patient ID (data.table.group, data.group_pattern), else the duplicate group; a frame column where "
          "data.dicom.frame all made the frames of cine loops samples"),
    Entry("hashes", "data/hashes.csv", "file", "path,split,sha256,phash,patient of the train and validation "
          "images (`busi-job evaluate`'s overlap check; patient empty where the job gave none)"),
    Entry("report", "data/report.json", "file", "the dataset report (`busi-job inspect --json`)"),
    Entry("model", "model/model.keras", "file", "the Keras model, preprocessing inside (plain Keras loads it)"),
    Entry("saved_model", "model/saved_model", "folder", "the TensorFlow SavedModel (serving); not with "
          "`output.saved_model: false` (`busi-job export --format saved_model` writes it later)"),
    Entry("openvino", "model/openvino", "folder", "the OpenVINO model: model.xml, model.bin, source.json"),
    Entry("openvino_int8", "model/openvino-int8", "folder", "the INT8 OpenVINO model (NNCF post-training "
          "quantization on training images), with `train.quantize: int8` (the default): model.xml, model.bin, "
          "source.json"),
    Entry("precisions", "model/precisions.json", "file", "each reduced precision's accuracy contract on the test "
          "split (INT8, bfloat16 against float32): what `--precision auto` may pick"),
    Entry("labels", "model/labels.json", "file", "output index -> class name"),
    Entry("preprocessing", "model/preprocessing.json", "file", "input side and resize mode prediction must use"),
    Entry("thresholds", "model/thresholds.json", "file", "the positive class (evaluate.positive_class) and "
          "its threshold chosen on the validation split"),
    Entry("model_card", "model/README.md", "file", "the model card"),
    Entry("history", "history.csv", "file", "phase,epoch,loss,accuracy,val_loss,val_accuracy,lr,seconds"),
    Entry("metrics", "metrics.json", "file", "test-split metrics with 95% intervals, calibration, the positive "
          "class vs the rest, Grad-CAM against the masks, engine"),
    Entry("report_html", "report.html", "file", "one self-contained page: metrics, plots, data findings"),
    Entry("plot_accuracy", "plots/accuracy.png", "file", "accuracy per epoch"),
    Entry("plot_loss", "plots/loss.png", "file", "loss per epoch"),
    Entry("plot_confusion", f"plots/{EVALUATION_PLOTS['confusion matrix']}.png", "file",
          "confusion matrix of the test split"),
    Entry("plot_roc", f"plots/{EVALUATION_PLOTS['ROC']}.png", "file", "one-vs-rest ROC curves of the test split"),
    Entry("plot_calibration", f"plots/{EVALUATION_PLOTS['reliability']}.png", "file",
          "reliability diagram of the test split"),
    Entry("test_predictions", "predictions/test.csv", "file", "the prediction CSV's columns plus true_label"),
    Entry("checkpoint", "checkpoint", "dir", "resumable state while the run is unfinished"),
    Entry("tensorboard", "tensorboard", "dir", "TensorBoard event logs: train/, validation/, test/"),
)

RUN_FILES = {e.key: e.path for e in RUN_LAYOUT if e.kind != "dir"}
RUN_FOLDERS = tuple(e.path for e in RUN_LAYOUT if e.kind == "folder")  # published whole
RUN_DIRS = tuple(e.path for e in RUN_LAYOUT if e.kind == "dir")  # written inside
TENSORBOARD_DIR = "tensorboard"
LOCK_FILE = ".busi.lock"


class RunDir:
    """Writers for the run directory, by ``RUN_LAYOUT`` key; no-ops unless ``primary``."""

    def __init__(self, root: str | Path, primary: bool = True) -> None:
        self.root = Path(root)
        self.primary = primary
        self.files = AtomicFolder(self.root, enabled=primary)  # what the evaluation writer writes through

    def path(self, key: str) -> Path:
        return self.root / RUN_FILES[key]

    def write_text(self, key: str, text: str) -> Path | None:
        return self.files.write_text(RUN_FILES[key], text)

    def write_json(self, key: str, obj: Any) -> Path | None:
        return self.write_text(key, json_text(obj))

    def write_csv(self, key: str, columns: Sequence[str], rows: Iterable[Sequence[Any] | dict[str, Any]]) -> Path | None:
        return self.write_text(key, csv_text(columns, rows))

    def write_file_with(self, key: str, writer: Callable[[Path], Any], suffix: str = "") -> Path | None:
        return self.files.write_with(RUN_FILES[key], writer, suffix)

    def write_dir_with(self, key: str, writer: Callable[[Path], Any]) -> Path | None:
        return self.files.write_dir_with(RUN_FILES[key], writer)

    def read_json(self, key: str) -> Any:
        p = self.path(key)
        return json.loads(p.read_text(encoding="utf-8")) if p.exists() else None

    # ------------------------------------------------------------ claiming the folder

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest, None if there is none; ConfigError naming it if it is not busi's JSON."""
        p = self.path("manifest")
        if not p.exists():
            return None
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or "status" not in data:
                raise ValueError("no status")
            return data
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"output.dir: {p} is not a busi manifest ({type(e).__name__}: {e}); pass --restart to "
                "start this run again from scratch, or choose another output.dir"
            ) from None

    def layout(self) -> list[tuple[Path, bool]]:
        """Every path of the run-directory layout with whether it is a folder, parents first."""
        out: dict[Path, bool] = {}
        for rel in RUN_FILES.values():
            parts = Path(rel).parts
            for i in range(1, len(parts)):
                out.setdefault(self.root.joinpath(*parts[:i]), True)
        for rel in RUN_FILES.values():
            out[self.root / rel] = rel in RUN_FOLDERS
        for rel in RUN_DIRS:
            out[self.root / rel] = True
        return list(out.items())

    @contextmanager
    def claim(self, restart: bool = False) -> Iterator[None]:
        """Own the run directory for the ``with`` block (primary rank only): create it, lock it
        (a second job exits 2 naming the holder's host and pid), remove temp files of killed
        writers, and refuse what busi must not touch. ``restart``: clear this layout's files of
        the previous run first (rename aside, then delete), behind a manifest marked
        ``restarting``, so an interrupted restart never leaves old results that look current."""
        if not self.primary:
            yield
            return
        from busi.runtime.locks import exclusive_lock

        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"output.dir: {self.root} is a file, not a folder; choose another output.dir")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"output.dir: cannot create {self.root}: {e.strerror or e}; choose a writable "
                              "output.dir") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise ConfigError(f"output.dir: {self.root} is not writable (read-only mount or permissions); "
                              "choose a writable output.dir")
        with exclusive_lock(self.root / LOCK_FILE, f"output.dir {self.root}"):
            self._remove_stale()
            self._check_layout(restart)
            if restart:
                self._clear()
            yield

    def _remove_stale(self) -> None:
        """Temp and aside files of killed writers (the lock is held: no live writer owns them)."""
        for folder in [self.root] + [p for p, is_dir in self.layout() if is_dir]:
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                if is_temp_name(entry.name):
                    log.info("output.dir: removing %s, left by a killed run", entry.path)
                    remove_path(Path(entry.path))

    def _check_layout(self, restart: bool) -> None:
        wrong = [p for p, is_dir in self.layout()
                 if (p.exists() or p.is_symlink()) and (p.is_dir() and not p.is_symlink()) != is_dir]
        if wrong:
            shown = ", ".join(f"{p} ({'a folder' if p.is_dir() else 'not a folder'})" for p in wrong[:5])
            raise ConfigError(f"output.dir: {shown}: busi writes a {'file' if wrong[0].is_dir() else 'folder'} "
                              "there and did not write this; move it away or choose another output.dir")
        try:
            manifest = self.read_manifest()
        except ConfigError:
            if not restart:
                raise
            manifest = {"status": "unreadable"}
        if manifest is not None:
            return  # busi's run directory: files outside the layout are the user's, left alone
        foreign = sorted(e.name for e in os.scandir(self.root) if e.name != LOCK_FILE and not is_temp_name(e.name))
        if foreign and not restart:
            raise ConfigError(
                f"output.dir: {self.root} holds files busi did not write ({', '.join(foreign[:5])}"
                f"{', ...' if len(foreign) > 5 else ''}) and no {RUN_FILES['manifest']}; choose an empty or "
                "new output.dir, or pass --restart to write the run beside them"
            )
        taken = [p for p, is_dir in self.layout() if not is_dir and (p.exists() or p.is_symlink())]
        taken += [p for p in (self.root / d for d in RUN_DIRS) if p.exists()]
        if taken:
            raise ConfigError(
                f"output.dir: {', '.join(str(p) for p in taken[:5])}: busi would replace "
                f"{'these files' if len(taken) > 1 else 'this'}, which it did not write (there is no "
                f"{RUN_FILES['manifest']}); move them away or choose another output.dir"
            )

    def _clear(self) -> None:
        """``--restart``: the previous run's files go (each renamed aside, then deleted) behind a
        manifest that says so; folders of the layout stay if they hold the user's files."""
        previous = self.path("manifest")
        if previous.exists():
            atomic_write_text(previous, json_text({"status": "restarting", "restarted_at": utc_now()}))
        for p, is_dir in reversed(self.layout()):
            if p == previous:
                continue
            if not is_dir or p.name in RUN_DIRS or str(p.relative_to(self.root)) in RUN_FOLDERS:
                if p.exists() or p.is_symlink():
                    try:
                        discard(p)
                    except OSError as e:
                        raise ConfigError(f"--restart: cannot remove {p}: {e.strerror or e}") from None
            else:
                try:
                    p.rmdir()  # only if empty: a layout folder may hold the user's files too
                except OSError:
                    pass

