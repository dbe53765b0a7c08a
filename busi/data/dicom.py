"""DICOM files: recognised by content, their frames decoded into Pillow images, refused safely.

Hospital and PACS exports of ultrasound are DICOM files, often without a suffix, so a file is
DICOM when it holds ``DICM`` at byte 128 (``is_dicom``), whatever its name, or when it starts with
a data element of the file meta or identifying groups without that preamble (``is_bare_dataset``:
older exports, written before Part 10, have neither preamble nor file meta; their transfer syntax
is the encoding pydicom finds, always uncompressed). ``read_dicom_frames``
decodes the frames ``data.dicom.frame`` names (the first or the middle one of a cine loop, or all
of them, one at a time; or one given frame) into 8-bit ``L`` or ``RGB`` images;
``busi.data.images`` then gives each the same ``to_rgb8``/``resize_rgb`` as a PNG, so a DICOM and
a PNG of the same pixels become the same input tensor.

Photometric interpretations: MONOCHROME1 (inverted), MONOCHROME2, RGB, YBR_FULL and YBR_FULL_422
(converted to RGB by pydicom), the JPEG 2000 YBR_ICT/YBR_RCT (RGB from the decoder) and PALETTE
COLOR (its lookup table applied). Grayscale deeper than 8 bits goes through the modality LUT and
the VOI LUT or window when the header has one, else min-max to 8 bits. ``crop_to_region``
(``busi.data.regions``) keeps the largest region of the header's Sequence of Ultrasound Regions,
leaving out burned-in text; ``cropped_region`` says where, for a mask drawn on the whole frame.

Hostile files never crash, hang or exhaust memory: the header is read without the pixel data,
then a DICOMDIR, an object without pixels (a structured report, an RT plan), an unsupported
transfer syntax, a frame declared bigger than ``MAX_FRAME_BYTES`` (a decompression bomb, also
checked against a compressed frame's own codestream) and truncated pixel data are each a
``DataError`` naming the path. No patient data leaves this module: a decoded file yields its
pixels and ``DicomSource`` (UIDs and the frame number, UIDs checked to be digits and dots), and
no error reason quotes a header value. pydicom is imported inside the functions that use it.
(Over ~400 lines: each check against a hostile file stays beside the read it guards.)
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Iterator, Union

import numpy as np

from busi.config.schema import DicomConfig
from busi.data.codestream import codestream_size
from busi.data.regions import FrameRegion, crop_to_region, ultrasound_region
from busi.errors import DataError

if TYPE_CHECKING:
    from PIL import Image

PREAMBLE = 128  # bytes before the magic, in every DICOM Part 10 file
MAGIC = b"DICM"
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")  # a name's suffix that only says "DICOM" (a mask's name leaves it out)
HEAD_BYTES = PREAMBLE + len(MAGIC)  # what is_dicom needs to see
# One decoded frame larger than this is refused before decoding: 256 MiB holds a 8192 x 8192
# RGB frame, ~40x the largest ultrasound frame (1920 x 1080 x 3), and keeps the float copies a
# window makes (8 bytes a sample) within a few GiB per decode thread.
MAX_FRAME_BYTES = 256 * 1024**2
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")  # the whole dataset zlib-compressed
UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")  # a UID is digits and dots, at most 64 characters
# MONOCHROME2 and MONOCHROME1 are grayscale; the rest are colour, RGB after pydicom's decode
GRAY = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")

PathOrHead = Union[str, "os.PathLike[str]", bytes]


@dataclass(frozen=True)
class DicomSource:
    """Where a decoded image came from, for a PACS to join results back: the three instance
    UIDs (empty where the header's value is not a valid UID) and the 1-based frame number
    (DICOM's Referenced Frame Number). Never patient data."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    frame: int


# Value representations, as the two bytes after an explicit-VR element's tag
VRS = frozenset(b"AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US "
                b"UT UV".split())


def is_bare_dataset(head: bytes) -> bool:
    """A DICOM dataset without the 128-byte preamble and ``DICM``: its first element is of group
    0002 (file meta) or 0008 (identifying), little or big endian, with a VR after the tag (explicit
    VR) or, little endian, a short length (implicit VR). No image format Pillow reads starts so."""
    if len(head) < 8:
        return False
    if struct.unpack("<H", head[:2])[0] in (0x0002, 0x0008):
        return head[4:6] in VRS or struct.unpack("<I", head[4:8])[0] < 0x10000
    return struct.unpack(">H", head[:2])[0] in (0x0002, 0x0008) and head[4:6] in VRS


def is_dicom(path_or_head: PathOrHead) -> bool:
    """True for a DICOM file: Part 10 (``DICM`` at byte 128) or a bare dataset (``is_bare_dataset``).
    Takes the file's first bytes, or a path (read without blocking on what is not a regular file:
    a FIFO is not DICOM)."""
    if isinstance(path_or_head, (bytes, bytearray, memoryview)):
        head = bytes(path_or_head[:HEAD_BYTES])
    else:
        from busi.runtime.safeio import open_regular_file

        try:
            with open_regular_file(path_or_head) as fh:
                head = fh.read(HEAD_BYTES)
        except OSError:  # missing, unreadable, or not a regular file (never waits on a FIFO)
            return False
    return (len(head) == HEAD_BYTES and head[PREAMBLE:] == MAGIC) or is_bare_dataset(head)


def read_dicom_frames(fh: BinaryIO, path: str | Path, options: DicomConfig = DicomConfig(), max_frames: int | None = None,
                      frame: int | None = None) -> Iterator[tuple["Image.Image", DicomSource]]:
    """Every frame ``options.frame`` names (``all``: each frame of a cine loop, in order), or
    only frame number ``frame`` (1-based: one sample of a loop read under ``all``), one at a
    time, as 8-bit ``L`` or ``RGB`` Pillow images with their source. ``max_frames``: a file
    with more frames than this is refused under ``all`` before any is decoded (what the caller
    can hold). DataError naming ``path`` for anything that is not a decodable image, before the
    first frame or at any later one."""
    frames = _read_dicom_frames(fh, path, options, max_frames, frame)
    while True:
        try:
            item = next(frames)
        except StopIteration:
            return
        except DataError:
            raise
        except MemoryError:
            raise DataError(path, "DICOM frame too large to decode in the memory left") from None
        except Exception as e:  # a header malformed in a way no check above foresaw: that file only
            raise DataError(path, f"cannot read DICOM file ({type(e).__name__})") from None
        yield item


def frame_indices(policy: str, frames: int) -> range:
    """The 0-based frames a ``data.dicom.frame`` policy names in a file of ``frames`` frames."""
    if policy == "all":
        return range(frames)
    index = 0 if policy == "first" else frames // 2
    return range(index, index + 1)


def _read_dicom_frames(fh: BinaryIO, path: str | Path, options: DicomConfig, max_frames: int | None,
                       frame: int | None) -> Iterator[tuple["Image.Image", DicomSource]]:
    pydicom = _pydicom()
    header = _read_header(pydicom, fh, path)
    geometry = _check_image(pydicom, header, path)
    indices = frame_indices(options.frame, geometry.frames)
    if frame is not None:
        if not 1 <= frame <= geometry.frames:
            raise DataError(path, f"DICOM file has {geometry.frames} frame(s), no frame {frame} (the file changed "
                            "since it was scanned?)")
        indices = range(frame - 1, frame)
    if max_frames is not None and len(indices) > max_frames:
        raise DataError(path, f"DICOM file of {len(indices)} frames is over the {max_frames} frames busi decodes "
                        "from one file at once; read it with frame policy first or middle")
    uids = [_uid(header, k) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
    for index, arr in zip(indices, _decode_frames(pydicom, fh, header, geometry, indices, path)):
        arr = _to_display(arr, header, geometry, path)
        if options.crop_to_region:
            arr = crop_to_region(arr, header)
        yield _image(arr), DicomSource(*uids, frame=index + 1)


def _pydicom() -> Any:
    """pydicom, told not to validate header values on reading: its warnings would quote them
    (a birth date that is not a date), and busi reads only the image and UID elements."""
    import pydicom
    import pydicom.config

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    return pydicom


def _read_header(pydicom: Any, fh: BinaryIO, path: str | Path) -> Any:
    """The dataset up to (not including) its pixel data: nothing large is read."""
    try:
        header = read_dataset(pydicom, fh, stop_before_pixels=True)
    except Exception as e:  # any parser failure on one file makes that file unreadable
        raise DataError(path, f"not a readable DICOM file ({type(e).__name__} while reading its header)") from None
    return header


def read_dataset(pydicom: Any, fh: BinaryIO, **options: Any) -> Any:
    """``pydicom.dcmread`` of a Part 10 file, or of a bare dataset (``force``, which pydicom needs
    to read one without a preamble; never for a Part 10 file, where it would parse damage as data),
    given the transfer syntax of its encoding (``set_transfer_syntax``)."""
    fh.seek(0)
    head = fh.read(HEAD_BYTES)
    fh.seek(0)
    part10 = len(head) == HEAD_BYTES and head[PREAMBLE:] == MAGIC
    bare = not part10 and is_bare_dataset(head)
    ds = pydicom.dcmread(fh, force=bare, **options)
    if bare:
        set_transfer_syntax(ds)
    return ds


def set_transfer_syntax(ds: Any) -> None:
    """A dataset read without file meta (a bare dataset) given the transfer syntax of the encoding
    pydicom read it in (implicit or explicit VR, little or big endian: never compressed), so the
    checks and decoders that need one have it; nothing where it has one, or none was found."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID") is not None:
        return
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None or little is None:
        return
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little
                              else ExplicitVRBigEndian)


@dataclass(frozen=True)
class _Geometry:
    rows: int
    columns: int
    samples: int
    bits: int
    frames: int
    photometric: str
    transfer_syntax: Any  # pydicom UID
    encapsulated: bool


def _check_image(pydicom: Any, header: Any, path: str | Path) -> _Geometry:
    """Refuse, before a byte of pixel data is read, what busi cannot or must not decode."""
    meta = getattr(header, "file_meta", None) or {}
    sop_class = str(meta.get("MediaStorageSOPClassUID", "") or header.get("SOPClassUID", "") or "")
    if sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in header:
        raise DataError(path, "a DICOMDIR (an index of other DICOM files), not an image; give the image files, "
                        "or the folder that holds them")
    ts = meta.get("TransferSyntaxUID")
    if ts is None:
        raise DataError(path, "not a readable DICOM file (no transfer syntax in its file meta information)")
    if "Rows" not in header or "Columns" not in header:
        kind = _sop_class_name(sop_class)
        raise DataError(path, f"a DICOM object without an image ({kind}): no pixel data to classify")
    if str(ts) in DEFLATED:
        raise DataError(path, f"transfer syntax {ts.name} ({ts}) is not supported: a deflated dataset could "
                        "inflate without bound; export it uncompressed or JPEG-compressed")
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise DataError(path, f"transfer syntax {_ts_name(ts)} is not supported (pydicom has no decoder for it)") from None
    if not decoder.is_available:
        raise DataError(path, f"transfer syntax {_ts_name(ts)}: no decoder installed for it "
                        "(pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg)")
    try:
        rows, columns = int(header.Rows), int(header.Columns)
        samples = int(header.get("SamplesPerPixel", 1) or 1)
        bits = int(header.BitsAllocated)
        frames = int(header.get("NumberOfFrames", 1) or 1)
        photometric = str(header.PhotometricInterpretation).strip().upper()
    except (AttributeError, TypeError, ValueError):
        raise DataError(path, "DICOM image header without valid Rows, Columns, BitsAllocated and "
                        "PhotometricInterpretation") from None
    if min(rows, columns, samples, bits, frames) < 1:
        raise DataError(path, f"DICOM image header declares {rows} x {columns} pixels, {samples} samples, "
                        f"{bits} bits, {frames} frames: not an image")
    frame_bytes = rows * columns * samples * -(-bits // 8)
    if frame_bytes > MAX_FRAME_BYTES:
        raise DataError(path, f"DICOM frame declared as {rows} x {columns} x {samples} samples of {bits} bits "
                        f"({frame_bytes / 1024**2:.0f} MiB decoded) is over busi's limit of "
                        f"{MAX_FRAME_BYTES // 1024**2} MiB a frame; refused before decoding")
    if photometric not in GRAY + COLOUR:
        raise DataError(path, f"photometric interpretation {photometric[:16]!r} is not supported "
                        f"(busi reads {', '.join(GRAY + COLOUR)})")
    return _Geometry(rows, columns, samples, bits, frames, photometric, ts, bool(ts.is_compressed))


def _decode_frames(pydicom: Any, fh: BinaryIO, header: Any, g: _Geometry, indices: range,
                   path: str | Path) -> Iterator[np.ndarray]:
    """Frames ``indices`` (0-based, ascending) as pydicom decodes them, YBR converted to RGB, one
    at a time. Uncompressed pixel data must hold the last of them whole; a compressed frame's
    codestream must declare the header's size: a small header over a huge JPEG is a bomb too."""
    from pydicom.pixels import pixel_array

    if not g.encapsulated:
        _check_native_length(fh, header, g, indices[-1], path)
        source: Any = fh  # reads each frame's bytes only
    else:
        fh.seek(0)
        try:
            source = pydicom.dcmread(fh)  # compressed: at most the file's size, read once
        except Exception as e:
            raise DataError(path, f"cannot decode DICOM pixel data ({_decode_reason(e)})") from None
        if "PixelData" not in source:
            raise DataError(path, "DICOM image header but no pixel data")
    plugin = _plugin(g.transfer_syntax) if g.encapsulated else ""
    # from the file: the syntax the header read gave (a bare dataset's file has no file meta to read it from)
    options = {} if g.encapsulated else {"transfer_syntax_uid": g.transfer_syntax}
    for index in indices:
        try:
            if g.encapsulated:
                _check_codestream(_encapsulated_frame(source, index, g.frames), g, path)
            else:
                fh.seek(0)
            arr = pixel_array(source, index=index, decoding_plugin=plugin, **options)
        except (DataError, MemoryError):
            raise
        except Exception as e:  # truncated, inconsistent or undecodable pixel data: that file only
            raise DataError(path, _undecodable(g, header, e)) from None
        if arr.shape[:2] != (g.rows, g.columns):
            raise DataError(path, f"decoded DICOM frame is {arr.shape[1]} x {arr.shape[0]}, the header says "
                            f"{g.columns} x {g.rows}")
        yield arr


def _check_native_length(fh: BinaryIO, header: Any, g: _Geometry, index: int, path: str | Path) -> None:
    """Uncompressed pixel data must hold frame ``index`` whole: ``fh`` is where the header read
    stopped, at the Pixel Data element (tag, VR, length), which must be there."""
    from pydicom.pixels.utils import get_expected_length

    start = fh.tell()
    little = g.transfer_syntax.is_little_endian
    head = fh.read(12)
    order = "<" if little else ">"
    if len(head) < 8 or struct.unpack(order + "HH", head[:4]) != (0x7FE0, 0x0010):
        raise DataError(path, "DICOM image header but no pixel data (the file ends, or other elements follow)")
    if g.transfer_syntax.is_implicit_VR:
        header_len, length = 8, struct.unpack(order + "I", head[4:8])[0]
    else:
        header_len, length = 12, struct.unpack(order + "I", head[8:12])[0]
    fh.seek(0, os.SEEK_END)
    present = fh.tell() - start - header_len
    needed = get_expected_length(header, unit="bytes") * (index + 1) // g.frames
    if min(present, length) < needed:
        raise DataError(path, f"DICOM pixel data truncated: {max(min(present, length), 0)} bytes of the {needed} "
                        f"that frame {index + 1} needs (a file cut short in a copy?)")


def _plugin(ts: Any) -> str:
    """Pillow (libjpeg-turbo) for JPEG baseline, the usual ultrasound export: 2x faster than
    pylibjpeg here; pydicom's own choice (the first that works) for every other syntax."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGBaseline8Bit

    return "pillow" if ts == JPEGBaseline8Bit and "pillow" in get_decoder(ts).available_plugins else ""


def _encapsulated_frame(ds: Any, index: int, frames: int) -> bytes:
    from pydicom.encaps import get_frame

    return bytes(get_frame(ds.PixelData, index, number_of_frames=frames))


def _check_codestream(frame: bytes, g: _Geometry, path: str | Path) -> None:
    """The width and height a JPEG or JPEG 2000 codestream declares, against the header's."""
    size = codestream_size(frame)
    if size is not None and size != (g.columns, g.rows):
        raise DataError(path, f"compressed DICOM frame declares {size[0]} x {size[1]} pixels, the header "
                        f"{g.columns} x {g.rows}; refused before decoding")


def _to_display(arr: np.ndarray, header: Any, g: _Geometry, path: str | Path) -> np.ndarray:
    """The frame as 8-bit gray or RGB (uint8)."""
    from pydicom.pixels import apply_color_lut

    if g.photometric == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(arr, header)
        except Exception as e:  # a missing or malformed lookup table
            raise DataError(path, f"PALETTE COLOR image with an unusable colour lookup table ({type(e).__name__})") from None
        return rgb if rgb.dtype == np.uint8 else _scale(rgb, 0.0, float(np.iinfo(rgb.dtype).max))
    if g.photometric not in GRAY:  # RGB (YBR already converted by pydicom)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise DataError(path, f"{g.photometric} image with {arr.shape[2] if arr.ndim == 3 else 1} samples a pixel")
        if arr.dtype == np.uint8:
            return arr
        stored = int(header.get("BitsStored", g.bits) or g.bits)
        return _scale(arr, 0.0, float(2**stored - 1))
    if arr.ndim == 3:  # grayscale declared with samples: the first
        arr = arr[..., 0]
    invert = g.photometric == "MONOCHROME1"  # the lowest value is white
    if arr.dtype == np.uint8:  # 8-bit unsigned: the pixels as stored, as a PNG holds them
        return 255 - arr if invert else arr
    return _gray_deep(arr, header, invert)


def _gray_deep(arr: np.ndarray, header: Any, invert: bool) -> np.ndarray:
    """Grayscale deeper than 8 bits (or signed): modality LUT, then the VOI LUT or window
    mapped onto 0-255 where the header has one; else its own minimum to maximum onto 0-255."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(arr, header).astype(np.float64, copy=False)
    has_voi = "VOILUTSequence" in header or ("WindowCenter" in header and "WindowWidth" in header)
    if has_voi:
        try:
            lo, hi = _stored_range(arr, header)
            ends = apply_voi_lut(apply_modality_lut(np.array([lo, hi], dtype=arr.dtype), header), header)
            out_lo, out_hi = float(np.min(ends)), float(np.max(ends))
            if out_hi > out_lo:
                shown = _scale(apply_voi_lut(values, header), out_lo, out_hi)
                return 255 - shown if invert else shown
        except Exception:  # a malformed window or LUT: the fallback below, still a sane image
            pass
    shown = _scale(values, float(values.min()), float(values.max()))  # a frame has at least one pixel
    return 255 - shown if invert else shown


def _stored_range(arr: np.ndarray, header: Any) -> tuple[int, int]:
    """The smallest and largest value the stored bits can hold."""
    bits = int(header.get("BitsStored", arr.dtype.itemsize * 8) or arr.dtype.itemsize * 8)
    if int(header.get("PixelRepresentation", 0) or 0):
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _scale(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Values in [lo, hi] onto 0-255, rounded."""
    out = (np.asarray(arr, dtype=np.float64) - lo) * (255.0 / max(hi - lo, 1e-6))
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def cropped_region(path: str | Path, options: DicomConfig) -> FrameRegion | None:
    """Where ``options.crop_to_region`` crops the DICOM file at ``path``: (frame width, frame
    height, inclusive box), read from its header only; None for a file that is not DICOM, an
    uncropped read, or a header without a region (so a full-frame mask can be cut the same way)."""
    from busi.runtime.safeio import open_regular_file

    if not options.crop_to_region:
        return None
    try:
        fh = open_regular_file(path)
    except OSError:  # as is_dicom: missing, unreadable, or not a regular file
        return None
    with fh:
        if not is_dicom(fh.read(HEAD_BYTES)):
            return None
        header = _read_header(_pydicom(), fh, path)
    width, height = int(header.get("Columns", 0) or 0), int(header.get("Rows", 0) or 0)
    box = ultrasound_region(header, width, height)
    return None if box is None else (width, height, box)


def _image(arr: np.ndarray) -> "Image.Image":
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), mode="RGB" if arr.ndim == 3 else "L")


def _uid(header: Any, keyword: str) -> str:
    """A UID element's value where it is one (digits and dots, at most 64); else empty, so a
    hostile header cannot put text (patient data, a CSV formula) into a prediction row."""
    try:
        value = str(header.get(keyword, "") or "").strip().rstrip("\x00")
    except Exception:
        return ""
    return value if len(value) <= 64 and UID_RE.match(value) else ""


def _ts_name(ts: Any) -> str:
    name = getattr(ts, "name", "")
    return f"{name} ({ts})" if name and name != str(ts) else f"{str(ts)[:64]!r}"


def _sop_class_name(uid: str) -> str:
    """``Comprehensive SR Storage`` for a known SOP class UID; else the UID if it is one."""
    from pydicom.uid import UID

    name = UID(uid).name if uid else ""
    if name and name != uid:
        return name
    return f"SOP class {uid}" if uid and UID_RE.match(uid) and len(uid) <= 64 else "unknown SOP class"


def _undecodable(g: _Geometry, header: Any, e: Exception) -> str:
    """Why a frame did not decode: for compressed data, the transfer syntax and sample depth no
    installed decoder read (12-bit JPEG Extended: Pillow does not decode it, and pylibjpeg's libjpeg
    refuses some encoders' files), and what to do; else what the decoder said."""
    if not g.encapsulated:
        return f"cannot decode DICOM pixel data ({_decode_reason(e)})"
    try:
        bits = int(header.get("BitsStored") or g.bits)
    except (TypeError, ValueError):
        bits = g.bits
    return (f"cannot decode DICOM pixel data: no installed decoder reads this {_ts_name(g.transfer_syntax)} file "
            f"with {bits}-bit samples ({_decode_reason(e)}); the file may be damaged, or encoded in a way they do "
            "not support: export it uncompressed, JPEG baseline or JPEG 2000")


def _decode_reason(e: Exception) -> str:
    """What a pixel decoder said, without header values: pydicom's messages about pixel data
    quote sizes and element names, never patient data; its type first, cut to one line."""
    text = " ".join(str(e).split())[:200]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
