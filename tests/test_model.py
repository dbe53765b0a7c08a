"""Model building and weight resolution: files by path, imagenet lookup, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from busi.config.schema import ModelConfig
from busi.errors import WeightsError
from busi.model.weights import IMAGENET_FILE, resolve_weights


def _build(weights: str = "none", classes: int = 3, size: int = 32, small: bool = False):  # type: ignore[no-untyped-def]
    """A busi model of ``classes`` outputs for ``size`` px images, with ``weights``: ResNet50, or
    (``small``) MobileNet at width 0.25, for what holds for every backbone (weights files)."""
    from busi.model.network import build_model

    net = {"backbone": "mobilenet", "alpha": 0.25} if small else {}
    return build_model(ModelConfig(weights=weights, **net), size, [f"class{i}" for i in range(classes)])


def test_imagenet_lookup_order(tmp_path: Path) -> None:
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / IMAGENET_FILE).write_bytes(b"x")
    keras_home = tmp_path / "kh"
    (keras_home / "models").mkdir(parents=True)
    (keras_home / "models" / IMAGENET_FILE).write_bytes(b"y")
    env = {"BUSI_WEIGHTS_DIR": str(staged), "KERAS_HOME": str(keras_home)}
    assert resolve_weights("imagenet", env) == staged / IMAGENET_FILE
    env.pop("BUSI_WEIGHTS_DIR")
    assert resolve_weights("imagenet", env) == keras_home / "models" / IMAGENET_FILE


def test_imagenet_missing_says_how_to_stage(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as e:
        resolve_weights("imagenet", {"BUSI_WEIGHTS_DIR": str(tmp_path), "KERAS_HOME": str(tmp_path)})
    msg = str(e.value)
    assert IMAGENET_FILE in msg and "fetch-weights" in msg and "BUSI_WEIGHTS_DIR" in msg


def test_missing_weights_path() -> None:
    with pytest.raises(WeightsError, match="model.weights: file /nonexistent.weights.h5 not found"):
        resolve_weights("/nonexistent.weights.h5", {})
    assert resolve_weights("none", {}) is None


@pytest.mark.integration
def test_train_with_imagenet_and_empty_cache_exits_2(tmp_path: Path, synth_small: Path) -> None:
    env = {"BUSI_WEIGHTS_DIR": str(tmp_path / "empty"), "KERAS_HOME": str(tmp_path / "keras"), "HOME": str(tmp_path)}
    out = run_cli(
        "train", str(Path(__file__).resolve().parents[1] / "job" / "demo.yaml"),
        "--set", f"data.source={synth_small}", "--set", f"output.dir={tmp_path / 'run'}",
        "--set", "model.weights=imagenet", env=env,
    )
    assert out.returncode == 2, out.stderr
    assert "fetch-weights" in out.stderr and IMAGENET_FILE in out.stderr
    assert not (tmp_path / "run" / "model").exists()


def test_weights_file_by_path_gives_identical_predictions(tmp_path: Path) -> None:
    """A weights file the test makes (save_weights of a weights: none model) loads by path."""
    first = _build(small=True)
    path = tmp_path / "mine.weights.h5"
    first.model.save_weights(str(path))
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    expected = first.model(x, training=False).numpy()

    second = _build(str(path), small=True)
    assert second.weights_loaded_into == "model"
    np.testing.assert_allclose(second.model(x, training=False).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_backbone_weights_file_loads_into_backbone(tmp_path: Path) -> None:
    """A backbone-only file (the shape of Keras' ImageNet notop file) goes into the backbone."""
    donor = _build(small=True)
    path = tmp_path / "backbone.weights.h5"
    donor.backbone.save_weights(str(path))
    built = _build(str(path), small=True)
    assert built.weights_loaded_into == "backbone"
    for a, b in zip(donor.backbone.get_weights(), built.backbone.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_mismatching_weights_file_is_a_data_error_naming_it(tmp_path: Path) -> None:
    """A weights file that is there but does not fit (another head, not HDF5 at all) is exit 3
    naming the file: the job's settings are right, the file is wrong."""
    from busi.errors import DataError

    other = _build(classes=5, small=True)  # 5 classes: head shape differs, backbone differs not
    path = tmp_path / "five.weights.h5"
    other.model.save_weights(str(path))
    with pytest.raises(DataError, match="does not fit this model") as e:
        _build(str(path), small=True)
    assert e.value.path == str(path) and e.value.exit_code == 3
    bad = tmp_path / "garbage.weights.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="does not fit this model"):
        _build(str(bad), small=True)
    bigger = _build(size=48, small=True)  # same shapes: image size is not in the weights
    path48 = tmp_path / "48.weights.h5"
    bigger.model.save_weights(str(path48))
    assert _build(str(path48), small=True).weights_loaded_into == "model"


def test_a_model_argument_without_a_model_names_the_option_and_the_path(tmp_path: Path) -> None:
    from busi.errors import DataError
    from busi.model.folder import find_model_file

    with pytest.raises(DataError) as e:
        find_model_file(tmp_path / "nothing-here")
    assert (e.value.option, e.value.path, e.value.line) == ("--model", str(tmp_path / "nothing-here"), None)
    assert str(e.value).startswith(f"--model {tmp_path / 'nothing-here'}: no model.keras found")


def test_preprocessing_lives_in_the_model_and_survives_reload(tmp_path: Path) -> None:
    from busi.model.network import load_saved_model

    built = _build()
    assert built.model.get_layer("preprocess") is not None
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    path = tmp_path / "m.keras"
    built.model.save(str(path))
    again = load_saved_model(path)
    np.testing.assert_allclose(again(x, training=False).numpy(), built.model(x, training=False).numpy(), rtol=1e-5, atol=1e-6)


def test_preprocessing_is_keras_preprocess_input_bit_for_bit() -> None:
    """float32: identical to keras.applications.resnet50.preprocess_input; mixed_bfloat16:
    identical to the layer busi used before (preprocess_input on the bf16-cast input)."""
    import keras

    from busi.model.network import preprocess_block, preprocess_layer_class

    x = np.random.default_rng(2).uniform(0, 255, (3, 16, 16, 3)).astype("float32")
    x[0, 0, 0] = (0.0, 255.0, 127.5)
    ours = np.asarray(preprocess_block(16)(x))
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, np.asarray(keras.applications.resnet50.preprocess_input(x.copy())))
    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        ours = np.asarray(preprocess_block(16)(x)).astype(np.float32)
        legacy = np.asarray(preprocess_layer_class()()(x)).astype(np.float32)
    finally:
        keras.mixed_precision.set_global_policy(before)
    np.testing.assert_array_equal(ours, legacy)


def test_float32_copy_of_a_mixed_precision_model() -> None:
    """Every layer float32, the same weights bit for bit, the same probabilities within bfloat16's
    rounding; a float32 model is its own copy."""
    import keras

    from busi.model.network import computes_in_float32, float32_copy

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        built = _build()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    copy = float32_copy(built.model)
    assert not computes_in_float32(built.model) and copy is not built.model
    layers = [*copy.layers, *copy.get_layer(built.backbone.name).layers]
    assert all(computes_in_float32(layer) for layer in layers)
    assert all(np.array_equal(a, b) for a, b in zip(copy.get_weights(), built.model.get_weights(), strict=True))
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(copy(x).numpy(), built.model(x).numpy(), atol=0.05)
    assert float32_copy(copy) is copy


def test_preprocessing_adds_no_weights() -> None:
    """Checkpoints, weight files and fingerprints of the model keep the same variables."""
    built = _build()
    assert not built.model.get_layer("preprocess").weights
    assert [w.path for w in built.model.weights if w.path.startswith("preprocess")] == []


def test_models_of_earlier_busi_versions_still_load(tmp_path: Path) -> None:
    """A model.keras with the ResNetPreprocess layer busi wrote before loads through busi."""
    import keras

    from busi.model.network import load_saved_model, preprocess_layer_class

    inputs = keras.Input((8, 8, 3))
    x = preprocess_layer_class()(name="preprocess")(inputs)
    old = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    old.save(str(tmp_path / "old.keras"))
    data = np.random.default_rng(5).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(load_saved_model(tmp_path / "old.keras")(data)), np.asarray(old(data)))


@pytest.mark.integration
def test_model_keras_loads_with_plain_keras_in_a_fresh_python(tmp_path: Path) -> None:
    """What a colleague without busi does with OUT/model/model.keras: the same probabilities.
    Tolerance: the same float32 kernels in two processes; only the order of multi-threaded
    reductions may differ (observed: identical)."""
    from conftest import make_model_dir, plain_keras_probabilities

    from busi.model.network import load_saved_model

    folder = make_model_dir(tmp_path / "run", size=32, seed=3) / "model"
    x = np.random.default_rng(4).uniform(0, 255, (5, 32, 32, 3)).astype("float32")
    theirs = plain_keras_probabilities(folder / "model.keras", x, tmp_path)
    ours = np.asarray(load_saved_model(folder / "model.keras").predict(x, verbose=0))
    assert theirs.shape == (5, 3)
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-6)


def test_unfreeze_stages() -> None:
    from busi.model.network import set_trainable

    built = _build()
    head_only = len(built.model.trainable_weights)
    set_trainable(built, "conv5", "frozen")
    conv5 = len(built.model.trainable_weights)
    set_trainable(built, "conv4", "frozen")
    conv4 = len(built.model.trainable_weights)
    set_trainable(built, "all", "frozen")
    all_ = len(built.model.trainable_weights)
    assert head_only == 2 and head_only < conv5 < conv4 < all_
    names = [v.path for v in built.model.trainable_weights]
    assert not any("_bn/" in n for n in names), "BatchNorm must stay frozen with batchnorm: frozen"
    set_trainable(built, "all", "train")
    assert any("_bn/" in v.path for v in built.model.trainable_weights)


@pytest.mark.integration  # a fresh Python: BUSI_WEIGHTS_DIR is read as a job reads it
def test_imagenet_weights_staged_in_busi_weights_dir_load_into_the_backbone(tmp_path: Path) -> None:
    """``weights: imagenet`` with Keras' notop file (its legacy HDF5 layout) staged in
    BUSI_WEIGHTS_DIR: found by name, loaded into the backbone, weights identical."""
    import os
    import subprocess
    import sys

    from fake_imagenet import NAME, write_fake_imagenet_weights

    write_fake_imagenet_weights(tmp_path / "weights" / NAME, seed=3)
    code = ("import numpy as np, keras; from busi.config.schema import ModelConfig; "
            "from busi.model.network import build_model; "
            "b = build_model(ModelConfig(weights='imagenet'), 32, ('a', 'b')); "
            "keras.utils.set_random_seed(3); r = keras.applications.ResNet50(include_top=False, weights=None); "
            "print(b.weights_loaded_into, b.weights_file, "
            "all(np.array_equal(x, y) for x, y in zip(r.get_weights(), b.backbone.get_weights())))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "BUSI_WEIGHTS_DIR": str(tmp_path / "weights")})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["backbone", str(tmp_path / "weights" / NAME), "True"]


def test_random_weights_with_frozen_batchnorm_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    """``weights: none`` with ``batchnorm: frozen`` keeps BatchNorm's initial statistics: on the
    whole BUSI every fold of such a run predicted one class (docs/training.md). The build says so;
    ``batchnorm: train`` (training from scratch) is not warned about."""
    from busi.model.network import build_model

    with caplog.at_level("WARNING", logger="busi"):
        build_model(ModelConfig(backbone="mobilenet", alpha=0.25, weights="none"), 32, ("a", "b"))
    assert "weights none with batchnorm frozen" in caplog.text and "batchnorm: train" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="busi"):
        build_model(ModelConfig(backbone="mobilenet", alpha=0.25, weights="none", batchnorm="train"), 32, ("a", "b"))
    assert "batchnorm frozen" not in caplog.text
