"""busi-job evaluate: external validation with the overlap check against the training images."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import CLASSES, run_main
from PIL import Image


@pytest.fixture(scope="module")
def setup(trained_run: dict[str, Any], synth_data: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The session's trained run (its data/hashes.csv lists its train and val images) and an
    external dataset of other images (another seed and size) plus two exact copies, a
    brightened re-encoded copy and a resized copy of its training images."""
    root = tmp_path_factory.mktemp("external")
    run, data = trained_run["out"], trained_run["data"]
    ext = root / "ext"
    shutil.copytree(synth_data(3, 32, 2), ext)  # a copy: the test adds files to it
    benign = [data / r["path"] for r in _rows(run / "data" / "splits.csv") if r["label"] == "benign"
              and r["split"] == "train"][:4]
    shutil.copy2(benign[0], ext / "benign" / "copy_a.png")  # exact copies, under other names
    shutil.copy2(benign[1], ext / "benign" / "copy_b.png")
    with Image.open(benign[2]) as im:  # a re-encoded, slightly brighter copy: a near duplicate
        arr = np.asarray(im.convert("RGB"), np.int16)
        Image.fromarray(np.clip(arr + 3, 0, 255).astype(np.uint8)).save(ext / "benign" / "near.png")
    with Image.open(benign[3]) as im:  # a resized copy (twice the size, as another export would give)
        im.resize((im.width * 2, im.height * 2), Image.Resampling.BICUBIC).save(ext / "benign" / "resized.png")
    return {"run": run, "ext": ext, "root": root}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_overlap_is_found_listed_and_left_out(setup: dict[str, Path]) -> None:
    from busi.evaluate.external import EvaluateRequest, run_evaluate

    out = setup["root"] / "eval"
    m = run_evaluate(EvaluateRequest(model=str(setup["run"]), data=str(setup["ext"]), output=str(out),
                                     engine="tensorflow", batch_size=4))
    overlap = _rows(out / "overlap.csv")
    assert {(r["path"], r["kind"]) for r in overlap} == {
        ("benign/copy_a.png", "exact"), ("benign/copy_b.png", "exact"), ("benign/near.png", "near"),
        ("benign/resized.png", "near")}
    assert all(r["training_path"].startswith("benign/") for r in overlap)
    assert all(int(r["distance"]) == 0 for r in overlap if r["kind"] == "exact")
    assert m["overlap"] == {"checked": True, "images": 13, "overlapping": 4, "excluded": 4,
                            "near_threshold": 6, "group_pattern": None, "patients_from": None,
                            "by_kind": {"exact": 2, "near": 2, "patient": 0}}
    assert m["n"] == 9 and m["split"] == "external"
    preds = _rows(out / "predictions.csv")
    assert len(preds) == 9 and not {r["path"] for r in preds} & {r["path"] for r in overlap}
    assert all(r["true_label"] in CLASSES for r in preds)
    assert m["ci95"]["accuracy"] is not None and "calibration" in m and m["engine"]["name"] == "tensorflow"
    assert json.loads((out / "metrics.json").read_text())["n"] == 9
    for name in ("confusion_matrix", "roc", "calibration"):
        with Image.open(out / "plots" / f"{name}.png") as im:
            assert im.format == "PNG"
    # --keep-overlap counts them; an earlier evaluation is replaced only with --overwrite
    from busi.errors import ConfigError

    with pytest.raises(ConfigError, match="--overwrite"):
        run_evaluate(EvaluateRequest(model=str(setup["run"]), data=str(setup["ext"]), output=str(out),
                                     engine="tensorflow", keep_overlap=True))
    m2 = run_evaluate(EvaluateRequest(model=str(setup["run"]), data=str(setup["ext"]), output=str(out),
                                      engine="tensorflow", keep_overlap=True, overwrite=True))
    assert m2["n"] == 13 and m2["overlap"]["excluded"] == 0 and len(_rows(out / "predictions.csv")) == 13


def test_cli_refuses_a_foreign_folder_and_a_run_without_hashes(setup: dict[str, Path], tmp_path: Path) -> None:
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me\n")
    p = run_main("evaluate", "--model", str(setup["run"]), "--data", str(setup["ext"]), "--output", str(foreign))
    assert p.returncode == 2 and "not a busi evaluation" in p.stderr and "Traceback" not in p.stderr
    assert (foreign / "mine.txt").read_text() == "keep me\n"
    bare = tmp_path / "bare"
    shutil.copytree(setup["run"] / "model", bare / "model")  # the model without data/hashes.csv
    p = run_main("evaluate", "--model", str(bare), "--data", str(setup["ext"]), "--output", str(tmp_path / "e"))
    assert p.returncode == 3 and "hashes.csv" in p.stderr and "--no-leakage-check" in p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "e").exists()
    p = run_main("evaluate", "--model", str(bare), "--data", str(setup["ext"]), "--output", str(tmp_path / "e"),
                 "--no-leakage-check", "--engine", "openvino")
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert m["n"] == 13 and m["overlap"]["checked"] is False and m["engine"]["name"] == "openvino"
    assert "accuracy" in p.stderr and "[" in p.stderr
