"""Decoding one image file into the model's input: the single definition shared by
training, evaluation and prediction, so they cannot disagree about pixels.

Any image in one of ``PILLOW_FORMATS`` becomes ``size x size x 3`` uint8 RGB: 16-bit and float images are
scaled to 8 bits, palette/CMYK/grayscale/alpha images converted, 1-channel ultrasound
replicated to 3 channels (ResNet expects RGB). ``stretch`` resizes as the original
notebook did; ``pad`` keeps the aspect ratio and pads with black (the ultrasound background).

DICOM files, recognised by content (``DICM`` at byte 128, whatever the name), are read by
``busi.data.dicom`` (the frame ``data.dicom`` says, or a given frame of a cine loop) and then
take the same ``to_rgb8`` and ``resize_rgb`` as any other image, so a DICOM and a PNG of the
same pixels give the same input.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from busi.config.schema import DicomConfig
from busi.data.dicom import HEAD_BYTES, DicomSource, is_dicom, read_dicom_frames
from busi.data.regions import FrameRegion
from busi.errors import DataError
from busi.runtime.safeio import open_regular_file


# The raster formats busi decodes with Pillow: each is decoded by Pillow's own code or a library
# its wheels carry, the same on every node. Pillow opens more (EPS, PDF-like and plug-in formats):
# some render through an outside program (Ghostscript for EPS, absent on most nodes and unsafe
# on untrusted files), some are not photographs at all; a file of such a format is an image busi
# cannot read, named as such by the scan, never a sample. One list: the scan and every decode use it.
# (JPEG includes the multi-picture files of cameras, which Pillow opens as MPO.)
PILLOW_FORMATS = ("PNG", "JPEG", "JPEG2000", "BMP", "DIB", "TIFF", "GIF", "WEBP", "PPM", "TGA")

# The frames of one file decoded at once under ``data.dicom.frame: all`` (prediction holds a
# file's frames together, its rows are written together): at most this many bytes of them, 3,566
# frames at 224 px; a longer loop is one error row naming the limit.
MAX_FILE_FRAMES_BYTES = 512 * 1024**2


def load_image(path: str | Path, size: int, resize: str = "stretch", dicom: DicomConfig = DicomConfig(),
               frame: int | None = None) -> np.ndarray:
    """Decode and resize one image. DataError (naming the path) if it cannot be decoded.
    ``frame``: the 1-based frame of a DICOM cine loop (a sample scanned under ``all``)."""
    return decode_image(path, size, resize, dicom, frame)[0]


def decode_image(path: str | Path, size: int, resize: str = "stretch", dicom: DicomConfig = DicomConfig(),
                 frame: int | None = None) -> tuple[np.ndarray, DicomSource | None]:
    """``load_image``, and the DICOM source of the pixels (UIDs, frame) where the file is DICOM.
    One image: ``dicom.frame`` first or middle, or the one ``frame``, of a cine loop."""
    images = decode_frames(path, size, resize, dicom, frame)
    if len(images) != 1:
        raise ValueError(f"decode_image decodes one image; {path} holds {len(images)} under frame policy "
                         f"{dicom.frame!r}: give the frame")
    return images[0]


def decode_frames(path: str | Path, size: int, resize: str = "stretch", dicom: DicomConfig = DicomConfig(),
                  frame: int | None = None) -> list[tuple[np.ndarray, DicomSource | None]]:
    """Every image ``path`` holds as ``dicom.frame`` reads it, decoded and resized: one for a
    Pillow image or a DICOM under first/middle, each frame of a cine loop under ``all`` (at most
    ``MAX_FILE_FRAMES_BYTES`` of them), only the 1-based ``frame`` where given (a DICOM's frame;
    any other image is its own frame 1). DataError (naming the path) if it cannot be decoded."""
    with open_image_file(path) as fh:
        if is_dicom(fh.read(HEAD_BYTES)):
            limit = MAX_FILE_FRAMES_BYTES // (size * size * 3)
            return [(np.asarray(resize_rgb(to_rgb8(im), size, resize), dtype=np.uint8), source)
                    for im, source in read_dicom_frames(fh, path, dicom, max_frames=limit, frame=frame)]
        rgb = pillow_rgb(fh, path, size)
    return [(np.asarray(resize_rgb(rgb, size, resize), dtype=np.uint8), None)]


def pillow_rgb(fh: BinaryIO, path: str | Path, size: int | None, crop: FrameRegion | None = None) -> "Image.Image":  # noqa: F821
    """The image Pillow reads from ``fh`` as 8-bit RGB (``to_rgb8``), not yet resized: a JPEG
    decoded at reduced scale for a ``size`` px input (None: at full size); with ``crop`` (a mask
    drawn on a DICOM frame that was cut to its ultrasound region), cut to its box where the image
    is of the frame's size. DataError naming ``path`` for whatever the decoder raises."""
    return pillow_decode(fh, path, size, crop)[1]


def pillow_decode(fh: BinaryIO, path: str | Path, size: int | None = None,
                  crop: FrameRegion | None = None,
                  convert: "Callable[[Image.Image], Image.Image] | None" = None,  # noqa: F821
                  ) -> tuple[str, "Image.Image"]:  # noqa: F821
    """``pillow_rgb``, with the file's own Pillow mode (``L``, ``RGBA``, ``I;16``...) before it.
    The one decode of a non-DICOM image: the scan calls it too, so a file the scan accepts is a
    file training decodes. Only ``PILLOW_FORMATS``; the whole file is read into memory first (a
    plug-in that hands the file to another program by name would get a descriptor otherwise).
    ``convert``: what the decoded image becomes (default ``to_rgb8``; a mask: ``lesion_of``)."""
    import io

    from PIL import Image

    fh.seek(0)
    data = io.BytesIO(fh.read())
    if not data.getbuffer().nbytes:
        raise DataError(path, "cannot decode image: the file is empty (0 bytes)")
    try:
        with Image.open(data, formats=PILLOW_FORMATS) as im:
            mode = im.mode
            if crop is None:
                if size is not None and im.format == "JPEG":
                    im.draft("RGB", (size, size))  # decode JPEGs at reduced scale: much faster
            elif im.size == crop[:2]:
                x0, y0, x1, y1 = crop[2]
                im = im.crop((x0, y0, x1 + 1, y1 + 1))
            return mode, (convert or to_rgb8)(im)
    except Exception as e:  # any failure of a decoder on one file makes that file unreadable
        raise decode_error(path, e, _other_format(data)) from None


def _other_format(data: BinaryIO) -> str | None:
    """The Pillow format of a file that is not one of ``PILLOW_FORMATS`` (its header only: nothing
    is decoded, no outside program runs), or None where Pillow does not know it either."""
    from PIL import Image

    try:
        data.seek(0)
        with Image.open(data) as im:
            return None if im.format in PILLOW_FORMATS else im.format
    except Exception:  # not an image Pillow knows: the caller's message says so
        return None


def decode_error(path: str | Path, e: Exception, other_format: str | None = None) -> DataError:
    """The one message for an image that will not decode, whatever the decoder raised (Pillow's
    plug-ins raise OSError, ValueError, SyntaxError, but also NotImplementedError, AttributeError...).
    ``other_format``: the file is of this Pillow format, which busi does not read."""
    from PIL import UnidentifiedImageError

    if other_format is not None:
        why = (f"{other_format} is not an image format busi reads ({', '.join(PILLOW_FORMATS)} or DICOM); "
               "convert it to PNG or move it out of the data folder")
    elif isinstance(e, UnidentifiedImageError):  # its text holds the repr of the open file object
        why = "cannot identify image file (not a format Pillow reads)"
    else:
        why = f"{type(e).__name__}: {e}"
    return DataError(path, f"cannot decode image: {why}")


def open_image_file(path: str | Path) -> BinaryIO:
    """The file, open for reading, refusing (DataError naming the path) what is not a regular
    file: a FIFO in an input folder must give an error row, not hang the job (``busi.runtime.safeio``)."""
    try:
        return open_regular_file(path)
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except OSError as e:
        raise DataError(path, f"cannot read: {e.strerror or e}") from None


def to_rgb8(im: "Image.Image") -> "Image.Image":  # noqa: F821
    """Any Pillow mode -> 8-bit RGB."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float32)
        hi = 65535.0 if im.mode.startswith("I;16") or (im.mode == "I" and arr.max(initial=0) > 255) else 255.0
        if im.mode == "F":
            lo, hi = float(arr.min(initial=0)), float(arr.max(initial=1))
            arr = (arr - lo) / max(hi - lo, 1e-6) * 255.0
        else:
            arr = arr * (255.0 / hi)
        im = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), mode="L")
    return on_black(im).convert("RGB")


def on_black(im: "Image.Image") -> "Image.Image":  # noqa: F821
    """An image with transparency as RGBA laid on black (ultrasound's background, and a mask's);
    any other image as it is."""
    from PIL import Image

    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        return Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), im.convert("RGBA"))
    return im


# A mask is a label image (every value below this: 0 background, 1, 2... lesion) or a drawing
LABEL_IMAGE_MAX = 16


def lesion_of(im: "Image.Image") -> "Image.Image":  # noqa: F821
    """A lesion mask in any of the forms data sets ship it, as an ``L`` image of 0 (background)
    and 255 (lesion), at its own size. A pixel is lesion where its brightest channel (after a
    transparent pixel is made black: an RGBA drawing on a clear background) is above a quarter of
    the mask's brightest pixel, so 0/255 and 0/65535 masks, 1-bit masks, colour-coded masks (BUS-UCLM's
    green benign and red malignant: any colour is lesion) and JPEG-noisy masks all read alike; in a
    label image (every value below ``LABEL_IMAGE_MAX``: 0/1, or one value per lesion) any value
    above 0 is lesion. An empty (all-black) mask has no lesion."""
    from PIL import Image

    im = on_black(im)
    if im.mode in ("RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    arr = np.asarray(im)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    arr = arr.astype(np.float64)
    top = float(arr.max(initial=0))
    lesion = arr > 0 if 0 < top < LABEL_IMAGE_MAX else arr > top / 4 if top > 0 else np.zeros(arr.shape, bool)
    return Image.fromarray(np.where(lesion, 255, 0).astype(np.uint8), mode="L")


def resize_rgb(im: "Image.Image", size: int, mode: str) -> "Image.Image":  # noqa: F821
    """``im`` at ``size`` x ``size``: stretched, or (``pad``) scaled to fit and centred on black."""
    from PIL import Image

    if mode == "stretch":
        return im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    scale = size / max(im.width, im.height)
    w, h = max(1, round(im.width * scale)), max(1, round(im.height * scale))
    canvas = Image.new(im.mode, (size, size))
    canvas.paste(im.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=3.0), ((size - w) // 2, (size - h) // 2))
    return canvas
