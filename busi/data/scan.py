"""Scanning a BUSI-layout folder into samples: pure, deterministic, never crashes on a bad file.

Layout: ``<root>/<class>/.../<name>.<ext>``, with ground-truth masks beside their image as
``<name>_mask.png``, ``<name>_mask_1.png``, ... (the original BUSI naming). Masks are never
samples. Images are the files with a suffix Pillow knows, and DICOM files by content, whatever
their suffix (``busi.data.dicom``); each is decoded here as training decodes it
(``busi.data.images``), so a file of a format busi does not read (``PILLOW_FORMATS``: an EPS,
which Pillow hands to Ghostscript) or one that will not decode is a corrupt entry, never a sample.
The class folders may sit at the root or one level down (BUSI's zip nests
``Dataset_BUSI_with_GT/``).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from busi.config.schema import DICOM_ONE_FRAME, DicomConfig
from busi.data.dicom import DICOM_SUFFIXES, is_dicom, read_dicom_frames
from busi.data.images import open_image_file, pillow_decode, to_rgb8
from busi.data.names import has_junk_part, is_junk
from busi.errors import DataError
from busi.runtime.safeio import is_regular_file

MASK_RE = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<n>\d+))?$", re.IGNORECASE)


def natural_key(text: str) -> list[object]:
    """Sort key that orders ``benign (2)`` before ``benign (10)``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def image_extensions() -> frozenset[str]:
    """File extensions Pillow can open, lower-case with the dot."""
    from PIL import Image

    return frozenset(ext.lower() for ext in Image.registered_extensions())


def is_mask_name(path: str | Path) -> bool:
    """True for ``X_mask.png`` / ``X_mask_2.png``: masks attach to an image, never a sample."""
    return MASK_RE.match(Path(path).stem) is not None


class SampleKeyed:
    """What a sample's record (``Sample``, a row of ``splits.csv`` or ``folds.csv``) is listed
    under: ``key``, from its ``path`` and ``frame`` (``sample_key``)."""

    path: str
    frame: int | None

    @property
    def key(self) -> str:
        return sample_key(self.path, self.frame)


@dataclass(frozen=True)
class Sample(SampleKeyed):
    """One image of the dataset. ``path`` is its file, relative to the dataset root, in POSIX
    form; ``frame`` the 1-based frame of a DICOM cine loop scanned under ``data.dicom.frame: all``
    (each frame a sample; None: the file's one image). ``key`` names the sample everywhere a
    sample is listed (splits.csv, hashes.csv, the report)."""

    path: str
    label: str
    label_index: int
    masks: tuple[str, ...]
    width: int
    height: int
    mode: str
    sha256: str  # of the whole file (the frames of a loop share it)
    phash: int  # 63-bit DCT perceptual hash of a grayscale thumbnail
    frame: int | None = None


def sample_key(path: str, frame: int | None) -> str:
    """A sample's name: its path, with ``#frame-N`` after it for frame N of a cine loop scanned
    under ``all``. Only ever compared with the keys of a scan, never split back into its parts."""
    return path if frame is None else f"{path}#frame-{frame}"


@dataclass(frozen=True)
class ScanResult:
    root: Path
    samples: tuple[Sample, ...]
    orphan_masks: tuple[str, ...]  # masks with no image beside them
    skipped: tuple[str, ...]  # not images: no suffix Pillow reads and no DICOM preamble
    corrupt: tuple[tuple[str, str], ...]  # (path, error) of images Pillow could not decode
    extra_dirs: tuple[str, ...] = field(default=())  # top-level folders that are not a class
    excluded_dirs: tuple[str, ...] = field(default=())  # busi's own output folders inside the dataset


def find_dataset_root(root: str | Path, classes: Sequence[str]) -> Path:
    """The folder holding the class folders: ``root`` itself or exactly one folder below it."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "dataset folder not found")
    if _has_classes(root, classes):
        return root
    below = sorted(
        (d for d in root.iterdir() if d.is_dir() and not is_junk(d.name) and _has_classes(d, classes)),
        key=lambda d: natural_key(d.name),
    )
    if len(below) == 1:
        return below[0]
    found = sorted(d.name for d in root.iterdir() if d.is_dir())
    if len(below) > 1:
        raise DataError(root, f"several folders hold the class folders ({', '.join(d.name for d in below)}); "
            "point data.source at one of them"
        )
    raise DataError(root, f"no class folders {list(classes)} at the top or one level down (found folders: {found}); "
        "check data.source and data.classes"
    )


def _has_classes(folder: Path, classes: Sequence[str]) -> bool:
    return any((folder / c).is_dir() for c in classes)


def scan_dataset(root: str | Path, classes: Sequence[str], exclude: Sequence[str | Path] = (),
                 dicom: DicomConfig = DicomConfig()) -> ScanResult:
    """Scan class folders under ``root`` (or one level down) into samples in natural order.

    Every file is accounted for: a sample, a mask (attached or orphan), a skipped
    non-image, or a corrupt image with its error. A class with no images is an error.
    Folders in ``exclude`` (busi's run directory, its staging dir) are never scanned, so a run
    directory placed inside the dataset does not train the next run on its own plots.
    """
    base = find_dataset_root(root, classes)
    excluded = _inside(base, exclude)
    exts = image_extensions()
    samples: list[Sample] = []
    orphans: list[str] = []
    skipped: list[str] = []
    corrupt: list[tuple[str, str]] = []
    for index, label in enumerate(classes):
        class_dir = base / label
        if not class_dir.is_dir():
            raise DataError(base, f"class folder '{label}' is missing (data.classes lists it)")
        images, masks = _sort_files(base, class_dir, excluded, exts, skipped)
        for key, mask_files in masks.items():
            if key not in images:
                orphans.extend(p.relative_to(base).as_posix() for p in mask_files)
        count = 0
        for key, f in ((key, f) for key, fs in images.items() for f in fs):
            rel = f.relative_to(base).as_posix()
            try:
                infos = read_image_infos(f, dicom)
            except DataError as e:
                corrupt.append((rel, e.reason))
                continue
            count += 1
            masks_of = tuple(p.relative_to(base).as_posix() for p in masks.get(key, []))
            samples.extend(Sample(path=rel, label=label, label_index=index, masks=masks_of, **info) for info in infos)
        if count == 0:
            raise DataError(class_dir, f"no readable images in class '{label}'")
    extra = sorted(
        d.name for d in base.iterdir()
        if d.is_dir() and d.name not in classes and not is_junk(d.name) and (d.name,) not in excluded
    )
    return ScanResult(
        root=base,
        samples=tuple(samples),
        orphan_masks=tuple(sorted(orphans, key=natural_key)),
        skipped=tuple(skipped),
        corrupt=tuple(corrupt),
        extra_dirs=tuple(extra),
        excluded_dirs=tuple("/".join(parts) for parts in excluded),
    )


def _sort_files(base: Path, class_dir: Path, excluded: Sequence[tuple[str, ...]], exts: frozenset[str],
                skipped: list[str]) -> tuple[dict[tuple[Path, str], list[Path]], dict[tuple[Path, str], list[Path]]]:
    """A class folder's images and masks, keyed by (folder, lower-case stem) so each mask finds
    its image; what is not an image goes to ``skipped``. Lists, as x.png and x.jpg are two samples.
    A DICOM file is keyed by its name less a DICOM suffix (``IM0001.dcm`` and ``1.2.840.1`` find
    ``IM0001_mask.png`` and ``1.2.840.1_mask.png``)."""
    images: dict[tuple[Path, str], list[Path]] = {}
    masks: dict[tuple[Path, str], list[Path]] = {}
    for f in sorted(_walk(class_dir, excluded), key=lambda p: natural_key(p.relative_to(base).as_posix())):
        if not is_regular_file(f):  # FIFOs, sockets, broken links
            skipped.append(f.relative_to(base).as_posix())
            continue
        if f.suffix.lower() in exts:
            stem = f.stem
        elif is_dicom(f):  # by content: hospital exports often have no suffix
            stem = f.name[: -len(f.suffix)] if f.suffix.lower() in DICOM_SUFFIXES else f.name
        else:
            skipped.append(f.relative_to(base).as_posix())
            continue
        m = MASK_RE.match(stem)
        if m:
            masks.setdefault((f.parent, m.group("stem").lower()), []).append(f)
        else:
            images.setdefault((f.parent, stem.lower()), []).append(f)
    return images, masks


def _inside(base: Path, folders: Sequence[str | Path]) -> list[tuple[str, ...]]:
    """The relative path parts of each of ``folders`` that lies inside ``base``."""
    real_base = Path(os.path.realpath(base))
    out = []
    for f in folders:
        real = Path(os.path.realpath(f))
        if real != real_base and real.is_relative_to(real_base):
            out.append(real.relative_to(real_base).parts)
    return out


def _walk(folder: Path, excluded: Sequence[tuple[str, ...]] = ()) -> Iterable[Path]:
    """Every entry under ``folder`` that is not a folder (regular files, and the FIFOs, sockets
    and broken links a shared folder holds, which the scan reports as skipped), except those
    under an ``excluded`` folder (relative parts from the dataset root, ``folder``'s parent)."""
    prefix = folder.name
    for p in folder.rglob("*"):
        parts = p.relative_to(folder).parts
        if p.is_dir() or has_junk_part(parts):
            continue
        full = (prefix, *parts)
        if any(full[: len(e)] == e for e in excluded):
            continue
        yield p


def read_image_info(path: Path, dicom: DicomConfig = DicomConfig()) -> dict[str, object]:
    """Decode an image fully; size, mode, content hash and perceptual hash. DataError if unreadable.
    A DICOM file: its frame as training reads it (``dicom``: first or middle), the hash of the whole file."""
    return read_image_infos(path, dicom)[0]


def read_image_infos(path: Path, dicom: DicomConfig = DicomConfig()) -> list[dict[str, object]]:
    """``read_image_info`` of every sample ``path`` holds: one, or each frame of a DICOM cine loop
    under ``data.dicom.frame: all`` (its ``frame`` number set; the frames share the file's hash)."""
    with open_image_file(path) as fh:
        raw = fh.read()  # all of it: the content hash
    sha = hashlib.sha256(raw).hexdigest()
    if is_dicom(raw):
        infos = [{"width": im.width, "height": im.height, "mode": im.mode, "sha256": sha,
                  "phash": perceptual_hash(to_rgb8(im).convert("L")),  # as a PNG of the same pixels hashes
                  "frame": source.frame} for im, source in read_dicom_frames(io.BytesIO(raw), path, dicom)]
        if dicom.frame in DICOM_ONE_FRAME or len(infos) == 1:  # the file's one image: no frame number
            return [{**info, "frame": None} for info in infos]
        return infos
    mode, rgb = pillow_decode(io.BytesIO(raw), path)  # training's own decode, at full size
    return [{"width": rgb.width, "height": rgb.height, "mode": mode, "sha256": sha,
             "phash": perceptual_hash(rgb.convert("L"))}]


@functools.lru_cache(maxsize=1)
def _dct_matrix(n: int = 32) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


def perceptual_hash(gray_image: object) -> int:
    """63-bit pHash: the 8x8 low-frequency DCT coefficients of a 32x32 thumbnail (less the DC
    term) against their median.

    Robust to resizing, recompression and small brightness changes, so re-exported copies of
    one ultrasound frame land within a few bits of each other.
    """
    from PIL import Image

    thumb = np.asarray(gray_image.resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)  # type: ignore[attr-defined]
    d = _dct_matrix(32)
    coeffs = (d @ thumb @ d.T)[:8, :8].ravel()
    bits = coeffs[1:] > np.median(coeffs[1:])  # skip DC: overall brightness says little
    value = 0
    for b in bits:
        value = (value << 1) | int(b)
    return value
