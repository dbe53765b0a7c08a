"""A trained model ready to predict: its classes and preprocessing (from its model folder,
``busi.model.folder``), the engine that runs it (``busi.model.engines``) and, where something
needs it, the Keras model (OpenVINO runs the folder's own conversion without TensorFlow).
Prediction, external evaluation and the benchmarks load models through ``load_predictor``;
prediction, external evaluation and training's evaluation run their batches through
``forward_batches``."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from busi.config.schema import DicomConfig
from busi.errors import DataError
from busi.model.engines import Engine
from busi.model.folder import LABELS_FILE, find_model_file, read_model_info


@dataclass
class Predictor:
    """A loaded model, the engine that runs it, and what its inputs must look like."""

    model: Any  # the Keras model (Grad-CAM needs its gradients); None where the engine runs without it
    classes: tuple[str, ...]
    image_size: int
    resize: str
    source: Path
    engine: Engine
    dicom: DicomConfig = DicomConfig()  # how DICOM files are read: as in training (preprocessing.json)

    @property
    def members(self) -> int:
        """The fold models a cross-validation folder predicts with (busi.model.ensemble), else 1."""
        from busi.model.ensemble import Ensemble

        return len(self.engine.members) if isinstance(self.engine, Ensemble) else 1


B = TypeVar("B")


def forward_batches(run: Callable[[np.ndarray], np.ndarray], batches: Iterable[B],
                    images: Callable[[B], Sequence[np.ndarray] | np.ndarray]) -> Iterator[tuple[B, np.ndarray | None]]:
    """Each of ``batches`` in turn with ``run``'s output for its images: ``images(batch)`` (S x S x 3
    each, or already N x S x S x 3), given to ``run`` as one float32 array (an engine's ``run``,
    ``busi.model.engines``). None for a batch without images, which is not run."""
    for batch in batches:
        x = images(batch)
        yield batch, run(np.asarray(x, np.float32)) if len(x) else None


def load_predictor(model_arg: str | Path, engine: str = "tensorflow", precision: str = "auto",
                   batch_size: int = 32, threads: int | None = None, gradients: bool = False,
                   start: Callable[[], Any] | None = None, tta: str = "none") -> Predictor:
    """Load a busi model with its labels and preprocessing settings and the inference engine
    ``engine`` (``tensorflow``, ``openvino``, or ``auto``: ``busi.model.engines.choose_engine``).

    TensorFlow is imported (and the Keras model loaded) only where something needs it: the
    tensorflow engine, ``gradients`` (Grad-CAM), ``auto`` on a node with a GPU device node, or an
    OpenVINO model still to convert. Else the OpenVINO engine runs the model folder's
    ``openvino/`` or INT8 model, each only where it was made from this very model.keras
    (``busi.model.engines.resolve_precision``), and a prediction starts 5-10 s sooner
    (``Predictor.model`` is then None). ``start`` (the job's ``busi.runtime.startup.start_tensorflow``)
    runs once, before TensorFlow is first imported.

    ``model_arg`` may be a cross-validation folder (``busi-job cv``'s output.dir): its fold models
    then predict together, their probabilities averaged (``busi.model.ensemble``); ``tta: flip``
    averages each image with its mirror image."""
    from busi.model.ensemble import Ensemble, fold_runs

    folds = fold_runs(Path(model_arg))
    if folds is not None:
        return _load_ensemble(Path(model_arg), folds, engine, precision, batch_size, threads, gradients, start, tta)

    from busi.files.digest import file_sha256
    from busi.model.engines import make_engine, resolve_precision
    from busi.model.openvino import OPENVINO_DIR, converted_from

    started: list[bool] = []

    def tensorflow() -> Any:
        if start is not None and not started:
            start()
            started.append(True)
        import tensorflow as tf

        return tf

    model_file = find_model_file(model_arg)
    name = _engine_name(engine, tensorflow)
    sha = functools.cache(lambda: file_sha256(model_file))  # model.keras is hashed once, where needed
    chosen = resolve_precision(precision, model_file, sha) if name == "openvino" else None
    needs_keras = name == "tensorflow" or gradients
    if chosen is not None and chosen[0] != "int8":  # the float model: openvino/, if converted from this very file
        needs_keras = needs_keras or not converted_from(model_file.parent / OPENVINO_DIR, sha())
    model = None
    if needs_keras:
        tensorflow()
        from busi.model.network import load_saved_model

        model = load_saved_model(model_file)
    runner = make_engine(name, precision, model_file, model, batch_size, threads, model_sha256=sha, chosen=chosen)
    info = read_model_info(model_file, runner.image_size)
    if runner.outputs != len(info.classes):
        raise DataError(model_file.parent / LABELS_FILE, f"{len(info.classes)} classes, but the model outputs "
                        f"{runner.outputs}")
    if tta != "none":
        runner = Ensemble([runner], tta)
    return Predictor(model=model, classes=info.classes, image_size=info.image_size, resize=info.resize,
                     source=model_file, engine=runner, dicom=info.dicom)


def _load_ensemble(cv_dir: Path, folds: list[Path], engine: str, precision: str, batch_size: int,
                   threads: int | None, gradients: bool, start: Callable[[], Any] | None, tta: str) -> Predictor:
    """The fold models of ``cv_dir`` as one predictor: the same classes, input and decoding in
    every fold (they were trained by one job), else a ConfigError naming the fold that differs."""
    from busi.errors import ConfigError
    from busi.model.ensemble import Ensemble

    if gradients:
        raise ConfigError(f"--gradcam: {cv_dir} is a cross-validation ({len(folds)} fold models); Grad-CAM explains "
                          "one model: give one fold's run directory (e.g. fold-0)")
    once = functools.cache(start) if start is not None else None  # TensorFlow starts once, for every fold
    members = [load_predictor(f, engine, precision, batch_size, threads, start=once) for f in folds]
    first = members[0]
    for fold, m in zip(folds, members):
        if (m.classes, m.image_size, m.resize, m.dicom) != (first.classes, first.image_size, first.resize, first.dicom):
            raise ConfigError(f"--model {cv_dir}: {fold.name} takes other classes or inputs than {folds[0].name} "
                              f"({m.classes}, {m.image_size} px, {m.resize}); a cross-validation's folds are one job's")
    return Predictor(model=None, classes=first.classes, image_size=first.image_size, resize=first.resize,
                     source=cv_dir, engine=Ensemble([m.engine for m in members], tta), dicom=first.dicom)


def _engine_name(setting: str, tensorflow: Callable[[], Any]) -> str:
    """``choose_engine`` for this node: whether a GPU is visible is TensorFlow's answer, asked
    only where the node has a GPU device node at all (``busi.runtime.cpu.gpu_device_present``)."""
    from busi.model.engines import choose_engine
    from busi.model.openvino import openvino_available
    from busi.runtime.cpu import gpu_device_present

    gpu = setting == "auto" and gpu_device_present() and bool(tensorflow().config.list_physical_devices("GPU"))
    return choose_engine(setting, gpu, openvino_available())

