"""The model folder of a run directory (``OUT/model/``): its one writer and its one reader.

What it holds (file names from ``busi.files.rundir.RUN_FILES``, the run-directory contract):
``model.keras`` (preprocessing inside), ``saved_model/`` (TF serving), ``openvino/`` (the
OpenVINO model, ``busi.model.openvino``), ``labels.json`` (index -> class name),
``preprocessing.json`` (the input side, resize mode and DICOM reading prediction must use) and
``thresholds.json`` (the positive class and its operating point chosen on the validation split,
``busi.evaluate.screening``; written once the written model has classified that split),
``openvino-int8/`` (the quantized model, ``busi.model.quantize``) and ``precisions.json`` (each
reduced precision's accuracy contract, ``busi.evaluate.precision``).
Training writes it through ``write_model_dir``; prediction, evaluation, tests and benchmarks
read it through ``find_model_file``, ``read_model_info``, ``read_thresholds`` and
``read_precisions``, so no other
module spells out these names.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from busi.config.schema import BACKBONES, DICOM_FRAMES, RESIZE_MODES, DicomConfig
from busi.errors import ConfigError, DataError
from busi.files.rundir import RUN_FILES, RunDir

log = logging.getLogger("busi")

MODEL_DIR = Path(RUN_FILES["model"]).parent.name  # "model"
MODEL_FILE = Path(RUN_FILES["model"]).name  # "model.keras"
LABELS_FILE = Path(RUN_FILES["labels"]).name
PREPROCESSING_FILE = Path(RUN_FILES["preprocessing"]).name
THRESHOLDS_FILE = Path(RUN_FILES["thresholds"]).name
PRECISIONS_FILE = Path(RUN_FILES["precisions"]).name


@dataclass(frozen=True)
class ModelInfo:
    """What a model's inputs and outputs mean: class names by output index, input side, resize,
    and how DICOM files were read (the frame, the crop to the ultrasound region)."""

    classes: tuple[str, ...]
    image_size: int
    resize: str = "stretch"
    dicom: DicomConfig = DicomConfig()
    backbone: str = "resnet50"  # models written before backbones were a key are ResNet50s
    alpha: float = 1.0

    def labels_json(self) -> dict[str, str]:
        return {str(i): c for i, c in enumerate(self.classes)}

    def preprocessing_json(self) -> dict[str, Any]:
        """The input the model takes; the backbone's own preprocessing (``preprocess``) runs
        inside the model, so any caller feeds the same RGB 0-255 images."""
        from busi.model.backbones import backbone

        return {"image_size": self.image_size, "resize": self.resize, "input": "RGB, float32, 0-255",
                "dicom": {"frame": self.dicom.frame, "crop_to_region": self.dicom.crop_to_region},
                "backbone": self.backbone, "alpha": self.alpha,
                "preprocess": f"{backbone(self.backbone).preprocess} (inside the model)"}


def write_model_dir(run: RunDir, model: Any, classes: Sequence[str], image_size: int, resize: str,
                    saved_model: bool = True, dicom: DicomConfig = DicomConfig(), backbone: str = "resnet50",
                    alpha: float = 1.0, openvino: bool = True) -> ModelInfo:
    """Write ``model`` and what it means into ``run``'s model folder (atomically, primary rank
    only, as every ``RunDir`` write). ``saved_model=False`` skips the SavedModel export
    (``output.saved_model: false``; ``busi-job export --format saved_model`` writes it later);
    ``openvino=False`` the OpenVINO model (tests and benchmarks that convert their own)."""
    info = ModelInfo(tuple(classes), int(image_size), resize, dicom, backbone, float(alpha))
    run.write_json("labels", info.labels_json())
    run.write_json("preprocessing", info.preprocessing_json())
    run.write_file_with("model", lambda p: model.save(str(p)), ".keras")
    if saved_model:
        run.write_dir_with("saved_model", lambda p: model.export(str(p), verbose=False))
    if openvino:
        _write_openvino(run, model, from_saved_model=saved_model)
    return info


def write_thresholds(run: RunDir, point: dict[str, Any]) -> None:
    """``thresholds.json``: the operating point of the model already in ``run``'s model folder."""
    run.write_json("thresholds", point)


def read_precisions(model_dir: Path) -> dict[str, Any]:
    """``precisions.json`` of a model folder: {precision: its contract}; {} where there is none
    (a model trained before contracts were measured, or one copied without it)."""
    try:
        data = json.loads((model_dir / PRECISIONS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_thresholds(model_file: Path) -> dict[str, Any]:
    """``thresholds.json`` beside ``model_file`` (the positive class and its threshold); {} where
    the model has none (a model copied without it): the evaluation then uses the argmax rule."""
    try:
        data = json.loads((model_file.parent / THRESHOLDS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_openvino(run: RunDir, model: Any, from_saved_model: bool) -> None:
    """The OpenVINO model of ``model``, so prediction never converts it: from the SavedModel just
    written (``from_saved_model``: converting it is seconds), else from the model in memory (a
    mixed-precision one, whose SavedModel holds bfloat16 constants OpenVINO cannot read, through
    its float32 copy); skipped, with a log line, where OpenVINO is not installed."""
    from busi.files.digest import file_sha256
    from busi.model.network import computes_in_float32
    from busi.model.openvino import openvino_available, to_openvino, write_openvino_dir

    if not run.primary:
        return
    if not openvino_available():
        log.info("model: no %s (openvino is not installed)", RUN_FILES["openvino"])
        return
    if from_saved_model and computes_in_float32(model):
        ov_model = to_openvino(model, saved_model=run.path("saved_model"))
    else:
        ov_model = to_openvino(model)
    sha = file_sha256(run.path("model"))
    run.write_dir_with("openvino", lambda p: write_openvino_dir(p, ov_model, sha))


def find_model_file(model_arg: str | Path) -> Path:
    """``RUN_DIR``, its ``model/`` folder or a ``model.keras`` file -> the model file, with its
    labels beside it. DataError naming what is missing."""
    p = Path(model_arg)
    if p.is_dir():
        _check_run_finished(p, model_arg)
        folder = p / MODEL_DIR if (p / MODEL_DIR / MODEL_FILE).exists() else p
        model_file = folder / MODEL_FILE
    else:
        model_file = p
    if not model_file.is_file():
        raise DataError(model_arg, f"no {MODEL_FILE} found (give a run directory or a {MODEL_FILE} file)",
                        option="--model")
    labels = model_file.parent / LABELS_FILE
    if not labels.is_file():
        raise DataError(labels, f"{LABELS_FILE} not found beside the model; it maps indices to class names")
    return model_file


def read_model_info(model_file: Path, image_size: int) -> ModelInfo:
    """The classes (``labels.json``), resize mode and DICOM reading (``preprocessing.json``;
    ``stretch``, the first frame, no crop where absent: models trained before DICOM was read)
    of the model at ``model_file``, whose input side is ``image_size``."""
    labels = model_file.parent / LABELS_FILE
    try:
        raw = json.loads(labels.read_text(encoding="utf-8"))
        classes = tuple(raw[str(i)] for i in range(len(raw)))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(labels, f"expected {{\"0\": \"class\", \"1\": ...}}: {e}") from None
    prep_file = model_file.parent / PREPROCESSING_FILE
    try:
        prep = json.loads(prep_file.read_text(encoding="utf-8")) if prep_file.is_file() else {}
        resize = prep.get("resize", "stretch")
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize {resize!r}")
        dicom = prep.get("dicom", {})
        frame, crop = dicom.get("frame", "first"), dicom.get("crop_to_region", False)
        if frame not in DICOM_FRAMES or not isinstance(crop, bool):
            raise ValueError(f"dicom {dicom!r}")
        net, alpha = prep.get("backbone", "resnet50"), prep.get("alpha", 1.0)
        if net not in BACKBONES or not isinstance(alpha, (int, float)):
            raise ValueError(f"backbone {net!r}, alpha {alpha!r}")
    except (OSError, ValueError, AttributeError) as e:
        raise DataError(prep_file, f"expected {{\"image_size\": N, \"resize\": \"stretch\" or \"pad\", \"dicom\": "
                        f"{{\"frame\": {' or '.join(DICOM_FRAMES)}, \"crop_to_region\": true or false}}}}: {e}") from None
    return ModelInfo(classes, image_size, resize, DicomConfig(frame=frame, crop_to_region=crop), net, float(alpha))


def _check_run_finished(folder: Path, model_arg: str | Path) -> None:
    """A run directory's model (``folder`` is the run directory or its model folder) is used
    only once the run completed: an interrupted or failed run (or a ``--restart`` cut short)
    may hold an older run's model beside its manifest."""
    manifest = folder / RUN_FILES["manifest"]
    if not manifest.exists() and folder.name == MODEL_DIR:
        manifest = folder.parent / RUN_FILES["manifest"]
    if not manifest.exists():
        return  # a model folder without a run around it (copied, or written by a benchmark)
    try:
        status = (RunDir(manifest.parent).read_manifest() or {}).get("status")
    except ConfigError:  # not a busi manifest
        status = "unreadable"
    if status != "completed":
        raise ConfigError(
            f"--model {model_arg}: that run is {status!r}, not completed ({manifest}); its model may be "
            f"an older run's. Finish or resume the run, or pass the {MODEL_FILE} file itself to use it anyway"
        )
