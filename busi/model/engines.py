"""Inference engines behind one small interface: ``engine.run(batch) -> array``.

``tensorflow`` runs the Keras model (a traced, fixed-shape ``tf.function``); ``openvino`` runs
the same model converted by OpenVINO (Intel's CPU inference runtime; ``pip install openvino``,
part of busi's default install), which on a CPU runs ResNet50 at 1.4x TensorFlow's speed in
float32 and about 2.8x in bfloat16 on CPUs with AMX (docs, "Performance"). ``auto`` picks
OpenVINO on a node without a GPU where it is installed, else TensorFlow. Precision
(``auto|float32|bfloat16|int8``) is OpenVINO's: ``int8`` runs the model folder's quantized
model (``busi.model.quantize``); ``auto`` (``choose_precision``) takes the fastest precision
that passed its accuracy contract (``model/precisions.json``, ``busi.evaluate.precision``) and
that this CPU runs fast: INT8 with VNNI or AMX-INT8, bfloat16 with AMX or AVX512-BF16, else
float32. The TensorFlow engine computes in the model's own dtype policy. Converting and
caching the OpenVINO model: ``busi.model.openvino``.

Every model derived from ``model.keras`` (``openvino/``, which float32 and bfloat16 run, and
``openvino-int8/``) records the sha256 of the ``model.keras`` it was made from, and is run only
for that file: a stale ``openvino/`` is converted again; a stale INT8 model cannot be made again
here (it needs the run's training images), so ``--precision int8`` refuses it and ``auto`` takes
the next best precision, each saying what to run (``resolve_precision``).
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from busi.errors import ConfigError, DataError
from busi.files.digest import file_sha256
from busi.model.folder import read_precisions
from busi.model.openvino import (
    OPENVINO_PIN,
    OPENVINO_SOURCE,
    OPENVINO_XML,
    converted_from,
    import_openvino,
    openvino_model_for,
    read_openvino_dir,
)
from busi.model.quantize import INT8_DIR
from busi.runtime.cpu import BF16_FLAGS, INT8_FLAGS, cpu_flags

log = logging.getLogger("busi")


# OpenVINO's names for its element types -> busi's precision names
_OV_PRECISION = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}
_OV_HINT = {"float32": "f32", "bfloat16": "bf16"}


@dataclass(frozen=True)
class EngineInfo:
    """What computed the probabilities (recorded in manifests, logs and done markers)."""

    name: str  # tensorflow | openvino
    version: str
    precision: str  # float32 | bfloat16 | float16

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def label(self) -> str:
        return f"{self.name} {self.version} {self.precision}"


class Engine(Protocol):
    info: EngineInfo
    image_size: int  # S, the side of the square input
    outputs: int  # the width of the output: classes, or a frozen part's feature channels

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The model's output for ``batch`` (N x S x S x 3 float32 RGB 0-255): the classifier's
        class probabilities (N x classes), or a frozen part's features."""


@dataclass(frozen=True)
class Host:
    """What choosing and starting an engine needs to know of this process's node."""

    gpu: bool = False  # TensorFlow sees a GPU
    threads: int | None = None  # cores of this process (OpenVINO's INFERENCE_NUM_THREADS); None: all


# Training's engine (``train.engine``) computes in the training policy's precision, so the
# cached features and the test metrics are what TensorFlow would compute, within the engine's
# tolerance: float32 under float32; under mixed_bfloat16 OpenVINO's own choice (bfloat16 on a
# CPU with AMX / AVX512-BF16, float32 on one without, where TensorFlow emulates bfloat16).
_POLICY_PRECISION = {"float32": "float32"}


def policy_precision(policy: str) -> str:
    """The OpenVINO precision matching Keras dtype policy ``policy`` (``float32`` or ``auto``)."""
    return _POLICY_PRECISION.get(policy, "auto")


# Converting ResNet50 for OpenVINO (``ov.convert_model`` on the Keras model, then compiling) took
# 6-7 s here at any input size. ``train.engine: auto`` converts a frozen part for a feature-cache
# fill only when the fill is big enough to repay that: this many images at 224 px through the whole
# backbone (smaller images and a shorter prefix count pro rata). Break-even = conversion seconds /
# (1 / TensorFlow's img/s - 1 / OpenVINO's): ~130 images on 2026-12-02's AMD EPYC (9.4 against
# 16.7 img/s in float32), ~480 in float32 and ~200 in bfloat16 on the AMX CPU of issue #15
# (20.2 against 27.5 and 56.7 img/s). The thresholds sit at or above the break-even of both.
BREAK_EVEN_IMAGES = {"float32": 500.0, "auto": 200.0}


def worth_converting(work_images: float, precision: str) -> bool:
    """Whether a forward pass over ``work_images`` (224 px, whole-backbone equivalents) repays a
    conversion at OpenVINO precision ``precision`` (``policy_precision``'s answer)."""
    return work_images >= BREAK_EVEN_IMAGES.get(precision, BREAK_EVEN_IMAGES["float32"])


def choose_engine(setting: str, gpu: bool, available: bool, key: str = "predict.engine") -> str:
    """The engine for ``setting`` (``auto``, ``tensorflow``, ``openvino``). ``auto``: OpenVINO
    on a node without a GPU where it is installed, else TensorFlow (with a log line saying why)."""
    if setting == "tensorflow":
        return "tensorflow"
    if setting == "openvino":
        if not available:
            raise ConfigError(f"{key}: openvino is not installed in this Python; install it with "
                              f"`pip install {OPENVINO_PIN}` (make install does), or use the tensorflow engine")
        return "openvino"
    if gpu:
        log.info("engine: tensorflow (a GPU is visible; OpenVINO is busi's CPU engine)")
        return "tensorflow"
    if not available:
        log.info("engine: tensorflow (openvino is not installed: `pip install %s` for the faster CPU engine)",
                 OPENVINO_PIN)
        return "tensorflow"
    return "openvino"


def choose_precision(setting: str, model_dir: Path, flags: frozenset[str] | None = None,
                     int8_stale: str | None = None) -> tuple[str, str]:
    """OpenVINO's precision for ``setting`` and why: ``auto`` takes INT8 where the model folder
    holds an INT8 model that passed its contract and the CPU (``flags``, default this one's) has
    VNNI or AMX-INT8; else bfloat16 where the CPU has AMX or AVX512-BF16 and the contract did not
    fail (a model trained before contracts were measured has none); else float32.
    ``int8_stale``: why the folder's INT8 model is not of its model.keras (``int8_mismatch``)."""
    if setting != "auto":
        return setting, "asked for"
    flags = cpu_flags() if flags is None else flags
    contracts = read_precisions(model_dir)
    int8, bf16 = contracts.get("int8", {}), contracts.get("bfloat16", {})
    why: list[str] = []
    if not (model_dir / INT8_DIR / OPENVINO_XML).is_file():
        why.append("no INT8 model in the model folder")
    elif int8_stale is not None:
        why.append(int8_stale)
    elif not int8.get("passed"):
        why.append(f"the INT8 model missed its accuracy contract ({int8.get('reason', 'not measured')})")
    elif not flags & INT8_FLAGS:
        why.append("this CPU has no VNNI or AMX-INT8")
    else:
        return "int8", "the INT8 model passed its accuracy contract and this CPU has VNNI/AMX-INT8"
    if not flags & BF16_FLAGS:
        return "float32", "; ".join([*why, "no AMX or AVX512-BF16 for bfloat16"])
    if bf16 and not bf16.get("passed"):
        return "float32", "; ".join([*why, f"bfloat16 missed its accuracy contract ({bf16.get('reason')})"])
    return "bfloat16", "; ".join([*why, "bfloat16 on AMX/AVX512-BF16"])


def int8_mismatch(model_file: Path, model_sha256: str) -> str | None:
    """Why the INT8 model beside ``model_file`` (of hash ``model_sha256``) is not of it: it records
    another file's hash, or none (None: it is of this file, or there is no INT8 model)."""
    folder = model_file.parent / INT8_DIR
    if not (folder / OPENVINO_XML).is_file() or converted_from(folder, model_sha256):
        return None
    return (f"{folder} was not quantized from this {model_file.name} (its {OPENVINO_SOURCE} records another "
            f"file's sha256: {model_file.name} was replaced, retrained or damaged after it was made)")


def resolve_precision(setting: str, model_file: Path, model_sha256: Callable[[], str],
                      flags: frozenset[str] | None = None) -> tuple[str, str]:
    """``choose_precision`` for ``model_file``'s folder, where an INT8 model is taken only when it
    was quantized from this very file (``model_sha256`` hashes it, asked only then): ``int8`` asked
    for is a DataError naming a stale INT8 folder and what to run (or naming ``model_file`` where
    that is no Keras archive at all); ``auto`` takes the next best precision, with a warning.
    ``flags``: the CPU's (``choose_precision``)."""
    precision, why = choose_precision(setting, model_file.parent, flags)
    if precision != "int8":
        return precision, why
    stale = int8_mismatch(model_file, model_sha256())
    if stale is None:
        return precision, why
    remedy = (f"make it again with `busi-job export --model {model_file.parent} --format openvino --precision int8`")
    if setting == "int8":
        if not zipfile.is_zipfile(model_file):
            raise DataError(model_file, "not a readable Keras model (damaged or cut short: not a .keras archive); "
                            "point --model at a complete run directory or model.keras")
        raise DataError(model_file.parent / INT8_DIR, f"{stale}; {remedy}, or predict with --precision float32")
    log.warning("engine: %s; %s. Meanwhile the float model predicts", stale, remedy)
    return choose_precision(setting, model_file.parent, flags, int8_stale=stale)


# ------------------------------------------------------------------ TensorFlow


def tensorflow_info(model: Any) -> EngineInfo:
    """TensorFlow running ``model`` in its own dtype policy's compute dtype."""
    import keras
    import tensorflow as tf

    compute = getattr(getattr(model, "dtype_policy", None), "compute_dtype", "float32")
    return EngineInfo("tensorflow", f"{tf.__version__} (keras {keras.__version__})", str(compute))


class TensorFlowEngine:
    """The Keras model's forward pass, traced once for a fixed batch shape."""

    def __init__(self, model: Any, batch_size: int, image_size: int) -> None:
        import tensorflow as tf

        self.model, self.batch_size, self.image_size = model, batch_size, image_size
        self.outputs = int(model.output_shape[-1])
        spec = tf.TensorSpec([batch_size, image_size, image_size, 3], tf.float32)
        self._forward = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        self._forward(tf.zeros(spec.shape))  # trace now, outside any timing
        self.info = tensorflow_info(model)

    def run(self, batch: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        n = len(batch)
        out = np.empty((n, self.outputs), np.float32)
        for i in range(0, n, self.batch_size):
            part = _padded(batch[i : i + self.batch_size], self.batch_size)
            out[i : i + self.batch_size] = self._forward(tf.constant(part)).numpy()[: min(self.batch_size, n - i)]
        return out


# -------------------------------------------------------------------- OpenVINO


class OpenVINOEngine:
    """A compiled OpenVINO model. Each batch is split over the runtime's parallel inference
    requests (its streams: 2 on a 2-core AMX CPU), which run at once."""

    def __init__(self, ov_model: Any, batch_size: int, precision: str = "auto", threads: int | None = None) -> None:
        """``precision``: ``auto`` (the runtime's choice), ``float32``, ``bfloat16``, or ``int8``
        for a quantized ``ov_model`` (its remaining float parts in the runtime's choice)."""
        ov = import_openvino()
        core = ov.Core()
        config: dict[str, Any] = {"PERFORMANCE_HINT": "THROUGHPUT"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if precision in _OV_HINT:
            if precision == "bfloat16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
                raise ConfigError("predict.precision: bfloat16 needs a CPU with AVX512-BF16 or AMX, which this one "
                                  "lacks; use auto or float32")
            config["INFERENCE_PRECISION_HINT"] = _OV_HINT[precision]
        probe = core.compile_model(ov_model, "CPU", config)
        requests = max(1, int(probe.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.per_request = max(1, -(-batch_size // requests))  # ceil: every request gets a share
        shaped = ov_model.clone()
        shaped.reshape([self.per_request, *[d.get_length() for d in list(ov_model.input(0).get_partial_shape())[1:]]])
        self.compiled = core.compile_model(shaped, "CPU", config)
        self.image_size = int(ov_model.input(0).get_partial_shape()[1].get_length())  # N x S x S x 3
        self.outputs = int(ov_model.output(0).get_partial_shape()[-1].get_length())
        self.requests = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._queue = ov.AsyncInferQueue(self.compiled, self.requests)
        self._results: dict[int, np.ndarray] = {}
        self._queue.set_callback(self._done)
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        name = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        self.info = EngineInfo("openvino", ov.__version__.split("-")[0],
                               "int8" if precision == "int8" else _OV_PRECISION.get(name, name))

    def _done(self, request: Any, index: int) -> None:
        self._results[index] = np.array(request.get_output_tensor(0).data, copy=True)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The model's output for ``batch``, its parts run side by side."""
        n, k = len(batch), self.per_request
        self._results = {}
        parts = range(0, n, k)
        for j, i in enumerate(parts):
            self._queue.start_async({0: _padded(batch[i : i + k], k)}, j)
        self._queue.wait_all()
        return np.concatenate([self._results[j] for j in range(len(parts))])[:n]


def _padded(x: np.ndarray, size: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) == size:
        return x
    out = np.zeros((size, *x.shape[1:]), np.float32)
    out[: len(x)] = x
    return out


def make_engine(name: str, precision: str, model_file: Path, keras_model: Any, batch_size: int,
                threads: int | None = None, model_sha256: Callable[[], str] | None = None,
                chosen: tuple[str, str] | None = None) -> Engine:
    """The engine ``name`` (already chosen: ``tensorflow`` or ``openvino``) for ``model_file``:
    ``keras_model`` is its loaded model (the tensorflow engine needs it; OpenVINO only to convert),
    ``model_sha256`` hashes the file (once, where the caller has already: ``busi.model.predictor``),
    ``chosen`` the precision and why where the caller has resolved ``precision`` already."""
    if name == "tensorflow":
        if precision != "auto":
            raise ConfigError(f"predict.precision: {precision} applies to the openvino engine; the tensorflow engine "
                              "computes in the model's own policy (use precision auto)")
        return TensorFlowEngine(keras_model, batch_size, int(keras_model.input_shape[1]))
    sha = model_sha256 or (lambda: file_sha256(model_file))
    precision, why = chosen or resolve_precision(precision, model_file, sha)
    if precision == "int8":
        return _int8_engine(model_file, batch_size, threads, why)
    try:
        ov_model = openvino_model_for(model_file, keras_model, sha())
    except ConfigError:
        raise
    except Exception as e:  # the converter raises many kinds on a model it cannot read
        raise DataError(model_file, f"OpenVINO cannot convert this model ({type(e).__name__}: {str(e)[:200]}); "
                        "use --engine tensorflow") from None
    engine = OpenVINOEngine(ov_model, batch_size, precision, threads)
    log.info("engine: openvino %s (%s)", engine.info.precision, why)
    return engine


def _int8_engine(model_file: Path, batch_size: int, threads: int | None, why: str) -> Engine:
    folder = model_file.parent / INT8_DIR
    if not (folder / OPENVINO_XML).is_file():
        raise ConfigError(f"--precision int8: {model_file.parent} holds no INT8 model ({INT8_DIR}/); make one with "
                          f"`busi-job export --model {model_file.parent} --format openvino --precision int8`")
    if not cpu_flags() & INT8_FLAGS:
        log.warning("engine: this CPU has no VNNI or AMX-INT8: INT8 may run slower than float32 here")
    try:
        engine = OpenVINOEngine(read_openvino_dir(folder), batch_size, "int8", threads)
    except ConfigError:
        raise
    except Exception as e:
        raise DataError(folder / OPENVINO_XML, f"OpenVINO cannot run this INT8 model ({type(e).__name__}: "
                        f"{str(e)[:200]}); export it again or use --precision float32") from None
    log.info("engine: openvino int8 (%s)", why)
    return engine
