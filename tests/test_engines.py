"""Tests for busi.model.engines and busi.model.export: the TensorFlow and OpenVINO engines give the same
labels and probabilities within their documented tolerances, ``auto`` falls back where
OpenVINO is missing, the OpenVINO model is cached beside model.keras, exports load."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import CLASSES, REPO, SMALL, run_cli, run_main

from busi.errors import ConfigError
from busi.model.engines import choose_engine

SIZE = 64  # the trained run's image_size
# Tolerances (docs/prediction.md, "Inference engines"): OpenVINO float32 computes the same float32 graph
# with other kernels and summation orders; bfloat16 keeps 8 bits of mantissa in the convolutions.
F32_ATOL = 1e-4
# bfloat16 keeps 8 bits of mantissa in the convolutions; on a deliberately sharpened head
# (logits x40) the largest probability difference measured 0.116, so 0.2 bounds it.
BF16_ATOL = 0.2


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_auto_prefers_openvino_on_a_cpu_node_only() -> None:
    assert choose_engine("auto", gpu=False, available=True) == "openvino"
    # A handler on busi's own logger (other tests in this worker may have set it not to propagate
    # and to WARNING, as a non-primary rank's logging does): the log lines themselves.
    logger, lines = logging.getLogger("busi"), _Lines()
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        assert choose_engine("auto", gpu=True, available=True) == "tensorflow"
        assert choose_engine("auto", gpu=False, available=False) == "tensorflow"
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    text = "\n".join(lines.lines)
    assert "a GPU is visible" in text and "openvino is not installed" in text
    assert choose_engine("tensorflow", gpu=False, available=True) == "tensorflow"
    with pytest.raises(ConfigError, match=r"predict\.engine: openvino is not installed.*pip install openvino=="):
        choose_engine("openvino", gpu=False, available=False)


@pytest.mark.unit
@pytest.mark.parametrize("nodes", [[], ["null", "nvidia-uvm"], ["nvidia0"], ["nvidia3", "nvidiactl"], ["kfd"], ["dxg"]])
def test_a_gpu_device_node_is_what_makes_auto_ask_tensorflow(nodes: list[str], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """busi.model.predictor: without a GPU device node, auto picks its engine without importing
    TensorFlow; with one, TensorFlow's answer decides (both answers)."""
    import busi.runtime.cpu as cpu
    from busi.model.predictor import _engine_name

    for name in nodes:
        (tmp_path / name).touch()
    monkeypatch.setattr(cpu, "DEV", tmp_path)
    present = any(n in ("nvidia0", "nvidia3", "kfd", "dxg") for n in nodes)
    assert cpu.gpu_device_present() is present

    class FakeTf:  # what TensorFlow answers on a node with a GPU it can or cannot use
        gpus: list[str] = []

        class config:
            @staticmethod
            def list_physical_devices(kind: str) -> list[str]:
                assert kind == "GPU"
                return FakeTf.gpus

    asked: list[str] = []

    def tensorflow() -> type[FakeTf]:
        asked.append("tensorflow")
        return FakeTf

    assert _engine_name("auto", tensorflow) == "openvino"
    assert asked == (["tensorflow"] if present else [])
    FakeTf.gpus = ["/physical_device:GPU:0"]
    assert _engine_name("auto", tensorflow) == ("tensorflow" if present else "openvino")
    assert _engine_name("openvino", tensorflow) == "openvino" and _engine_name("tensorflow", tensorflow) == "tensorflow"
    assert asked == (["tensorflow", "tensorflow"] if present else [])  # asked for auto only


@pytest.fixture(scope="module")
def model_dir(trained_run: dict[str, Any]) -> Path:
    """The session's trained run (conftest ``trained_run``): its model folder as training wrote
    it, SavedModel and openvino/ included. Only read: tests that change a model folder copy it."""
    return trained_run["out"]


@pytest.fixture(scope="module")
def images(trained_run: dict[str, Any]) -> np.ndarray:
    """24 of the run's own images (every class), decoded as prediction decodes them."""
    from busi.data.images import load_image

    files = sorted(p for p in trained_run["data"].rglob("*.png") if "_mask" not in p.name)[::3][:24]
    return np.stack([load_image(f, SIZE) for f in files]).astype(np.float32)


@pytest.fixture(scope="module")
def tf_probs(model_dir: Path, images: np.ndarray) -> np.ndarray:
    """TensorFlow's probabilities for ``images``: the reference every engine is compared with
    (ResNet50 loaded once for the module)."""
    engine = _engine(model_dir, "tensorflow")
    assert engine.info.name == "tensorflow"
    return engine.run(images)


def _engine(model_dir: Path, name: str, precision: str = "auto"):  # type: ignore[no-untyped-def]
    from busi.model.predictor import load_predictor

    return load_predictor(model_dir, name, precision, batch_size=8).engine


def test_training_writes_the_openvino_model_with_its_source(model_dir: Path) -> None:
    from busi.files.digest import file_sha256

    folder = model_dir / "model" / "openvino"
    assert (folder / "model.xml").is_file() and (folder / "model.bin").is_file()
    source = json.loads((folder / "source.json").read_text())
    assert source["model_keras_sha256"] == file_sha256(model_dir / "model" / "model.keras")


def test_openvino_float32_matches_tensorflow(model_dir: Path, images: np.ndarray, tf_probs: np.ndarray) -> None:
    x = images
    ov_engine = _engine(model_dir, "openvino", "float32")
    assert ov_engine.info.as_dict()["precision"] == "float32"
    a, b = tf_probs, ov_engine.run(x)
    assert a.shape == b.shape == (24, 3)
    assert float(np.std(a)) > 0.05, "probabilities must spread for the comparison to mean anything"
    np.testing.assert_allclose(b, a, rtol=0, atol=F32_ATOL)
    assert (a.argmax(1) == b.argmax(1)).all()
    # batches that do not fill the engine's batch (3 of 8): padded, then cut
    np.testing.assert_allclose(ov_engine.run(x[:3]), a[:3], rtol=0, atol=F32_ATOL)


def test_openvino_bfloat16_stays_within_its_tolerance(model_dir: Path, images: np.ndarray, tf_probs: np.ndarray) -> None:
    import openvino as ov

    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no bfloat16 (AVX512-BF16 or AMX)")
    x = images
    a = tf_probs
    engine = _engine(model_dir, "openvino", "bfloat16")
    assert engine.info.precision == "bfloat16"
    b = engine.run(x)
    np.testing.assert_allclose(b, a, rtol=0, atol=BF16_ATOL)
    margin = np.sort(a, axis=1)[:, -1] - np.sort(a, axis=1)[:, -2]
    clear = margin > 2 * BF16_ATOL  # where TensorFlow's top two are well apart, the labels agree
    assert clear.sum() >= len(a) // 2
    assert (a.argmax(1)[clear] == b.argmax(1)[clear]).all()


def test_the_tensorflow_engine_takes_no_precision(model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="applies to the openvino engine"):
        _engine(model_dir, "tensorflow", "bfloat16")


def test_a_model_keras_alone_is_converted_once_and_cached(model_dir: Path, tmp_path: Path) -> None:
    import shutil

    from busi.model.openvino import openvino_model_for

    alone = tmp_path / "alone"
    alone.mkdir()
    for name in ("model.keras", "labels.json", "preprocessing.json"):
        shutil.copy2(model_dir / "model" / name, alone / name)
    openvino_model_for(alone / "model.keras")
    cached = alone / "openvino" / "model.xml"
    assert cached.is_file()
    stamp = cached.stat().st_mtime_ns
    openvino_model_for(alone / "model.keras")
    assert cached.stat().st_mtime_ns == stamp, "the cache is reused, not rewritten"
    # a read-only folder: converted in memory, nothing written, no error
    ro = tmp_path / "ro"
    ro.mkdir()
    for name in ("model.keras", "labels.json", "preprocessing.json"):
        shutil.copy2(model_dir / "model" / name, ro / name)
    os.chmod(ro, 0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who can write a 0555 folder (root): see the read-only mount test")
        assert openvino_model_for(ro / "model.keras") is not None
        assert not (ro / "openvino").exists()
    finally:
        os.chmod(ro, 0o755)


def test_a_stale_cache_is_converted_again(model_dir: Path, tmp_path: Path) -> None:
    import shutil

    from busi.model.openvino import openvino_model_for

    copy = tmp_path / "m"
    shutil.copytree(model_dir / "model", copy)
    (copy / "openvino" / "source.json").write_text(json.dumps({"model_keras_sha256": "0" * 64}))
    openvino_model_for(copy / "model.keras")
    from busi.files.digest import file_sha256

    assert json.loads((copy / "openvino" / "source.json").read_text())["model_keras_sha256"] == \
        file_sha256(copy / "model.keras")


def test_openvino_telemetry_is_off(model_dir: Path, tmp_path: Path) -> None:
    """A conversion in a fresh process whose HOME is empty: OpenVINO's telemetry package is not
    loaded, nothing is written under $HOME/intel (its consent and client-ID files), and no
    telemetry line is printed."""
    import shutil

    alone = tmp_path / "alone"
    alone.mkdir()
    for name in ("model.keras", "labels.json", "preprocessing.json"):
        shutil.copy2(model_dir / "model" / name, alone / name)
    home = tmp_path / "home"
    home.mkdir()
    code = ("import sys; from pathlib import Path; from busi.model.openvino import openvino_model_for; "
            "openvino_model_for(Path(sys.argv[1])); print('telemetry module:', sys.modules.get('openvino_telemetry'))")
    r = subprocess.run([sys.executable, "-c", code, str(alone / "model.keras")], capture_output=True, text=True,
                       env={**os.environ, "HOME": str(home)}, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "telemetry module: None" in r.stdout
    assert (alone / "openvino" / "model.xml").is_file()
    assert not (home / "intel").exists() and "openvino_telemetry" not in r.stderr.lower()
    assert "client id" not in (r.stdout + r.stderr).lower()


# ------------------------------------------------------------------ busi-job predict


def test_predict_records_the_engine_and_auto_uses_openvino(model_dir: Path, images: np.ndarray, tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    for i, im in enumerate(images[:5].astype(np.uint8)):
        Image.fromarray(im).save(folder / f"{i}.png")
    out = tmp_path / "p.csv"
    proc = run_cli("predict", "--model", str(model_dir), "--input", str(folder), "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    from busi.model.engines import choose_precision

    engine = json.loads((tmp_path / "p.csv.done.json").read_text())["engine"]
    # auto's precision: what the run's contracts and this CPU allow (tests/test_quantize.py checks the rule)
    assert engine["name"] == "openvino" and engine["precision"] == choose_precision("auto", model_dir / "model")[0]
    assert f"openvino {engine['version']} {engine['precision']}" in proc.stderr


BLOCK_OPENVINO = (
    "import sys; sys.modules['openvino'] = None  # as if it were not installed\n"
    "from busi.cli import main; sys.exit(main(sys.argv[1:]))\n"
)


def test_without_openvino_auto_falls_back_and_openvino_exits_2(model_dir: Path, images: np.ndarray, tmp_path: Path) -> None:
    from PIL import Image

    Image.fromarray(images[0].astype(np.uint8)).save(tmp_path / "a.png")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    base = [sys.executable, "-c", BLOCK_OPENVINO, "predict", "--model", str(model_dir), "--input",
            str(tmp_path / "a.png")]
    r = subprocess.run([*base, "--output", str(tmp_path / "a.csv")], capture_output=True, text=True, env=env,
                       cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "engine: tensorflow (openvino is not installed" in r.stderr
    assert json.loads((tmp_path / "a.csv.done.json").read_text())["engine"]["name"] == "tensorflow"
    r = subprocess.run([*base, "--output", str(tmp_path / "b.csv"), "--engine", "openvino"], capture_output=True,
                       text=True, env=env, cwd=REPO, timeout=600)
    assert r.returncode == 2 and "pip install openvino==" in r.stderr and "Traceback" not in r.stderr, r.stderr


# ----------------------------------------------------------------------------- export


def test_export_openvino_and_saved_model_load_and_match(model_dir: Path, images: np.ndarray, tf_probs: np.ndarray,
                                                       tmp_path: Path) -> None:
    import openvino as ov
    import tensorflow as tf

    from busi.model.export import export_model

    x = images[:4]
    expected = tf_probs[:4]
    ov_dir = export_model(model_dir, "openvino", tmp_path / "ov")
    assert json.loads((ov_dir / "labels.json").read_text()) == {str(i): c for i, c in enumerate(CLASSES)}
    compiled = ov.Core().compile_model(str(ov_dir / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    np.testing.assert_allclose(compiled(x)[0], expected, rtol=0, atol=F32_ATOL)
    sm = export_model(model_dir, "saved_model", tmp_path / "sm")
    served = tf.saved_model.load(str(sm))  # kept: its functions need the loaded object alive
    np.testing.assert_allclose(served.serve(tf.constant(x)).numpy(), expected, atol=1e-5)
    assert (sm / "preprocessing.json").is_file()


def test_export_refuses_a_bad_target_and_an_unfinished_run(model_dir: Path, tmp_path: Path) -> None:
    from busi.model.export import export_model

    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        export_model(model_dir, "openvino", tmp_path / "file")
    proc = run_cli("export", str(tmp_path / "nothing-here"), "--format", "openvino")
    assert proc.returncode == 3 and "no model.keras found" in proc.stderr and "Traceback" not in proc.stderr


def test_a_mixed_bfloat16_model_keras_alone_converts_for_openvino(tmp_path: Path) -> None:
    """A bfloat16 model.keras with no openvino/ beside it (copied without it, or written by an
    older busi) converts through its float32 copy: OpenVINO's TensorFlow frontend refuses
    bfloat16 constants. The cached model computes what the float32 copy computes."""
    import keras

    from busi.config.schema import ModelConfig
    from busi.model.network import build_model, float32_copy, load_saved_model
    from busi.model.openvino import import_openvino, openvino_model_for

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        built = build_model(ModelConfig(weights="none"), 32, CLASSES)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model_file = tmp_path / "model.keras"
    built.model.save(str(model_file))
    ov_model = openvino_model_for(model_file)
    assert (tmp_path / "openvino" / "model.xml").is_file()
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    compiled = import_openvino().Core().compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    reference = float32_copy(load_saved_model(model_file))(x).numpy()
    np.testing.assert_allclose(compiled(x)[0], reference, atol=F32_ATOL)


def test_a_mixed_bfloat16_run_writes_its_openvino_model(synth_data: Any, tmp_path: Path) -> None:
    """A bfloat16 training run (what train.precision auto picks on a CPU with AMX or AVX512-BF16)
    completes with model/openvino/: converted from its float32 copy, since OpenVINO's TensorFlow
    frontend refuses the SavedModel's bfloat16 constants ("unknown element type bf16")."""
    out = tmp_path / "run"
    proc = run_main("train", str(REPO / "job" / "demo.yaml"), "--set", f"data.source={synth_data(10, 32, 2)}",
                    "--set", f"output.dir={out}", "--set", "data.image_size=32", "--set", "train.batch_size=4",
                    "--set", "train.head.epochs=1", "--set", "train.finetune.epochs=1",
                    "--set", "train.precision=mixed_bfloat16", "--set", "train.gradcam_masks=false",
                    "--set", "train.quantize=none",
                    # the small model, with its SavedModel: the one OpenVINO must not convert
                    "--set", "model.backbone=mobilenet", "--set", "model.alpha=0.25")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "manifest.json").read_text())["precision"] == "mixed_bfloat16"
    assert (out / "model" / "openvino" / "model.xml").is_file()
    pred = run_main("predict", "--model", str(out), "--input", str(synth_data(10, 32, 2) / "benign"),
                    "--output", str(tmp_path / "p.csv"), "--engine", "openvino", "--precision", "float32")
    assert pred.returncode == 0 and "10 classified, 0 errors" in pred.stderr, pred.stderr[-2000:]


def test_a_run_without_a_saved_model_converts_from_keras_and_exports_it_later(synth_data: Any, tmp_path: Path) -> None:
    """``output.saved_model: false``: no model/saved_model/, the OpenVINO model converted from the
    Keras model in memory computes what model.keras computes, and ``busi-job export --format
    saved_model`` writes the SavedModel into the run's model folder later, serving the same."""
    import openvino as ov
    import tensorflow as tf

    from busi.data.images import load_image
    from busi.files.digest import file_sha256
    from busi.model.network import load_saved_model

    data = synth_data(10, 32, 2)
    out = tmp_path / "run"
    proc = run_main("train", str(REPO / "job" / "demo.yaml"), "--set", f"data.source={data}",
                    "--set", f"output.dir={out}", "--set", "data.image_size=32", "--set", "train.finetune.epochs=0",
                    "--set", "train.quantize=none", "--set", "train.gradcam_masks=false", *SMALL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = out / "model"
    assert not (model / "saved_model").exists() and (model / "openvino" / "model.xml").is_file()
    source = json.loads((model / "openvino" / "source.json").read_text())
    assert source["model_keras_sha256"] == file_sha256(model / "model.keras")
    files = sorted(p for p in data.rglob("*.png") if "_mask" not in p.name)[:6]
    x = np.stack([load_image(f, 32) for f in files]).astype(np.float32)
    expected = load_saved_model(model / "model.keras").predict(x, verbose=0)
    compiled = ov.Core().compile_model(str(model / "openvino" / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    np.testing.assert_allclose(compiled(x)[0], expected, rtol=0, atol=F32_ATOL)
    r = run_main("export", str(out), "--format", "saved_model")
    assert r.returncode == 0, r.stderr[-2000:]
    served = tf.saved_model.load(str(model / "saved_model"))  # kept: its functions need the loaded object alive
    np.testing.assert_allclose(served.serve(tf.constant(x)).numpy(), expected, atol=1e-5)
