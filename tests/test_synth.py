"""Tests for busi.data.synth: layout, masks, determinism, refusals, atomicity, learnability."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from busi.data import synth
from busi.data.synth import DEFAULT_CLASSES, write_synthetic_dataset
from busi.errors import ConfigError


def _load(path: Path) -> tuple[str, np.ndarray]:
    with Image.open(path) as im:
        im.load()
        return im.mode, np.asarray(im)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _lesion_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


# ----------------------------------------------------------------------------- layout


def test_layout_names_modes_sizes_and_masks(tmp_path):
    per_class, size = 4, 48
    out = tmp_path / "busi"
    assert write_synthetic_dataset(out, per_class, size=size, seed=3) == out

    assert sorted(p.name for p in out.iterdir()) == sorted(DEFAULT_CLASSES)
    for cls in DEFAULT_CLASSES:
        names = sorted(p.name for p in (out / cls).iterdir())
        expected = sorted(
            [f"{cls} ({n}).png" for n in range(1, per_class + 1)]
            + [f"{cls} ({n})_mask.png" for n in range(1, per_class + 1)]
        )
        assert names == expected
        for n in range(1, per_class + 1):
            mode, img = _load(out / cls / f"{cls} ({n}).png")
            assert mode == "RGB"
            h, w, c = img.shape
            assert c == 3 and h == size and size <= w <= round(1.25 * size)
            # grayscale content stored as RGB
            assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2])

            mmode, mask = _load(out / cls / f"{cls} ({n})_mask.png")
            assert mmode == "L"
            assert mask.shape == (h, w)
            assert set(np.unique(mask).tolist()) <= {0, 255}
            if cls == "normal":
                assert not mask.any()
            else:
                assert mask.any()
    # atomic build: no temporary directory left beside out_dir
    assert [p.name for p in tmp_path.iterdir()] == ["busi"]


def test_widths_vary_and_minimum_size_works(tmp_path):
    out = write_synthetic_dataset(tmp_path / "d", per_class=6, size=16, seed=1)
    widths = set()
    for cls in DEFAULT_CLASSES:
        for n in range(1, 7):
            _, img = _load(out / cls / f"{cls} ({n}).png")
            _, mask = _load(out / cls / f"{cls} ({n})_mask.png")
            assert img.shape[0] == 16 and 16 <= img.shape[1] <= 20
            assert mask.any() == (cls != "normal")
            widths.add(img.shape[1])
    assert len(widths) > 1


def test_custom_class_names_follow_the_given_order(tmp_path):
    out = write_synthetic_dataset(tmp_path / "d", per_class=2, size=32, classes=["B0", "B1", "B2"])
    assert sorted(p.name for p in out.iterdir()) == ["B0", "B1", "B2"]
    _, m0 = _load(out / "B0" / "B0 (1)_mask.png")
    _, m2 = _load(out / "B2" / "B2 (1)_mask.png")
    assert not m0.any() and m2.any()


def test_lesion_morphology_matches_the_description(tmp_path):
    """Benign: wider than tall, brighter beneath. Malignant: taller than wide, shadow beneath."""
    out = write_synthetic_dataset(tmp_path / "d", per_class=12, size=64, seed=0)
    stats: dict[str, tuple[list[float], list[float], list[float]]] = {}
    for cls in ("benign", "malignant"):
        aspect, posterior, contrast = [], [], []
        for n in range(1, 13):
            _, img = _load(out / cls / f"{cls} ({n}).png")
            _, mask = _load(out / cls / f"{cls} ({n})_mask.png")
            gray = img[..., 0].astype(float)
            lesion = mask > 0
            top, bottom, left, right = _lesion_box(lesion)
            aspect.append((bottom - top) / (right - left))
            below = gray[bottom:, left:right]
            beside = np.delete(gray[bottom:], np.arange(left, right), axis=1)
            posterior.append(below.mean() / beside.mean())
            contrast.append(gray[lesion].mean() / gray[~lesion].mean())
        stats[cls] = (aspect, posterior, contrast)

    b_aspect, b_post, b_contrast = stats["benign"]
    m_aspect, m_post, m_contrast = stats["malignant"]
    assert max(b_aspect) < 1.0  # every benign oval is wider than tall
    assert np.median(m_aspect) > 1.0  # malignant lesions tend to be taller than wide
    assert np.median(b_post) > 1.0  # posterior enhancement
    assert np.median(m_post) < 0.8  # posterior acoustic shadowing
    assert max(b_contrast + m_contrast) < 0.8  # lesions are hypoechoic


# ------------------------------------------------------------------------ determinism


def test_same_seed_is_byte_identical_and_different_seed_differs(tmp_path):
    a = _files(write_synthetic_dataset(tmp_path / "a", per_class=3, size=32, seed=7))
    b = _files(write_synthetic_dataset(tmp_path / "b", per_class=3, size=32, seed=7))
    c = _files(write_synthetic_dataset(tmp_path / "c", per_class=3, size=32, seed=8))
    assert a == b
    assert a.keys() == c.keys()
    images = [k for k in a if not k.endswith("_mask.png")]
    assert all(a[k] != c[k] for k in images)


def test_image_n_does_not_depend_on_per_class(tmp_path):
    small = _files(write_synthetic_dataset(tmp_path / "small", per_class=2, size=32, seed=5))
    large = _files(write_synthetic_dataset(tmp_path / "large", per_class=5, size=32, seed=5))
    assert small.keys() < large.keys()
    assert all(large[k] == v for k, v in small.items())


# --------------------------------------------------------------------------- refusals


def test_existing_non_empty_out_dir_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(ConfigError, match="remove it or choose another directory") as exc:
        write_synthetic_dataset(out, per_class=1, size=16)
    assert str(out) in str(exc.value)
    assert exc.value.exit_code == 2
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_existing_file_is_refused(tmp_path):
    out = tmp_path / "data"
    out.write_text("not a dir")
    with pytest.raises(ConfigError, match="remove it or choose another directory"):
        write_synthetic_dataset(out, per_class=1, size=16)


def test_existing_empty_out_dir_is_filled(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    write_synthetic_dataset(out, per_class=1, size=16)
    assert sorted(p.name for p in out.iterdir()) == sorted(DEFAULT_CLASSES)


def test_missing_parents_are_created(tmp_path):
    out = write_synthetic_dataset(tmp_path / "a" / "b" / "c", per_class=1, size=16)
    assert (out / "benign" / "benign (1).png").is_file()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"per_class": 0},
        {"per_class": -1},
        {"per_class": 1.5},
        {"per_class": True},
        {"size": 15},
        {"size": 0},
        {"size": 64.0},
        {"seed": -1},
        {"classes": ("normal", "benign")},
        {"classes": ("normal", "benign", "malignant", "other")},
        {"classes": ("a", "a", "b")},
        {"classes": ("a", "b/c", "d")},
        {"classes": ("a", "..", "d")},
        {"classes": ("a", "", "d")},
        {"classes": "abc"},
    ],
)
def test_bad_arguments_are_refused_before_writing(tmp_path, kwargs):
    args = {"per_class": 1, "size": 16, **kwargs}
    with pytest.raises(ConfigError):
        write_synthetic_dataset(tmp_path / "out", **args)
    assert list(tmp_path.iterdir()) == []


def test_failure_midway_leaves_nothing_behind(tmp_path, monkeypatch):
    real_render = synth._render
    calls = {"n": 0}

    def flaky(kind, rng, size):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("disk on fire")
        return real_render(kind, rng, size)

    monkeypatch.setattr(synth, "_render", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_synthetic_dataset(tmp_path / "out", per_class=2, size=16)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- learnability


def test_classes_are_learnable_by_a_linear_model_on_tiny_thumbnails(tmp_path):
    """Sanity check without TensorFlow: 8x8 mean-pooled thumbnails + logistic regression.

    Chance is 1/3. The classes should be clearly separable, but not trivially: a linear
    model on 64 coarse pixels gets roughly 0.7-0.95 depending on the seed (0.73 here),
    leaving room for a CNN to do better.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    per_class = 30
    out = write_synthetic_dataset(tmp_path / "d", per_class=per_class, size=64, seed=0)
    features, labels = [], []
    for label, cls in enumerate(DEFAULT_CLASSES):
        for n in range(1, per_class + 1):
            with Image.open(out / cls / f"{cls} ({n}).png") as im:
                thumb = np.asarray(im.convert("L").resize((32, 32), Image.BILINEAR), dtype=np.float32) / 255.0
            features.append(thumb.reshape(8, 4, 8, 4).mean(axis=(1, 3)).ravel())
            labels.append(label)
    x, y = np.array(features), np.array(labels)
    test = np.arange(len(y)) % 3 == 2  # 1/3 held out, balanced across classes
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(x[~test], y[~test])
    accuracy = model.score(x[test], y[test])
    assert accuracy >= 0.6, f"held-out accuracy {accuracy:.2f} (chance 0.33)"
