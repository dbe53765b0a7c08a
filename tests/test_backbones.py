"""The backbone table (busi.model.backbones) against the networks themselves: every backbone
builds, its table rows (feature shapes, FLOPs, the stages ``top``/``top2`` train) are what the
built network has, it converts to OpenVINO and predicts Keras' probabilities; real ImageNet
weights from ``../shared/weights/`` give the features ``keras.applications`` gives with the same
file (skipped where that folder is absent); a wrong weights file is exit 3 naming it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from busi.config.schema import BACKBONES, ModelConfig
from busi.errors import ConfigError, DataError
from busi.model.backbones import TABLE, build_application, check_model, forward_gflops

WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights"
MOBILENET_025 = WEIGHTS / "mobilenet_2_5_224_tf_no_top.h5"
MOBILENET_V2 = WEIGHTS / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.tfslim.h5"
MOBILENET_V2_SHA256 = "d42a456ded3f5732b97bb61693a19bd29cd42f0e3c830508f515d593fed59a88"  # its README's


def _needs(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path} not present (real ImageNet weights ship only beside the project's CI checkout)")
    return path


def _alphas(name: str) -> tuple[float, ...]:
    return TABLE[name].alphas if len(TABLE[name].alphas) > 1 else (1.0,)


def test_the_table_is_the_schemas_list_and_checks_alpha() -> None:
    assert tuple(TABLE) == BACKBONES
    assert check_model(ModelConfig(backbone="mobilenet", alpha=0.25)).application == "MobileNet"
    with pytest.raises(ConfigError, match="model.alpha: 0.3 is not a width mobilenet has") as e:
        check_model(ModelConfig(backbone="mobilenet", alpha=0.3))
    assert e.value.keys == ("model.alpha", "model.backbone")
    with pytest.raises(ConfigError, match="only mobilenet and mobilenet_v2 take an alpha"):
        check_model(ModelConfig(backbone="resnet50", alpha=0.5))


@pytest.mark.parametrize("name", BACKBONES)
def test_the_tables_shapes_stages_and_flops_are_the_networks(name: str) -> None:
    """At every alpha with weights: the cached shapes the estimate computes without a network
    are the built network's; ``top``/``top2`` start at a stride-16/8 map and train a top part
    that is a strict, growing share of the layers; the FLOPs within 1% of the count at 224 px.
    One network per alpha, at 224 px, for all three (building it is what costs)."""
    from busi.model.network import BuiltModel

    b = TABLE[name]
    for alpha in _alphas(name):
        net = build_application(name, 224, alpha)
        built = BuiltModel(model=None, backbone=net, weights_file=None, weights_loaded_into="none", backbone_name=name)
        assert b.feature_shape("none", 224, alpha) == (int(net.output.shape[-1]),)
        firsts = []
        for unfreeze, stride in (("top", 16), ("top2", 8)):
            shape = tuple(built.top_input(unfreeze).shape[1:])
            assert shape == b.feature_shape(unfreeze, 224, alpha), (unfreeze, alpha)
            assert built.top_input(unfreeze).shape[1] == 224 // stride
            firsts.append(built.first_trainable(unfreeze))
        assert 0 < firsts[1] < firsts[0] < len(net.layers)
        full = forward_gflops(net)
        assert abs(full - b.cost(224, alpha)) <= 0.01 * full, (alpha, full)
    assert b.cost(112) == pytest.approx(b.cost(224) / 4)


@pytest.mark.parametrize("name", BACKBONES)
def test_every_backbone_trains_its_top_and_converts_to_openvino(name: str) -> None:
    """busi's model on each backbone at 32 px: ``top`` makes only the top stage's layers
    trainable (BatchNorm frozen under batchnorm: frozen); OpenVINO's conversion predicts the
    probabilities Keras does; the feature cache's frozen part and the top part on its output
    compute exactly the backbone's output, for ``top`` and ``top2``."""
    import keras

    from busi.model.engines import OpenVINOEngine
    from busi.model.features import frozen_model
    from busi.model.network import build_model, set_trainable
    from busi.model.openvino import to_openvino

    keras.utils.set_random_seed(0)
    built = build_model(ModelConfig(backbone=name, weights="none", alpha=_alphas(name)[0]), 32, ("a", "b", "c"))
    set_trainable(built, "top", "frozen")
    first = built.first_trainable("top")
    layers = built.backbone.layers
    assert all(not l.trainable for l in layers[:first] if l.weights)
    assert any(l.trainable and l.weights for l in layers[first:])
    assert not any(l.trainable for l in layers if isinstance(l, keras.layers.BatchNormalization))
    x = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    expected = built.model(x, training=False).numpy()
    got = OpenVINOEngine(to_openvino(built.model), 4, "float32").run(x)
    np.testing.assert_allclose(got, expected, atol=2e-4)
    features = built.backbone(built.model.get_layer("preprocess")(x), training=False).numpy()
    for unfreeze in ("top", "top2"):  # the feature cache's split: frozen part, then the top part on its output
        top = keras.Model(built.top_input(unfreeze), built.backbone.output)
        np.testing.assert_array_equal(top(frozen_model(built, unfreeze)(x, training=False), training=False).numpy(),
                                      features)


def test_the_efficientnet_correction_is_kerass_extra_rescaling() -> None:
    """EfficientNet's ImageNet model divides its normalised input by sqrt(std) once more; busi's
    preprocess block does it as an affine map of the 0-255 input, before the network's own
    normalisation: the two agree on every pixel."""
    from busi.model.backbones import EFFICIENTNET_MEAN_RGB, EFFICIENTNET_STDDEV_RGB
    from busi.model.network import preprocess_block

    x = np.random.default_rng(2).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    m, s = np.array(EFFICIENTNET_MEAN_RGB), np.array(EFFICIENTNET_STDDEV_RGB)
    kerass = (x / 255 - m) / s / np.sqrt(s)  # Normalization with variance std**2, then Rescaling(1/sqrt(std))
    corrected = preprocess_block(8, "efficientnet_b0", pretrained=True)(x).numpy()
    np.testing.assert_allclose((corrected / 255 - m) / s, kerass, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(preprocess_block(8, "efficientnet_b0", pretrained=False)(x).numpy(), x)


def _features(built: Any, x: np.ndarray) -> np.ndarray:
    import keras

    pooled = keras.Model(built.model.input, built.model.get_layer("pool").output)
    return pooled(x, training=False).numpy()


@pytest.mark.parametrize("name, alpha, module", [("mobilenet", 0.25, "mobilenet"),
                                                 ("mobilenet_v2", 1.0, "mobilenet_v2")])
def test_real_imagenet_weights_give_the_features_keras_gives(name: str, alpha: float, module: str,
                                                              tmp_path: Path) -> None:
    """The real ImageNet files: MobileNet 0.25 found by Keras' own name in BUSI_WEIGHTS_DIR
    (``weights: imagenet``), MobileNetV2 by path with its sha256. busi's model (its preprocessing
    inside) gives the pooled features of ``keras.applications`` loading the same file after
    that backbone's own ``preprocess_input``: weights silently not applied, or a wrong
    preprocessing, differ by far more than this."""
    import keras

    from busi.model.network import build_model

    path = _needs(MOBILENET_025 if name == "mobilenet" else MOBILENET_V2)
    if name == "mobilenet":
        cfg, env = ModelConfig(backbone=name, alpha=alpha, weights="imagenet"), {"BUSI_WEIGHTS_DIR": str(WEIGHTS)}
    else:
        cfg, env = ModelConfig(backbone=name, weights=str(path), weights_sha256=MOBILENET_V2_SHA256), {}
    built = build_model(cfg, 64, ("a", "b", "c"), weights_env=env)
    assert built.weights_file == path and built.weights_loaded_into == "backbone"
    assert built.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    app = getattr(keras.applications, TABLE[name].application)
    reference = app(include_top=False, weights=str(path), input_shape=(64, 64, 3), alpha=alpha, pooling="avg")
    preprocess = getattr(keras.applications, module).preprocess_input
    x = np.random.default_rng(3).uniform(0, 255, (4, 64, 64, 3)).astype(np.float32)
    expected = reference(preprocess(x.copy()), training=False).numpy()
    np.testing.assert_allclose(_features(built, x), expected, rtol=1e-4, atol=1e-4)
    random = build_model(ModelConfig(backbone=name, alpha=alpha, weights="none"), 64, ("a", "b", "c"))
    assert np.abs(_features(random, x) - expected).max() > 100 * 1e-4  # the test can tell weights from none


def test_a_wrong_weights_file_is_exit_3_naming_it(tmp_path: Path) -> None:
    """Another backbone's file, one cut short, one with another sha256 than the job names: each a
    DataError naming the file (exit 3), never random weights."""
    from busi.model.network import build_model

    v2 = _needs(MOBILENET_V2)
    with pytest.raises(DataError, match="does not fit this model") as e:  # MobileNetV2's file for MobileNet
        build_model(ModelConfig(backbone="mobilenet", weights=str(v2)), 32, ("a", "b"))
    assert e.value.path == str(v2) and e.value.exit_code == 3
    cut = tmp_path / "cut.h5"
    cut.write_bytes(v2.read_bytes()[: v2.stat().st_size // 2])
    with pytest.raises(DataError, match="does not fit this model") as e:
        build_model(ModelConfig(backbone="mobilenet_v2", weights=str(cut)), 32, ("a", "b"))
    assert e.value.path == str(cut)
    with pytest.raises(DataError, match="but model.weights_sha256 is") as e:
        build_model(ModelConfig(backbone="mobilenet_v2", weights=str(v2), weights_sha256="0" * 64), 32, ("a", "b"))
    assert e.value.path == str(v2)


def test_fetch_weights_without_a_network_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """``fetch-weights`` where no download gets through (these machines, a cluster's login node
    behind a proxy): exit 1 with one line naming the file, the address and what to do instead;
    no traceback, and no file left under the name a job looks for."""
    import urllib.error

    import keras

    from busi.cli import main

    def refused(fname: str, origin: str, **kw: Any) -> str:
        (Path(kw["cache_dir"]) / fname).write_bytes(b"partial")
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", refused)
    assert main(["fetch-weights", "--dir", str(tmp_path), "--backbone", "mobilenet_v2,resnet50"]) == 1
    err = capsys.readouterr().err
    assert "cannot download mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5" in err
    assert "copy it into" in err and "Traceback" not in err and not list(tmp_path.iterdir())
    assert main(["fetch-weights", "--backbone", "resnet"]) == 2


@pytest.mark.integration
def test_mobilenet_v2_with_real_weights_runs_the_whole_path(sample_zip: Path, tmp_path: Path) -> None:
    """The BUSI sample (55 real images with masks) on MobileNetV2 with its real ImageNet file:
    training with the feature cache (head, then ``top`` on the cached stride-16 map), INT8 with
    its contract, Grad-CAM against the masks; the run records the backbone and the file's sha256
    (manifest, model card, preprocessing.json); prediction over the images with Grad-CAM gives
    TensorFlow's labels on OpenVINO. One epoch per phase is a cached phase each; no SavedModel
    (``output.saved_model: false``: tests/test_job.py exports one); training and prediction run
    in this process (the shared trained run and tests/test_predict.py run them as commands)."""
    import csv
    import json

    from conftest import REPO, run_main

    path = _needs(MOBILENET_V2)
    out = tmp_path / "run"
    sets = {"data.source": sample_zip, "output.dir": out, "data.image_size": 64, "model.backbone": "mobilenet_v2",
            "model.weights": path, "model.weights_sha256": MOBILENET_V2_SHA256, "train.batch_size": 8,
            "train.head.epochs": 1, "train.finetune.epochs": 1, "train.finetune.unfreeze": "top",
            "train.finetune.learning_rate": 1e-4, "output.saved_model": "false"}
    r = run_main("train", str(REPO / "job" / "busi.yaml"), *[f"--set={k}={v}" for k, v in sets.items()])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "feature cache" in r.stderr and f"model: mobilenet_v2 (alpha 1), weights {path}" in r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backbone"] == {"name": "mobilenet_v2", "alpha": 1.0}
    assert manifest["weights"]["sha256"] == MOBILENET_V2_SHA256 and manifest["weights"]["loaded_into"] == "backbone"
    prep = json.loads((out / "model" / "preprocessing.json").read_text())
    assert prep["backbone"] == "mobilenet_v2" and prep["preprocess"].startswith("tf")
    card = (out / "model" / "README.md").read_text()
    assert "# busi MobileNetV2 breast ultrasound classifier" in card and MOBILENET_V2_SHA256 in card
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["gradcam_vs_masks"]["overall"]["images"] > 0 and metrics["precisions"]["int8"]["measured"]
    assert (out / "model" / "openvino-int8" / "model.xml").is_file()

    images = tmp_path / "images"
    root = Path(json.loads((out / "data" / "report.json").read_text())["root"])
    for p in sorted(root.rglob("*.png"))[:12]:
        if "_mask" not in p.name:
            images.mkdir(exist_ok=True)
            (images / p.name).symlink_to(p)
    labels = {}
    for engine in ("tensorflow", "openvino"):
        csv_out = tmp_path / f"{engine}.csv"
        extra = ("--gradcam", str(tmp_path / "cams")) if engine == "openvino" else ()
        r = run_main("predict", "--model", str(out), "--input", str(images), "--output", str(csv_out),
                     "--engine", engine, "--precision", "float32" if engine == "openvino" else "auto", *extra)
        assert r.returncode == 0, r.stderr[-2000:]
        with csv_out.open(newline="") as fh:
            labels[engine] = {row["path"]: row["label"] for row in csv.DictReader(fh)}
    assert labels["tensorflow"] == labels["openvino"] and len(labels["openvino"]) == len(list(images.iterdir()))
    assert len(list((tmp_path / "cams").rglob("*.png"))) == len(labels["openvino"])


def test_mobilenet_v2_killed_mid_fine_tune_resumes_to_the_uninterrupted_result(synth_data: Any, tmp_path: Path) -> None:
    """Resume on a backbone other than ResNet50, in the training precision ``auto`` picks on this
    CPU (mixed bfloat16 where it has AVX512-BF16 or AMX, else float32; the manifest says which):
    killed (SIGKILL, as the OOM killer does it) before a fine-tune step of ``top`` on the feature
    cache, the same command resumes from the last checkpoint to the history and test predictions
    of a run never interrupted (deterministic mode)."""
    import csv
    import json
    import os

    from conftest import REPO, run_cli, run_main

    from busi.runtime.cpu import cpu_has_bf16
    from busi.runtime.faults import FAIL_AT_STEP_VAR

    data = synth_data(8, 32, 11)
    sets = [f"--set={s}" for s in ("data.image_size=32", "train.batch_size=4", "train.head.epochs=1",
                                   "train.finetune.epochs=2", "train.finetune.unfreeze=top", "train.quantize=none",
                                   "train.gradcam_masks=false", "runtime.deterministic=true",
                                   "output.saved_model=false", "model.backbone=mobilenet_v2", "train.precision=auto",
                                   f"data.source={data}")]

    def train(out: Path, env: dict[str, str] | None = None) -> Any:
        if env is None:  # in this process: only the killed run needs one of its own
            return run_main("train", str(REPO / "job" / "demo.yaml"), f"--set=output.dir={out}", *sets)
        return run_cli("train", str(REPO / "job" / "demo.yaml"), f"--set=output.dir={out}", *sets,
                       env={**os.environ, **env})

    whole = train(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    with (tmp_path / "whole" / "data" / "splits.csv").open(newline="") as fh:
        per_epoch = -(-sum(r["split"] == "train" for r in csv.DictReader(fh)) // 4)  # steps of 4 images
    # the head's epoch, the first fine-tune epoch (checkpointed), then killed inside the second
    killed = train(tmp_path / "run", {FAIL_AT_STEP_VAR: f"0:{2 * per_epoch + 2}:kill"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = train(tmp_path / "run")
    assert resumed.returncode == 0 and "resuming" in resumed.stderr, resumed.stderr[-3000:]

    def read(out: Path, name: str) -> list[dict[str, str]]:
        with (out / name).open(newline="") as fh:
            return list(csv.DictReader(fh))

    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "completed" and len(manifest["attempts"]) == 2
    assert manifest["backbone"]["name"] == "mobilenet_v2"
    assert manifest["precision"] == ("mixed_bfloat16" if cpu_has_bf16() else "float32")
    for a, b in zip(read(tmp_path / "whole", "history.csv"), read(tmp_path / "run", "history.csv"), strict=True):
        assert float(a["val_loss"]) == pytest.approx(float(b["val_loss"]), abs=1e-4), (a, b)
    p1, p2 = read(tmp_path / "whole", "predictions/test.csv"), read(tmp_path / "run", "predictions/test.csv")
    assert [(r["path"], r["label"]) for r in p1] == [(r["path"], r["label"]) for r in p2]
