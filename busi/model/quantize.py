"""INT8: post-training quantization of a model's OpenVINO form with NNCF, OpenVINO's own
compression library (``pip install nncf``, part of busi's default install).

NNCF runs the float model over calibration images, chooses a scale per tensor, inserts
quantize/dequantize pairs that OpenVINO's CPU plugin fuses into integer kernels (VNNI, AMX-INT8)
and corrects the biases the rounding shifts. busi calibrates on the run's own training images,
decoded exactly as prediction decodes them (``busi.data.images.load_image``), a seeded sample of
at most ``CALIBRATION_IMAGES``. The result goes into ``model/openvino-int8/`` beside the float
model; whether prediction may use it is decided by its accuracy contract
(``busi.evaluate.precision``), never by the quantization alone.

NNCF would send usage data through OpenVINO's telemetry package; ``import_nncf`` imports it only
after ``import_openvino`` has made that package unimportable, so NNCF takes its no-op stub.
"""

from __future__ import annotations

import contextlib
import io
import logging
import random
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence, TypeVar

import numpy as np

from busi.config.schema import DicomConfig
from busi.data.images import load_image
from busi.files.rundir import RUN_FILES
from busi.model.openvino import import_openvino

log = logging.getLogger("busi")

NNCF_PIN = "nncf==3.4.0"  # pyproject.toml's pin: the install command errors name
INT8_DIR = Path(RUN_FILES["openvino_int8"]).name  # "openvino-int8", beside model.keras
CALIBRATION_IMAGES = 300  # NNCF's default subset size; enough for ResNet50's activation ranges
T = TypeVar("T")


def import_nncf() -> ModuleType:
    """The ``nncf`` module, imported after OpenVINO's telemetry is off, its INFO log quieted
    (ImportError where NNCF is not installed)."""
    import_openvino()
    import nncf

    logging.getLogger("nncf").setLevel(logging.WARNING)
    return nncf


def nncf_available() -> bool:
    try:
        import_nncf()
    except ImportError:
        return False
    return True


def calibration_sample(images: Sequence[T], seed: int, limit: int = CALIBRATION_IMAGES) -> list[T]:
    """At most ``limit`` of ``images``, a seeded sample in their original order."""
    if len(images) <= limit:
        return list(images)
    keep = sorted(random.Random(seed).sample(range(len(images)), limit))
    return [images[i] for i in keep]


def calibration_images(paths: Sequence[str], image_size: int, resize: str, dicom: DicomConfig = DicomConfig(),
                       frames: Sequence[int | None] | None = None) -> np.ndarray:
    """The calibration images as prediction decodes them: N x S x S x 3 float32 RGB 0-255
    (``frames``: each path's frame of a cine loop, where the samples are frames)."""
    out = np.empty((len(paths), image_size, image_size, 3), np.float32)
    for i, path in enumerate(paths):
        out[i] = load_image(path, image_size, resize, dicom, frames[i] if frames else None)
    return out


def quantize_int8(ov_model: Any, images: np.ndarray) -> tuple[Any, dict[str, Any]]:
    """The INT8 form of ``ov_model`` (an OpenVINO model of float32 RGB 0-255 batches),
    calibrated on ``images``, and how it was made (for ``source.json``)."""
    nncf = import_nncf()
    if len(images) == 0:
        raise ValueError("no calibration images")
    started = time.perf_counter()
    batches = [images[i : i + 1] for i in range(len(images))]
    # NNCF draws progress bars on the console; a batch job's log keeps busi's lines only
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        quantized = nncf.quantize(ov_model, nncf.Dataset(batches), subset_size=len(batches),
                                  preset=nncf.QuantizationPreset.PERFORMANCE)
    seconds = round(time.perf_counter() - started, 3)
    return quantized, {"quantization": {"tool": f"nncf {nncf.__version__}", "preset": "performance",
                                        "calibration_images": len(images), "seconds": seconds}}
