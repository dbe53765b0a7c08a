"""Tests for busi.data.dicom and DICOM through every reader: real ultrasound files pydicom ships,
DICOMs written here from PNG pixels (the BUSI sample's where present) with patient-data markers,
and hostile files. The end-to-end tests train and predict on DICOMs and grep every file busi
wrote for the markers. Tests are ``unit`` (the conftest's default tier) unless marked ``integration``."""

from __future__ import annotations

import csv
import io
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from busi.config.schema import DICOM_FRAMES, DICOM_ONE_FRAME, DicomConfig
from busi.data.codestream import codestream_size
from busi.data.dicom import DicomSource, is_dicom, read_dicom_frames
from busi.data.images import decode_frames, decode_image, load_image
from busi.data.scan import read_image_info, scan_dataset
from busi.errors import ConfigError, DataError
from dicom_files import PHI_FIELDS, uids_of, write_dicom, write_hostile

MARKER = "PHIMARKER7Q"  # set in every identifying field; must never appear in anything busi writes
CLASSES = ("normal", "benign", "malignant")
HOSTILE_REASONS = {  # what each hostile file's error says
    "bomb": "over busi's limit", "truncated": "truncated", "unsupported": "not supported", "dicomdir": "DICOMDIR",
    "sr": "without an image (Comprehensive SR", "rtplan": "without an image (RT Plan", "garbage": "not a readable DICOM file",
    "jpeg_bomb": "compressed DICOM frame declares 60000 x 60000",
}


def _pixels(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Speckle-like pixels with structure (a resize averages them, so equality means something)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    base = (128 + 90 * np.sin(xx / 7.0) * np.cos(yy / 5.0))[..., None] if len(shape) == 3 else \
        128 + 90 * np.sin(xx / 7.0) * np.cos(yy / 5.0)
    return np.clip(base + rng.normal(0, 20, shape), 0, 255).astype(np.uint8)


def _png(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr).save(path, format="PNG")
    return path


def _testdata(name: str) -> str:
    """A file of pydicom's own test data, without downloading (no network): skip where absent."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom's test file {name} is not installed (pydicom downloads some on demand; no network)")
    return str(path)


# ---------------------------------------------------------------- recognising


def test_dicom_is_recognised_by_content_not_by_name(tmp_path: Path) -> None:
    dcm = write_dicom(tmp_path / "IM0001", _pixels(0, (20, 30)))
    png = _png(tmp_path / "scan.dcm", _pixels(0, (20, 30)))  # a PNG with a DICOM suffix
    assert is_dicom(dcm) and is_dicom(dcm.read_bytes()[:200])
    assert not is_dicom(png) and not is_dicom(b"\0" * 128 + b"DIC") and not is_dicom(tmp_path / "missing")
    os.mkfifo(tmp_path / "pipe")
    assert not is_dicom(tmp_path / "pipe")  # never blocks on a FIFO
    assert load_image(png, 16).shape == (16, 16, 3)  # the PNG is read as a PNG, whatever its name


# ---------------------------------------------------------- one decode, PNG equal


@pytest.mark.parametrize("resize", ["stretch", "pad"])
def test_a_dicom_and_a_png_of_the_same_pixels_give_the_same_input(tmp_path: Path, resize: str) -> None:
    for i, shape in enumerate([(48, 64), (48, 64, 3), (37, 23), (23, 37, 3)]):
        arr = _pixels(i, shape)
        png = _png(tmp_path / f"{i}.png", arr)
        dcm = write_dicom(tmp_path / f"{i}", arr)  # no suffix
        image, source = decode_image(dcm, 32, resize)
        assert np.array_equal(image, load_image(png, 32, resize)), shape
        assert source is not None and source.frame == 1 and source.sop_instance_uid == uids_of(dcm)["sop_instance_uid"]
        assert decode_image(png, 32, resize)[1] is None


def test_busi_sample_pngs_as_dicom_give_the_same_input(tmp_path: Path, sample_zip: Path) -> None:
    with zipfile.ZipFile(sample_zip) as z:
        names = sorted(n for n in z.namelist() if n.endswith(".png") and "_mask" not in n)[:6]
        for k, name in enumerate(names):
            png = tmp_path / f"{k}.png"
            png.write_bytes(z.read(name))
            with Image.open(png) as im:
                rgb, gray = np.asarray(im.convert("RGB")), np.asarray(im.convert("L"))
            gray_png = _png(tmp_path / f"{k}-gray.png", gray)
            for arr, ref in ((rgb, png), (gray, gray_png)):
                dcm = write_dicom(tmp_path / f"{k}-{arr.ndim}", arr, phi=MARKER)
                assert np.array_equal(load_image(dcm, 64), load_image(ref, 64)), name
                info_png, info_dcm = read_image_info(ref), read_image_info(dcm)
                assert (info_dcm["width"], info_dcm["height"], info_dcm["phash"]) == \
                    (info_png["width"], info_png["height"], info_png["phash"])


def test_photometric_interpretations(tmp_path: Path) -> None:
    from pydicom.pixels import convert_color_space

    rgb = _pixels(1, (40, 50, 3))
    gray = _pixels(2, (40, 50))
    want_rgb, want_gray = load_image(_png(tmp_path / "c.png", rgb), 32), load_image(_png(tmp_path / "g.png", gray), 32)
    mono1 = write_dicom(tmp_path / "m1", 255 - gray, photometric="MONOCHROME1")  # stored inverted
    assert np.array_equal(load_image(mono1, 32), want_gray)
    ybr = write_dicom(tmp_path / "ybr", convert_color_space(rgb, "RGB", "YBR_FULL"), photometric="YBR_FULL")
    assert np.abs(load_image(ybr, 32).astype(int) - want_rgb).max() <= 2  # YCbCr round trip: rounding only
    # YBR_FULL_422 in JPEG baseline, the ultrasound export's usual form (Pillow encodes 4:2:2 YCbCr)
    from pydicom.encaps import encapsulate

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95, subsampling=1)
    jpeg = write_dicom(tmp_path / "jpeg", rgb, photometric="YBR_FULL_422", transfer_syntax="1.2.840.10008.1.2.4.50",
                       PixelData=encapsulate([buf.getvalue()]))
    (tmp_path / "same.jpg").write_bytes(buf.getvalue())
    assert np.abs(load_image(jpeg, 32).astype(int) - load_image(tmp_path / "same.jpg", 32)).max() <= 3


def test_deep_grayscale_uses_the_window_else_min_max(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    deep = rng.integers(1000, 3000, (30, 40)).astype(np.uint16)
    windowed = write_dicom(tmp_path / "w", deep, WindowCenter=2000, WindowWidth=1001, BitsStored=12, HighBit=11)
    c, w = 2000 - 0.5, 1001 - 1  # DICOM's linear window onto 0-255
    want = np.clip(((deep - c) / w + 0.5) * 255 + 0.5, 0, 255).astype(np.uint8)
    got = np.asarray(decode_image(windowed, 40, "stretch")[0])
    assert np.abs(got[..., 0].astype(int) - np.asarray(Image.fromarray(want).resize((40, 40), Image.Resampling.BILINEAR))
                  .astype(int)).max() <= 1
    plain = write_dicom(tmp_path / "p", deep)  # no window: min-max, as a float image is scaled
    mm = ((deep - deep.min()) / (deep.max() - deep.min()) * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(load_image(plain, 40), load_image(_png(tmp_path / "mm.png", mm), 40))
    mono1 = write_dicom(tmp_path / "p1", deep, photometric="MONOCHROME1")
    assert np.abs(load_image(mono1, 40).astype(int) - (255 - load_image(plain, 40).astype(int))).max() <= 1


def test_frame_policy_first_and_middle(tmp_path: Path) -> None:
    frames = np.stack([np.full((24, 32), 10 * (k + 1), np.uint8) for k in range(7)])
    cine = write_dicom(tmp_path / "cine", frames, frames=7)
    assert DICOM_FRAMES == ("first", "middle", "all") and DICOM_ONE_FRAME == ("first", "middle")
    first, src1 = decode_image(cine, 16, dicom=DicomConfig(frame="first"))
    middle, src2 = decode_image(cine, 16, dicom=DicomConfig(frame="middle"))
    assert (first == 10).all() and src1 is not None and src1.frame == 1
    assert (middle == 40).all() and src2 is not None and src2.frame == 4  # 1-based, as Referenced Frame Number
    with pytest.raises(ValueError, match="holds 7 under frame policy .all.: give the frame"):  # one image a file: training's decode
        decode_image(cine, 16, dicom=DicomConfig(frame="all"))


def test_frame_policy_all_gives_every_frame_in_order(tmp_path: Path) -> None:
    frames = np.stack([np.full((24, 32, 3), 10 * (k + 1), np.uint8) for k in range(7)])
    cine = write_dicom(tmp_path / "cine", frames, frames=7)
    every = decode_frames(cine, 16, dicom=DicomConfig(frame="all"))
    assert [source.frame for _, source in every if source is not None] == list(range(1, 8))
    assert [int(image.mean()) for image, _ in every] == [10 * (k + 1) for k in range(7)]
    uids = uids_of(cine)
    assert all(source is not None and source.sop_instance_uid == uids["sop_instance_uid"] for _, source in every)
    # a PNG and a one-frame DICOM are one image each under all
    png = decode_frames(_png(tmp_path / "one.png", frames[2]), 16, dicom=DicomConfig(frame="all"))
    assert len(png) == 1 and png[0][1] is None and np.array_equal(png[0][0], every[2][0])
    single = decode_frames(write_dicom(tmp_path / "single", frames[2]), 16, dicom=DicomConfig(frame="all"))
    assert len(single) == 1 and single[0][1] is not None and single[0][1].frame == 1
    # more frames than the caller can hold: refused before any is decoded
    with open(cine, "rb") as fh, pytest.raises(DataError, match="of 7 frames is over the 5 frames"):
        list(read_dicom_frames(fh, cine, DicomConfig(frame="all"), max_frames=5))
    # a loop cut short in a copy: one error for the file, not the frames that happen to be there
    data = cine.read_bytes()
    cut = tmp_path / "cut"
    cut.write_bytes(data[: len(data) - 2 * 24 * 32 * 3])
    with pytest.raises(DataError, match="truncated"):
        decode_frames(cut, 16, dicom=DicomConfig(frame="all"))
    assert len(decode_image(cut, 16, dicom=DicomConfig(frame="middle"))) == 2  # frame 4 is whole


def test_crop_to_the_largest_ultrasound_region(tmp_path: Path) -> None:
    arr = np.full((60, 80), 250, np.uint8)  # burned-in text around the image
    arr[10:50, 20:70] = _pixels(4, (40, 50))
    path = write_dicom(tmp_path / "r", arr, regions=[(0, 0, 9, 9), (20, 10, 69, 49), (0, 0, 500, 500)])
    region = load_image(_png(tmp_path / "region.png", arr[10:50, 20:70]), 32)
    assert np.array_equal(load_image(path, 32, dicom=DicomConfig(crop_to_region=True)), region)
    assert np.array_equal(load_image(path, 32), load_image(_png(tmp_path / "whole.png", arr), 32))
    assert read_image_info(path, DicomConfig(crop_to_region=True))["width"] == 50
    none = write_dicom(tmp_path / "n", arr)  # no regions: the whole frame
    assert np.array_equal(load_image(none, 32, dicom=DicomConfig(crop_to_region=True)), load_image(path, 32))


# ------------------------------------------------------------- pydicom's real files


@pytest.mark.parametrize("name,frames", [("examples_rgb_color.dcm", 1), ("examples_palette.dcm", 1),
                                         ("examples_ybr_color.dcm", 30), ("examples_jpeg2k.dcm", 1),
                                         ("ExplVR_BigEnd.dcm", 1)])
def test_real_ultrasound_files_decode_to_sane_rgb(name: str, frames: int) -> None:
    path = _testdata(name)
    one = {}
    for policy in DICOM_ONE_FRAME:
        image, source = decode_image(path, 64, dicom=DicomConfig(frame=policy))
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert 2 < image.mean() < 250 and image.std() > 5, (name, image.mean(), image.std())
        assert source is not None and source.frame == (1 if policy == "first" else frames // 2 + 1)
        assert source.sop_instance_uid and source.study_instance_uid and source.series_instance_uid
        one[source.frame] = image
    every = decode_frames(path, 64, dicom=DicomConfig(frame="all"))  # the 30-frame JPEG loop: each frame
    assert [source.frame for _, source in every if source is not None] == list(range(1, frames + 1))
    assert all(np.array_equal(every[k - 1][0], image) for k, image in one.items())
    crop = load_image(path, 64, dicom=DicomConfig(crop_to_region=True))
    assert crop.shape == (64, 64, 3)


# ------------------------------------------------------------------- hostile files


def test_hostile_dicom_files_are_each_a_data_error_naming_the_file(tmp_path: Path) -> None:
    files = write_hostile(tmp_path)
    assert set(files) == set(HOSTILE_REASONS)
    for kind, path in files.items():
        with pytest.raises(DataError) as e:
            load_image(path, 32)
        assert e.value.path == str(path) and HOSTILE_REASONS[kind] in e.value.reason, (kind, e.value.reason)


def test_codestream_sizes() -> None:
    sof = b"\xff\xd8\xff\xe0\x00\x04ab\xff\xc0\x00\x11\x08\x01\x00\x02\x00\x03"
    assert codestream_size(sof) == (512, 256)
    siz = b"\xff\x4f\xff\x51\x00\x29\x00\x00" + (640).to_bytes(4, "big") + (480).to_bytes(4, "big") + bytes(8)
    assert codestream_size(siz) == (640, 480)
    assert codestream_size(b"RLE data") is None and codestream_size(b"\xff\xd8") is None


def test_scan_keeps_dicom_by_content_with_masks_and_reports_hostile_files(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for k, label in enumerate(CLASSES):
        (root / label).mkdir(parents=True)
        write_dicom(root / label / f"{label}1", _pixels(k, (30, 40)))  # no suffix
        write_dicom(root / label / f"{label}2.dcm", _pixels(k + 5, (30, 40, 3)))
        _png(root / label / f"{label}1_mask.png", np.zeros((30, 40), np.uint8))
        _png(root / label / f"{label}2_mask.png", np.zeros((30, 40), np.uint8))
        (root / label / "notes").write_text("not an image")
    hostile = write_hostile(tmp_path / "hostile")
    for kind, path in hostile.items():
        shutil.copy(path, root / "benign" / f"hostile-{kind}")
    scan = scan_dataset(root, CLASSES)
    assert [s.path for s in scan.samples] == [f"{c}/{c}{i}{'.dcm' if i == 2 else ''}" for c in CLASSES for i in (1, 2)]
    assert all(s.masks == (f"{s.path.split('/')[0]}/{Path(s.path).name.removesuffix('.dcm')}_mask.png",)
               for s in scan.samples)
    assert [s.mode for s in scan.samples] == ["L", "RGB"] * 3
    corrupt = dict(scan.corrupt)
    assert set(corrupt) == {f"benign/hostile-{k}" for k in hostile}  # one entry each
    for kind in hostile:
        assert HOSTILE_REASONS[kind] in corrupt[f"benign/hostile-{kind}"]
    assert set(scan.skipped) == {f"{c}/notes" for c in CLASSES}  # not images: no Pillow suffix, no DICOM preamble
    assert not scan.orphan_masks


# --------------------------------------------------------------------- no PHI


def test_uids_that_are_not_uids_never_reach_a_row(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "x", _pixels(0, (20, 20)), StudyInstanceUID=f"=HYPERLINK({MARKER})",
                       SeriesInstanceUID="1.2.3", SOPInstanceUID="1." + "2" * 70)
    _, source = decode_image(path, 16)
    assert source == DicomSource("", "1.2.3", "", 1)


def test_no_error_reason_quotes_patient_data(tmp_path: Path) -> None:
    from pydicom import dcmread

    for kind, path in write_hostile(tmp_path).items():
        if kind == "garbage":
            continue
        from pydicom.config import disable_value_validation

        ds = dcmread(path, force=True)
        with disable_value_validation():
            for name in PHI_FIELDS:
                setattr(ds, name, MARKER)
        ds.save_as(path)
        with pytest.raises(DataError) as e:
            load_image(path, 32)
        assert MARKER not in str(e.value), kind


def test_prediction_rows_carry_the_uids_and_frame() -> None:
    from busi.predict.output import SOURCE_COLUMNS, prediction_columns, prediction_row

    columns = prediction_columns(("a", "b"))
    assert columns == ["path", "label", "label_index", "prob_a", "prob_b", "study_instance_uid",
                       "series_instance_uid", "sop_instance_uid", "frame", "error"]
    src = DicomSource("1.2", "1.2.3", "1.2.3.4", 16)
    assert prediction_row("x", np.array([0.2, 0.8]), ("a", "b"), source=src) == \
        ["x", "b", 1, "0.200000", "0.800000", "1.2", "1.2.3", "1.2.3.4", 16, ""]
    assert prediction_row("y", None, ("a", "b"), "bad") == ["y", "", "", "", ""] + [""] * len(SOURCE_COLUMNS) + ["bad"]


def test_a_structured_report_references_its_source_and_holds_the_probabilities(tmp_path: Path) -> None:
    import warnings

    from pydicom import dcmread

    from busi.data.inputs import InputFile
    from busi.predict.sr import NOTICE, SR_SUFFIX, write_sr

    frames = np.stack([_pixels(k, (24, 32)) for k in range(5)])
    (tmp_path / "in").mkdir()
    path = write_dicom(tmp_path / "in" / "cine", frames, frames=5, phi=MARKER)
    _, source = decode_image(path, 16, dicom=DicomConfig(frame="middle"))
    assert source is not None
    probs = np.array([0.1, 0.7, 0.2], np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = write_sr(InputFile("in/cine", path), source, probs, CLASSES, tmp_path / "sr", Path("/m/model.keras"),
                           "0.1.0")
    assert written == tmp_path / "sr" / "in" / f"cine{SR_SUFFIX}" and not [w for w in caught if MARKER in str(w.message)]
    sr = dcmread(written)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33" and sr.StudyInstanceUID == source.study_instance_uid
    ref = sr.ContentSequence[2].ReferencedSOPSequence[0]
    assert (ref.ReferencedSOPInstanceUID, int(ref.ReferencedFrameNumber)) == (source.sop_instance_uid, 3)
    assert sr.ContentSequence[3].TextValue == "benign" and sr.ContentSequence[-1].TextValue == NOTICE
    assert [float(sr.ContentSequence[4 + i].MeasuredValueSequence[0].NumericValue) for i in range(3)] == \
        pytest.approx([0.1, 0.7, 0.2], abs=1e-6)
    again = write_sr(InputFile("in/cine", path), source, probs, CLASSES, tmp_path / "sr2", Path("/m/model.keras"),
                     "0.1.0")
    assert dcmread(again).SOPInstanceUID == sr.SOPInstanceUID  # predicting again replaces, never duplicates
    bad = DicomSource("", "", "", 1)
    assert write_sr(InputFile("x", path), bad, probs, CLASSES, tmp_path / "sr3", Path("m"), "0.1.0") is None


def _bare(part10: Path, out: Path, implicit: bool) -> Path:
    """``part10``'s dataset written as older exports write it: no preamble, no file meta."""
    from pydicom import dcmread

    ds = dcmread(part10)
    del ds.file_meta
    ds.preamble = None
    ds.save_as(out, implicit_vr=implicit, little_endian=True, enforce_file_format=False)
    return out


@pytest.mark.parametrize("implicit", [True, False])
def test_a_dicom_dataset_without_preamble_and_file_meta_is_read(tmp_path: Path, implicit: bool) -> None:
    """An older export: the dataset alone (implicit or explicit VR; pydicom's own
    ExplVR_BigEndNoMeta.dcm is the big-endian case), no name suffix. It is DICOM by content, and
    gives the pixels its Part 10 form gives."""
    pixels = _pixels(3, (24, 32))
    part10 = write_dicom(tmp_path / "part10.dcm", pixels)
    bare = _bare(part10, tmp_path / "bare", implicit)
    assert bare.read_bytes()[:2] == b"\x08\x00" and bare.read_bytes()[128:132] != b"DICM"
    assert is_dicom(bare) and not is_dicom(tmp_path / "none")
    assert np.array_equal(load_image(bare, 16), load_image(part10, 16))
    assert decode_image(bare, 16)[1] == decode_image(part10, 16)[1]  # the same UIDs


def test_pydicoms_files_without_file_meta_are_named_for_what_they_are() -> None:
    from pydicom.data import get_testdata_file

    for name in ("ExplVR_LitEndNoMeta.dcm", "ExplVR_BigEndNoMeta.dcm"):
        path = get_testdata_file(name)
        assert is_dicom(path)
        with pytest.raises(DataError, match=r"a DICOM object without an image \(RT Ion Plan Storage\)"):
            load_image(path, 16)
    for data in (b"\x89PNG\r\n\x1a\n" + b"\0" * 200, b"\xff\xd8\xff\xe0" + b"\0" * 200, b"BM" + b"\0" * 200, b"II*\0" + b"\0" * 200):
        assert not is_dicom(data)  # no image format Pillow reads starts like a dataset


def test_an_undecodable_codec_is_named_with_what_to_do() -> None:
    from pydicom.data import get_testdata_file

    with pytest.raises(DataError) as e:
        load_image(get_testdata_file("JPEG-lossy.dcm"), 16)  # 12-bit JPEG Extended that libjpeg refuses
    assert "no installed decoder reads this JPEG Extended (Process 2 and 4) (1.2.840.10008.1.2.4.51) file with " \
        "12-bit samples" in e.value.reason and "export it uncompressed, JPEG baseline or JPEG 2000" in e.value.reason


def _sr_of(path: Path, out: Path) -> Path:
    from busi.data.inputs import InputFile
    from busi.predict.sr import write_sr

    _, source = decode_image(path, 16)
    assert source is not None
    written = write_sr(InputFile(path.name, path), source, np.array([0.2, 0.3, 0.5], np.float32), CLASSES, out,
                       Path("/m/model.keras"), "0.1.0")
    assert written is not None
    return written


def dciodvfy_errors(path: Path) -> list[str]:
    """The Error lines of dicom3tools' validator on ``path`` (skip where it is not installed)."""
    import subprocess

    if shutil.which("dciodvfy") is None:
        pytest.skip("dicom3tools' dciodvfy is not installed (.ci/run installs it where apt works)")
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("Error")]


def test_a_report_repairs_what_its_source_got_wrong(tmp_path: Path) -> None:
    """A source whose StudyDate is '1997.04.24', whose Modality is lower case, whose patient name
    is too long, and that says its identity was removed without saying how: the SR holds none of
    those errors (and the source file is unchanged)."""
    from pydicom import dcmread
    from pydicom.config import disable_value_validation

    path = write_dicom(tmp_path / "src.dcm", _pixels(1, (24, 32)))
    ds = dcmread(path)
    with disable_value_validation():
        ds.StudyDate, ds.Modality, ds.PatientName, ds.PatientIdentityRemoved = "1997.04.24", "us", "x" * 80, "YES"
        ds.StationName = "s" * 20  # SH: at most 16
    ds.save_as(path)
    before = path.read_bytes()
    sr = dcmread(_sr_of(path, tmp_path / "sr"))
    assert sr.StudyDate == "" and sr.PatientName == "" and "StationName" not in sr
    assert sr.PatientIdentityRemoved == "YES" and sr.DeidentificationMethod == "not stated in the source image"
    assert path.read_bytes() == before


@pytest.mark.system
def test_the_repaired_report_is_valid_for_dciodvfy(tmp_path: Path) -> None:
    from pydicom import dcmread
    from pydicom.config import disable_value_validation

    path = write_dicom(tmp_path / "src.dcm", _pixels(1, (24, 32)))
    ds = dcmread(path)
    with disable_value_validation():
        ds.StudyDate, ds.Modality, ds.PatientName, ds.PatientIdentityRemoved = "1997.04.24", "us", "x" * 80, "YES"
    ds.save_as(path)
    assert dciodvfy_errors(_sr_of(path, tmp_path / "sr")) == []


def test_a_frame_is_referenced_only_in_a_multi_frame_class(tmp_path: Path) -> None:
    from pydicom import dcmread

    from busi.predict.sr import NOTICE, is_image_class, references_frames

    assert references_frames("1.2.840.10008.5.1.4.1.1.3.1", 5)  # Ultrasound Multi-frame Image Storage
    assert not references_frames("1.2.840.10008.5.1.4.1.1.7", 2)  # Secondary Capture: never a frame
    assert not references_frames("1.2.840.10008.5.1.4.1.1.3.1", 1)
    assert is_image_class("1.2.840.10008.5.1.4.1.1.6.1") and not is_image_class("1.2.840.10008.5.1.4.1.1.481.2")
    from pydicom.data import get_testdata_file

    sc = Path(get_testdata_file("SC_rgb_rle_2frame.dcm"))  # a Secondary Capture of two frames
    sr = dcmread(_sr_of(sc, tmp_path / "sr"))
    assert "ReferencedFrameNumber" not in sr.ContentSequence[2].ReferencedSOPSequence[0]
    assert sr.ContentSequence[-1].TextValue == NOTICE + " Frame 1 of 2 of the source."


# ------------------------------------------------------------- config and model


def test_dicom_keys_in_the_job_file_and_the_model_folder(tmp_path: Path) -> None:
    from busi.config.load import load_config
    from busi.model.folder import ModelInfo, read_model_info

    base = {"data": {"source": "x", "dicom": {"frame": "middle", "crop_to_region": True}}, "output": {"dir": "o"}}
    cfg = load_config(None, env={}, base=base)
    assert cfg.data.dicom == DicomConfig(frame="middle", crop_to_region=True)
    assert load_config(None, ["data.dicom.frame=all"], env={}, base=base).data.dicom.frame == "all"
    with pytest.raises(ConfigError, match="data.dicom.frame"):
        load_config(None, ["data.dicom.frame=last"], env={}, base=base)
    info = ModelInfo(("a", "b"), 32, "pad", cfg.data.dicom)
    (tmp_path / "labels.json").write_text('{"0": "a", "1": "b"}')
    import json

    (tmp_path / "preprocessing.json").write_text(json.dumps(info.preprocessing_json()))
    assert read_model_info(tmp_path / "model.keras", 32) == info
    (tmp_path / "preprocessing.json").write_text('{"image_size": 32, "resize": "stretch"}')  # before DICOM
    assert read_model_info(tmp_path / "model.keras", 32).dicom == DicomConfig()
    (tmp_path / "preprocessing.json").write_text('{"resize": "stretch", "dicom": {"frame": "last"}}')
    with pytest.raises(DataError, match="frame"):
        read_model_info(tmp_path / "model.keras", 32)


# ------------------------------------------------------------ every frame a sample


def _cine_dataset(root: Path, pngs: int = 6, frames: int = 4) -> Path:
    """Class folders, each with ``pngs`` PNGs and one suffix-less cine loop of ``frames`` frames
    (its frames alike but not equal, as a loop's are)."""
    for k, label in enumerate(CLASSES):
        (root / label).mkdir(parents=True)
        for i in range(pngs):
            _png(root / label / f"{label}{i}.png", _pixels(10 * k + i, (48, 64)))
        loop = np.stack([_pixels(100 + 10 * k + f, (48, 64)) for f in range(frames)])
        write_dicom(root / label / f"{label}-loop", loop, frames=frames, phi=MARKER)
    return root


def test_under_all_every_frame_is_a_sample_and_a_loop_stays_on_one_side(tmp_path: Path) -> None:
    from busi.config.load import load_config
    from busi.data.prepare import prepare_data
    from busi.data.split import read_splits_file, splits_text

    root = _cine_dataset(tmp_path / "ds")
    one = scan_dataset(root, CLASSES, dicom=DicomConfig(frame="middle"))
    scan = scan_dataset(root, CLASSES, dicom=DicomConfig(frame="all"))
    assert len(one.samples) == 3 * 7 and len(scan.samples) == 3 * 10
    loop = [s for s in scan.samples if s.path == "benign/benign-loop"]
    assert [(s.frame, s.key) for s in loop] == [(f, f"benign/benign-loop#frame-{f}") for f in range(1, 5)]
    assert len({s.sha256 for s in loop}) == 1 and len({s.phash for s in loop}) > 1  # one file, four images
    base = {"data": {"source": str(root), "dicom": {"frame": "all"}}, "output": {"dir": str(tmp_path / "o")}}
    for dedupe in ("none", "near"):
        for seed in range(8):
            cfg = load_config(None, [f"data.dedupe={dedupe}"], env={}, base=base)
            prepared = prepare_data(cfg.data, seed)
            sides: dict[str, set[str]] = {}
            for r in prepared.rows:
                sides.setdefault(r.path, set()).add(r.split)
            assert all(len(v) == 1 for v in sides.values()), (dedupe, seed, sides)
            assert len(prepared.rows) == 30
    assert prepared.report["duplicates"]["groups"] == []  # a loop is no duplicate of itself
    text = splits_text(prepared.rows)
    assert text.splitlines()[0] == "path,label,group,split,frame" and "benign/benign-loop," in text
    (tmp_path / "splits.csv").write_text(text)
    rows, left = read_splits_file(tmp_path / "splits.csv", scan.samples)
    assert rows == list(prepared.rows) and left == []
    assert splits_text([r for r in prepared.rows if r.frame is None]).splitlines()[0] == "path,label,group,split"
    # one frame image per sample: each frame decodes as that frame of the loop
    middle = decode_image(root / "benign/benign-loop", 32, dicom=DicomConfig(frame="middle"))[0]
    assert np.array_equal(load_image(root / "benign/benign-loop", 32, dicom=DicomConfig(frame="all"), frame=3), middle)
    with pytest.raises(DataError, match="no frame 5"):
        load_image(root / "benign/benign-loop", 32, dicom=DicomConfig(frame="all"), frame=5)
    from busi.model.quantize import calibration_images  # INT8 calibration decodes frames as training does

    calib = calibration_images([str(root / "benign/benign-loop"), str(root / "benign/benign0.png")], 32, "stretch",
                               DicomConfig(frame="all"), [3, None])
    assert np.array_equal(calib[0], middle) and np.array_equal(calib[1], load_image(root / "benign/benign0.png", 32))


# ------------------------------------------------------------ end to end (integration)


def _dicom_dataset(root: Path, sample_zip: Path | None, per_class: int = 8) -> Path:
    """A class-folder dataset of suffix-less DICOMs with every PHI field set to the marker:
    the BUSI sample's images (masks beside them) where present, else synthetic ones."""
    if sample_zip is not None:
        with zipfile.ZipFile(sample_zip) as z:
            for name in z.namelist():
                parts = name.split("/")
                if not name.endswith(".png") or parts[-2] not in CLASSES:
                    continue
                target = root / parts[-2] / parts[-1]
                target.parent.mkdir(parents=True, exist_ok=True)
                if "_mask" in name:
                    target.write_bytes(z.read(name))
                    continue
                with Image.open(io.BytesIO(z.read(name))) as im:
                    arr = np.asarray(im.convert("L"))
                write_dicom(target.with_suffix(""), arr, phi=MARKER)
        return root
    for k, label in enumerate(CLASSES):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            write_dicom(root / label / f"{label}{i}", _pixels(10 * k + i, (48, 64)), phi=MARKER)
    return root


def _grep(folder: Path, marker: bytes) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and marker in p.read_bytes()]


@pytest.mark.integration
def test_train_and_predict_on_dicom_leak_no_patient_data(tmp_path: Path) -> None:
    from conftest import REPO, SAMPLE_ZIP, SMALL, run_main

    data = _dicom_dataset(tmp_path / "data", SAMPLE_ZIP if SAMPLE_ZIP.is_file() else None)
    first = next(p for p in sorted((data / "benign").iterdir()) if "_mask" not in p.name)
    assert first.suffix == "" and MARKER.encode() in first.read_bytes()
    out = tmp_path / "run"
    # DICOM input and what busi writes, not a model: conftest's SMALL (MobileNet 0.25, no SavedModel)
    tiny = ["--set", "data.image_size=32", "--set", "train.batch_size=4", "--set", "train.head.epochs=1",
            "--set", "train.finetune.epochs=1", "--set", "train.quantize=none", "--set", "data.dicom.frame=middle",
            "--set", "data.dicom.crop_to_region=true", *SMALL]
    train = run_main("train", str(REPO / "job" / "demo.yaml"), "--set", f"data.source={data}",
                     "--set", f"output.dir={out}", *tiny)
    assert train.returncode == 0, train.stderr[-3000:]
    prep = (out / "model" / "preprocessing.json").read_text()
    assert '"frame": "middle"' in prep and '"crop_to_region": true' in prep
    inputs = tmp_path / "inputs"
    shutil.copytree(data / "benign", inputs)
    for kind, path in write_hostile(tmp_path / "hostile").items():
        shutil.copy(path, inputs / f"hostile-{kind}")
    csv_path = tmp_path / "pred" / "predictions.csv"
    reports = tmp_path / "sr"
    pred = run_main("predict", "--model", str(out), "--output", str(csv_path), "--engine", "tensorflow",
                    "--input", str(inputs), "--dicom-sr", str(reports))
    assert pred.returncode == 0, pred.stderr[-3000:]
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    images = [p for p in (data / "benign").iterdir() if "_mask" not in p.name]
    from pydicom import dcmread

    for p in images:
        r = rows[p.name]
        assert r["error"] == "" and r["label"] in CLASSES and r["frame"] == "1"
        assert {k: r[k] for k in uids_of(p)} == uids_of(p)
        sr = dcmread(reports / str(inputs.relative_to("/")) / f"{p.name}.sr.dcm")  # the overlay naming rule
        ref = sr.ContentSequence[2].ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == r["sop_instance_uid"] and sr.StudyInstanceUID == r["study_instance_uid"]
        assert sr.ContentSequence[3].TextValue == r["label"]
        assert [round(float(sr.ContentSequence[4 + i].MeasuredValueSequence[0].NumericValue), 4)
                for i in range(len(CLASSES))] == [round(float(r[f"prob_{c}"]), 4) for c in CLASSES]
    assert len(list(reports.rglob("*.sr.dcm"))) == len(images)  # none for the hostile files
    # an SR files with its study: it carries the patient's identity (documented), and only it does
    assert all(MARKER.encode() in p.read_bytes() for p in reports.rglob("*.sr.dcm"))
    for kind in HOSTILE_REASONS:
        r = rows[f"hostile-{kind}"]
        assert r["label"] == "" and HOSTILE_REASONS[kind] in r["error"], r
    assert len(rows) == len(images) + len(HOSTILE_REASONS)
    marker = MARKER.encode()
    logs = train.stdout + train.stderr + pred.stdout + pred.stderr
    assert MARKER not in logs
    assert _grep(out, marker) == [] and _grep(csv_path.parent, marker) == []
    assert len(_grep(data, marker)) == len(list(data.rglob("*"))) - len(list(data.rglob("*_mask*"))) - 3  # findable


@pytest.mark.integration
def test_predict_rows_of_dicom_equal_those_of_the_same_pngs(tmp_path: Path) -> None:
    from conftest import make_model_dir

    from busi.data.inputs import expand_inputs
    from busi.model.predictor import load_predictor
    from busi.predict.job import predict_files
    from busi.predict.output import CsvSink, prediction_columns

    model = make_model_dir(tmp_path / "run")
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(5):
        arr = _pixels(i, (50, 70, 3) if i % 2 else (50, 70))
        _png(inputs / f"scan{i}.png", arr)
        write_dicom(inputs / f"scan{i}", arr, phi=MARKER)
    predictor = load_predictor(model, "tensorflow")
    files = expand_inputs([str(inputs)])
    assert len(files) == 10  # suffix-less DICOM files are inputs
    sink = CsvSink(tmp_path / "p.csv", prediction_columns(predictor.classes), resume=False)
    try:
        summary = predict_files(predictor, files, sink, batch_size=4, workers=2)
    finally:
        sink.close()
    assert summary.errors == 0
    with open(tmp_path / "p.csv", newline="", encoding="utf-8") as fh:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    probs = [c for c in rows["scan0.png"] if c.startswith("prob_")]
    for i in range(5):
        png, dcm = rows[f"scan{i}.png"], rows[f"scan{i}"]
        assert [png[c] for c in probs] == [dcm[c] for c in probs]
        assert png["sop_instance_uid"] == "" and png["frame"] == ""
        assert dcm["sop_instance_uid"] == uids_of(inputs / f"scan{i}")["sop_instance_uid"] and dcm["frame"] == "1"
    assert MARKER.encode() not in (tmp_path / "p.csv").read_bytes()


@pytest.mark.integration
def test_predict_every_frame_of_a_cine_loop_a_row_each_resumable(tmp_path: Path) -> None:
    """``--dicom-frame all``: a row per frame (its number and the loop's UIDs), in order, each
    frame classified as a PNG of its pixels is; an overlay and an SR per frame; a run killed
    with the loop's rows cut short resumes to the same rows, predicting only the loop again."""
    from conftest import make_model_dir, run_main
    from pydicom import dcmread

    from busi.predict.output import done_marker

    model = make_model_dir(tmp_path / "run")
    inputs = tmp_path / "in"
    inputs.mkdir()
    frames = np.stack([_pixels(k, (40, 56, 3)) for k in range(6)])
    write_dicom(inputs / "zcine", frames, frames=6, phi=MARKER)
    for k in (0, 3):
        _png(inputs / f"frame{k}.png", frames[k])
    write_dicom(inputs / "single", frames[1], phi=MARKER)
    out, cam, sr = tmp_path / "p.csv", tmp_path / "cam", tmp_path / "sr"
    args = ["predict", "--model", str(model), "--input", str(inputs), "--output", str(out), "--dicom-frame", "all",
            "--batch-size", "4", "--engine", "tensorflow"]
    proc = run_main(*args, "--gradcam", str(cam), "--dicom-sr", str(sr))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    keys = [(Path(r["path"]).name, r["frame"]) for r in rows]
    assert keys == [("frame0.png", ""), ("frame3.png", ""), ("single", "1"), *[("zcine", str(k)) for k in range(1, 7)]]
    uids = uids_of(inputs / "zcine")
    assert all(r["sop_instance_uid"] == uids["sop_instance_uid"] and r["label"] for r in rows[3:])
    by = {key: r for key, r in zip(keys, rows)}
    probs = [c for c in rows[0] if c.startswith("prob_")]
    for k in (0, 3):
        assert [by[("zcine", str(k + 1))][c] for c in probs] == [by[(f"frame{k}.png", "")][c] for c in probs]
    assert sorted(p.name for p in cam.rglob("*.png")) == sorted(
        ["frame0.png.gradcam.png", "frame3.png.gradcam.png", "single.gradcam.png",
         *[f"zcine.frame-{k}.gradcam.png" for k in range(1, 7)]])
    reports = {p.name: p for p in sr.rglob("*.sr.dcm")}
    assert sorted(reports) == sorted(["single.sr.dcm", *[f"zcine.frame-{k}.sr.dcm" for k in range(1, 7)]])
    evidence = dcmread(reports["zcine.frame-5.sr.dcm"]).ContentSequence
    assert ["5"] == [str(ref.get("ReferencedFrameNumber")) for item in evidence if "ReferencedSOPSequence" in item
                     for ref in item.ReferencedSOPSequence]
    whole = out.read_bytes()
    out.write_bytes(b"".join(whole.splitlines(keepends=True)[:-3]))  # killed: the loop's last 3 rows never written
    done_marker(out).unlink()
    again = run_main(*args, "--resume")
    assert again.returncode == 0 and "3 already done" in again.stderr, again.stderr[-3000:]
    assert out.read_bytes() == whole
    assert MARKER not in proc.stderr + again.stderr and MARKER.encode() not in whole


@pytest.mark.integration
def test_train_and_predict_on_every_frame_of_cine_loops(tmp_path: Path) -> None:
    """data.dicom.frame: all end to end: every frame a sample (splits.csv's frame column, a loop
    on one side), test.csv naming frames path#frame-N, and the model predicting a row per frame,
    as it was trained."""
    from conftest import REPO, SMALL, run_main

    data = _cine_dataset(tmp_path / "ds")
    out = tmp_path / "run"
    # frames as samples, not a model: conftest's SMALL (MobileNet 0.25, no SavedModel)
    train = run_main("train", str(REPO / "job" / "demo.yaml"), "--set", f"data.source={data}", "--set",
                     f"output.dir={out}", "--set", "data.image_size=32", "--set", "train.batch_size=8",
                     "--set", "train.head.epochs=1", "--set", "train.finetune.epochs=1", "--set", "data.dicom.frame=all",
                     "--set", "train.gradcam_masks=false", "--set", "train.quantize=none", *SMALL)
    assert train.returncode == 0, train.stderr[-3000:]
    with open(out / "data" / "splits.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 30 and sum(r["frame"] != "" for r in rows) == 12
    for label in CLASSES:
        assert len({r["split"] for r in rows if r["path"] == f"{label}/{label}-loop"}) == 1
    with open(out / "predictions" / "test.csv", newline="", encoding="utf-8") as fh:
        tested = [r["path"] for r in csv.DictReader(fh)]
    loops = [r for r in rows if r["frame"] and r["split"] == "test"]
    assert {f"{r['path']}#frame-{r['frame']}" for r in loops} <= set(tested)
    assert '"frame": "all"' in (out / "model" / "preprocessing.json").read_text()
    pred = run_main("predict", "--model", str(out), "--input", str(data / "benign"), "--output", str(tmp_path / "p.csv"))
    assert pred.returncode == 0, pred.stderr[-3000:]
    with open(tmp_path / "p.csv", newline="", encoding="utf-8") as fh:
        keys = [(Path(r["path"]).name, r["frame"]) for r in csv.DictReader(fh)]
    assert [k for k in keys if k[0] == "benign-loop"] == [("benign-loop", str(f)) for f in range(1, 5)]
    assert len(keys) == 10
    assert MARKER not in train.stderr + pred.stderr


@pytest.mark.integration
def test_predict_over_pydicoms_whole_test_folder(tmp_path: Path) -> None:
    """Every file pydicom ships for its own tests (images in every codec, reports, plans,
    DICOMDIRs, files without meta, broken ones): exit 0, no traceback in the log, one row each,
    and every structured report busi writes valid for dicom3tools (no Error) and read by DCMTK."""
    import subprocess

    from pydicom.data import get_testdata_file

    from conftest import make_model_dir, run_cli

    folder = Path(get_testdata_file("CT_small.dcm")).parent
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    model = make_model_dir(tmp_path / "run")
    out, sr = tmp_path / "p.csv", tmp_path / "sr"
    proc = run_cli("predict", "--model", str(model), "--input", str(folder), "--output", str(out), "--dicom-sr", str(sr),
                   "--engine", "openvino")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert not [ln for ln in proc.stderr.splitlines() if ln[:1].isspace() or " ERROR " in ln]  # one line a record
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(Path(r["path"]).name for r in rows) == sorted(p.name for p in files)
    assert all(bool(r["label"]) != bool(r["error"]) for r in rows)
    reports = sorted(sr.rglob("*.sr.dcm"))
    assert len(reports) >= 50  # every classified DICOM with valid UIDs
    for report in reports:
        assert dciodvfy_errors(report) == [], report
        if shutil.which("dsrdump"):
            assert subprocess.run(["dsrdump", str(report)], capture_output=True, timeout=60).returncode == 0, report
