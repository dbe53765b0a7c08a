"""Synthetic BUSI-like dataset in the original BUSI layout.

Used by the demo and most tests, so that nothing needs the real (licensed, 200 MB)
dataset. The layout matches BUSI exactly::

    out_dir/
        normal/normal (1).png, normal (1)_mask.png, ...
        benign/benign (1).png, benign (1)_mask.png, ...
        malignant/malignant (1).png, malignant (1)_mask.png, ...

Images are grayscale B-mode-like pictures saved as RGB PNGs (as BUSI's are); masks
are mode "L" PNGs, 255 inside the lesion and 0 elsewhere (empty for "normal").

The three appearances, in the order of ``classes``:

0. no lesion: layered breast tissue (skin line, subcutaneous fat with faint fat
   lobules, brighter fibroglandular layer, striated muscle) under speckle;
1. a smooth, well-circumscribed, wider-than-tall hypoechoic ellipse with a thin
   bright capsule and mild posterior enhancement (brighter band beneath);
2. an irregular hypoechoic lesion with a lobulated, spiculated, blurred margin,
   taller than wide, an echogenic halo and posterior acoustic shadowing (a darker
   column beneath).

All classes share the same background model (random layer depths, texture, gain,
depth fall-off, faint hypoechoic fat lobules), so a classifier has to look at the
lesion and what lies beneath it, not at global brightness.

Determinism: image ``n`` of class index ``c`` is drawn from its own child stream
``SeedSequence(seed, spawn_key=(c, n))``, so it is the same whatever ``per_class``
is, and the PNGs are byte-identical for a given seed (with the same numpy/Pillow).
Only numpy and Pillow are used; importing this module is cheap.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from busi.config.schema import DEFAULT_CLASSES
from busi.errors import ConfigError
from busi.files.atomic import publish_dir, temp_dir

_MIN_SIZE = 16
_MAX_SIZE = 4096  # BUSI's images are about 500 px; a 100,000 px side would need ~40 GB per image
_MAX_PER_CLASS = 100_000
_MAX_SEED = 2**32 - 1
_NORMAL, _BENIGN, _MALIGNANT = 0, 1, 2


# --------------------------------------------------------------------------- public


def write_synthetic_dataset(
    out_dir: str | Path,
    per_class: int,
    size: int = 64,
    seed: int = 0,
    classes: Sequence[str] = DEFAULT_CLASSES,
) -> Path:
    """Writes out_dir/<class>/<class> (<n>).png and <class> (<n>)_mask.png for n = 1..per_class.

    Returns out_dir. Deterministic for a seed (byte-identical PNGs). Refuses
    (busi.errors.ConfigError) per_class < 1, size < 16, and any class list other than
    3 classes (the generator draws exactly three appearances: no lesion / smooth oval /
    irregular spiculated, in the order given).

    The dataset is built in a temporary directory beside ``out_dir`` and renamed into
    place, so ``out_dir`` is either absent or complete. An existing, non-empty
    ``out_dir`` is refused (ConfigError); an existing empty directory is replaced.
    """
    per_class = _check_int("per_class", per_class, minimum=1, maximum=_MAX_PER_CLASS)
    size = _check_int("size", size, minimum=_MIN_SIZE, maximum=_MAX_SIZE)
    seed = _check_int("seed", seed, minimum=0, maximum=_MAX_SEED)
    class_names = _check_classes(classes)

    out = Path(os.path.abspath(os.fspath(Path(out_dir).expanduser())))
    _refuse_non_empty(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"synthetic data: cannot create parent directory of {out}: {exc}") from exc

    try:
        tmp = temp_dir(out)
    except OSError as exc:
        raise ConfigError(f"synthetic data: cannot write beside {out}: {exc}") from exc
    try:
        for class_index, name in enumerate(class_names):
            class_dir = tmp / name
            class_dir.mkdir()
            for n in range(1, per_class + 1):
                rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(class_index, n)))
                gray, mask = _render(class_index, rng, size)
                Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2)).save(
                    class_dir / f"{name} ({n}).png", format="PNG"
                )
                Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(
                    class_dir / f"{name} ({n})_mask.png", format="PNG"
                )
        _refuse_non_empty(out)  # somebody may have filled it meanwhile
        try:
            publish_dir(tmp, out)  # an existing empty directory is swapped out
        except OSError as exc:
            raise ConfigError(
                f"synthetic data: cannot move the dataset into {out} ({exc}); "
                "remove it or choose another directory"
            ) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ----------------------------------------------------------------------- validation


def _check_int(name: str, value: object, *, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"synthetic data: {name} must be an integer from {minimum} to {maximum}, got {value!r}")
    if not minimum <= value <= maximum:
        raise ConfigError(f"synthetic data: {name} must be from {minimum} to {maximum}, got {value}")
    return int(value)


def _check_classes(classes: object) -> tuple[str, ...]:
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
        raise ConfigError(f"synthetic data: classes must be a list of 3 names, got {classes!r}")
    names = tuple(classes)
    if len(names) != 3:
        raise ConfigError(
            f"synthetic data: classes must list exactly 3 names (no lesion, benign-looking, "
            f"malignant-looking, in that order), got {len(names)}: {list(names)!r}"
        )
    for name in names:
        if (
            not isinstance(name, str)
            or not name.strip()
            or name in (".", "..")
            or name != name.strip()
            or any(ch in name for ch in "/\\\0")
        ):
            raise ConfigError(f"synthetic data: class name {name!r} is not usable as a directory name")
    if len(set(names)) != 3:
        raise ConfigError(f"synthetic data: class names must be distinct, got {list(names)!r}")
    return names


def _refuse_non_empty(out: Path) -> None:
    hint = "remove it or choose another directory"
    if out.is_symlink() and not out.exists():
        raise ConfigError(f"synthetic data: {out} is a dangling symlink; {hint}")
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"synthetic data: {out} exists and is not a directory; {hint}")
    if any(out.iterdir()):
        raise ConfigError(f"synthetic data: {out} already exists and is not empty; {hint}")


# ------------------------------------------------------------------------ rendering


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _upsample(coarse: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of a small 2-D grid to (h, w), corners aligned."""
    ch, cw = coarse.shape
    ys = np.linspace(0.0, ch - 1.0, h)
    xs = np.linspace(0.0, cw - 1.0, w)
    y0 = np.minimum(np.floor(ys).astype(int), ch - 2) if ch > 1 else np.zeros(h, int)
    x0 = np.minimum(np.floor(xs).astype(int), cw - 2) if cw > 1 else np.zeros(w, int)
    y1 = np.minimum(y0 + 1, ch - 1)
    x1 = np.minimum(x0 + 1, cw - 1)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    top = coarse[np.ix_(y0, x0)] * (1 - fx) + coarse[np.ix_(y0, x1)] * fx
    bottom = coarse[np.ix_(y1, x0)] * (1 - fx) + coarse[np.ix_(y1, x1)] * fx
    return top * (1 - fy) + bottom * fy


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells_y: int, cells_x: int) -> np.ndarray:
    """Zero-mean, roughly unit-variance smooth random field."""
    return _upsample(rng.standard_normal((cells_y + 1, cells_x + 1)), h, w)


def _wave(rng: np.random.Generator, w: int, knots: int) -> np.ndarray:
    """A smooth random 1-D curve along x (for wavy layer boundaries)."""
    return _upsample(rng.standard_normal((1, knots + 1)), 1, w)[0]


def _blur3(a: np.ndarray, axis: int) -> np.ndarray:
    """[1, 2, 1] / 4 blur along one axis with edge replication."""
    pad = [(0, 0), (0, 0)]
    pad[axis] = (1, 1)
    p = np.pad(a, pad, mode="edge")
    if axis == 0:
        return 0.25 * p[:-2] + 0.5 * p[1:-1] + 0.25 * p[2:]
    return 0.25 * p[:, :-2] + 0.5 * p[:, 1:-1] + 0.25 * p[:, 2:]


def _speckle(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Fully developed speckle: |blurred complex Gaussian field|, Rayleigh with mean 1.

    The blur (wider laterally than axially, as with a real transducer's point-spread
    function) gives the grains their horizontally elongated look.
    """
    field = rng.standard_normal((h, w)) + 1j * rng.standard_normal((h, w))
    field = _blur3(_blur3(_blur3(field, 1), 1), 0)
    # Variance per component after the blurs: (sum of squared lateral taps) * (axial).
    lateral = np.convolve([0.25, 0.5, 0.25], [0.25, 0.5, 0.25])
    var = float(np.sum(lateral**2) * np.sum(np.array([0.25, 0.5, 0.25]) ** 2))
    return np.abs(field) / (np.sqrt(var) * np.sqrt(np.pi / 2.0))


def _tissue(rng: np.random.Generator, h: int, w: int, yn: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Mean echogenicity of lesion-free breast tissue (before speckle), shape (h, w)."""
    scale = h / 64.0
    soft = 1.2 / h  # ~1 px transitions between layers

    skin_y = rng.uniform(0.04, 0.08)
    fat_bottom = rng.uniform(0.20, 0.32) + 0.04 * _wave(rng, w, 4)[None, :]
    gland_bottom = rng.uniform(0.70, 0.84) + 0.04 * _wave(rng, w, 3)[None, :]
    fat, gland, muscle = rng.uniform(0.22, 0.34), rng.uniform(0.52, 0.70), rng.uniform(0.34, 0.48)

    t = fat + (gland - fat) * _sigmoid((yn - fat_bottom) / soft) + (muscle - gland) * _sigmoid(
        (yn - gland_bottom) / soft
    )
    # Skin line: a thin bright band near the top.
    skin_sigma = max(0.9, 0.9 * scale) / h
    t = t + rng.uniform(0.5, 0.8) * np.exp(-0.5 * ((yn - skin_y) / skin_sigma) ** 2)
    # A few thin bright, slightly wavy horizontal lines (fascia, Cooper's ligaments,
    # muscle striations), mostly in the deeper half.
    for _ in range(int(rng.integers(2, 6))):
        y_line = rng.uniform(0.25, 0.97) + 0.015 * _wave(rng, w, 3)[None, :]
        sigma = rng.uniform(0.6, 1.1) * scale / h
        t = t + rng.uniform(0.10, 0.28) * np.exp(-0.5 * ((yn - y_line) / sigma) ** 2)
    # Tissue texture: laterally elongated blobs at two scales.
    t = t * (1.0 + 0.22 * _smooth_noise(rng, h, w, 6, 3) + 0.12 * _smooth_noise(rng, h, w, 14, 7))
    # Faint hypoechoic fat lobules in the subcutaneous layer (present in every class).
    for _ in range(int(rng.integers(0, 4))):
        cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.12, 0.26) * h
        ax, ay = rng.uniform(0.06, 0.12) * h, rng.uniform(0.03, 0.06) * h
        r2 = ((xx - cx) / ax) ** 2 + ((yn * h - cy) / ay) ** 2
        t = t * (1.0 - rng.uniform(0.15, 0.35) * _sigmoid((1.0 - r2) / 0.15))
    return np.clip(t, 0.02, None)


def _lesion_shape(
    rng: np.random.Generator, kind: int, h: int, w: int, xx: np.ndarray, yy: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Normalised radius rho and boundary radius R(theta) for one lesion, plus its geometry."""
    if kind == _BENIGN:
        a = rng.uniform(0.13, 0.24) * h  # horizontal semi-axis
        b = a * rng.uniform(0.50, 0.78)  # wider than tall
        angle = rng.uniform(-0.30, 0.30)
        cy = rng.uniform(0.38, 0.58) * h
    else:
        r0 = rng.uniform(0.11, 0.19) * h
        a = r0 * rng.uniform(0.78, 0.98)
        b = r0 * rng.uniform(1.05, 1.45)  # taller than wide
        angle = rng.uniform(-0.30, 0.30)
        cy = rng.uniform(0.36, 0.55) * h
    cx = rng.uniform(0.28, 0.72) * w

    dx, dy = xx - cx, yy - cy
    c, s = np.cos(angle), np.sin(angle)
    u = (c * dx + s * dy) / a
    v = (-s * dx + c * dy) / b
    rho = np.hypot(u, v)
    theta = np.arctan2(v, u)

    if kind == _BENIGN:
        # Smooth, at most gently macrolobulated outline.
        boundary = 1.0 + sum(
            rng.uniform(0.0, 0.04) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3)
        )
    else:
        # Lobulated (several harmonics) plus spiculated (narrow radial spikes).
        boundary = 1.0 + sum(
            rng.uniform(0.04, 0.13) / np.sqrt(k - 1) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
            for k in range(2, 8)
        )
        for _ in range(int(rng.integers(5, 11))):
            d = np.mod(theta - rng.uniform(-np.pi, np.pi) + np.pi, 2 * np.pi) - np.pi
            width = rng.uniform(0.05, 0.11)
            boundary = boundary + rng.uniform(0.25, 0.55) * np.exp(-0.5 * (d / width) ** 2)
        boundary = np.maximum(boundary, 0.45)
    return rho, boundary, {"cx": cx, "cy": cy, "a": a, "b": b}


def _add_lesion(
    rng: np.random.Generator, kind: int, t: np.ndarray, xx: np.ndarray, yy: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    h, w = t.shape
    rho, boundary, geo = _lesion_shape(rng, kind, h, w, xx, yy)
    mask = rho < boundary
    if not mask.any():  # cannot happen for the sizes drawn; keep mask and image consistent anyway
        iy = min(max(int(geo["cy"]), 0), h - 1)
        ix = min(max(int(geo["cx"]), 0), w - 1)
        mask[iy, ix] = True
        boundary = np.where(mask, np.maximum(boundary, rho + 0.01), boundary)

    edge = 0.05 if kind == _BENIGN else 0.12  # sharp vs ill-defined margin
    inside = _sigmoid((boundary - rho) / edge)
    if kind == _BENIGN:
        level = rng.uniform(0.08, 0.18) * (1.0 + 0.08 * _smooth_noise(rng, h, w, 4, 4))
        rim = rng.uniform(0.05, 0.20) * np.exp(-0.5 * ((rho - boundary) / 0.06) ** 2)  # thin capsule
    else:
        level = rng.uniform(0.06, 0.15) * (1.0 + 0.35 * _smooth_noise(rng, h, w, 8, 8))
        rim = rng.uniform(0.05, 0.18) * np.exp(-0.5 * ((rho - boundary - 0.18) / 0.12) ** 2)  # halo
    t = t * (1.0 - inside) + np.clip(level, 0.02, None) * inside + rim * (1.0 - inside)

    # Posterior acoustic feature: a column beneath the lesion, as wide as the lesion.
    cols = np.flatnonzero(mask.any(axis=0))
    x_min, x_max = float(cols[0]), float(cols[-1]) + 1.0
    soft_x = max(1.0, 1.5 * h / 64.0)
    column = _sigmoid((xx - x_min) / soft_x) * _sigmoid((x_max - xx) / soft_x)
    below = _sigmoid((yy - geo["cy"]) / max(1.0, 0.4 * geo["b"])) * (1.0 - inside)
    if kind == _BENIGN:
        gain = rng.uniform(0.30, 0.65)
        decay = rng.uniform(0.20, 0.45) * h
        fade = np.exp(-np.maximum(yy - geo["cy"] - geo["b"], 0.0) / decay)
        t = t * (1.0 + gain * column * below * fade)
    else:
        strength = rng.uniform(0.40, 0.75)
        t = t * (1.0 - strength * column * below)
    return t, mask


def _render(kind: int, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8, H x W grayscale) and its lesion mask (bool, H x W)."""
    h = size
    w = int(rng.integers(size, round(1.25 * size), endpoint=True))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    yn = yy / h

    t = _tissue(rng, h, w, yn, xx)
    if kind == _NORMAL:
        mask = np.zeros((h, w), dtype=bool)
    else:
        t, mask = _add_lesion(rng, kind, t, xx, yy)

    depth = 1.0 - rng.uniform(0.25, 0.50) * yn  # attenuation not fully compensated by TGC
    gain = rng.uniform(0.85, 1.15)
    envelope = t * depth * gain * _speckle(rng, h, w)
    # Soft log-like compression to 8 bits: bright speckle saturates smoothly.
    gray = 255.0 * (1.0 - np.exp(-1.2 * envelope))
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8), mask
