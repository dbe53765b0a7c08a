"""OpenVINO, Intel's CPU inference runtime: importing it, converting a Keras model to it (the
one conversion of the package), and a model's OpenVINO folder.

Telemetry is off. OpenVINO's model converter sends anonymous usage data to Google Analytics
unless a consent file in ``$HOME/intel`` says otherwise, and it tries to write a client ID
there on every run ("Failed to create openvino_telemetry file..."). A job on a hospital or
cluster node must never try to send anything, so ``import_openvino`` makes the optional
``openvino_telemetry`` package unimportable for this process before OpenVINO loads: the
converter then uses its own no-op stub. Every use of OpenVINO in busi goes through
``import_openvino``.

The folder (``openvino/`` beside ``model.keras``): ``model.xml`` + ``model.bin`` and
``source.json``, the sha256 of the ``model.keras`` it was converted from. Training writes it;
prediction from a ``model.keras`` without it converts once and caches it there, or converts
in memory where that folder is not writable.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from busi.files.atomic import atomic_write_dir
from busi.files.digest import file_sha256
from busi.files.rundir import RUN_FILES

log = logging.getLogger("busi")

OPENVINO_PIN = "openvino==2026.4.1"  # pyproject.toml's pin: the install command errors name
OPENVINO_DIR = Path(RUN_FILES["openvino"]).name  # "openvino", beside model.keras
OPENVINO_XML = "model.xml"
OPENVINO_SOURCE = "source.json"
TELEMETRY_MODULES = ("openvino_telemetry", "openvino_telemetry.backend")


def import_openvino() -> ModuleType:
    """The ``openvino`` module, with its telemetry disabled for this process (ImportError where
    OpenVINO is not installed)."""
    for name in TELEMETRY_MODULES:
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]  # "import" now raises ImportError
    import openvino

    return openvino


def openvino_available() -> bool:
    """OpenVINO can be imported here (an import, not a path lookup: a broken install counts as absent)."""
    try:
        import_openvino()
    except ImportError:
        return False
    return True


def to_openvino(model: Any, saved_model: Path | None = None) -> Any:
    """The OpenVINO model of a Keras ``model``: converted from ``saved_model`` (its SavedModel
    export, of a model that computes in float32) where given; else from the model in memory
    (about twice as fast as an export), a mixed-precision one through its float32 copy (OpenVINO's
    TensorFlow frontend refuses bfloat16 constants; the engine's precision hint brings bf16 back)."""
    from busi.model.network import float32_copy

    ov = import_openvino()
    if saved_model is not None:
        return ov.convert_model(str(saved_model))
    model = float32_copy(model)
    example = np.zeros((1, *[int(d) for d in model.input_shape[1:]]), np.float32)
    with warnings.catch_warnings():
        # the converter calls the model with a tuple of one tensor; Keras warns that this differs
        # from its one named input, and runs it correctly (tests/test_engines.py compares outputs)
        warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match", category=UserWarning)
        return ov.convert_model(model, example_input=example)


def write_openvino_dir(folder: Path, ov_model: Any, source_sha256: str, extra: dict[str, Any] | None = None) -> None:
    """``ov_model`` as ``folder/model.xml`` + ``.bin``, and the hash of the model.keras it is of
    (with ``extra``: how it was made, for a quantized model)."""
    ov = import_openvino()
    folder.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, str(folder / OPENVINO_XML), compress_to_fp16=False)
    source = {"model_keras_sha256": source_sha256, "openvino": ov.__version__, **(extra or {})}
    (folder / OPENVINO_SOURCE).write_text(json.dumps(source, indent=2) + "\n")


def read_openvino_dir(folder: Path) -> Any:
    """The OpenVINO model in ``folder`` (``model.xml`` + ``model.bin``)."""
    return import_openvino().Core().read_model(str(folder / OPENVINO_XML))


def converted_from(folder: Path, model_keras_sha256: str) -> bool:
    """``folder`` holds an OpenVINO model converted from the model.keras of this hash."""
    try:
        recorded = json.loads((folder / OPENVINO_SOURCE).read_text(encoding="utf-8")).get("model_keras_sha256")
    except (OSError, ValueError, AttributeError):
        return False
    return recorded == model_keras_sha256 and (folder / OPENVINO_XML).is_file()


def openvino_model_for(model_file: Path, keras_model: Any = None, model_sha256: str | None = None) -> Any:
    """The OpenVINO model of ``model_file``: ``openvino/`` beside it when it was converted from
    this very file, else converted now (from ``keras_model`` or the loaded file) and cached
    there (atomically), or kept in memory where that folder cannot be written.
    ``model_sha256``: the file's hash, where the caller has already read it."""
    folder = model_file.parent / OPENVINO_DIR
    sha = model_sha256 or file_sha256(model_file)
    if converted_from(folder, sha):
        try:
            return read_openvino_dir(folder)
        except Exception as e:  # a damaged cache: convert again
            log.warning("engine: cannot read %s (%s); converting %s again", folder / OPENVINO_XML, e, model_file)
    if keras_model is None:
        from busi.model.network import load_saved_model

        keras_model = load_saved_model(model_file)
    ov_model = to_openvino(keras_model)
    try:
        atomic_write_dir(folder, lambda tmp: write_openvino_dir(tmp, ov_model, sha))
        log.info("engine: converted %s for OpenVINO into %s", model_file, folder)
    except OSError as e:
        log.info("engine: converted %s for OpenVINO in memory (%s is not writable: %s)", model_file, folder,
                 e.strerror or e)
    return ov_model
