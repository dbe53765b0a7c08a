"""Look-alikes of the public breast-ultrasound sets as their authors ship them (issue #36), built
from a synthetic BUSI-layout set's pixels: the tables, their formats (CSV with ``;``, ``.xlsx``
with two sheets, numbers as image IDs), the folder and file names, and the masks in the forms
each set uses. Each builder returns what the test should then find.

* BUS-BRA: ``bus_data.csv`` (``ID,Case,Histology,Pathology,BIRADS,Device,Width,Height,Side,BBOX``,
  the box a quoted ``"[x, y, w, h]"``), ``5-fold-cv.csv`` (``ID,Pathology,kFold,valid_1..valid_5``),
  ``Images/bus_0001-l.png`` and ``Masks/mask_0001-l.png``; a patient (``Case``) has a left and
  sometimes a right image.
* BrEaST-Lesions_USG: a workbook whose first sheet is ``Data Dictionary`` and whose data sheet is
  ``BrEaST-Lesions-USG clinical dat``, beside ``BrEaST-Lesions_USG-images_and_masks/`` holding
  ``caseNNN.png``, ``caseNNN_tumor.png`` (RGBA: white lesion on a clear background) and, for some,
  ``caseNNN_other1.png&caseNNN_other2.png`` in one cell.
* UDIAT Dataset B: ``DatasetB.xlsx`` (``Image``: the number 1 for ``original/000001.png``,
  ``Type``: ``Benign``/``Malignant``), masks ``GT/000001.png`` (1-bit).
* BUS-UCLM: ``INFO.csv`` with ``;`` (``Image;Resolution;Label;Doppler;Marks;Combined``),
  ``images/ALWI_000.png``, masks under the same name in ``masks/``, colour-coded (green benign,
  red malignant, black for normal).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

BREAST_SHEET = "BrEaST-Lesions-USG clinical dat"
BREAST_FOLDER = "BrEaST-Lesions_USG-images_and_masks"
BREAST_WORKBOOK = "BrEaST-Lesions-USG clinical data.xlsx"


@dataclass(frozen=True)
class Expected:
    """What reading a look-alike must give: images per class, masks per image path, patients."""

    per_class: dict[str, int]
    masks: dict[str, int]  # image path (relative to the source) -> masks it has
    patients: int | None  # None: the set gives no patient


def _pixels(synth: Path, cls: str, n: int) -> tuple[Image.Image, np.ndarray]:
    image = Image.open(synth / cls / f"{cls} ({n}).png")
    image.load()
    mask = np.asarray(Image.open(synth / cls / f"{cls} ({n})_mask.png").convert("L")) > 127
    return image, mask


def bus_bra(synth: Path, root: Path, per_class: int) -> Expected:
    """Benign and malignant; patient k has a left image, and every third patient a right one too."""
    (root / "Images").mkdir(parents=True)
    (root / "Masks").mkdir()
    rows, folds, masks = [], [], {}
    case, n_by_class = 0, {"benign": 0, "malignant": 0}
    for cls in ("benign", "malignant"):
        n = 1
        while n <= per_class:
            case += 1
            for side in ("l", "r") if case % 3 == 0 and n < per_class else ("l",):
                image, mask = _pixels(synth, cls, n)
                ident = f"bus_{case:04d}-{side}"
                image.save(root / "Images" / f"{ident}.png")
                Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(root / "Masks" / f"mask_{case:04d}-{side}.png")
                ys, xs = np.nonzero(mask) if mask.any() else (np.array([0]), np.array([0]))
                rows.append([ident, case, "Fibroadenoma" if cls == "benign" else "Invasive ductal carcinoma", cls,
                             3 if cls == "benign" else 5, "GE Logiq 7", image.width, image.height,
                             "left" if side == "l" else "right",
                             f"[{xs.min()}, {ys.min()}, {xs.max() - xs.min() + 1}, {ys.max() - ys.min() + 1}]"])
                fold = case % 5 + 1
                folds.append([ident, cls, fold, *[int(fold == k) for k in range(1, 6)]])
                masks[f"Images/{ident}.png"] = 1
                n += 1
                n_by_class[cls] += 1
    with (root / "bus_data.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ID", "Case", "Histology", "Pathology", "BIRADS", "Device", "Width", "Height", "Side", "BBOX"])
        w.writerows(rows)
    with (root / "5-fold-cv.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ID", "Pathology", "kFold", *[f"valid_{k}" for k in range(1, 6)]])
        w.writerows(folds)
    return Expected(n_by_class, masks, case)


def breast(synth: Path, root: Path, per_class: int) -> Expected:
    """Normal, benign, malignant; RGBA tumour masks; every fourth lesion has two 'other' masks in one cell."""
    import openpyxl

    folder = root / BREAST_FOLDER
    folder.mkdir(parents=True)
    book = openpyxl.Workbook()
    book.active.title = "Data Dictionary"
    book.active.append(["Column", "Description"])
    book.active.append(["Classification", "benign, malignant or normal"])
    sheet = book.create_sheet(BREAST_SHEET)
    sheet.append(["CaseID", "Image_filename", "Mask_tumor_filename", "Mask_other_filenames", "Age", "BIRADS",
                  "Classification"])
    masks, case = {}, 0
    for cls in ("normal", "benign", "malignant"):
        for n in range(1, per_class + 1):
            case += 1
            name = f"case{case:03d}"
            image, mask = _pixels(synth, cls, n)
            image.save(folder / f"{name}.png")
            tumor, other = "", ""
            if cls != "normal":
                rgba = np.zeros((*mask.shape, 4), np.uint8)
                rgba[mask] = (255, 255, 255, 255)
                Image.fromarray(rgba).save(folder / f"{name}_tumor.png")
                tumor = f"{name}_tumor.png"
                if case % 4 == 0:
                    for k in (1, 2):
                        Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(folder / f"{name}_other{k}.png")
                    other = f"{name}_other1.png&{name}_other2.png"
            masks[f"{BREAST_FOLDER}/{name}.png"] = int(bool(tumor))
            sheet.append([case, f"{name}.png", tumor or None, other or None, 40 + case % 30,
                          "1" if cls == "normal" else "4a", cls])
    sheet.append([None] * 7)  # the empty rows spreadsheets keep at the end
    book.save(root / BREAST_WORKBOOK)
    return Expected({c: per_class for c in ("normal", "benign", "malignant")}, masks, None)


def udiat_b(synth: Path, root: Path, per_class: int) -> Expected:
    """Benign and malignant; the image column holds numbers (one saved as 7.0, as a formula's result may be)."""
    import openpyxl

    (root / "original").mkdir(parents=True)
    (root / "GT").mkdir()
    book = openpyxl.Workbook()
    book.active.title = "DatasetB"
    book.active.append(["Image", "Type", "Tumor type"])
    masks, number = {}, 0
    for cls in ("benign", "malignant"):
        for n in range(1, per_class + 1):
            number += 1
            image, mask = _pixels(synth, cls, n)
            image.convert("L").save(root / "original" / f"{number:06d}.png")
            Image.fromarray(mask).convert("1").save(root / "GT" / f"{number:06d}.png")
            book.active.append([float(number) if number == 7 else number, cls.capitalize(),
                                "FIBROADENOMA" if cls == "benign" else "IDC"])
            masks[f"original/{number:06d}.png"] = 1
    book.save(root / "DatasetB.xlsx")
    return Expected({"benign": per_class, "malignant": per_class}, masks, None)


UCLM_PATIENTS = ("ALWI", "BEKO", "CAMU", "DERO")


def bus_uclm(synth: Path, root: Path, per_class: int) -> Expected:
    """Normal, benign, malignant over four patients; colour-coded masks under the image's name."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    colour = {"normal": (0, 0, 0), "benign": (0, 255, 0), "malignant": (255, 0, 0)}
    rows, masks, count = [], {}, {p: 0 for p in UCLM_PATIENTS}
    for c, cls in enumerate(("normal", "benign", "malignant")):
        for n in range(1, per_class + 1):
            patient = UCLM_PATIENTS[(n + c) % len(UCLM_PATIENTS)]
            name = f"{patient}_{count[patient]:03d}.png"
            count[patient] += 1
            image, mask = _pixels(synth, cls, n)
            image.save(root / "images" / name)
            rgb = np.zeros((*mask.shape, 3), np.uint8)
            rgb[mask] = colour[cls]
            Image.fromarray(rgb).save(root / "masks" / name)
            rows.append([name, f"{image.width}x{image.height}", cls.capitalize(), "No", "No", "No"])
            masks[f"images/{name}"] = 1
    (root / "INFO.csv").write_text("Image;Resolution;Label;Doppler;Marks;Combined\n"
                                   + "".join(";".join(r) + "\n" for r in rows))
    return Expected({c: per_class for c in ("normal", "benign", "malignant")}, masks, len(UCLM_PATIENTS))


BUILDERS = {"bus-bra": bus_bra, "breast-lesions-usg": breast, "udiat-b": udiat_b, "bus-uclm": bus_uclm}
