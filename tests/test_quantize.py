"""INT8 (busi.model.quantize, busi.train.quantize): the INT8 model training writes beside the float
model, its accuracy contract in metrics.json, the model folder and the model card; prediction
with it; ``--precision auto`` taking it only where the contract passed and the CPU has the
integer units (this CPU's answer, and a forced failing contract); and ``busi-job export
--precision int8`` for an existing run, refusing (exit 3) where the run's images are gone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import run_main

from busi.model.engines import choose_precision
from busi.model.quantize import CALIBRATION_IMAGES, INT8_DIR
from busi.runtime.cpu import INT8_FLAGS, cpu_flags


@pytest.fixture(scope="module")
def run(trained_run: dict[str, Any]) -> Path:
    return trained_run["out"]


def _splits(run: Path) -> dict[str, list[str]]:
    import csv

    out: dict[str, list[str]] = {}
    with (run / "data" / "splits.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            out.setdefault(row["split"], []).append(row["path"])
    return out


def test_training_writes_the_int8_model_and_its_contracts(run: Path) -> None:
    from busi.files.digest import file_sha256

    folder = run / "model" / INT8_DIR
    assert (folder / "model.xml").is_file() and (folder / "model.bin").is_file()
    source = json.loads((folder / "source.json").read_text())
    assert source["model_keras_sha256"] == file_sha256(run / "model" / "model.keras")
    q = source["quantization"]
    assert q["calibration_split"] == "train" and q["tool"].startswith("nncf ")
    assert q["calibration_images"] == min(CALIBRATION_IMAGES, len(_splits(run)["train"]))
    contracts = json.loads((run / "model" / "precisions.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["precisions"] == contracts
    int8 = contracts["int8"]
    assert int8["measured"] and int8["images"] == metrics["n"]
    assert 0 <= int8["label_agreement"] <= 1 and int8["passed"] == (int8["reason"] == "labels and metrics within "
                                                                    "the contract")
    for key, (lo, hi) in int8["float32_ci95"].items():
        assert lo <= int8["float32"][key] <= hi, key
    assert int8["float32_ci95"]["accuracy"] == metrics["ci95"]["accuracy"]
    bf16 = contracts["bfloat16"]
    assert bf16["measured"] or "no AMX or AVX512-BF16" in bf16["reason"]  # both answers: this CPU decides
    card = (run / "model" / "README.md").read_text()
    assert "## Reduced precisions" in card and f"{int8['label_agreement']:.1%}" in card


def test_int8_prediction_gives_the_labels_its_contract_recorded(run: Path, tmp_path: Path) -> None:
    """The INT8 model over the test split's images, through `busi-job predict --precision int8`:
    its labels agree with float32's on the share the contract measured."""
    root = Path(json.loads((run / "data" / "report.json").read_text())["root"])
    test = _splits(run)["test"]
    folder = tmp_path / "test"
    for i, p in enumerate(test):
        (folder / f"{i:03d}").mkdir(parents=True)
        (folder / f"{i:03d}" / Path(p).name).symlink_to(root / p)
    rows = {}
    for precision in ("float32", "int8"):
        out = tmp_path / f"{precision}.csv"
        r = run_main("predict", "--model", str(run), "--input", str(folder), "--output", str(out),
                     "--engine", "openvino", "--precision", precision)
        assert r.returncode == 0, r.stderr[-2000:]
        done = json.loads(Path(f"{out}.done.json").read_text())
        assert done["engine"]["precision"] == precision
        import csv

        with out.open(newline="") as fh:
            rows[precision] = {row["path"]: row["label"] for row in csv.DictReader(fh)}
    agree = np.mean([rows["int8"][p] == rows["float32"][p] for p in rows["float32"]])
    recorded = json.loads((run / "model" / "precisions.json").read_text())["int8"]["label_agreement"]
    assert abs(agree - recorded) <= 1 / len(test) + 1e-9


def _copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("tensorboard", "saved_model"))
    return dest


def test_auto_takes_int8_only_where_its_contract_passed(run: Path, tmp_path: Path) -> None:
    image = next(Path(json.loads((run / "data" / "report.json").read_text())["root"]).rglob("*.png"))
    expected, why = choose_precision("auto", run / "model")
    contract = json.loads((run / "model" / "precisions.json").read_text())["int8"]
    assert (expected == "int8") == (contract["passed"] and bool(cpu_flags() & INT8_FLAGS)), why
    r = run_main("predict", "--model", str(run), "--input", str(image), "--output", str(tmp_path / "a.csv"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "a.csv.done.json").read_text())["engine"]["precision"] == expected
    assert f"openvino {expected} ({why})" in r.stderr

    failed = _copy_run(run, tmp_path / "failed")
    contracts = json.loads((failed / "model" / "precisions.json").read_text())
    contracts["int8"].update(passed=False, reason="labels agree with float32 on 90.0% of the images (needs 99%)")
    (failed / "model" / "precisions.json").write_text(json.dumps(contracts))
    r = run_main("predict", "--model", str(failed), "--input", str(image), "--output", str(tmp_path / "b.csv"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "b.csv.done.json").read_text())["engine"]["precision"] != "int8"
    assert "the INT8 model missed its accuracy contract (labels agree with float32 on 90.0%" in r.stderr


def test_export_int8_remakes_the_model_and_contract_of_an_existing_run(run: Path, tmp_path: Path) -> None:
    copy = _copy_run(run, tmp_path / "run")
    shutil.rmtree(copy / "model" / INT8_DIR)
    (copy / "model" / "precisions.json").unlink()
    r = run_main("export", str(copy), "--format", "openvino", "--precision", "int8")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (copy / "model" / INT8_DIR / "model.xml").is_file()
    remade = json.loads((copy / "model" / "precisions.json").read_text())
    original = json.loads((run / "model" / "precisions.json").read_text())
    assert remade["int8"]["images"] == original["int8"]["images"]
    assert remade["int8"]["float32"] == pytest.approx(original["int8"]["float32"], abs=1e-6)
    assert json.loads((copy / "metrics.json").read_text())["precisions"] == remade


def test_export_int8_refuses_a_run_whose_images_are_gone(run: Path, tmp_path: Path) -> None:
    copy = _copy_run(run, tmp_path / "run")
    report = json.loads((copy / "data" / "report.json").read_text())
    report["root"] = str(tmp_path / "moved-away")
    (copy / "data" / "report.json").write_text(json.dumps(report))
    r = run_main("export", str(copy), "--format", "openvino", "--precision", "int8")
    assert r.returncode == 3, r.stderr[-2000:]
    assert "splits.csv" in r.stderr and "moved-away" in r.stderr and "Traceback" not in r.stderr
    r = run_main("export", str(copy), "--format", "saved_model", "--precision", "int8")
    assert r.returncode == 2 and "--format openvino" in r.stderr


def _predict_labels(model: Path, folder: Path, out: Path, *args: str) -> tuple[Any, dict[str, str]]:
    import csv

    r = run_main("predict", "--model", str(model), "--input", str(folder), "--output", str(out), *args)
    if r.returncode != 0:
        return r, {}
    with out.open(newline="") as fh:
        return r, {row["path"]: row["label"] for row in csv.DictReader(fh)}


def test_an_int8_model_is_never_run_for_another_model_keras(run: Path, tmp_path: Path) -> None:
    """model.keras replaced by another run's (same classes, same input), or cut short, after the
    INT8 model was made: ``--precision int8`` refuses (exit 3, naming the INT8 folder and the
    command that makes it again, or the damaged model.keras); ``auto`` predicts with the new
    model.keras itself (its labels are TensorFlow's for that file), never the old INT8 model; and
    ``export --precision int8`` makes an INT8 model of the new file, which then runs."""
    from conftest import make_model_dir

    from busi.files.digest import file_sha256

    folder = tmp_path / "images"
    root = Path(json.loads((run / "data" / "report.json").read_text())["root"])
    for i, p in enumerate(_splits(run)["test"]):
        (folder / f"{i:03d}").mkdir(parents=True)
        (folder / f"{i:03d}" / Path(p).name).symlink_to(root / p)
    swapped = _copy_run(run, tmp_path / "swapped")
    contracts = json.loads((swapped / "model" / "precisions.json").read_text())
    contracts["int8"].update(passed=True)  # so that auto would take it on a CPU with VNNI
    (swapped / "model" / "precisions.json").write_text(json.dumps(contracts))
    other = make_model_dir(tmp_path / "other", size=64, backbone="mobilenet", alpha=0.25)  # converts in seconds
    shutil.copyfile(other / "model" / "model.keras", swapped / "model" / "model.keras")

    r, _ = _predict_labels(swapped, folder, tmp_path / "int8.csv", "--engine", "openvino", "--precision", "int8")
    assert r.returncode == 3 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert f"{swapped / 'model' / INT8_DIR}: " in r.stderr and "was not quantized from this model.keras" in r.stderr
    assert f"busi-job export --model {swapped / 'model'} --format openvino --precision int8" in r.stderr
    r, auto = _predict_labels(swapped, folder, tmp_path / "auto.csv", "--engine", "openvino")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "auto.csv.done.json").read_text())["engine"]["precision"] != "int8"
    assert ("was not quantized from this model.keras" in r.stderr) == bool(cpu_flags() & INT8_FLAGS)
    r, own = _predict_labels(swapped, folder, tmp_path / "tf.csv", "--engine", "tensorflow")
    assert r.returncode == 0 and auto == own  # the new model.keras answered

    cut = _copy_run(run, tmp_path / "cut")
    (cut / "model" / "model.keras").write_bytes((run / "model" / "model.keras").read_bytes()[:1000])
    for args in (("--precision", "int8"), ("--precision", "auto")):
        r, _ = _predict_labels(cut, folder, tmp_path / "cut.csv", "--engine", "openvino", *args)
        assert r.returncode == 3 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert f"{cut / 'model' / 'model.keras'}: not a readable Keras model" in r.stderr, args

    r = run_main("export", str(swapped), "--format", "openvino", "--precision", "int8")
    assert r.returncode == 0, r.stderr[-2000:]
    sha = file_sha256(swapped / "model" / "model.keras")
    for name in ("openvino", INT8_DIR):
        assert json.loads((swapped / "model" / name / "source.json").read_text())["model_keras_sha256"] == sha
    r, _ = _predict_labels(swapped, folder, tmp_path / "remade.csv", "--engine", "openvino", "--precision", "int8")
    assert r.returncode == 0, r.stderr[-2000:]
