"""The Sequence of Ultrasound Regions of a DICOM header: where on the frame the scanner put the
image itself, apart from the burned-in text, rulers and colour bars around it
(``data.dicom.crop_to_region``). Pure functions of a header (any object with pydicom's
``get`` and attribute access) and a frame; ``busi.data.dicom`` reads the header."""

from __future__ import annotations

from typing import Any

import numpy as np

# Where a DICOM frame was cut (``busi.data.dicom.cropped_region``): the frame's width and height,
# and the inclusive box (x0, y0, x1, y1) kept of it.
FrameRegion = tuple[int, int, tuple[int, int, int, int]]


def crop_to_region(arr: np.ndarray, header: Any) -> np.ndarray:
    """``arr`` cut to ``ultrasound_region``, so burned-in text and rulers are left out; the whole
    frame where the header has no such region."""
    box = ultrasound_region(header, arr.shape[1], arr.shape[0])
    if box is None:
        return arr
    x0, y0, x1, y1 = box
    return arr[y0 : y1 + 1, x0 : x1 + 1]


def ultrasound_region(header: Any, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The largest region of the header's Sequence of Ultrasound Regions that lies inside a
    ``width`` x ``height`` frame (2D tissue regions first: RegionSpatialFormat 1), as inclusive
    (x0, y0, x1, y1); None where there is none."""
    boxes: list[tuple[int, int, int, int, int]] = []  # (is 2D, x0, y0, x1, y1), inclusive
    for region in header.get("SequenceOfUltrasoundRegions", None) or ():
        try:
            x0, y0 = int(region.RegionLocationMinX0), int(region.RegionLocationMinY0)
            x1, y1 = int(region.RegionLocationMaxX1), int(region.RegionLocationMaxY1)
            is_2d = int(region.get("RegionSpatialFormat", 0) or 0) == 1
        except (AttributeError, TypeError, ValueError):
            continue
        if 0 <= x0 < x1 < width and 0 <= y0 < y1 < height:
            boxes.append((int(is_2d), x0, y0, x1, y1))
    if not boxes:
        return None
    _, x0, y0, x1, y1 = max(boxes, key=lambda b: (b[0], (b[3] - b[1] + 1) * (b[4] - b[2] + 1)))
    return x0, y0, x1, y1
