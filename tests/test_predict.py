"""``busi-job predict``: one row per file whatever the file, shards, merge, resume, Grad-CAM.

The model is the session's trained run (conftest ``trained_run``; only read here: copies are
made where a test changes the model folder). Runs are real subprocesses, as a batch job runs them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import CLASSES, REPO, linked_copies, run_cli, run_main
from PIL import Image

from busi.data.inputs import expand_inputs
from busi.files.text import open_text
from busi.model.predictor import load_predictor
from busi.predict.output import CsvSink, done_marker, prediction_columns

SIZE = 64  # the trained run's image_size


@pytest.fixture(scope="module")
def model_dir(trained_run: dict[str, Any]) -> Path:
    return trained_run["out"]


def _rgb(rng: np.random.Generator, w: int = 60, h: int = 48) -> np.ndarray:
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A folder tree with every kind of file a real folder of scans holds."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("messy") / "in"
    (root / "a" / "b").mkdir(parents=True)
    (root / "c").mkdir()
    good: list[str] = []
    bad: list[str] = []

    def save(rel: str, im: Image.Image, **kw: object) -> None:
        im.save(root / rel, **kw)
        good.append(rel)

    save("plain.png", Image.fromarray(_rgb(rng)))
    save("a/nested.png", Image.fromarray(_rgb(rng)))
    save("a/b/deeper.png", Image.fromarray(_rgb(rng)))
    save("a/sixteen.png", Image.fromarray((rng.integers(0, 65535, (40, 50))).astype(np.uint16)))
    save("a/rgba.png", Image.fromarray(np.dstack([_rgb(rng), np.full((48, 60), 200, np.uint8)]), mode="RGBA"))
    save("c/palette.png", Image.fromarray(_rgb(rng)).convert("P", palette=Image.Palette.ADAPTIVE))
    save("c/cmyk.jpg", Image.fromarray(_rgb(rng)).convert("CMYK"), format="JPEG")
    save("c/gray.jpg", Image.fromarray(_rgb(rng)[..., 0], mode="L"), format="JPEG")
    save("c/scan.bmp", Image.fromarray(_rgb(rng)), format="BMP")
    # bad files: each must get a row with an error
    buf = io.BytesIO()
    Image.fromarray(_rgb(rng, 200, 200)).save(buf, format="PNG")
    (root / "a" / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "c" / "notes.png").write_text("this is not an image\n")
    bad += ["a/truncated.png", "empty.png", "c/notes.png"]
    # masks: skipped by default
    Image.fromarray(np.zeros((48, 60), np.uint8)).save(root / "plain_mask.png")
    Image.fromarray(np.zeros((48, 60), np.uint8)).save(root / "a" / "nested_mask_1.png")
    return {"root": root, "good": sorted(good), "bad": sorted(bad)}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _by_hand(model_dir: Path, files: list[Path]) -> np.ndarray:
    from busi.data.images import load_image
    from busi.model.network import load_saved_model

    model = load_saved_model(model_dir / "model" / "model.keras")
    x = np.stack([load_image(f, SIZE) for f in files]).astype(np.float32)
    return model(x, training=False).numpy()


def test_every_file_gets_exactly_one_row(messy: dict, model_dir: Path, tmp_path: Path) -> None:  # type: ignore[type-arg]
    root = messy["root"]
    out = tmp_path / "preds.csv"
    # the TensorFlow engine: compared with the model's own forward pass below (the OpenVINO
    # engine's tolerances: tests/test_engines.py)
    proc = run_main("predict", "--model", str(model_dir), "--input", str(root), "--output", str(out), "--batch-size", "4",
                    "--engine", "tensorflow")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = _rows(out)
    assert list(rows[0]) == ["path", "label", "label_index", "prob_normal", "prob_benign", "prob_malignant",
                             "study_instance_uid", "series_instance_uid", "sop_instance_uid", "frame", "error"]
    reported = [os.path.relpath(r["path"], root) for r in rows]
    assert sorted(reported) == sorted(messy["good"] + messy["bad"])  # masks left out, nothing twice
    by_path = dict(zip(reported, rows))
    for rel in messy["bad"]:
        r = by_path[rel]
        assert r["error"] and r["label"] == "" and all(r[f"prob_{c}"] == "" for c in CLASSES), rel
    good = [by_path[rel] for rel in messy["good"]]
    probs = np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in good])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert all(r["error"] == "" and r["label"] == CLASSES[int(r["label_index"])] for r in good)
    expected = _by_hand(model_dir, [root / rel for rel in messy["good"]])
    np.testing.assert_allclose(probs, expected, atol=2e-5)
    assert "3 errors" in proc.stderr and "img/s" in proc.stderr
    assert json.loads((tmp_path / "preds.csv.done.json").read_text())["rows"] == len(rows)


def test_masks_included_on_request(messy: dict) -> None:  # type: ignore[type-arg]
    without = expand_inputs([str(messy["root"])])
    with_masks = expand_inputs([str(messy["root"])], include_masks=True)
    assert len(with_masks) == len(without) + 2


def test_list_files_and_archives(messy: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    root = messy["root"]
    lst = tmp_path / "list.txt"
    lst.write_text(f"# scans\n{root / 'plain.png'}\n\n{os.path.relpath(root / 'c' / 'gray.jpg', tmp_path)}\n")
    zpath = tmp_path / "batch.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.write(root / "plain.png", "scans/one.png")
        zf.write(root / "plain_mask.png", "scans/one_mask.png")
    files = expand_inputs([f"@{lst}", str(zpath)], staging_dir=str(tmp_path / "stage"))
    paths = [f.path for f in files]
    assert paths[-1] == f"{zpath}!/scans/one.png"
    assert len(paths) == 3 and all(f.file.is_file() for f in files)


def test_no_classified_file_exits_3(messy: dict, model_dir: Path, tmp_path: Path) -> None:  # type: ignore[type-arg]
    out = tmp_path / "bad.csv"
    proc = run_main("predict", "--model", str(model_dir), "--input", str(messy["root"] / "empty.png"),
                    "--input", str(messy["root"] / "c" / "notes.png"), "--output", str(out))
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert len(_rows(out)) == 2


def test_existing_output_needs_resume_or_overwrite(messy: dict, model_dir: Path, tmp_path: Path) -> None:  # type: ignore[type-arg]
    out = tmp_path / "p.csv"
    out.write_text("keep me\n")
    proc = run_main("predict", "--model", str(model_dir), "--input", str(messy["root"] / "plain.png"), "--output", str(out))
    assert proc.returncode == 2 and "--resume" in proc.stderr
    assert out.read_text() == "keep me\n"


def test_shards_cover_everything_once_and_merge_to_the_unsharded_csv(messy: dict, model_dir: Path, tmp_path: Path) -> None:  # type: ignore[type-arg]
    root = messy["root"]
    whole = tmp_path / "whole.csv"
    assert run_main("predict", "--model", str(model_dir), "--input", str(root), "--output", str(whole)).returncode == 0
    out = tmp_path / "sharded" / "preds.csv"
    for i in range(3):
        # the array index comes from the environment, as in a Slurm array job
        env = {"SLURM_ARRAY_TASK_ID": str(i + 1), "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "3"}
        proc = run_main("predict", "--model", str(model_dir), "--input", str(root), "--output", str(out), env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
    parts = sorted(out.parent.glob("preds.part-*-of-00003.csv"))
    assert len(parts) == 3
    seen = [r["path"] for p in parts for r in _rows(p)]
    assert len(seen) == len(set(seen)) == len(_rows(whole))
    proc = run_main("merge", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == whole.read_text()

    (out.parent / "preds.part-00001-of-00003.csv.done.json").unlink()
    (out.parent / "preds.part-00002-of-00003.csv").unlink()
    proc = run_main("merge", str(out))
    assert proc.returncode == 3
    assert "preds.part-00001-of-00003.csv: incomplete" in proc.stderr
    assert "preds.part-00002-of-00003.csv: missing" in proc.stderr


def test_resume_after_a_killed_run(model_dir: Path, synth_data: Any, tmp_path: Path) -> None:
    source = synth_data(10, 32, 2)
    data = tmp_path / "data"
    n = linked_copies(source, data, 20)  # 600 files: still running when the kill comes, however fast
    out = tmp_path / "p.csv"
    cmd = [sys.executable, "-m", "busi", "predict", "--model", str(model_dir), "--input", str(data),
           "--output", str(out), "--batch-size", "1", "--cores", "1"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if out.exists() and out.read_text().count("\n") >= 6:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _rows(out)
    assert 5 <= len(before) < n, "the run should have been killed part-way"
    with out.open("a") as fh:  # a row cut off mid-write, as a kill can leave it
        fh.write(str(data / "x.png") + ",benign,1,0.1")
    proc2 = run_main("predict", "--model", str(model_dir), "--input", str(data), "--output", str(out), "--resume")
    assert proc2.returncode == 0, proc2.stderr[-2000:]
    rows = _rows(out)
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == n
    assert not any(p.endswith("x.png") for p in paths)
    assert [r["path"] for r in rows[: len(before)]] == [r["path"] for r in before]


def test_gradcam_overlays(messy: dict, model_dir: Path, tmp_path: Path) -> None:  # type: ignore[type-arg]
    root = messy["root"]
    cams = tmp_path / "cams"
    proc = run_main("predict", "--model", str(model_dir), "--input", str(root / "a"), "--output",
                    str(tmp_path / "p.csv"), "--gradcam", str(cams))
    assert proc.returncode == 0, proc.stderr[-2000:]
    made = sorted(cams.rglob("*.gradcam.png"))
    assert [p.name for p in made] == ["deeper.png.gradcam.png", "nested.png.gradcam.png", "rgba.png.gradcam.png",
                                      "sixteen.png.gradcam.png"]
    with Image.open(made[0]) as im:
        assert im.size == (SIZE, SIZE) and im.mode == "RGB"


def test_predict_job_file_through_run(messy: dict, model_dir: Path, tmp_path: Path, write_job) -> None:  # type: ignore[no-untyped-def,type-arg]
    out = tmp_path / "job.csv"
    job = write_job({"predict": {"model": str(model_dir), "inputs": [str(messy["root"] / "c")], "output": str(out)}})
    proc = run_main("run", str(job))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(_rows(out)) == 5  # palette, cmyk, gray, bmp, and notes.png with its error


def test_decode_threads_run_at_low_cpu_priority(messy: dict, model_dir: Path, tmp_path: Path,  # type: ignore[type-arg]
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """predict_files decodes in threads at the lowest CPU priority, so they yield the cores to
    TensorFlow (benchmarks/bench_predict.py); the calling thread keeps its own priority."""
    import threading

    import busi.predict.job as bp

    niceness: list[int] = []
    real_decode = bp._decode

    def spy(f: Any, size: int, resize: str, dicom: Any) -> Any:
        niceness.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return real_decode(f, size, resize, dicom)

    monkeypatch.setattr(bp, "_decode", spy)
    predictor = load_predictor(model_dir)
    files = expand_inputs([str(messy["root"])])
    sink = CsvSink(tmp_path / "p.csv", prediction_columns(predictor.classes), resume=False)
    try:
        summary = bp.predict_files(predictor, files, sink, batch_size=4, workers=2)
    finally:
        sink.close()
    assert summary.rows == len(files) == len(niceness)
    assert set(niceness) == {19}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < 19


def test_a_fifo_in_the_input_folder_gets_an_error_row_and_never_hangs(model_dir: Path, tmp_path: Path) -> None:
    """A named pipe in a shared folder: opening it for reading would wait for a writer forever."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_rgb(np.random.default_rng(1))).save(folder / "scan.png")
    os.mkfifo(folder / "pipe.png")
    os.mkfifo(tmp_path / "named.png")  # and one named on the command line
    out = tmp_path / "p.csv"
    proc = run_cli("predict", "--model", str(model_dir), "--input", str(folder), "--input", str(tmp_path / "named.png"),
                   "--output", str(out), timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {Path(r["path"]).name: r for r in _rows(out)}
    assert set(rows) == {"scan.png", "pipe.png", "named.png"}
    assert rows["scan.png"]["error"] == "" and rows["scan.png"]["label"] in CLASSES
    for name in ("pipe.png", "named.png"):
        assert "FIFO" in rows[name]["error"] and rows[name]["label"] == "", rows[name]



def test_names_with_line_breaks_bytes_and_255_byte_lengths_round_trip_through_resume(model_dir: Path,
                                                                                    tmp_path: Path) -> None:
    """Old shares hold names that are not UTF-8, and names with \\r, \\n or U+2028: one row each,
    also after --resume; a name too long for an overlay file still gets its row and overlay."""
    folder = tmp_path / "in"
    folder.mkdir()
    names = [b"scan\xff.png", "a\nb.png".encode(), "c\rd.png".encode(), "e\u2028f.png".encode(),
             ("x" * 240 + ".png").encode()]
    rng = np.random.default_rng(3)
    for n in names:
        Image.fromarray(_rgb(rng)).save(os.path.join(os.fsencode(folder), n), format="PNG")
    out = tmp_path / "p.csv"
    cams = tmp_path / "cams"
    args = ("predict", "--model", str(model_dir), "--input", str(folder), "--output", str(out), "--batch-size", "2")
    proc = run_main(*args, "--gradcam", str(cams))
    assert proc.returncode == 0, proc.stderr[-2000:]
    first = out.read_bytes()
    proc = run_main(*args, "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.read_bytes() == first  # nothing predicted twice, nothing lost
    with open_text(out) as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(os.fsencode(Path(r["path"]).name) for r in rows) == sorted(names)
    assert all(r["error"] == "" and r["label"] in CLASSES for r in rows)
    assert json.loads(done_marker(out).read_text())["rows"] == len(names)
    overlays = [p for p in cams.rglob("*.gradcam.png")]
    assert len(overlays) == len(names) and all(len(os.fsencode(p.name)) <= 255 for p in overlays)


def test_a_run_that_did_not_complete_is_not_used_for_prediction(model_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(model_dir, run)
    (run / "manifest.json").write_text(json.dumps({"status": "interrupted"}))
    (tmp_path / "scan.png").write_bytes(b"x")
    proc = run_main("predict", "--model", str(run), "--input", str(tmp_path / "scan.png"), "--output",
                    str(tmp_path / "p.csv"))
    assert proc.returncode == 2 and "that run is 'interrupted', not completed" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "p.csv").exists()


def test_corrupt_model_files_are_data_errors_naming_the_file(model_dir: Path, tmp_path: Path) -> None:
    from busi.errors import DataError
    from busi.model.predictor import load_predictor

    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    keras_file = next(bad.rglob("model.keras"))
    data = keras_file.read_bytes()
    keras_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"model.keras: not a readable Keras model"):
        load_predictor(bad)
    with pytest.raises(DataError, match=r"model.keras: not a readable Keras model"):
        load_predictor(bad, "openvino")  # openvino/ is of the whole file: the damaged one is loaded, and refused
    keras_file.write_bytes(data)
    (keras_file.parent / "preprocessing.json").write_text("{half")
    for engine in ("tensorflow", "openvino"):
        with pytest.raises(DataError, match=r"preprocessing.json: expected"):
            load_predictor(bad, engine)
    (keras_file.parent / "preprocessing.json").write_bytes((model_dir / "model" / "preprocessing.json").read_bytes())
    (keras_file.parent / "labels.json").write_text('{"0": "normal", "1": "benign"}')
    for engine in ("tensorflow", "openvino"):
        with pytest.raises(DataError, match=r"labels.json: 2 classes, but the model outputs 3"):
            load_predictor(bad, engine)


# busi-job's main in a Python that reports, once the command is done, whether TensorFlow was imported
REPORTS_TENSORFLOW = """
import sys
from busi.cli import main
code = main(sys.argv[1:])
print("tensorflow imported:", "tensorflow" in sys.modules)
sys.exit(code)
"""


def test_the_openvino_engine_predicts_without_importing_tensorflow(messy: dict, model_dir: Path,  # type: ignore[type-arg]
                                                                    tmp_path: Path) -> None:
    """The run's model folder holds openvino/, converted from its model.keras: prediction on
    OpenVINO needs no TensorFlow (5-10 s less start-up per job). The TensorFlow engine and
    --gradcam import it; the OpenVINO model converted from the file gives the same probabilities."""
    root = messy["root"] / "a"

    def predict(name: str, *extra: str) -> list[dict[str, str]]:
        out = tmp_path / f"{name}.csv"
        r = subprocess.run([sys.executable, "-c", REPORTS_TENSORFLOW, "predict", "--model", str(model_dir), "--input",
                            str(root), "--output", str(out), *extra], capture_output=True, text=True, cwd=tmp_path,
                           timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        assert r.returncode == 0, r.stderr[-3000:]
        expected = "False" if name == "openvino" else "True"
        assert f"tensorflow imported: {expected}" in r.stdout, (name, r.stdout, r.stderr[-2000:])
        return _rows(out)

    ov = predict("openvino", "--engine", "openvino", "--precision", "float32")
    tf = predict("tensorflow", "--engine", "tensorflow")
    cams = predict("gradcam", "--engine", "openvino", "--precision", "float32", "--gradcam", str(tmp_path / "cams"))
    assert [r["path"] for r in ov] == [r["path"] for r in tf] == [r["path"] for r in cams]
    assert len(sorted(tmp_path.glob("cams/**/*.gradcam.png"))) == 4
    probs = [[[float(r[f"prob_{c}"]) for c in CLASSES] for r in rows if not r["error"]] for rows in (ov, tf, cams)]
    assert len(probs[0]) == 4
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-4)  # tests/test_engines.py: OpenVINO float32's tolerance
    assert probs[2] == probs[0]  # the same OpenVINO model, whether or not TensorFlow was loaded beside it


def test_a_gradcam_path_that_is_a_file_is_refused_before_any_work(model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "cams").write_text("not a folder")
    (tmp_path / "scan.png").write_bytes(b"x")
    proc = run_main("predict", "--model", str(model_dir), "--input", str(tmp_path / "scan.png"), "--output",
                    str(tmp_path / "p.csv"), "--gradcam", str(tmp_path / "cams"))
    assert proc.returncode == 2 and "--gradcam" in proc.stderr and "not a folder" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "p.csv").exists() and (tmp_path / "cams").read_text() == "not a folder"


@pytest.mark.unit
def test_an_output_folder_that_is_a_file_is_refused(tmp_path: Path) -> None:
    from busi.errors import ConfigError
    from busi.predict.job import _output_folder

    (tmp_path / "taken").write_text("x")
    with pytest.raises(ConfigError) as info:
        _output_folder(str(tmp_path / "taken"), "--dicom-sr", "the reports")
    assert str(info.value) == f"--dicom-sr {tmp_path / 'taken'} exists and is not a folder; give a folder for the reports"
    assert _output_folder(None, "--gradcam", "the overlays") is None
    assert _output_folder(str(tmp_path / "new"), "--gradcam", "the overlays") == tmp_path / "new"
