"""busi.evaluate.explain: Grad-CAM heatmaps scored against lesion masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from busi.evaluate.explain import load_mask, mask_agreement, upsample


def test_mask_agreement_by_hand() -> None:
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:6] = True  # 8 of 64 pixels
    assert mask_agreement(mask.astype(float), mask) == (1.0, True)
    inside, _ = mask_agreement(np.ones((8, 8)), mask)
    assert inside == 8 / 64  # a flat map scores the mask's share (its maximum is a tie: not asserted)
    peak = np.full((8, 8), 0.1)
    peak[3, 4] = 1.0  # one maximum, inside the mask
    inside, hit = mask_agreement(peak, mask)
    assert hit is True and inside == pytest.approx((7 * 0.1 + 1.0) / (63 * 0.1 + 1.0))
    off = np.zeros((8, 8))
    off[7, 7] = 1.0
    assert mask_agreement(off, mask) == (0.0, False)
    assert mask_agreement(np.zeros((8, 8)), mask) == (0.0, False)


def test_masks_are_unioned_and_resized_as_their_image(tmp_path: Path) -> None:
    """A wide image padded to a square: the mask pads the same way, so a lesion in the image's
    left half stays in the left half of the model input (and off the padding)."""
    a = np.zeros((20, 40), np.uint8)
    a[5:15, 0:10] = 255
    b = np.zeros((20, 40), np.uint8)
    b[0:4, 36:40] = 255
    Image.fromarray(a).save(tmp_path / "x_mask.png")
    Image.fromarray(b).save(tmp_path / "x_mask_1.png")
    m = load_mask([tmp_path / "x_mask.png", tmp_path / "x_mask_1.png"], 40, "pad")
    assert m.shape == (40, 40) and m.dtype == bool
    assert m[15:25, 0:10].all() and not m[:10].any()  # padded: the 20 rows sit in rows 10-29
    assert m[10:14, 36:40].all()  # the second mask, unioned
    s = load_mask([tmp_path / "x_mask.png"], 40, "stretch")
    assert s[10:30, 0:10].all()  # stretched: rows double


def _lesion(shape: tuple[int, ...], value: object, dtype: str = "uint8") -> np.ndarray:
    a = np.zeros(shape, dtype)
    a[4:12, 8:24] = value
    return a


# Masks as public sets ship them: each holds the lesion in rows 4-11, columns 8-23 of a 16 x 32 image
MASK_FORMS = {
    "grey 0/255 (BUSI)": lambda: Image.fromarray(_lesion((16, 32), 255)),
    "1-bit": lambda: Image.fromarray(_lesion((16, 32), 255)).convert("1"),
    "label image 0/1": lambda: Image.fromarray(_lesion((16, 32), 1)),
    "16-bit 0/65535": lambda: Image.fromarray(_lesion((16, 32), 65535, "uint16")),
    "green on black (BUS-UCLM benign)": lambda: Image.fromarray(_lesion((16, 32, 3), (0, 255, 0))),
    "red on black (BUS-UCLM malignant)": lambda: Image.fromarray(_lesion((16, 32, 3), (255, 0, 0))),
    "dark blue on black": lambda: Image.fromarray(_lesion((16, 32, 3), (0, 0, 90))),
    "white on clear RGBA (BrEaST)": lambda: Image.fromarray(_lesion((16, 32, 4), (255, 255, 255, 255))),
    "opaque RGBA, white on black": lambda: Image.fromarray(
        np.where(_lesion((16, 32, 1), 1).astype(bool), np.uint8(255), np.array([0, 0, 0, 255], np.uint8))),
    "palette": lambda: Image.fromarray(_lesion((16, 32), 1)).convert("P"),
}


@pytest.mark.parametrize("form", list(MASK_FORMS))
def test_every_form_of_mask_reads_as_the_same_lesion(form: str, tmp_path: Path) -> None:
    MASK_FORMS[form]().save(tmp_path / "m.png")
    m = load_mask([tmp_path / "m.png"], 32, "stretch")
    expect = np.zeros((32, 32), bool)
    expect[8:24, 8:24] = True  # rows doubled by the stretch to 32 x 32
    assert (m == expect).mean() > 0.97 and m[10:22, 10:22].all() and not m[:6].any() and not m[26:].any()


def test_an_empty_mask_and_a_noisy_jpeg_mask(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((16, 32), np.uint8)).save(tmp_path / "empty.png")
    assert not load_mask([tmp_path / "empty.png"], 32, "stretch").any()  # a normal image's mask
    noisy = _lesion((16, 32), 250).astype(np.int16) + np.random.default_rng(0).integers(0, 30, (16, 32))
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(tmp_path / "n.jpg", quality=70)
    m = load_mask([tmp_path / "n.jpg"], 32, "stretch")
    assert m[10:22, 10:22].all() and not m[:6].any()  # the noise below a quarter of the peak is background


def test_a_green_and_a_red_mask_of_one_image_are_one_union(tmp_path: Path) -> None:
    a = np.zeros((16, 32, 3), np.uint8)
    a[0:4, 0:4] = (0, 255, 0)
    b = np.zeros((16, 32, 3), np.uint8)
    b[12:16, 28:32] = (255, 0, 0)
    Image.fromarray(a).save(tmp_path / "g.png")
    Image.fromarray(b).save(tmp_path / "r.png")
    m = load_mask([tmp_path / "g.png", tmp_path / "r.png"], 32, "stretch")
    assert m[0:6, 0:2].all() and m[26:32, 30:32].all() and m.sum() < 0.15 * m.size


def test_a_whole_frame_mask_is_cut_to_the_ultrasound_region_of_its_dicom(tmp_path: Path) -> None:
    """With data.dicom.crop_to_region the image is the region of the frame; its mask, drawn on
    the whole frame, is cut the same way (a mask already of the region's size is taken as it is),
    so the lesion stays where the image shows it."""
    from dicom_files import write_dicom

    from busi.config.schema import DicomConfig
    from busi.data.dicom import cropped_region

    frame = np.full((60, 80), 250, np.uint8)  # burned-in text around the region x 20-69, y 10-49
    dicom = write_dicom(tmp_path / "img", frame, regions=[(20, 10, 69, 49)])
    lesion = np.zeros((60, 80), np.uint8)
    lesion[10:30, 20:45] = 255  # the region's top-left quarter
    Image.fromarray(lesion).save(tmp_path / "img_mask.png")
    Image.fromarray(lesion[10:50, 20:70]).save(tmp_path / "img_region_mask.png")
    crop = cropped_region(dicom, DicomConfig(crop_to_region=True))
    assert crop == (80, 60, (20, 10, 69, 49))
    assert cropped_region(dicom, DicomConfig()) is None  # not cropped: the mask is taken whole
    assert cropped_region(tmp_path / "img_mask.png", DicomConfig(crop_to_region=True)) is None  # not DICOM
    whole = load_mask([tmp_path / "img_mask.png"], 40, "stretch", crop)
    assert whole[:20, :20].all() and not whole[20:].any() and not whole[:, 20:].any()
    region = load_mask([tmp_path / "img_region_mask.png"], 40, "stretch", crop)
    assert np.array_equal(whole, region)
    uncut = load_mask([tmp_path / "img_mask.png"], 40, "stretch")  # what the score compared before
    assert not np.array_equal(uncut, whole)


def test_upsample_keeps_the_peak_where_it_was() -> None:
    heat = np.zeros((4, 4), np.float32)
    heat[1, 2] = 1.0
    up = upsample(heat, 32)
    y, x = np.unravel_index(int(np.argmax(up)), up.shape)
    assert up.shape == (32, 32) and 8 <= y < 16 and 16 <= x < 24
