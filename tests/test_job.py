"""End to end: ``busi-job train`` on learnable synthetic data writes the whole run directory.

The session's one real training run (a subprocess, as a batch system runs it, shared with the
other modules that only read a finished run) is checked part by part against the run-directory
contract (docs/run-directory.md).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import (
    CLASSES,
    REPO,
    plain_keras_probabilities,
    read_tensorboard,
    run_cli,
    scalars,
)
from PIL import Image

from busi.files.rundir import RUN_FILES


@pytest.fixture(scope="module")
def trained(trained_run: dict[str, Any]) -> dict[str, Any]:
    """The session's one trained run (conftest ``trained_run``: the demo job on its data, 60
    images per class at 64 px, 1 + 10 epochs, fine-tuning conv5, deterministic, calibrated)."""
    return trained_run


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_file_of_the_contract_exists(trained: dict[str, Any]) -> None:
    out = trained["out"]
    missing = [rel for rel in RUN_FILES.values() if not (out / rel).exists()]
    assert not missing, f"missing from the run directory: {missing}"
    leftovers = [p for p in out.rglob("*") if ".tmp" in p.name]
    assert not leftovers, f"temp files left behind: {leftovers}"


@pytest.mark.unit
def test_the_stage_clock_adds_up_a_recurring_name_and_times_a_stage_that_fails() -> None:
    from busi.train.context import StageClock

    seconds: dict[str, float] = {}
    clock = StageClock(seconds)
    with clock("prepare"):
        pass
    with pytest.raises(ValueError), clock("fit"):
        raise ValueError("a stage that fails is timed all the same")
    first = seconds["prepare"]
    with clock("prepare"):
        sum(range(10_000))
    assert list(seconds) == ["prepare", "fit"] and seconds["prepare"] >= first and seconds["fit"] >= 0


def test_config_and_manifest(trained: dict[str, Any]) -> None:
    out = trained["out"]
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["data"]["image_size"] == 64 and cfg["train"]["finetune"]["epochs"] == 10
    assert cfg["runtime"]["deterministic"] is True and cfg["train"]["calibration"] == "temperature"
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "completed"
    for key in ("busi_version", "tensorflow", "keras", "python", "host", "precision", "seed", "started_at", "ended_at"):
        assert m[key] not in (None, ""), key
    assert m["cores"]["cores"] >= 1 and m["cores"]["source"] in ("affinity", "cgroup", "slurm", "config")
    assert m["cores"]["intra_op_threads"] >= 1
    assert m["seconds"]["phase_head"] > 0 and m["seconds"]["phase_finetune"] > 0
    # one entry per stage of busi.train.job, by the stage's name, and the phases inside fit
    stages = ("prepare", "start", "build", "fit", "calibrate", "save_model", "evaluate", "quantize", "publish")
    assert list(m["seconds"]) == [*stages[:3], "phase_head", "phase_finetune", *stages[3:], "total"]
    assert m["seconds"]["fit"] >= m["seconds"]["phase_head"] + m["seconds"]["phase_finetune"] - 0.01
    assert sum(m["seconds"][s] for s in stages) <= m["seconds"]["total"]
    assert m["precision"] == "float32" and m["seed"] == 0
    # what computed the cached features and the test metrics (each phase caches: the head the
    # backbone's output, the fine-tune phase the stages before conv5). train.engine auto: TensorFlow
    # fills a cache this small (converting would cost more than it saves); the evaluation runs the
    # model/openvino/ just written. (tests/test_dist.py runs a two-rank job with the caches filled by OpenVINO.)
    engines = m["engines"]
    assert set(engines["feature_cache"]) == {"head", "finetune"}
    assert {e["name"] for e in engines["feature_cache"].values()} == {"tensorflow"}
    assert engines["evaluate"]["name"] == "openvino"
    assert engines["evaluate"]["precision"] == "float32"  # train.precision float32: the engine computes in it
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["engine"] == engines["evaluate"]


def test_splits_and_report(trained: dict[str, Any]) -> None:
    out = trained["out"]
    rows = _csv(out / "data" / "splits.csv")
    assert list(rows[0]) == ["path", "label", "group", "split"]
    assert len(rows) == 180 and {r["split"] for r in rows} == {"train", "val", "test"}
    report = json.loads((out / "data" / "report.json").read_text())
    assert report["counts"]["per_class"] == {c: 60 for c in CLASSES}
    assert report["masks"]["images_with_masks"] == 180


def test_history_matches_epochs(trained: dict[str, Any]) -> None:
    rows = _csv(trained["out"] / "history.csv")
    assert list(rows[0]) == ["phase", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]
    assert rows[0]["phase"] == "head" and rows[-1]["phase"] == "finetune"
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))
    assert 2 <= len(rows) <= 11  # 1 head + up to 10 fine-tune epochs (early stopping may cut)
    for r in rows:
        assert 0.0 <= float(r["accuracy"]) <= 1.0 and 0.0 <= float(r["val_accuracy"]) <= 1.0
        assert math.isfinite(float(r["loss"])) and float(r["seconds"]) > 0


def test_metrics_are_sane_and_above_chance(trained: dict[str, Any]) -> None:
    m = json.loads((trained["out"] / "metrics.json").read_text())
    assert m["split"] == "test" and m["n"] > 0
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro"):
        assert 0.0 <= m[key] <= 1.0, key
    assert set(m["per_class"]) == set(CLASSES)
    assert sum(m["per_class"][c]["support"] for c in CLASSES) == m["n"]
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == m["n"]
    assert m["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    # chance is 1/3 on this balanced synthetic data
    assert m["accuracy"] >= 0.6, f"test accuracy {m['accuracy']:.3f} is not well above chance"


def test_metrics_carry_intervals_and_calibration(trained: dict[str, Any]) -> None:
    """Every headline figure with its 95% bootstrap interval; calibration before and after the
    temperature (fitted on the validation split, inside the model: the labels are unchanged)."""
    from busi.evaluate.calibration import (
        T_BOUNDS,
        calibration_metrics,
        with_temperature,
    )

    out = trained["out"]
    m = json.loads((out / "metrics.json").read_text())
    ci = m["ci95"]
    assert ci["resamples"] == 2000 and ci["seed"] == 0 and ci["method"] == "percentile bootstrap"
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        lo, hi = ci[key]
        assert 0 <= lo <= m[key] <= hi <= 1, key
    assert T_BOUNDS[0] <= m["temperature"] <= T_BOUNDS[1]
    rows = _csv(out / "predictions" / "test.csv")
    probs = np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in rows])
    y = [CLASSES.index(r["true_label"]) for r in rows]
    # the CSV holds the calibrated model's probabilities (6 decimals): the metrics are of them
    assert m["calibration"]["ece"] == pytest.approx(calibration_metrics(y, probs)["ece"], abs=1e-4)
    before = calibration_metrics(y, with_temperature(probs, 1 / m["temperature"]))
    assert m["calibration_before_temperature"]["brier"] == pytest.approx(before["brier"], abs=1e-4)
    assert json.loads((out / "manifest.json").read_text())["temperature"] == m["temperature"]
    card = (out / "model" / "README.md").read_text()
    assert f"accuracy {m['accuracy']:.3f} [{ci['accuracy'][0]:.3f}, {ci['accuracy'][1]:.3f}]" in card
    assert "temperature" in card and "expected calibration error" in card
    # malignant vs the rest: the threshold chosen on the validation split, stored beside the model
    point = json.loads((out / "model" / "thresholds.json").read_text())
    screen = m["positive_vs_rest"]
    assert point["positive_class"] == "malignant" and point["threshold"] == screen["threshold"]
    assert point["val_sensitivity"] >= 0.95 and point["val_positives"] >= 1
    truth = np.array(y) == CLASSES.index("malignant")
    flagged = probs[:, CLASSES.index("malignant")] >= point["threshold"]
    assert screen["at_threshold"]["tp"] == int(np.sum(truth & flagged))
    assert "Malignant vs the rest" in card
    # Grad-CAM of the true class against the lesion masks of the test images (normal: empty masks)
    cam = m["gradcam_vs_masks"]
    lesions = sum(1 for r in rows if r["true_label"] != "normal")
    # (a lesion drawn a few pixels small may vanish in the resize to 64 px: at most every lesion image)
    assert 1 <= cam["overall"]["images"] <= lesions and cam["per_class"]["normal"]["images"] == 0
    for c in ("benign", "malignant"):
        v = cam["per_class"][c]
        if v["images"]:
            assert 0 <= v["energy_inside"] <= 1 and 0 <= v["pointing_hit_rate"] <= 1 and 0 < v["mask_area"] < 1
    assert "Explanations against the lesion masks" in card
    assert f"accuracy {m['accuracy']:.3f} [" in trained["stderr"]


@pytest.mark.system  # headless Chromium
def test_report_page_renders_in_a_browser(trained: dict[str, Any], tmp_path: Path) -> None:
    """OUT/report.html, opened by headless Chromium: the run's own figures in the rendered DOM."""
    from conftest import assert_rendered

    from busi.report.format import format_interval

    out = trained["out"]
    m = json.loads((out / "metrics.json").read_text())
    values = [format_interval(m["accuracy"], m["ci95"]["accuracy"]), f"(n = {m['n']})",
              f"Temperature {m['temperature']:.3f}", "Grad-CAM of the true class"]
    assert_rendered(out / "report.html", tmp_path, values)


def test_plots_are_valid_pngs(trained: dict[str, Any]) -> None:
    for name in ("accuracy", "loss", "confusion_matrix", "roc", "calibration"):
        with Image.open(trained["out"] / "plots" / f"{name}.png") as im:
            im.verify()
            assert im.format == "PNG" and im.size[0] > 200


def test_labels_and_model_card(trained: dict[str, Any]) -> None:
    out = trained["out"]
    assert json.loads((out / "model" / "labels.json").read_text()) == {"0": "normal", "1": "benign", "2": "malignant"}
    card = (out / "model" / "README.md").read_text()
    assert "not for diagnosis" in card.lower() or "not a medical device" in card.lower()
    assert "balanced accuracy" in card


def test_saved_model_reloads_with_the_same_probabilities(trained: dict[str, Any]) -> None:
    """model.keras and the SavedModel give the probabilities written to predictions/test.csv
    (computed by the OpenVINO engine in float32: within its 1e-4 of TensorFlow, README)."""
    import tensorflow as tf

    from busi.data.images import load_image
    from busi.model.network import load_saved_model

    out, data = trained["out"], trained["data"]
    rows = _csv(out / "predictions" / "test.csv")
    assert list(rows[0])[:3] == ["path", "label", "label_index"] and list(rows[0])[-2:] == ["error", "true_label"]
    x = np.stack([load_image(data / r["path"], 64) for r in rows]).astype("float32")
    expected = np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in rows])
    model = load_saved_model(out / "model" / "model.keras")
    np.testing.assert_allclose(model(x, training=False).numpy(), expected, atol=1e-4)
    served = tf.saved_model.load(str(out / "model" / "saved_model"))
    np.testing.assert_allclose(served.serve(tf.constant(x)).numpy(), expected, atol=1e-4)
    assert all(r["label"] == CLASSES[int(r["label_index"])] for r in rows)
    np.testing.assert_allclose(expected.sum(axis=1), 1.0, atol=1e-4)


def test_model_keras_loads_with_plain_keras(trained: dict[str, Any], tmp_path: Path) -> None:
    """The trained model.keras in a Python that never imports busi: predictions/test.csv's
    probabilities (written with 6 decimals)."""
    from busi.data.images import load_image

    out, data = trained["out"], trained["data"]
    rows = _csv(out / "predictions" / "test.csv")
    x = np.stack([load_image(data / r["path"], 64) for r in rows]).astype("float32")
    expected = np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in rows])
    np.testing.assert_allclose(plain_keras_probabilities(out / "model" / "model.keras", x, tmp_path), expected,
                               atol=1e-4)  # test.csv: the OpenVINO engine's float32
    assert "keras.saving.load_model" in (out / "model" / "README.md").read_text()


def test_tensorboard_logs_match_the_history(trained: dict[str, Any]) -> None:
    out = trained["out"]
    rows = _csv(out / "history.csv")
    logs = read_tensorboard(out / "tensorboard")
    assert set(logs) == {"train", "validation", "test"}
    for run, column in (("train", "loss"), ("validation", "val_loss"), ("train", "accuracy")):
        tag = "loss" if "loss" in column else "accuracy"
        for phase in ("head", "finetune"):
            mine = [(int(r["epoch"]), round(float(r[column]), 6)) for r in rows if r["phase"] == phase]
            assert scalars(logs[run][f"{phase}/{tag}"]) == mine, (run, phase, tag)
    lrs = [(int(r["epoch"]), float(r["lr"])) for r in rows if r["phase"] == "finetune"]
    assert [(s, pytest.approx(v, rel=1e-6)) for s, v in scalars(logs["train"]["finetune/learning_rate"])] == lrs
    assert len(logs["train"]["finetune/images_per_second"]) == len(lrs)
    m = json.loads((out / "metrics.json").read_text())
    last = int(rows[-1]["epoch"])
    assert scalars(logs["test"]["test/accuracy"]) == [(last, round(m["accuracy"], 6))]
    assert {"plots/confusion_matrix", "plots/roc", "test/metrics"} <= set(logs["test"])


def test_a_completed_run_is_not_overwritten(trained: dict[str, Any]) -> None:
    proc = run_cli("train", str(REPO / "job" / "demo.yaml"), "--set", f"data.source={trained['data']}",
                   "--set", f"output.dir={trained['out']}")
    assert proc.returncode == 2
    assert "already holds a completed run" in proc.stderr and "--restart" in proc.stderr


def test_epoch_log_lines(trained: dict[str, Any]) -> None:
    lines = [l for l in trained["stderr"].splitlines() if " epoch " in l and "val_accuracy" in l]
    assert len(lines) == len(_csv(trained["out"] / "history.csv"))
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "img/s", "ETA"):
        assert key in lines[0]


def test_the_log_holds_no_tensorflow_start_up_lines(trained: dict[str, Any]) -> None:
    """busi filters TensorFlow's C++ start-up lines while it loads (TF_CPP_MIN_LOG_LEVEL unset:
    run_cli removes it; tests/test_slurm.py checks it set to 2); busi's own lines are all there."""
    err = trained["stderr"]
    for noise in ("absl::InitializeLog", "oneDNN custom operations", "This TensorFlow binary is optimized"):
        assert noise not in err, noise
    assert err.lstrip().split(" ", 2)[1] == "INFO" and " runtime: " in err and " done: " in err


def test_the_model_cards_snippet_loads_the_model_and_decodes_as_training_does(trained: dict[str, Any],
                                                                              tmp_path: Path) -> None:
    """The model card's "Loading it" code, run as written in a fresh Python, on a 16-bit
    grayscale scan: the probabilities busi's own prediction gives that file."""
    import re
    import subprocess
    import sys

    from busi.model.predictor import load_predictor

    card = (trained["out"] / "model" / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)  # type: ignore[union-attr]
    (tmp_path / "model.keras").symlink_to(trained["out"] / "model" / "model.keras")
    image = next((trained["data"] / "malignant").glob("malignant (1).png"))
    with Image.open(image) as im:
        sixteen = (np.asarray(im.convert("L"), np.uint16) * 257).astype(np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "scan.png")  # mode I;16
    with Image.open(tmp_path / "scan.png") as im:
        assert im.mode.startswith("I;16")
    code = snippet + "\nimport json; print(json.dumps([float(p) for p in probabilities]))\n"
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    got = np.array(json.loads(r.stdout.strip().splitlines()[-1]))
    predictor = load_predictor(trained["out"], "tensorflow")
    from busi.data.images import load_image

    expected = predictor.engine.run(load_image(tmp_path / "scan.png", 64)[None].astype(np.float32))[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
