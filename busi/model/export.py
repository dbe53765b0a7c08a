"""``busi-job export``: a trained model in the formats other tools load.

``openvino`` (``model.xml`` + ``model.bin``: OpenVINO, the engine busi predicts with),
``saved_model`` (TensorFlow Serving, TF.js and TFLite converters). ONNX is not offered: with
Keras 3.15 and tf2onnx 1.17 the exported file of busi's model passed ``onnx.checker`` but had more
than one input parameter, so it did not run as a model of one image batch (README). Each is
written atomically; a folder export
gets the model's ``labels.json`` and ``preprocessing.json`` beside it, so it is usable alone.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from busi.config.schema import EXPORT_FORMATS
from busi.errors import ConfigError, DataError
from busi.files.atomic import atomic_write_dir
from busi.files.digest import file_sha256
from busi.model.folder import (
    LABELS_FILE,
    PRECISIONS_FILE,
    PREPROCESSING_FILE,
    THRESHOLDS_FILE,
    find_model_file,
)
from busi.model.openvino import (
    OPENVINO_DIR,
    openvino_available,
    openvino_model_for,
    write_openvino_dir,
)

log = logging.getLogger("busi")

FORMATS = EXPORT_FORMATS  # the schema's one list (busi-job export --format)
DEFAULT_NAMES = {"openvino": OPENVINO_DIR, "saved_model": "saved_model"}


def export_model(model_arg: str | Path, fmt: str, out: str | Path | None = None) -> Path:
    """Export the model of ``model_arg`` (a completed run directory or ``model.keras``) as
    ``fmt`` into ``out`` (default: beside ``model.keras``). Returns the path written."""
    if fmt not in FORMATS:
        raise ConfigError(f"export --format {fmt}: expected one of {', '.join(FORMATS)}")
    model_file = find_model_file(model_arg)
    target = Path(out) if out is not None else model_file.parent / DEFAULT_NAMES[fmt]
    if target.exists() and not target.is_dir():
        raise ConfigError(f"export --out {target}: exists and is not a folder; give another --out")
    from busi.model.network import load_saved_model

    keras_model = load_saved_model(model_file)
    try:
        if fmt == "openvino":
            if not openvino_available():
                raise ConfigError("export --format openvino: openvino is not installed (make install installs it)")
            ov_model = openvino_model_for(model_file, keras_model)
            if target != model_file.parent / OPENVINO_DIR:
                sha = file_sha256(model_file)
                atomic_write_dir(target, lambda p: _with_labels(write_openvino_dir(p, ov_model, sha), p, model_file))
        elif fmt == "saved_model":
            atomic_write_dir(target, lambda p: _with_labels(keras_model.export(str(p), verbose=False), p, model_file))
    except OSError as e:
        raise ConfigError(f"export --out {target}: cannot write: {e.strerror or e}") from None
    except (ConfigError, DataError):
        raise
    except Exception as e:  # a converter failure is reported, never a traceback
        raise DataError(model_file, f"export to {fmt} failed ({type(e).__name__}: {str(e)[:300]})") from None
    log.info("export: %s -> %s (%s)", model_file, target, fmt)
    return target


def _with_labels(_: object, folder: Path, model_file: Path) -> None:
    """Copy what the model's outputs and inputs mean into an exported folder."""
    for name in (LABELS_FILE, PREPROCESSING_FILE, THRESHOLDS_FILE, PRECISIONS_FILE):
        if (model_file.parent / name).is_file():
            shutil.copyfile(model_file.parent / name, folder / name)
