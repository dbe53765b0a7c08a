"""Explanations checked against the ground truth: Grad-CAM heatmaps against BUSI's lesion masks.

BUSI ships a hand-drawn lesion mask for every image (``X_mask.png``, a second lesion as
``X_mask_1.png``). A model that is right for the right reasons puts its Grad-CAM heatmap on the
lesion. For each test image with a non-empty mask (normal images have empty ones), the heatmap
of the true class (``busi.model.gradcam``), upsampled bilinearly to the model input, gives:

* ``energy_inside``: the share of the heatmap's total inside the mask (a heatmap spread
  uniformly scores the mask's share of the image);
* ``pointing_hit``: whether the heatmap's maximum lies inside the mask (the pointing game of
  Zhang et al., "Top-down Neural Attention by Excitation Backprop", 2016).

The mask goes through the image's own resize (``stretch`` or ``pad``), and the crop of a DICOM
read with ``data.dicom.crop_to_region``, so they stay aligned; a mask is never a model input.
Per class and over all images, in ``metrics.json`` ``gradcam_vs_masks`` and the model card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from busi.config.schema import DicomConfig
from busi.data.regions import FrameRegion


def load_mask(paths: Sequence[Path], size: int, resize: str, crop: FrameRegion | None = None) -> np.ndarray:
    """The union of an image's masks at the model input, as a boolean ``size`` x ``size`` array;
    each mask in any form it ships in (``busi.data.images.lesion_of``: 1-bit, grey, 16-bit, RGBA,
    colour-coded, a label image). ``crop``: the image's frame and box where it was cut to its
    ultrasound region (``busi.data.dicom.cropped_region``); a mask of the whole frame is cut the
    same way, one of another size (already the region's) is taken as it is."""
    from busi.data.images import lesion_of, open_image_file, pillow_decode, resize_rgb

    out = np.zeros((size, size), bool)
    for p in paths:
        with open_image_file(p) as fh:
            _mode, mask = pillow_decode(fh, p, None, crop, convert=lesion_of)
        out |= np.asarray(resize_rgb(mask, size, resize)) > 127
    return out


def upsample(heat: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(heat.astype(np.float32), mode="F").resize((size, size), Image.Resampling.BILINEAR))


def mask_agreement(heat: np.ndarray, mask: np.ndarray) -> tuple[float, bool]:
    """(share of the heatmap inside ``mask``, whether its maximum is inside) for a heatmap
    already at the mask's resolution."""
    total = float(heat.sum())
    inside = float(heat[mask].sum()) / total if total > 0 else 0.0
    hit = bool(mask.flat[int(np.argmax(heat))])
    return inside, hit


def gradcam_vs_masks(model: Any, images: Sequence[tuple[Path, int, Sequence[Path], int | None]],
                     classes: Sequence[str], size: int, resize: str, dicom: DicomConfig) -> dict[str, Any]:
    """``images``: (image path, true class index, mask paths, frame of a cine loop or None).
    Every image with a non-empty mask is scored; the summary per class and overall. A DICOM image is decoded as training
    decodes it (``dicom``), its whole-frame masks cut to the same ultrasound region."""
    from busi.data.dicom import cropped_region
    from busi.data.images import load_image
    from busi.model.gradcam import GradCam

    cam = GradCam(model)
    scores: dict[str, list[tuple[float, bool, float]]] = {c: [] for c in classes}
    for path, label, masks, frame in images:
        if not masks:
            continue
        mask = load_mask(masks, size, resize, cropped_region(path, dicom))
        if not mask.any():
            continue
        heat = upsample(cam.heatmap(load_image(path, size, resize, dicom, frame).astype(np.float32), label), size)
        inside, hit = mask_agreement(heat, mask)
        scores[classes[label]].append((inside, hit, float(mask.mean())))

    def summary(rows: list[tuple[float, bool, float]]) -> dict[str, Any]:
        if not rows:
            return {"images": 0, "energy_inside": None, "pointing_hit_rate": None, "mask_area": None}
        return {"images": len(rows), "energy_inside": round(float(np.mean([r[0] for r in rows])), 4),
                "pointing_hit_rate": round(float(np.mean([r[1] for r in rows])), 4),
                "mask_area": round(float(np.mean([r[2] for r in rows])), 4)}

    return {"heatmap": "Grad-CAM of the true class", "overall": summary([r for v in scores.values() for r in v]),
            "per_class": {c: summary(v) for c, v in scores.items()}}
