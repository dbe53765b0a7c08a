"""Grad-CAM overlay PNGs of prediction (``--gradcam DIR``): the model-input image with its
heatmap blended in, one file per input, at a path safe on any file system."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from busi.data.inputs import InputFile
from busi.files.atomic import atomic_write_with

OVERLAY_SUFFIX = ".gradcam.png"
# A file name is at most 255 bytes; the atomic writer's temp name adds ~20 bytes around it.
MAX_NAME_BYTES = 200


def overlay_name(path: str, frame: int | None = None) -> str:
    """A relative file path for a reported input path (no leading /, no .., no archive marker),
    each component short enough for any file system: a long one keeps its start and gets a
    hash of the whole (so two long names that share a start stay apart). ``frame``: one frame
    of a cine loop that gave several images (``.frame-7`` after the name)."""
    parts = [p for p in re.split(r"[/\\]|!/", path) if p not in ("", ".", "..")] or ["image"]
    if frame is not None:
        parts[-1] += f".frame-{frame}"
    reserve = len(OVERLAY_SUFFIX)
    return "/".join(_short(p, MAX_NAME_BYTES - (reserve if i == len(parts) - 1 else 0)) for i, p in enumerate(parts))


def _short(name: str, limit: int) -> str:
    raw = os.fsencode(name)
    if len(raw) <= limit:
        return name
    digest = hashlib.sha1(raw).hexdigest()[:16]
    head = raw[: limit - len(digest) - 1].decode("utf-8", "ignore")  # a whole character at the cut
    return f"{head}-{digest}"


def write_overlay(cam: Any, image: np.ndarray, cls: int, f: InputFile, out_dir: Path, frame: int | None = None) -> Path:
    """``out_dir/<path>.gradcam.png`` (``<path>.frame-N.gradcam.png`` for frame N of a cine loop):
    the model-input image with the heatmap of class ``cls`` (``busi.model.gradcam.GradCam``) blended in."""
    from matplotlib import colormaps
    from PIL import Image

    heat = cam.heatmap(image, cls)
    h, w = image.shape[:2]
    heat_img = Image.fromarray(np.uint8(255 * heat)).resize((w, h), Image.Resampling.BILINEAR)
    colored = colormaps["jet"](np.asarray(heat_img) / 255.0)[..., :3] * 255.0
    blend = np.uint8(np.clip(0.6 * image.astype(np.float32) + 0.4 * colored, 0, 255))
    target = out_dir / (overlay_name(f.path, frame) + OVERLAY_SUFFIX)
    target.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_with(target, lambda p: Image.fromarray(blend).save(p, format="PNG"), ".png")
