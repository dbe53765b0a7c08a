"""A trained model ready to predict: the Keras model, its classes and preprocessing (from its
model folder, ``busi.model.folder``) and the engine that runs it (``busi.model.engines``).
Prediction, external evaluation and the benchmarks load models through ``load_predictor``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from busi.config.schema import DicomConfig
from busi.errors import DataError
from busi.model.engines import Engine
from busi.model.folder import LABELS_FILE, find_model_file, read_model_info


@dataclass
class Predictor:
    """A loaded model, the engine that runs it, and what its inputs must look like."""

    model: Any  # the Keras model (Grad-CAM needs its gradients)
    classes: tuple[str, ...]
    image_size: int
    resize: str
    source: Path
    engine: Engine
    dicom: DicomConfig = DicomConfig()  # how DICOM files are read: as in training (preprocessing.json)


def load_predictor(model_arg: str | Path, engine: str = "tensorflow", precision: str = "auto",
                   batch_size: int = 32, threads: int | None = None) -> Predictor:
    """Load a busi model with its labels and preprocessing settings and the inference engine
    ``engine`` (``tensorflow``, ``openvino``, or ``auto``: ``busi.model.engines.choose_engine``)."""
    from busi.model.engines import choose_engine, make_engine
    from busi.model.network import load_saved_model
    from busi.model.openvino import openvino_available

    model_file = find_model_file(model_arg)
    model = load_saved_model(model_file)
    info = read_model_info(model_file, int(model.input_shape[1]))
    if model.output_shape[-1] != len(info.classes):
        raise DataError(model_file.parent / LABELS_FILE, f"{len(info.classes)} classes, but the model outputs "
                        f"{model.output_shape[-1]}")
    if engine == "auto":
        import tensorflow as tf

        engine = choose_engine("auto", bool(tf.config.list_physical_devices("GPU")), openvino_available())
    else:
        engine = choose_engine(engine, False, openvino_available())
    runner = make_engine(engine, precision, model_file, model, batch_size, info.image_size, threads)
    return Predictor(model=model, classes=info.classes, image_size=info.image_size, resize=info.resize,
                     source=model_file, engine=runner, dicom=info.dicom)
