"""Feature caching: the head trained on cached features is the model's own head on the
frozen backbone's output, so cached and uncached paths compute the same probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from busi.config import load_config


def _cfg(*sets: str):  # type: ignore[no-untyped-def]
    return load_config(None, ["data.source=x", "output.dir=y", "data.image_size=32", "model.weights=none",
                              "train.batch_size=4", *sets])


def _pipelines(root: Path, cfg):  # type: ignore[no-untyped-def]
    from busi.data.pipeline import Pipeline, SplitData
    from busi.data.synth import write_synthetic_dataset

    data = write_synthetic_dataset(root / "d", per_class=3, size=32, seed=0)
    paths = sorted(str(p) for p in data.rglob("*.png") if "_mask" not in p.name)
    labels = [("normal", "benign", "malignant").index(Path(p).parent.name) for p in paths]
    split = SplitData(tuple(paths), tuple(labels))
    return Pipeline(split, 32, "stretch"), Pipeline(split, 32, "stretch")


def test_cached_head_equals_the_full_model(tmp_path: Path) -> None:
    from busi.features import FeatureCache
    from busi.model import build_model

    cfg = _cfg()
    train, val = _pipelines(tmp_path, cfg)
    built = build_model(cfg, 3)
    cache = FeatureCache(cfg, built.model, train, val)
    cache.build()
    assert cache.variants == 1 and cache.train_features[0].shape == (9, 2048)
    x = np.concatenate([b[0].numpy() for b in val.eval_dataset(4)])
    full = built.model(x, training=False).numpy()
    head = cache.head(cache.val_features, training=False).numpy()
    np.testing.assert_allclose(head, full, rtol=1e-4, atol=1e-5)
    batches = list(cache.train_dataset(4, 0, 1, np.ones(3, np.float32)))
    assert sum(int(b[0].shape[0]) for b in batches) == 9 and batches[0][0].shape[1] == 2048


def test_variants_cache_one_feature_set_per_augmentation(tmp_path: Path) -> None:
    from busi.features import FeatureCache
    from busi.model import build_model

    cfg = _cfg("train.feature_cache=variants", "train.feature_cache_variants=3")
    train, val = _pipelines(tmp_path, cfg)
    cache = FeatureCache(cfg, build_model(cfg, 3).model, train, val)
    cache.build()
    assert len(cache.train_features) == 3
    assert not np.allclose(cache.train_features[0], cache.train_features[1])
    # epoch e trains on variant (e - 1) mod 3
    f1 = np.concatenate([b[0].numpy() for b in cache.train_dataset(9, 0, 1, np.ones(3, np.float32))])
    f4 = np.concatenate([b[0].numpy() for b in cache.train_dataset(9, 0, 4, np.ones(3, np.float32))])
    assert sorted(map(tuple, np.round(f1, 4))) == sorted(map(tuple, np.round(f4, 4)))
