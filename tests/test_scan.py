"""Tests for busi.data.scan: real image files built with Pillow, and the real BUSI sample."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from busi.data.scan import (
    find_dataset_root,
    is_mask_name,
    natural_key,
    read_image_info,
    scan_dataset,
)
from busi.data.staging import stage_source
from busi.errors import DataError

CLASSES = ("normal", "benign", "malignant")


def png_bytes(seed: int, size: tuple[int, int] = (40, 32), mode: str = "L") -> bytes:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def put(root: Path, rel: str, data: bytes | None = None, seed: int = 0, **kw) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(png_bytes(seed, **kw) if data is None else data)
    return p


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """A BUSI-like folder with masks, orphans, junk and broken images."""
    root = tmp_path / "ds"
    put(root, "normal/normal (1).png", seed=1)
    put(root, "normal/normal (1)_mask.png", seed=2)
    put(root, "normal/sub/normal (2).png", seed=3)  # nested folders are walked
    put(root, "benign/benign (10).png", seed=10)
    put(root, "benign/benign (2).png", seed=11, size=(50, 20), mode="RGB")
    put(root, "benign/benign (1).png", seed=12)
    put(root, "benign/benign (10)_mask.png", seed=13)
    put(root, "benign/benign (10)_mask_1.png", seed=14)
    put(root, "benign/benign (10)_mask_2.png", seed=15)
    put(root, "benign/benign (2)_mask.png", seed=16)
    put(root, "benign/benign (99)_mask.png", seed=17)  # orphan: no benign (99).png
    put(root, "benign/notes.txt", b"not an image")
    put(root, "benign/Thumbs.db", b"\x00" * 64)
    put(root, "benign/.DS_Store", b"\x00" * 8)  # hidden files are ignored entirely
    put(root, "malignant/malignant (1).png", seed=20)
    good = png_bytes(21, size=(64, 64))
    put(root, "malignant/malignant (3).png", good[: len(good) // 2])  # truncated
    put(root, "malignant/malignant (4).png", b"just some text, not a PNG\n")
    put(root, "malignant/malignant (5)_mask_1.png", seed=22)  # orphan
    return root


# ------------------------------------------------------------------- helpers


def test_natural_key_orders_numbers_numerically() -> None:
    names = ["benign (10).png", "benign (2).png", "Benign (1).png", "benign (2)_mask.png", "benign (100).png"]
    assert sorted(names, key=natural_key) == [
        "Benign (1).png",
        "benign (2).png",
        "benign (2)_mask.png",
        "benign (10).png",
        "benign (100).png",
    ]


def test_is_mask_name() -> None:
    assert is_mask_name("benign (1)_mask.png")
    assert is_mask_name("a/b/benign (1)_mask_2.png")
    assert is_mask_name("X_MASK.PNG")
    assert not is_mask_name("benign (1).png")
    assert not is_mask_name("mask.png")
    assert not is_mask_name("benign (1)_masked.png")


def test_read_image_info(tmp_path: Path) -> None:
    p = put(tmp_path, "a.png", seed=5, size=(30, 20), mode="RGB")
    info = read_image_info(p)
    assert (info["width"], info["height"], info["mode"]) == (30, 20, "RGB")
    assert info["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    assert 0 <= info["phash"] < 2**63


# ---------------------------------------------------------------------- scan


def test_scan_natural_order_and_masks(messy: Path) -> None:
    r = scan_dataset(messy, CLASSES)
    assert r.root == messy
    assert [s.path for s in r.samples] == [
        "normal/normal (1).png",
        "normal/sub/normal (2).png",
        "benign/benign (1).png",
        "benign/benign (2).png",
        "benign/benign (10).png",
        "malignant/malignant (1).png",
    ]
    by = {s.path: s for s in r.samples}
    assert by["benign/benign (10).png"].masks == (
        "benign/benign (10)_mask.png",
        "benign/benign (10)_mask_1.png",
        "benign/benign (10)_mask_2.png",
    )
    assert by["benign/benign (2).png"].masks == ("benign/benign (2)_mask.png",)
    assert by["benign/benign (1).png"].masks == ()
    assert by["normal/normal (1).png"].masks == ("normal/normal (1)_mask.png",)
    assert [(s.label, s.label_index) for s in r.samples] == [
        ("normal", 0), ("normal", 0), ("benign", 1), ("benign", 1), ("benign", 1), ("malignant", 2)
    ]
    s2 = by["benign/benign (2).png"]
    assert (s2.width, s2.height, s2.mode) == (50, 20, "RGB")
    assert not any(is_mask_name(s.path) for s in r.samples)


def test_scan_orphans_skipped_corrupt(messy: Path) -> None:
    r = scan_dataset(messy, CLASSES)
    assert r.orphan_masks == ("benign/benign (99)_mask.png", "malignant/malignant (5)_mask_1.png")
    assert sorted(r.skipped) == ["benign/Thumbs.db", "benign/notes.txt"]
    corrupt = dict(r.corrupt)
    assert set(corrupt) == {"malignant/malignant (3).png", "malignant/malignant (4).png"}
    assert "truncated" in corrupt["malignant/malignant (3).png"]
    assert "cannot identify image file" in corrupt["malignant/malignant (4).png"]
    # every non-hidden file is accounted for exactly once
    mask_files = [m for s in r.samples for m in s.masks] + list(r.orphan_masks)
    accounted = [s.path for s in r.samples] + mask_files + list(r.skipped) + list(corrupt)
    on_disk = [p.relative_to(messy).as_posix() for p in messy.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert sorted(accounted) == sorted(on_disk)


@pytest.mark.timeout(30)  # a FIFO opened for reading would block the scan forever
def test_fifos_and_broken_links_are_skipped_and_reported_never_read(tmp_path: Path) -> None:
    import os

    root = tmp_path / "ds"
    put(root, "a/x.png", seed=1)
    put(root, "b/y.png", seed=2)
    os.mkfifo(root / "a" / "pipe.png")
    (root / "b" / "gone.png").symlink_to(root / "b" / "nowhere.png")
    (root / "b" / "loop.png").symlink_to(root / "b" / "loop.png")
    put(root, "b/.ipynb_checkpoints/y-checkpoint.png", seed=3)  # junk: neither a sample nor reported
    r = scan_dataset(root, ["a", "b"])
    assert [s.path for s in r.samples] == ["a/x.png", "b/y.png"]
    assert sorted(r.skipped) == ["a/pipe.png", "b/gone.png", "b/loop.png"]
    assert r.corrupt == ()


def test_a_decoder_raising_anything_makes_that_file_corrupt_not_the_scan(tmp_path: Path) -> None:
    """Pillow's DDS plug-in raises NotImplementedError on unknown pixel-format flags (other
    plug-ins raise AttributeError, ...): the file is reported corrupt, the scan goes on."""
    import struct

    root = tmp_path / "ds"
    put(root, "a/x.png", seed=1)
    put(root, "b/y.png", seed=2)
    header = struct.pack("<4s7I44s", b"DDS ", 124, 0x1007, 8, 8, 0, 0, 0, b"\0" * 44)
    pixel_format = struct.pack("<8I", 32, 0, 0, 0, 0, 0, 0, 0)  # flags 0: no format Pillow knows
    put(root, "a/odd.dds", data=header + pixel_format + struct.pack("<5I", 0x1000, 0, 0, 0, 0) + bytes(256))
    r = scan_dataset(root, ["a", "b"])
    assert [s.path for s in r.samples] == ["a/x.png", "b/y.png"]
    assert dict(r.corrupt) == {"a/odd.dds": "cannot decode image: cannot identify image file (not a format Pillow "
                                            "reads)"}


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nnewpath 0 0 moveto 64 64 lineto stroke\nshowpage\n"


def test_a_format_busi_does_not_read_is_corrupt_never_a_sample(tmp_path: Path) -> None:
    """Pillow identifies an EPS file and would hand it to Ghostscript to decode (absent on most
    nodes, unsafe on files nobody curated): the scan names it for what it is, under any name,
    and it never becomes a sample that training then cannot decode. Whether this machine has
    Ghostscript changes nothing."""
    from busi.data.images import PILLOW_FORMATS, load_image

    Image.init()
    assert set(PILLOW_FORMATS) <= set(Image.OPEN)  # every name is a format this Pillow opens
    root = tmp_path / "ds"
    put(root, "a/x.png", seed=1)
    put(root, "b/y.png", seed=2)
    put(root, "a/fake.eps", data=EPS)
    put(root, "b/disguised.png", data=EPS)
    r = scan_dataset(root, ["a", "b"])
    assert [s.path for s in r.samples] == ["a/x.png", "b/y.png"]
    corrupt = dict(r.corrupt)
    assert set(corrupt) == {"a/fake.eps", "b/disguised.png"}
    for reason in corrupt.values():
        assert "EPS is not an image format busi reads" in reason and "convert it to PNG" in reason
    with pytest.raises(DataError, match="EPS is not an image format busi reads"):
        load_image(root / "a" / "fake.eps", 32)  # training's decode: the same answer


def test_scan_is_deterministic(messy: Path) -> None:
    assert scan_dataset(messy, CLASSES) == scan_dataset(messy, CLASSES)


def test_same_stem_different_extension_both_kept(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    put(root, "a/x.png", seed=1)
    Image.fromarray(np.full((20, 20), 90, np.uint8)).save(root / "a" / "x.jpg")
    put(root, "a/x_mask.png", seed=2)
    put(root, "b/y.png", seed=3)
    r = scan_dataset(root, ["a", "b"])
    assert sorted(s.path for s in r.samples) == ["a/x.jpg", "a/x.png", "b/y.png"]
    assert all(s.masks == ("a/x_mask.png",) for s in r.samples if s.label == "a")


def test_class_folders_one_level_down(tmp_path: Path) -> None:
    for c in CLASSES:
        put(tmp_path, f"Dataset_BUSI_with_GT/{c}/{c} (1).png", seed=len(c))
    (tmp_path / "__MACOSX" / "benign").mkdir(parents=True)
    assert find_dataset_root(tmp_path, CLASSES) == tmp_path / "Dataset_BUSI_with_GT"
    r = scan_dataset(tmp_path, CLASSES)
    assert r.root == tmp_path / "Dataset_BUSI_with_GT"
    assert [s.path for s in r.samples] == ["normal/normal (1).png", "benign/benign (1).png", "malignant/malignant (1).png"]


def test_extra_folders_reported(tmp_path: Path) -> None:
    for c in CLASSES:
        put(tmp_path, f"{c}/{c} (1).png", seed=len(c))
    (tmp_path / "other").mkdir()
    assert scan_dataset(tmp_path, CLASSES).extra_dirs == ("other",)


def test_root_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset folder not found"):
        scan_dataset(tmp_path / "missing", CLASSES)
    (tmp_path / "x" / "cats").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no class folders .* one level down \(found folders: \['x'\]\)"):
        scan_dataset(tmp_path, CLASSES)
    for top in ("one", "two"):
        put(tmp_path, f"{top}/benign/benign (1).png")
    with pytest.raises(DataError, match="several folders hold the class folders \\(one, two\\)"):
        find_dataset_root(tmp_path, CLASSES)


def test_missing_class_folder_is_data_error(tmp_path: Path) -> None:
    put(tmp_path, "normal/normal (1).png", seed=1)
    put(tmp_path, "benign/benign (1).png", seed=2)
    with pytest.raises(DataError) as info:
        scan_dataset(tmp_path, CLASSES)
    assert str(info.value) == f"{tmp_path}: class folder 'malignant' is missing (data.classes lists it)"
    assert info.value.exit_code == 3


def test_class_without_readable_images_is_data_error(tmp_path: Path) -> None:
    put(tmp_path, "normal/normal (1).png", seed=1)
    put(tmp_path, "benign/benign (1).png", seed=2)
    put(tmp_path, "malignant/malignant (1).png", b"broken")
    put(tmp_path, "malignant/malignant (1)_mask.png", seed=3)
    put(tmp_path, "malignant/readme.txt", b"x")
    with pytest.raises(DataError) as info:
        scan_dataset(tmp_path, CLASSES)
    assert str(info.value) == f"{tmp_path / 'malignant'}: no readable images in class 'malignant'"
    (tmp_path / "malignant" / "malignant (1).png").unlink()
    (tmp_path / "malignant" / "malignant (1)_mask.png").unlink()
    with pytest.raises(DataError, match="no readable images in class 'malignant'"):
        scan_dataset(tmp_path, CLASSES)


# ---------------------------------------------------------------- real sample


@pytest.fixture(scope="module")
def sample_scan(sample_zip: Path, tmp_path_factory: pytest.TempPathFactory):
    root = stage_source(sample_zip, tmp_path_factory.mktemp("stage") / "stage")
    return scan_dataset(root, CLASSES)


def test_real_sample_counts(sample_scan) -> None:
    r = sample_scan
    assert r.root.name == "Dataset_BUSI_with_GT"
    assert len(r.samples) == 55
    counts = {c: sum(1 for s in r.samples if s.label == c) for c in CLASSES}
    assert counts == {"benign": 19, "malignant": 18, "normal": 18}
    assert not any(is_mask_name(s.path) or "_mask" in s.path for s in r.samples)
    assert r.corrupt == () and r.skipped == () and r.orphan_masks == ()
    assert all(s.masks for s in r.samples)  # every BUSI image has a ground-truth mask


def test_real_sample_masks_and_order(sample_scan) -> None:
    by = {Path(s.path).name: s for s in sample_scan.samples}
    assert by["benign (195).png"].masks == (
        "benign/benign (195)_mask.png",
        "benign/benign (195)_mask_1.png",
        "benign/benign (195)_mask_2.png",
    )
    assert by["malignant (53).png"].masks == ("malignant/malignant (53)_mask.png", "malignant/malignant (53)_mask_1.png")
    assert by["normal (1).png"].masks == ("normal/normal (1)_mask.png",)
    benign = [Path(s.path).name for s in sample_scan.samples if s.label == "benign"]
    assert benign == [f"benign ({n}).png" for n in (*range(1, 17), 54, 195, 433)]
    assert by["benign (433).png"].sha256 == by["malignant (145).png"].sha256


def test_a_run_directory_inside_the_dataset_is_not_scanned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from busi.config.load import load_config
    from busi.data.prepare import prepare_data

    for k, label in enumerate(("normal", "benign", "malignant")):
        for i in range(4):
            put(tmp_path / "ds", f"{label}/{label} ({i}).png", seed=10 * k + i)
    run = tmp_path / "ds" / "normal" / "runs" / "r1"  # e.g. output.dir=${data}/normal/runs/r1
    put(run, "plots/loss.png", seed=5)
    put(run, "plots/accuracy.png", seed=6)
    cfg = load_config(None, [f"data.source={tmp_path / 'ds'}", f"output.dir={run}", "data.dedupe=none"])
    prepared = prepare_data(cfg.data, 0, exclude=[run])
    assert all("runs" not in s.path for s in prepared.scan.samples)
    assert prepared.report["counts"]["per_class"]["normal"] == 4
    assert prepared.report["excluded_folders"] == ["normal/runs/r1"] and "inside the dataset" in caplog.text
    # without the exclusion the plots would have been 'normal' images
    assert sum(s.label == "normal" for s in scan_dataset(tmp_path / "ds", ("normal", "benign", "malignant")).samples) == 6
