"""The picture size a compressed DICOM frame's own codestream declares (JPEG's SOF marker,
JPEG 2000's SIZ marker), read from its first bytes without decoding: ``busi.data.dicom`` refuses a
frame whose codestream disagrees with the header (a small header over a huge JPEG is a
decompression bomb). Pure: bytes in, a size out."""

from __future__ import annotations

import struct


def codestream_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG (SOF marker) or JPEG 2000 (SIZ marker) codestream; None for
    other encodings (RLE decodes to the header's size) or where no marker is found."""
    if frame[:2] == b"\xff\x4f":  # J2K SOC, then SIZ: Lsiz Rsiz Xsiz Ysiz XOsiz YOsiz
        if frame[2:4] != b"\xff\x51" or len(frame) < 24:
            return None
        x, y, xo, yo = struct.unpack(">IIII", frame[8:24])
        return x - xo, y - yo
    if frame[:2] != b"\xff\xd8":  # not a JPEG (SOI) either
        return None
    pos = 2
    while pos + 4 <= len(frame):
        if frame[pos] != 0xFF:
            return None
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = struct.unpack(">H", frame[pos + 2 : pos + 4])[0]
        # SOF0-SOF15 except DHT (C4), JPG (C8), DAC (CC); and JPEG-LS's SOF55 (F7)
        if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:
            if pos + 9 > len(frame):
                return None
            height, width = struct.unpack(">HH", frame[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    return None
