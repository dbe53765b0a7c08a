"""Label tables with patient IDs (``data.table``, ``data.group_pattern``): reading the table
(``busi.data.table``), patients joined with duplicate groups (``busi.data.dedupe``), the split,
predefined splits and folds (``busi.data.prepare``, ``busi.train.cv``), the report, the exit codes.

Tables are built here in the layouts public sets ship: BUS-BRA (``ID`` without folder or
suffix, patient and side in the name, ``Pathology``, a fold column), BrEaST-Lesions_USG
(``Image_filename``, ``Classification``, a mask column), and a table whose patient has images in
two class folders. Images are synthetic (``synth_data``) or the 55 real BUSI images.
"""

from __future__ import annotations

import csv
import json
import shutil
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest

from busi.config.load import load_config
from busi.config.schema import JobConfig
from busi.data.dedupe import group_duplicates, group_patients, patients_from_names
from busi.data.folds import assign_folds
from busi.data.prepare import NO_PATIENTS, PreparedData, prepare_data
from busi.data.table import decode_table, read_table, resolve_path
from busi.errors import ConfigError, DataError

SEEDS = range(20)


def _images(root: Path, cls: str) -> list[Path]:
    from busi.data.scan import natural_key

    return sorted((p for p in (root / cls).glob("*.png") if "_mask" not in p.name), key=lambda p: natural_key(p.name))


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]], delimiter: str = ",",
               bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8-sig" if bom else "utf-8") as fh:
        w = csv.writer(fh, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL)
        w.writerow(header)
        w.writerows(rows)
    return path


def _cfg(source: Path, *sets: str, out: Path | None = None) -> JobConfig:
    base = {"data": {"source": str(source)}, "output": {"dir": str(out or source.parent / "runs")}}
    return load_config(None, list(sets), base=base)


def _patients_by_split(prepared: PreparedData, patient_of: Callable[[str], str]) -> dict[str, set[str]]:
    sides: dict[str, set[str]] = defaultdict(set)
    for r in prepared.rows:
        sides[patient_of(r.path)].add(r.split)
    return sides


# ------------------------------------------------------------------ the three layouts


@pytest.fixture(scope="module")
def bus_bra(synth_data: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BUS-BRA's layout: ``Images/bus_0001-l.png``, ``bus_data.csv`` with ``ID`` (no folder, no
    suffix), ``Pathology``, ``Histology`` and a 5-fold partition by patient. 18 patients, most
    with a left and a right image; six of them benign on one side and malignant on the other."""
    src = synth_data(18, 32, 3)
    root = tmp_path_factory.mktemp("busbra") / "BUS-BRA"
    (root / "Images").mkdir(parents=True)
    benign, malignant = _images(src, "benign"), _images(src, "malignant")
    rows = []
    for n in range(1, 19):
        sides = {"l": benign[n - 1], "r": malignant[n - 1]} if n <= 6 else (
            {"l": benign[n - 1], "r": benign[(n + 5) % 18]} if n <= 12 else {"l": malignant[n - 1]})
        for side, image in sides.items():
            name = f"bus_{n:04d}-{side}"
            shutil.copy(image, root / "Images" / f"{name}.png")
            pathology = "benign" if "benign" in image.name else "malignant"
            rows.append([name, "fibroadenoma" if pathology == "benign" else "carcinoma", pathology, (n - 1) % 5 + 1])
    _write_csv(root / "bus_data.csv", ["ID", "Histology", "Pathology", "fold"], rows)
    return root


BUS_BRA = ("data.classes=[benign, malignant]",
           "data.table={file: bus_data.csv, path: ID, label: Pathology, path_format: 'Images/{}.png', fold: fold}",
           "data.group_pattern=^(bus_\\d+)", "data.dedupe=exact")


def _bus_bra_patient(path: str) -> str:
    return Path(path).name.split("-")[0]


def test_bus_bra_patients_never_cross_splits(bus_bra: Path) -> None:
    for seed in SEEDS:
        prepared = prepare_data(_cfg(bus_bra, *BUS_BRA, f"runtime.seed={seed}").data, seed)
        assert len(prepared.rows) == 30
        sides = _patients_by_split(prepared, _bus_bra_patient)
        assert all(len(s) == 1 for s in sides.values()), (seed, sides)
        assert {r.group for r in prepared.rows} == set(sides)  # splits.csv's group column is the patient
    report = prepared.report
    assert report["patients"]["from"] == "data.group_pattern '^(bus_\\d+)'"
    assert report["patients"]["count"] == 18
    assert sum(report["patients"]["per_split"].values()) == 18
    assert report["patients"]["note"] is None
    assert report["table"]["rows"] == 30 and report["table"]["problems"] == {}
    assert report["label_conflicts"] == []  # a patient benign on one side, malignant on the other: no conflict


def test_bus_bra_fold_column_keeps_patients_in_one_fold(bus_bra: Path, tmp_path: Path) -> None:
    from busi.train.cv import prepare_folds

    cfg = _cfg(bus_bra, *BUS_BRA, out=tmp_path / "cv")
    folds = prepare_folds(cfg, 5)
    assert len(folds) == 30
    of = defaultdict(set)
    for r in folds:
        of[_bus_bra_patient(r.path)].add(r.fold)
        assert r.fold == (int(_bus_bra_patient(r.path)[4:]) - 1) % 5  # the table's folds 1..5 as 0..4
    assert all(len(f) == 1 for f in of.values())
    with pytest.raises(ConfigError) as e:
        prepare_folds(_cfg(bus_bra, *BUS_BRA, out=tmp_path / "cv3"), 3)
    assert e.value.keys == ("data.table.fold",) and "give --folds 5" in str(e.value)


def test_assigned_folds_keep_patients_together(bus_bra: Path) -> None:
    sets = [s for s in BUS_BRA if not s.startswith("data.table")]
    sets.append("data.table={file: bus_data.csv, path: ID, label: Pathology, path_format: 'Images/{}.png'}")
    prepared = prepare_data(_cfg(bus_bra, *sets, "data.split.train=1.0", "data.split.val=0", "data.split.test=0").data, 0)
    for seed in SEEDS:
        of = defaultdict(set)
        for r in assign_folds(prepared.rows, 3, seed):
            of[_bus_bra_patient(r.path)].add(r.fold)
        assert all(len(f) == 1 for f in of.values()), seed


@pytest.fixture(scope="module")
def breast(synth_data: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BrEaST-Lesions_USG's layout: ``case001.png`` and ``case001_tumor.png`` in a folder below
    the table; ``Image_filename``, ``Classification`` (capitalised here), ``Mask_tumor_filename``;
    saved by Excel as "CSV UTF-8" with semicolons (a BOM, quoted fields). One row per patient;
    the problems: a missing file, a label outside data.classes, a row given twice, a path given
    twice with two labels, a missing mask."""
    src = synth_data(8, 32, 4)
    root = tmp_path_factory.mktemp("breast") / "BrEaST"
    images = root / "BrEaST-Lesions_USG-images_and_masks"
    images.mkdir(parents=True)
    rows: list[list[str]] = []
    n = 0
    for cls in ("normal", "benign", "malignant"):
        for image in _images(src, cls):
            n += 1
            shutil.copy(image, images / f"case{n:03d}.png")
            shutil.copy(image.with_name(image.stem + "_mask.png"), images / f"case{n:03d}_tumor.png")
            rows.append([f"case{n:03d}.png", f"{n}; age 5{n % 10}", cls.capitalize(), f"case{n:03d}_tumor.png"])
    rows.append(["case999.png", "", "Benign", ""])  # missing file
    rows.append(["case001.png", "", "Normal", "case001_tumor.png"])  # the same row again
    rows.append(["case002.png", "", "Malignant", ""])  # case002 again, another label: both left out
    rows.append(["case003.png", "", "BI-RADS 3", ""])  # a label outside data.classes
    rows[4][3] = "case999_tumor.png"  # a missing mask: the image is kept
    rows.append(["", "", "", ""])  # Excel's trailing blank row
    table = root / "BrEaST-Lesions-USG-clinical-data.csv"
    _write_csv(table, ["Image_filename", "Age; notes", "Classification", "Mask_tumor_filename"],
               [[f"BrEaST-Lesions_USG-images_and_masks/{r[0]}" if r[0] else "", r[1], r[2],
                 f"BrEaST-Lesions_USG-images_and_masks/{r[3]}" if r[3] else ""] for r in rows], delimiter=";", bom=True)
    return root


BREAST = ("data.table={file: BrEaST-Lesions-USG-clinical-data.csv, path: Image_filename, "
          + "label: Classification, masks: [Mask_tumor_filename]}",)


def test_breast_table_bom_semicolons_quotes_and_problems(breast: Path) -> None:
    raw = (breast / "BrEaST-Lesions-USG-clinical-data.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b'"1; age 51"' in raw  # what the test claims to read
    cfg = _cfg(breast, *BREAST)
    prepared = prepare_data(cfg.data, 0)
    paths = [s.path for s in prepared.scan.samples]
    assert len(paths) == 23 and "BrEaST-Lesions_USG-images_and_masks/case002.png" not in paths
    assert all(s.masks == (s.path.replace(".png", "_tumor.png"),) for s in prepared.scan.samples
               if not s.path.endswith("case005.png"))
    t = prepared.report["table"]
    assert t["delimiter"] == ";" and t["rows"] == 28
    assert t["problems"] == {"missing_file": 1, "bad_label": 1, "duplicate_row": 1, "conflicting_rows": 1,
                             "missing_mask": 1}
    by_kind = {p["kind"]: p for p in t["rows_left_out"]}
    assert by_kind["missing_file"]["line"] == 26 and by_kind["missing_file"]["path"].endswith("case999.png")
    assert "'BI-RADS 3' is not one of normal, benign, malignant" in by_kind["bad_label"]["detail"]
    assert "line 2" in by_kind["duplicate_row"]["detail"]
    assert prepared.report["patients"]["note"] == NO_PATIENTS  # one image per patient, but busi is not told


def test_breast_inspect_prints_rows_left_out_and_the_missing_patients(breast: Path, write_job: Any,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from busi.cli import main

    job = write_job({"data": {"source": str(breast), "table": {"file": "BrEaST-Lesions-USG-clinical-data.csv",
                                                                "path": "Image_filename", "label": "Classification"}},
                     "output": {"dir": str(breast.parent / "runs")}})
    assert main(["inspect", str(job)]) == 0
    out = capsys.readouterr().out
    assert "label table: BrEaST-Lesions-USG-clinical-data.csv (28 rows, 23 images" in out
    assert "line 26: BrEaST-Lesions_USG-images_and_masks/case999.png: missing file: no such file" in out
    assert f"note: {NO_PATIENTS}" in out
    assert main(["inspect", "--json", str(job)]) == 0
    assert json.loads(capsys.readouterr().out)["table"]["problems"]["bad_label"] == 1


@pytest.fixture(scope="module")
def two_folders(synth_data: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BUSI's class folders and a table beside them giving each image a patient: patient ``Pn``
    has ``benign (n).png`` and ``malignant (n).png`` (two lesions, two folders) and ``normal (n)``."""
    root = tmp_path_factory.mktemp("twofolders") / "ds"
    shutil.copytree(synth_data(12, 32, 5), root)
    rows = [[f"{cls}/{cls} ({n}).png", cls, f"P{n:02d}"] for n in range(1, 13) for cls in ("normal", "benign", "malignant")]
    _write_csv(root / "labels.tsv", ["file", "class", "patient_id"], rows, delimiter="\t")
    return root


TWO_FOLDERS = ("data.table={file: labels.tsv, path: file, label: class, group: patient_id}",)


def test_a_patient_in_two_class_folders_stays_on_one_side(two_folders: Path) -> None:
    for seed in SEEDS:
        prepared = prepare_data(_cfg(two_folders, *TWO_FOLDERS).data, seed)
        assert len(prepared.rows) == 36  # the patients' mixed labels are no label conflict
        sides = defaultdict(set)
        for r in prepared.rows:
            sides[r.group].add(r.split)
        assert len(sides) == 12 and all(len(s) == 1 for s in sides.values()), (seed, sides)
    assert prepared.report["patients"]["from"] == "data.table.group (column 'patient_id')"
    assert prepared.report["table"]["delimiter"] == "\t"


def test_group_pattern_on_class_folders(two_folders: Path) -> None:
    """No table: the pattern takes the patient from BUSI's file names (here the number)."""
    for seed in range(5):
        prepared = prepare_data(_cfg(two_folders, r"data.group_pattern=\((?P<group>\d+)\)").data, seed)
        sides = defaultdict(set)
        for r in prepared.rows:
            sides[r.path.split("(")[1]].add(r.split)
        assert all(len(s) == 1 for s in sides.values())
    assert prepared.report["table"] is None and prepared.report["patients"]["count"] == 12


def test_real_busi_images_from_a_table(sample_zip: Path, tmp_path: Path) -> None:
    """The 55 real BUSI images (with their exact cross-class copy and near-duplicate frames)
    from a table: patients joined with the duplicate groups, never across splits."""
    root = tmp_path / "busi"
    with zipfile.ZipFile(sample_zip) as z:
        z.extractall(root)
    ds = root / "Dataset_BUSI_with_GT"
    rows = [[p.relative_to(ds).as_posix(), p.parent.name, f"patient-{int(p.stem.split('(')[1][:-1]) % 7}"]
            for cls in ("normal", "benign", "malignant") for p in _images(ds, cls)]
    _write_csv(ds / "labels.csv", ["path", "label", "patient"], rows)
    for seed in range(10):
        prepared = prepare_data(_cfg(root, "data.table={file: Dataset_BUSI_with_GT/labels.csv, path: path, "
                                     "label: label, group: patient}").data, seed)
        sides = defaultdict(set)
        patient = {r[0]: r[2] for r in rows}
        for r in prepared.rows:
            sides[patient[r.path.removeprefix("Dataset_BUSI_with_GT/")]].add(r.split)
            sides[r.group].add(r.split)
        assert all(len(s) == 1 for s in sides.values()), sides
    assert prepared.report["label_conflicts"]  # benign (433) / malignant (145): dropped as before
    assert len(prepared.rows) == 53


# -------------------------------------------------------------- predefined split column


def _with_split(root: Path, tmp: Path, split_of: Callable[[int, str], str]) -> Path:
    dest = tmp / "withsplit"
    shutil.copytree(root, dest)
    with (root / "labels.tsv").open(newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    _write_csv(dest / "labels.csv", [*rows[0], "partition"], [[*r, split_of(i, r[2])] for i, r in enumerate(rows[1:])])
    return dest


SPLIT_TABLE = ("data.table={file: labels.csv, path: file, label: class, group: patient_id, split: partition}",)


def test_a_predefined_split_is_used(two_folders: Path, tmp_path: Path) -> None:
    def side(i: int, patient: str) -> str:
        return {1: "test", 2: "val"}.get(int(patient[1:]) % 4, "train")

    root = _with_split(two_folders, tmp_path, side)
    prepared = prepare_data(_cfg(root, *SPLIT_TABLE).data, 0)
    assert {r.path: r.split for r in prepared.rows} == {
        f"{c}/{c} ({n}).png": side(0, f"P{n}") for n in range(1, 13) for c in ("normal", "benign", "malignant")}
    assert prepared.report["split"] == {"from": "data.table.split (column 'partition')", "crossings": []}


def test_a_predefined_split_that_puts_a_patient_on_two_sides_exits_3(two_folders: Path, tmp_path: Path) -> None:
    root = _with_split(two_folders, tmp_path, lambda i, p: "test" if i == 4 else "train")  # P02's benign image
    with pytest.raises(DataError) as e:
        prepare_data(_cfg(root, *SPLIT_TABLE).data, 0)
    assert e.value.path == str(root / "labels.csv")
    assert "data.table.split puts 1 patient(s) on two sides: P02 (test, train)" in e.value.reason


def test_a_splits_file_is_checked_for_patients_on_two_sides(two_folders: Path, tmp_path: Path) -> None:
    """data.splits (a splits.csv reused, e.g. from an earlier run that had no patient IDs) is held
    to the patients the job now knows: one on two sides exits 3 naming the file; images the file
    leaves out are on no side."""
    table = TWO_FOLDERS
    rows = prepare_data(_cfg(two_folders, *table).data, 0).rows
    patient_of = {r.path: r.path.split("(")[1].split(")")[0] for r in rows}  # "benign/benign (2).png" -> "2"

    def write(name: str, side: Callable[[str], str], keep: Callable[[str], bool] = lambda p: True) -> Path:
        path = tmp_path / name
        _write_csv(path, ["path", "label", "group", "split"],
                   [[r.path, r.label, r.group, side(r.path)] for r in rows if keep(r.path)])
        return path

    whole = write("whole.csv", lambda p: "test" if patient_of[p] == "2" else "train")
    prepared = prepare_data(_cfg(two_folders, *table, f"data.splits={whole}").data, 0)
    assert prepared.report["split"] == {"from": "data.splits", "crossings": []}
    torn = write("torn.csv", lambda p: "test" if p == "benign/benign (2).png" else "train")
    with pytest.raises(DataError) as e:
        prepare_data(_cfg(two_folders, *table, f"data.splits={torn}").data, 0)
    assert e.value.path == str(torn) and "data.splits puts 1 patient(s) on two sides: P02 (test, train)" in e.value.reason
    # P02's benign image left out of the file (excluded from the run): its other images are on one side
    left = write("left.csv", lambda p: "train", keep=lambda p: p != "benign/benign (2).png")
    prepared = prepare_data(_cfg(two_folders, *table, f"data.splits={left}").data, 0)
    assert prepared.report["split"]["crossings"] == [] and "benign/benign (2).png" not in {r.path for r in prepared.rows}


def test_a_split_value_outside_train_val_test_exits_3(two_folders: Path, tmp_path: Path) -> None:
    root = _with_split(two_folders, tmp_path, lambda i, p: "validation" if i == 7 else "train")
    with pytest.raises(DataError) as e:
        prepare_data(_cfg(root, *SPLIT_TABLE).data, 0)
    assert (e.value.path, e.value.line) == (str(root / "labels.csv"), 9) and "'validation'" in e.value.reason
    assert str(e.value).startswith(f"{root / 'labels.csv'}:9: ")  # the message names the file and line


# ------------------------------------------------------------------- errors, exit codes


def test_a_missing_column_exits_2_naming_the_key_and_the_columns(two_folders: Path, write_job: Any,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from busi.cli import main

    job = write_job({"data": {"source": str(two_folders), "table": {"file": "labels.tsv", "path": "file",
                                                                     "label": "Classification"}},
                     "output": {"dir": str(two_folders.parent / "runs")}})
    assert main(["inspect", str(job)]) == 2
    err = capsys.readouterr().err
    assert "data.table.label: column 'Classification' is not in the label table" in err
    assert "its columns: 'file', 'class', 'patient_id'" in err
    with pytest.raises(ConfigError) as e:
        prepare_data(_cfg(two_folders, "data.table={file: labels.tsv, path: file, label: class, group: pid}").data, 0)
    assert e.value.keys == ("data.table.group",)


def test_nothing_usable_exits_3_naming_the_table(two_folders: Path, write_job: Any,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from busi.cli import main

    job = write_job({"data": {"source": str(two_folders), "classes": ["cyst", "solid"],
                              "table": {"file": "labels.tsv", "path": "file", "label": "class"}},
                     "output": {"dir": str(two_folders.parent / "runs")}})
    assert main(["inspect", str(job)]) == 3
    err = capsys.readouterr().err
    assert f"{two_folders / 'labels.tsv'}: no usable row among 36 (36 bad label)" in err
    with pytest.raises(DataError) as e:
        prepare_data(_cfg(two_folders, "data.table={file: nope.csv, path: file, label: class}").data, 0)
    assert e.value.path == str(two_folders / "nope.csv") and "label table not found" in e.value.reason


def test_an_unreadable_image_and_a_path_outside_the_source_are_listed(two_folders: Path, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    shutil.copytree(two_folders, root)
    (root / "benign" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with (root / "labels.tsv").open("a", newline="") as fh:
        fh.write("benign/broken.png\tbenign\tP99\n../../etc/passwd\tbenign\tP98\n")
    prepared = prepare_data(_cfg(root, *TWO_FOLDERS).data, 0)
    assert [c["path"] for c in prepared.report["corrupt_images"]] == ["benign/broken.png"]
    assert prepared.report["table"]["problems"] == {"outside_source": 1}
    assert len(prepared.rows) == 36


def test_a_class_without_rows_exits_3(two_folders: Path) -> None:
    with pytest.raises(DataError) as e:
        prepare_data(_cfg(two_folders, "data.classes=[normal, benign, cyst]", *TWO_FOLDERS).data, 0)
    assert "no usable row of class(es) cyst" in e.value.reason


@pytest.mark.parametrize("sets, key", [
    (("data.group_pattern=bus_\\d+",), "data.group_pattern"),  # no group
    (("data.group_pattern=([a-z]",), "data.group_pattern"),  # not a regex
    (("data.table={file: /abs/labels.csv, path: p, label: l}",), "data.table.file"),
    (("data.table={file: ../labels.csv, path: p, label: l}",), "data.table.file"),
    (("data.table={file: l.csv, path: p, label: l, path_format: Images/x.png}",), "data.table.path_format"),
    (("data.table={file: l.csv, path: p, label: l, path_format: '{}/{}.png'}",), "data.table.path_format"),
    (("data.table={file: l.csv, path: p, label: l, path_format: '{0}.png'}",), "data.table.path_format"),
    (("data.table={file: l.csv, path: p, label: l, mask_format: 'GT/{:06q}.png'}",), "data.table.mask_format"),
    (("data.table={file: l.csv, path: p, label: l, path_replace: ['^bus_']}",), "data.table.path_replace"),
    (("data.table={file: l.csv, path: p, label: l, mask_replace: ['(bus', 'x']}",), "data.table.mask_replace"),
    (("data.table={file: l.csv, path: p, label: l, mask_replace: ['^bus', '\\2']}",), "data.table.mask_replace"),
    (("data.table={file: l.csv, path: p, label: l, mask_separator: ' '}",), "data.table.mask_separator"),
    (("data.table={file: l.csv, path: p, label: l, join: [{file: f.csv}]}",), "data.table.join[0].column"),
    (("data.table={file: l.csv, path: p, label: l, label_map: [B, M]}",), "data.table.label_map"),
    (("data.table={file: l.csv, path: p, label: l, group: g}", "data.group_pattern=^(x)"), "data.group_pattern"),
    (("data.table={file: l.csv, path: p}",), "data.table.label"),
])
def test_config_errors_name_the_key(sets: tuple[str, ...], key: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, *sets)
    assert key in e.value.keys


@pytest.mark.parametrize("name", ["l.ods", "l.xls"])
def test_a_spreadsheet_busi_does_not_read_is_refused_with_what_to_do(two_folders: Path, name: str) -> None:
    (two_folders / name).write_bytes(b"PK\x03\x04 not read")
    with pytest.raises(ConfigError, match=r"save it as an Excel workbook \(\.xlsx\) or as CSV UTF-8") as e:
        data = _cfg(two_folders, f"data.table={{file: {name}, path: p, label: l}}").data
        read_table(two_folders, data.table, ("normal", "benign"), data.dicom)
    assert e.value.keys == ("data.table.file",)


# ----------------------------------------------------------------- the pure functions


def test_group_patients_without_patients_is_the_duplicate_groups(two_folders: Path) -> None:
    prepared = prepare_data(_cfg(two_folders).data, 0)
    samples = prepared.scan.samples
    dups = group_duplicates(samples, "near")
    assert group_patients(samples, dups, [None] * len(samples)) == dups
    joined = group_patients(samples, dups, ["A", "A"] + [None] * (len(samples) - 2), drop=[5])
    assert joined[0].members == (0, 1) and joined[0].id == "A" and joined[0].patients == ("A",)
    assert all(5 not in g.members for g in joined)
    # a duplicate joins two patients: the group takes the first ID; a patient named like a group id keeps apart
    from dataclasses import replace

    dups = [replace(dups[0], members=(0, 3)), *(g for g in dups if g.members[0] not in (0, 3))]
    patients = ["B10", "g00002", None, "B9"] + [None] * (len(samples) - 4)
    joined = group_patients(samples, dups, patients)
    assert joined[0].members == (0, 3) and joined[0].id == "B9" and joined[0].patients == ("B9", "B10")
    assert [g.id for g in joined[1:3]] == ["g00001", "g00002"]  # patient "g00002" renamed: sample 2's group is g00002


def test_class_folders_without_patients_split_as_before(sample_zip: Path, tmp_path: Path) -> None:
    """No patients: the groups are the duplicate groups, so every seed's split is the one busi
    made before patients existed (split_groups over the duplicate groups, conflicts dropped)."""
    from busi.data.split import split_groups

    cfg = _cfg(sample_zip, f"data.staging_dir={tmp_path / 'staging'}")
    fractions = {"train": 0.7, "val": 0.15, "test": 0.15}
    for seed in range(5):
        prepared = prepare_data(cfg.data, seed)
        before = split_groups(prepared.scan.samples, list(prepared.groups), fractions, seed, drop_conflicts=True)
        assert list(prepared.rows) == before
    assert prepared.report["patients"]["note"] == NO_PATIENTS


def test_patients_from_names() -> None:
    assert patients_from_names(["Images/bus_0001-l.png", "bus_0001-r.png", "x/bus_12-l.png", "other.png"],
                               r"^(bus_\d+)") == ["bus_0001", "bus_0001", "bus_12", None]
    assert patients_from_names(["ALWI_000.png", "BAKO_012.png"], r"^(?P<group>[A-Z]+)_(\d+)") == ["ALWI", "BAKO"]


def test_resolve_path_and_decoding() -> None:
    assert resolve_path("tables", "../img/a.png") == "img/a.png"
    assert resolve_path("", "img\\a.png") == "img/a.png"
    assert resolve_path("", "../a.png") is None and resolve_path("", "/etc/passwd") is None
    assert resolve_path("", "C:/data/a.png") is None
    assert decode_table("\ufeffpath,label\n".encode("utf-8")) == "path,label\n"
    assert decode_table("café.png".encode("cp1252")) == "café.png"


# ---------------------------------------------------------------------- a real run


@pytest.mark.integration
def test_training_from_a_table_keeps_patients_on_one_side(two_folders: Path, synth_data: Callable[..., Path],
                                                          tmp_path: Path) -> None:
    from conftest import REPO, SMALL_MODEL, run_main

    out = tmp_path / "run"
    # the table's patients through a real run, not a model: conftest's SMALL_MODEL (MobileNet 0.25, no SavedModel)
    tiny = ["data.image_size=32", "train.batch_size=4", "train.head.epochs=1", "train.finetune.epochs=1",
            "train.quantize=none", "train.gradcam_masks=false", "data.classes=[normal, benign, malignant]",
            *SMALL_MODEL]
    sets = [f"--set={s}" for s in (f"data.source={two_folders}", f"output.dir={out}", *TWO_FOLDERS, *tiny)]
    proc = run_main("train", str(REPO / "job" / "demo.yaml"), *sets)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with (out / "data" / "splits.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 36
    sides = defaultdict(set)
    for r in rows:
        sides[r["group"]].add(r["split"])
    assert set(sides) == {f"P{n:02d}" for n in range(1, 13)} and all(len(s) == 1 for s in sides.values())
    report = json.loads((out / "data" / "report.json").read_text())
    assert report["patients"]["count"] == 12 and report["table"]["file"] == "labels.tsv"
    assert json.loads((out / "manifest.json").read_text())["status"] == "completed"
    assert (out / "metrics.json").is_file() and (out / "model" / "model.keras").is_file()
    # external evaluation: new images of the training patients count as overlap (busi.evaluate.leakage)
    hashes = list(csv.DictReader((out / "data" / "hashes.csv").open(newline="")))
    seen = {r["patient"] for r in hashes}  # train and validation patients
    assert seen and seen <= {f"P{n:02d}" for n in range(1, 13)} and {r["split"] for r in hashes} <= {"train", "val"}
    other, fresh = tmp_path / "external", synth_data(24, 32, 6)  # other images than training's (another seed)
    for cls in ("normal", "benign", "malignant"):
        (other / cls).mkdir(parents=True)
        for n in range(1, 13):  # patient Pn again (new images), and a patient never seen (Qn)
            shutil.copy(fresh / cls / f"{cls} ({n}).png", other / cls / f"P{n:02d}_new.png")
            shutil.copy(fresh / cls / f"{cls} ({n + 12}).png", other / cls / f"Q{n:02d}_new.png")
    proc = run_main("evaluate", "--model", str(out), "--data", str(other), "--output", str(tmp_path / "ev"),
                    "--engine", "openvino", "--group-pattern", r"^([PQ]\d+)_")
    assert proc.returncode == 0, proc.stderr[-3000:]
    overlap = list(csv.DictReader((tmp_path / "ev" / "overlap.csv").open(newline="")))
    by_patient = {r["path"] for r in overlap if r["kind"] == "patient"}
    expected = {f"{c}/P{n:02d}_new.png" for c in ("normal", "benign", "malignant") for n in range(1, 13)
                if f"P{n:02d}" in seen}
    assert by_patient <= expected and expected <= {r["path"] for r in overlap}  # (a near copy may come first)
    assert not any("/Q" in r["path"] and r["kind"] == "patient" for r in overlap)
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["overlap"]["group_pattern"] == r"^([PQ]\d+)_" and m["overlap"]["by_kind"]["patient"] == len(by_patient)
    assert m["n"] == 72 - len(overlap)
    bad = run_main("evaluate", "--model", str(out), "--data", str(other), "--output", str(tmp_path / "ev2"),
                   "--group-pattern", "no group")
    assert bad.returncode == 2 and "--group-pattern" in bad.stderr and "Traceback" not in bad.stderr


# ------------------------------------------------------- label maps, numeric classes, joins


@pytest.fixture(scope="module")
def flat(synth_data: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve images in one folder, img01.png .. img12.png, no table yet."""
    src = synth_data(4, 32, 5)
    root = tmp_path_factory.mktemp("flat") / "ds"
    root.mkdir()
    images = [p for c in ("normal", "benign", "malignant") for p in _images(src, c)]
    for n, p in enumerate(images, start=1):
        shutil.copy(p, root / f"img{n:02d}.png")
    return root


def _labels(prepared: PreparedData) -> dict[str, str]:
    return {s.path: s.label for s in prepared.scan.samples}


def test_bi_rads_classes_typed_as_numbers_and_a_label_map(flat: Path) -> None:
    labels = ["2", "3", "4", "4.0", " 5 ", "4a", "4 B", "4C", "3", "2", "5", "6"]
    _write_csv(flat / "birads.csv", ["file", "birads"], [[f"img{n:02d}.png", v] for n, v in enumerate(labels, 1)])
    cfg = _cfg(flat, "data.classes=[2, 3, 4, 5]",
               "data.table={file: birads.csv, path: file, label: birads, label_map: {4a: 4, 4b: 4, 4c: 4}}")
    assert cfg.data.classes == ("2", "3", "4", "5") and cfg.data.table.label_map == {"4a": "4", "4b": "4", "4c": "4"}
    prepared = prepare_data(cfg.data, 0)
    assert _labels(prepared) == {f"img{n:02d}.png": c for n, c in enumerate(
        ["2", "3", "4", "4", "5", "4", "4", "4", "3", "2", "5"], 1)}
    (bad,) = prepared.report["table"]["rows_left_out"]
    assert bad == {"line": 13, "path": "img12.png", "kind": "bad_label",
                   "detail": "'6' is not one of 2, 3, 4, 5 or a key of data.table.label_map"}


def test_letters_for_classes_and_labels_whose_case_and_spacing_differ(flat: Path) -> None:
    labels = ["B", "m", "Benign", " MALIGNANT ", "benign_lesion", "Benign  Lesion", "M", "b", "B", "M", "b", "m"]
    _write_csv(flat / "bm.csv", ["file", "dx"], [[f"img{n:02d}.png", v] for n, v in enumerate(labels, 1)])
    cfg = _cfg(flat, "data.classes=[benign lesion, malignant]",
               "data.table={file: bm.csv, path: file, label: dx, label_map: {B: benign lesion, M: malignant, "
               "benign: benign lesion}}")
    got = _labels(prepared_ := prepare_data(cfg.data, 0))
    assert [got[f"img{n:02d}.png"] for n in range(1, 13)] == [
        "benign lesion", "malignant", "benign lesion", "malignant", "benign lesion", "benign lesion", "malignant",
        "benign lesion", "benign lesion", "malignant", "benign lesion", "malignant"]
    assert prepared_.report["table"]["problems"] == {}


def test_a_join_lists_rows_without_a_match_and_refuses_a_key_given_twice(flat: Path) -> None:
    _write_csv(flat / "main.csv", ["id", "label"], [[f"img{n:02d}", c] for n, c in
                                                    zip(range(1, 13), ["normal", "benign", "malignant"] * 4)])
    _write_csv(flat / "extra.csv", ["image_id", "site", "fold"], [[f"img{n:02d}", "A", n % 3 + 1] for n in range(1, 12)])
    table = ("data.table={file: main.csv, path: id, path_format: '{}.png', label: label, fold: fold, "
             "join: [{file: extra.csv, column: id, file_column: image_id}]}")
    prepared = prepare_data(_cfg(flat, table).data, 0)
    t = prepared.report["table"]
    assert t["rows"] == 12 and t["images"] == 11
    assert t["joins"] == [{"file": "extra.csv", "sheet": None, "rows": 11, "unmatched": 1}]
    assert t["rows_left_out"] == [{"line": 13, "path": "img12", "kind": "unjoined",
                                   "detail": "no row with image_id 'img12' in extra.csv"}]
    assert {f.fold for f in prepared.folds} == {0, 1, 2}
    with (flat / "extra.csv").open("a") as fh:
        fh.write("img03,B,1\n")  # line 13: img03 again, other values
    with pytest.raises(DataError) as e:
        prepare_data(_cfg(flat, table).data, 0)
    assert (e.value.path, e.value.line) == (str(flat / "extra.csv"), 13) and "given on line 4 too" in e.value.reason
    with pytest.raises(ConfigError) as c:
        prepare_data(_cfg(flat, table.replace("file_column: image_id", "file_column: ID")).data, 0)
    assert c.value.keys == ("data.table.join[0].file_column",) and "'image_id', 'site', 'fold'" in str(c.value)


def test_column_and_sheet_names_yaml_reads_as_numbers_are_names(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "data.table={file: t.xlsx, sheet: 2023, path: 1, label: 2, group: 3, masks: [4], "
                         "join: [{file: f.csv, column: 5, file_column: 6.0}]}")
    t = cfg.data.table
    assert (t.sheet, t.path, t.label, t.group, t.masks, t.join[0].column, t.join[0].file_column) == (
        "2023", "1", "2", "3", ("4",), "5", "6")
