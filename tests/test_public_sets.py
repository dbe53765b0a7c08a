"""The job files of job/datasets/ (shown in docs/own-data.md) on look-alikes of the public sets as
their authors ship them (tests/public_sets.py): every image, mask and patient found with no file
converted by hand, patients never across a split or a fold, the masks read as lesions whatever
their form, and a tiny training run on each."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from busi.config.load import load_config
from busi.config.schema import JobConfig
from busi.data.folds import assign_folds
from busi.data.prepare import PreparedData, prepare_data
from busi.evaluate.explain import load_mask
from conftest import REPO, SMALL_MODEL, run_main
from public_sets import BUILDERS, Expected

PER_CLASS = 12
SETS = list(BUILDERS)


def job_file(name: str) -> Path:
    return REPO / "job" / "datasets" / f"{name}.yaml"


def cfg_of(name: str, source: Path, *sets: str) -> JobConfig:
    """The dataset's job file from job/datasets layered over job/demo.yaml, as a user runs it, pointed at ``source``."""
    return load_config([REPO / "job" / "demo.yaml", job_file(name)],
                       [f"data.source={source}", f"output.dir={source.parent / 'runs'}", *sets])


@pytest.fixture(scope="module")
def lookalike(synth_data: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Expected]]:
    made: dict[str, tuple[Path, Expected]] = {}

    def make(name: str) -> tuple[Path, Expected]:
        if name not in made:
            root = tmp_path_factory.mktemp(name) / name
            made[name] = (root, BUILDERS[name](synth_data(PER_CLASS, 32, 4), root, PER_CLASS))
        return made[name]

    return make


def _sides(prepared: PreparedData) -> dict[str, set[str]]:
    patient = dict(zip((s.key for s in prepared.scan.samples), prepared.patients))
    sides: dict[str, set[str]] = defaultdict(set)
    for r in prepared.rows:
        sides[patient[r.key] or r.key].add(r.split)
    return sides


@pytest.mark.parametrize("name", SETS)
def test_the_job_file_finds_every_image_mask_and_patient(name: str, lookalike: Any) -> None:
    source, expected = lookalike(name)
    cfg = cfg_of(name, source)
    prepared = prepare_data(cfg.data, 0)
    samples = prepared.scan.samples
    counts = {c: sum(s.label == c for s in samples) for c in cfg.data.classes}
    assert counts == expected.per_class
    assert {s.path: len(s.masks) for s in samples} == expected.masks
    table = prepared.report["table"]
    assert table["problems"] == {} and table["rows_left_out"] == []
    patients = {p for p in prepared.patients if p is not None}
    assert len(patients) == (expected.patients or 0)
    # every lesion mask reads as a lesion at the model input, whatever its form (RGBA, 1-bit, green or red)
    for s in samples:
        mask = load_mask([source / m for m in s.masks], 32, cfg.data.resize)
        assert mask.any() == (s.label != "normal" and bool(s.masks)), (s.path, s.masks)


@pytest.mark.parametrize("name", ["bus-bra", "bus-uclm"])
def test_patients_never_cross_splits_or_folds(name: str, lookalike: Any) -> None:
    source, expected = lookalike(name)
    for seed in range(5):
        prepared = prepare_data(cfg_of(name, source, f"runtime.seed={seed}").data, seed)
        assert all(len(s) == 1 for s in _sides(prepared).values())
        patient = dict(zip((s.key for s in prepared.scan.samples), prepared.patients))
        folds = prepared.folds or assign_folds(prepared.rows, 4, seed)
        where: dict[str, set[int]] = defaultdict(set)
        for f in folds:
            where[patient[f.key]].add(f.fold)
        assert len(where) == expected.patients and all(len(s) == 1 for s in where.values())
    if name == "bus-bra":  # the official partition from the joined 5-fold-cv.csv, fold = kFold - 1
        assert {f.fold for f in prepared.folds} == set(range(5))
        kfold = {f"Images/{line.split(',')[0]}.png": int(line.split(",")[2]) - 1
                 for line in (source / "5-fold-cv.csv").read_text().splitlines()[1:]}
        assert all(kfold[f.key] == f.fold for f in prepared.folds)


def test_the_inspect_report_names_the_sheet_and_the_join(lookalike: Any, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from busi.cli import main

    def inspect(name: str, *flags: str) -> str:
        source, _ = lookalike(name)
        assert main(["inspect", str(REPO / "job" / "demo.yaml"), str(job_file(name)), *flags,
                     f"--set=data.source={source}", f"--set=output.dir={tmp_path}"]) == 0
        return capsys.readouterr().out

    table = json.loads(inspect("bus-bra", "--json"))["table"]
    assert table["joins"] == [{"file": "5-fold-cv.csv", "sheet": None, "rows": 2 * PER_CLASS, "unmatched": 0}]
    assert "joined: 5-fold-cv.csv (24 rows; label-table rows without a match: 0)" in inspect("bus-bra")
    table = json.loads(inspect("breast-lesions-usg", "--json"))["table"]
    assert table["sheet"] == "BrEaST-Lesions-USG clinical dat" and table["delimiter"] is None
    assert "label table: BrEaST-Lesions-USG clinical data.xlsx sheet 'BrEaST-Lesions-USG clinical dat' (36 rows" \
        in inspect("breast-lesions-usg")


def test_a_cell_naming_several_masks_gives_each(lookalike: Any) -> None:
    source, _ = lookalike("breast-lesions-usg")
    prepared = prepare_data(cfg_of("breast-lesions-usg", source,
                                   "data.table.masks=[Mask_tumor_filename, Mask_other_filenames]").data, 0)
    several = [s for s in prepared.scan.samples if len(s.masks) == 3]
    assert several and all(m.endswith(("_tumor.png", "_other1.png", "_other2.png")) for s in several for m in s.masks)


@pytest.mark.integration
@pytest.mark.parametrize("name", SETS)
def test_a_tiny_training_run_completes(name: str, lookalike: Any, tmp_path: Path) -> None:
    source, expected = lookalike(name)
    out = tmp_path / "run"
    tiny = ["data.image_size=32", "train.batch_size=8", "train.head.epochs=1", "train.finetune.epochs=1",
            "train.quantize=none", "model.weights=none", *SMALL_MODEL]
    proc = run_main("train", str(REPO / "job" / "demo.yaml"), str(job_file(name)),
                    *[f"--set={s}" for s in (f"data.source={source}", f"output.dir={out}", *tiny)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    labels = json.loads((out / "model" / "labels.json").read_text())
    assert labels == {str(i): c for i, c in enumerate(expected.per_class)}
    metrics = json.loads((out / "metrics.json").read_text())
    scored = metrics.get("gradcam_vs_masks")
    if scored is not None:  # the lesion masks of the test split are scored (none is read as empty)
        assert scored["overall"]["images"] >= 1


def test_masks_that_are_never_found_stop_the_job_naming_the_keys(lookalike: Any) -> None:
    from busi.errors import ConfigError

    source, _ = lookalike("bus-bra")
    with pytest.raises(ConfigError) as e:
        prepare_data(cfg_of("bus-bra", source, "data.table.mask_format='{}'").data, 0)  # no Masks/ folder, no .png
    assert "data.table.mask_format" in e.value.keys and "'mask_0001-l' from line 2" in str(e.value)


def test_lesion_masks_of_the_colour_coded_set_are_not_only_red(lookalike: Any) -> None:
    source, _ = lookalike("bus-uclm")
    benign = sorted((source / "masks").glob("*.png"))
    areas = [load_mask([m], 32, "stretch").sum() for m in benign]
    assert np.count_nonzero(areas) == 2 * PER_CLASS  # benign (green) and malignant (red), not normal (black)


@pytest.mark.integration
@pytest.mark.parametrize("name", SETS)
def test_a_three_class_model_is_evaluated_on_each_set_through_its_table(name: str, lookalike: Any,
                                                                        trained_run: dict[str, Any],
                                                                        tmp_path: Path) -> None:
    """The shared three-class run (normal, benign, malignant; the suite's synthetic set) on each
    look-alike read by its job file: the two-class sets are scored on their two classes, normal named absent."""
    from busi.evaluate.external import EvaluateRequest, run_evaluate

    source, expected = lookalike(name)
    out = tmp_path / "ev"
    m = run_evaluate(EvaluateRequest(model=str(trained_run["out"]), data=None, jobs=(str(job_file(name)),),
                                     overrides=(f"data.source={source}",), output=str(out), engine="openvino"))
    present = [c for c in ("normal", "benign", "malignant") if c in expected.per_class]
    assert m["n"] == sum(expected.per_class.values()) and m["classes_present"] == present
    assert m["classes_absent"] == [c for c in ("normal", "benign", "malignant") if c not in present]
    assert all(m["per_class"][c]["support"] == expected.per_class[c] and m["per_class"][c]["roc_auc"] is not None
               for c in present)
    assert m["positive_vs_rest"] is not None and m["positive_vs_rest"]["positive_class"] == "malignant"
    about = json.loads((out / "evaluation.json").read_text())
    assert about["table"]["rows_left_out"] == [] and about["jobs"] == [str(job_file(name))]
    if "normal" not in present:
        assert m["per_class"]["normal"]["support"] == 0 and m["per_class"]["normal"]["roc_auc"] is None
        assert "Classes the set does not have" in (out / "report.html").read_text()
    if name == "bus-bra":  # the patients of the overlap check come from the table's Case column
        assert m["overlap"]["patients_from"] == "data.table.group (column 'Case')"


@pytest.mark.integration
def test_class_folders_holding_some_of_the_models_classes_are_evaluated_on_those(trained_run: dict[str, Any],
                                                                                  synth_data: Callable[..., Path],
                                                                                  tmp_path: Path) -> None:
    import shutil

    from busi.evaluate.external import EvaluateRequest, run_evaluate

    src, ext = synth_data(6, 32, 8), tmp_path / "two"
    for cls in ("benign", "malignant"):
        shutil.copytree(src / cls, ext / cls)
    m = run_evaluate(EvaluateRequest(model=str(trained_run["out"]), data=str(ext), output=str(tmp_path / "ev"),
                                     engine="openvino"))
    assert m["n"] == 12 and m["classes_absent"] == ["normal"] and m["per_class"]["benign"]["support"] == 6


@pytest.mark.integration
def test_cv_reads_the_table_and_keeps_each_patient_in_one_fold(lookalike: Any, tmp_path: Path) -> None:
    """``busi-job cv`` with BUS-UCLM's job file: folds assigned by patient (the name's prefix)."""
    import csv

    source, expected = lookalike("bus-uclm")
    out = tmp_path / "cv"
    tiny = ["data.image_size=32", "train.batch_size=8", "train.head.epochs=1", "train.finetune.epochs=0",
            "train.quantize=none", "model.weights=none", *SMALL_MODEL, "train.gradcam_masks=false"]
    proc = run_main("cv", str(REPO / "job" / "demo.yaml"), str(job_file("bus-uclm")), "--folds", "2",
                    *[f"--set={s}" for s in (f"data.source={source}", f"output.dir={out}", *tiny)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    with (out / "folds.csv").open(newline="") as fh:
        folds = list(csv.DictReader(fh))
    assert len(folds) == sum(expected.per_class.values())
    where: dict[str, set[str]] = defaultdict(set)
    for r in folds:
        where[Path(r["path"]).name.split("_")[0]].add(r["fold"])
    assert len(where) == expected.patients and all(len(f) == 1 for f in where.values())
    report = run_main("cv-report", str(out))
    assert report.returncode == 0, report.stderr[-3000:]
    with (out / "oof.csv").open(newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(folds)  # every image predicted once, out of fold
