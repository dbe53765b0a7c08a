"""Feature caching: the part trained on cached features is the model's own layers on the
frozen part's output, so cached and uncached paths compute the same probabilities and take
the same training step."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from conftest import SMALL_MODEL, spread_model

from busi.config.schema import ModelConfig
from busi.config.load import load_config
from busi.model.features import CacheSettings, cache_feature_shape


def _cfg(*sets: str, small: bool = True):  # type: ignore[no-untyped-def]
    """The cache's machinery on MobileNet at width 0.25 (``SMALL_MODEL``: 0.2 M parameters, so
    building, filling and converting take a fraction of ResNet50's time; built by ``_build``);
    ``small=False``: ResNet50, the default backbone."""
    return load_config(None, ["data.source=x", "output.dir=y", "data.image_size=32", "model.weights=none",
                              "train.batch_size=4", *(SMALL_MODEL if small else ()), *sets])


@pytest.fixture(scope="module")
def data(synth_data: Any) -> Path:
    return synth_data(3, 32, 0)


def _pipelines(data: Path, cfg):  # type: ignore[no-untyped-def]
    from busi.data.pipeline import Pipeline, SplitData

    paths = sorted(str(p) for p in data.rglob("*.png") if "_mask" not in p.name)
    labels = [("normal", "benign", "malignant").index(Path(p).parent.name) for p in paths]
    split = SplitData(tuple(paths), tuple(labels))
    return Pipeline(split, 32, "stretch"), Pipeline(split, 32, "stretch")


def _build(cfg):  # type: ignore[no-untyped-def]
    """busi's model for ``cfg``, random weights, its activations of a trained network's size
    (conftest ``spread_model``: a random MobileNet's probabilities are otherwise all 1/3)."""
    return spread_model(cfg.model, cfg.data.image_size, cfg.data.classes)


def test_cached_head_equals_the_full_model(data: Path, tmp_path: Path) -> None:
    from busi.model.features import FeatureCache

    cfg = _cfg()
    train, val = _pipelines(data, cfg)
    built = _build(cfg)
    cache = FeatureCache(CacheSettings.of(cfg), built, "none", train, val)
    cache.build()
    assert cache.variants == 1 and cache.train_features[0].shape == (9, 256)  # MobileNet 0.25's pooled vector
    assert cache.feature_shape == cache_feature_shape("none", 32, cfg.model)
    assert cache.nbytes() == sum(f.nbytes for f in cache.train_features) + cache.val_features.nbytes
    x = np.concatenate([b[0].numpy() for b in val.eval_dataset(4)])
    full = built.model(x, training=False).numpy()
    assert np.abs(full - 1 / 3).max() > 0.05  # not the uniform answer of features that vanished
    head = cache.head(cache.val_features, training=False).numpy()
    np.testing.assert_allclose(head, full, rtol=1e-4, atol=1e-5)
    batches = list(cache.train_dataset(4, 0, 1, np.ones(3, np.float32)))
    assert sum(int(b[0].shape[0]) for b in batches) == 9 and batches[0][0].shape[1] == 256


def test_variants_cache_one_feature_set_per_augmentation(data: Path, tmp_path: Path) -> None:
    from busi.model.features import FeatureCache

    cfg = _cfg("train.feature_cache=variants", "train.feature_cache_variants=3")
    train, val = _pipelines(data, cfg)
    cache = FeatureCache(CacheSettings.of(cfg), _build(cfg), "none", train, val)
    cache.build()
    assert len(cache.train_features) == 3
    assert not np.allclose(cache.train_features[0], cache.train_features[1])
    # epoch e trains on variant (e - 1) mod 3
    f1 = np.concatenate([b[0] for b in cache.train_dataset(9, 0, 1, np.ones(3, np.float32))])
    f4 = np.concatenate([b[0] for b in cache.train_dataset(9, 0, 4, np.ones(3, np.float32))])
    assert sorted(map(tuple, np.round(f1, 4))) == sorted(map(tuple, np.round(f4, 4)))


@pytest.fixture
def float64() -> Iterator[None]:
    """Keras computes in float64 for one test, then back to float32."""
    import keras

    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        yield
    finally:
        keras.config.set_floatx("float32")
        keras.config.set_dtype_policy("float32")


# Why the dtype and the tolerance differ between the two cases (measured on ResNet50 at 32 px,
# 9 images, the cache filled in batches of 4 as training fills it; on MobileNet 0.25, which the
# test runs on, both cases agreed bit for bit in float32 on an Intel CPU with AMX, but oneDNN
# picks its algorithms by CPU and batch size, so the margins stay):
# * The cached conv4 outputs differ from the full model's own by ~8e-7 (relative) in float32:
#   oneDNN picks its convolution algorithm by batch size, and the full model sees one batch of 9.
#   Filled in one batch of 9 instead, the cached step equals the full model's step bit for bit.
# * With BatchNorm frozen, that input noise reaches the step's weight updates as ~5e-8: float32
#   with rtol 1e-4 checks the path training uses.
# * With BatchNorm in training mode, conv5's BatchNorm normalises each channel over 9 values
#   (conv5's maps are 1x1 at 32 px) of a random-weight network; its backward pass amplifies the
#   8e-7 input noise up to 0.15 (relative) in some conv5 kernels (0.006 at 64 px, 0.04 at 96 px),
#   while the same comparison in float64 agrees to 2e-14. So the difference is float32 noise, not
#   a difference between the cached suffix and the full model, and the check runs in float64.
#   Its tolerance, rtol 1e-6, allows for the output layer, which stays float32 (busi.model), and
#   is five orders of magnitude below what a real difference in BatchNorm handling gives.
@pytest.mark.parametrize("batchnorm", ["frozen", "train"])
def test_finetune_on_cached_prefix_takes_the_full_models_step(
    data: Path, tmp_path: Path, batchnorm: str, request: pytest.FixtureRequest
) -> None:
    """Fine-tuning conv5 (MobileNet's stride-32 stage, conv_dw_12 on) on the cached map before
    it: same probabilities, and one training step moves every trainable variable (that stage,
    its BatchNorm statistics, the head) as the full model's step does."""
    import keras

    from busi.model.features import FeatureCache
    from busi.model.network import build_model, set_trainable
    from busi.train.steps import make_train_step

    rtol = 1e-4
    if batchnorm == "train":
        request.getfixturevalue("float64")
        rtol = 1e-6
    cfg = _cfg(f"model.batchnorm={batchnorm}", "model.dropout=0")
    train, val = _pipelines(data, cfg)
    keras.utils.set_random_seed(0)
    a, b = _build(cfg), build_model(cfg.model, cfg.data.image_size, cfg.data.classes)
    b.model.set_weights(a.model.get_weights())
    for built in (a, b):
        set_trainable(built, "conv5", batchnorm)
    cache = FeatureCache(CacheSettings.of(cfg), b, "conv5", train, val)
    cache.build()
    # conv5 is MobileNet's stride-32 stage (conv_dw_12 on): the cache holds the stride-16 map before it
    assert cache.train_features[0].shape == (9, 2, 2, 128) and cache.layer == "conv_pw_11_relu"
    assert cache.feature_shape == cache_feature_shape("conv5", 32, cfg.model)  # the estimate's sizes are the run's
    x = np.concatenate([batch[0].numpy() for batch in val.eval_dataset(9)])
    full = a.model(x, training=False).numpy()
    assert np.abs(full - 1 / 3).max() > 0.05  # not the uniform answer of features that vanished
    np.testing.assert_allclose(cache.head(cache.val_features, training=False).numpy(), full,
                               rtol=rtol, atol=1e-2 * rtol)

    y = np.asarray(val.data.labels, np.int32)
    w = np.ones(9, np.float32)
    before = [v.numpy() for v in a.model.weights]
    losses = []
    for built, forward, inputs in ((a, lambda x, training: a.model(x, training=training), x),
                                   (b, cache.head, cache.val_features)):
        # Plain SGD, so each weight moves by lr x its gradient (Adam's first step is ~lr x sign(g),
        # which turns float noise in near-zero gradients into full-size differences).
        optimizer = keras.optimizers.SGD(learning_rate=1.0)
        optimizer.build(built.model.trainable_variables)
        loss, _ = make_train_step(built.model, optimizer, forward)(inputs, y, w)
        losses.append(float(loss))
    assert losses[0] == pytest.approx(losses[1], rel=min(rtol, 1e-5))
    deltas = [(va.path, va.numpy() - v0, vb.numpy() - v0)
              for va, vb, v0 in zip(a.model.weights, b.model.weights, before)]
    # One tolerance for the whole step: a conv bias before a training-mode BatchNorm has a zero
    # gradient in exact arithmetic, so its own "update" is float noise on both sides.
    scale = max(float(np.abs(d).max()) for _, d, _ in deltas)
    changed = set()
    for path, delta_a, delta_b in deltas:
        np.testing.assert_allclose(delta_b, delta_a, rtol=rtol, atol=0.1 * rtol * scale, err_msg=path)
        if np.abs(delta_a).max() > 1e-4 * scale:
            changed.add(path.split("/")[-2])
    layers = a.backbone.layers
    first = a.first_trainable("conv5")
    top = {l.name: l for l in layers[first:]}  # conv_pad_12 ... conv_pw_13_relu
    assert "probs" in changed and changed & set(top)
    assert not changed & {l.name for l in layers[:first]}, changed  # the cached (frozen) prefix never moves
    if batchnorm == "train":  # the top stage's BatchNorm statistics moved, the same on both sides
        assert any(isinstance(top[n], keras.layers.BatchNormalization) for n in changed & set(top))


def test_cache_over_the_memory_limit_falls_back_to_uncached(data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from busi.model.features import feature_cache_for
    from busi.model.network import build_model

    # 18 images (9 train + 9 val): pooled 256-d float32 is 18 KiB, the map before conv5 (2x2x128) 36 KiB.
    cfg = _cfg(f"train.feature_cache_max_gb={25 / 2**20}")
    train, val = _pipelines(data, cfg)
    built = build_model(cfg.model, cfg.data.image_size, cfg.data.classes)
    assert feature_cache_for(CacheSettings.of(cfg), built, "none", train, val) is not None
    with caplog.at_level("WARNING", logger="busi"):
        assert feature_cache_for(CacheSettings.of(cfg), built, "conv5", train, val) is None
    assert "train.feature_cache_max_gb" in caplog.text and "conv5" in caplog.text
    assert feature_cache_for(CacheSettings.of(cfg), built, "all", train, val) is None  # nothing frozen
    assert feature_cache_for(CacheSettings.of(_cfg("train.feature_cache=none")), built, "conv5", train, val) is None


@pytest.mark.parametrize("size", [32, 50])
def test_cache_sizes_without_a_model_match_the_model(size: int) -> None:
    """The walltime estimate sizes the cache from strides (no model built); the run from the
    built model: both are ``cache_feature_shape``, checked here against ResNet50 itself (every
    backbone: tests/test_backbones.py)."""
    from busi.model.network import build_model

    built = build_model(ModelConfig(weights="none"), size, ("a", "b"))
    for unfreeze in ("top", "top2", "conv5", "conv4"):
        assert tuple(built.top_input(unfreeze).shape[1:]) == cache_feature_shape(unfreeze, size), unfreeze
    assert built.top_input("conv5").name == built.top_input("top").name  # conv5 is top by its ResNet50 name
    assert cache_feature_shape("none", size) == (int(built.backbone.output.shape[-1]),)



# OpenVINO fills the cache (train.engine: openvino). Tolerances, measured at 32 px on a random
# network: ResNet50's float32 conv4 outputs on OpenVINO differ from TensorFlow's by up to ~4e-5
# on values up to ~45 (1e-6 relative; oneDNN and OpenVINO order their sums differently), the
# pooled vectors by less; MobileNet 0.25's (``_build``: the float32 cases) by up to 8e-7 of the
# largest value, both the map before conv5 and the pooled vectors. A first training step is a
# smooth function of those values: its loss agrees to 1e-4 relative (3e-7 measured on MobileNet).
# The bfloat16 case: the cache holds bfloat16 (8 mantissa bits: 4e-3 relative per value), filled
# by a float32 twin of the mixed-precision network (OpenVINO's converter cannot read bfloat16
# constants), computing in float32 on a CPU without bf16 or bfloat16 on one with.
@pytest.mark.integration  # converting for OpenVINO
@pytest.mark.parametrize("unfreeze", ["none", "conv5"])
def test_openvino_filled_cache_trains_to_the_same_first_step_loss(data: Path, tmp_path: Path, unfreeze: str) -> None:
    pytest.importorskip("openvino")
    import keras

    from busi.model.features import FeatureCache
    from busi.model.network import set_trainable
    from busi.train.steps import make_train_step

    caches, losses = {}, {}
    for engine in ("tensorflow", "openvino"):
        cfg = _cfg("model.batchnorm=frozen", "model.dropout=0", f"train.engine={engine}")
        train, val = _pipelines(data, cfg)
        keras.utils.set_random_seed(0)
        built = _build(cfg)
        set_trainable(built, "none" if unfreeze == "none" else unfreeze, "frozen")
        cache = FeatureCache(CacheSettings.of(cfg), built, unfreeze, train, val)
        info = cache.start_engine()
        assert info.name == engine and info.precision == "float32"
        assert (cache.engine is not None) == (engine == "openvino")
        cache.build()
        caches[engine] = cache
        optimizer = keras.optimizers.SGD(learning_rate=0.1)
        optimizer.build(built.model.trainable_variables)
        x, y, w = next(iter(cache.train_dataset(4, 0, 1, np.ones(3, np.float32))))
        losses[engine] = float(make_train_step(built.model, optimizer, cache.head)(x, y, w)[0])
    tf_cache, ov_cache = caches["tensorflow"], caches["openvino"]
    assert ov_cache.train_features[0].dtype == tf_cache.train_features[0].dtype == np.float32
    assert ov_cache.train_features[0].shape == tf_cache.train_features[0].shape
    scale = float(np.abs(tf_cache.train_features[0]).max())
    np.testing.assert_allclose(ov_cache.train_features[0], tf_cache.train_features[0], rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(ov_cache.val_features, tf_cache.val_features, rtol=0, atol=1e-5 * scale)
    assert losses["openvino"] == pytest.approx(losses["tensorflow"], rel=1e-4)


@pytest.mark.integration
def test_openvino_fill_under_mixed_bfloat16_holds_bfloat16(data: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    import keras

    from busi.model.features import FeatureCache
    from busi.model.network import build_model, set_trainable

    out = {}
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        # ResNet50: through MobileNet's 27 BatchNorm layers (``_build``) bfloat16's rounding grew
        # past the bound below (2.4% of the largest value, measured); ResNet50's stays inside.
        # One network, built once, fills both caches (the fills leave its weights as they are).
        sets = ("model.batchnorm=frozen", "train.precision=mixed_bfloat16")
        cfg = _cfg(*sets, small=False)
        keras.utils.set_random_seed(0)
        built = build_model(cfg.model, cfg.data.image_size, cfg.data.classes)
        set_trainable(built, "conv5", "frozen")
        for engine in ("tensorflow", "openvino"):
            cfg = _cfg(*sets, f"train.engine={engine}", small=False)
            train, val = _pipelines(data, cfg)
            cache = FeatureCache(CacheSettings.of(cfg), built, "conv5", train, val)
            cache.start_engine()
            cache.build()
            out[engine] = cache.train_features[0]
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert out["openvino"].dtype == out["tensorflow"].dtype and out["openvino"].dtype.itemsize == 2
    a, b = out["tensorflow"].astype(np.float32), out["openvino"].astype(np.float32)
    # bfloat16 rounding on both sides (TensorFlow computes each layer in bfloat16): 2% of the
    # largest value bounds it; a wrong prefix (another layer, or the float32 twin without the
    # trained weights) differs by the values' own size.
    np.testing.assert_allclose(b, a, rtol=0, atol=0.02 * float(np.abs(a).max()))


def test_auto_engine_keeps_tensorflow_for_a_fill_too_small_to_repay_converting(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from busi.model.engines import worth_converting
    from busi.model.features import FeatureCache
    from busi.model.network import build_model

    cfg = _cfg()  # train.engine: auto
    train, val = _pipelines(data, cfg)
    cache = FeatureCache(CacheSettings.of(cfg), build_model(cfg.model, cfg.data.image_size, cfg.data.classes),
                         "none", train, val)
    assert cache.work_images() == pytest.approx(18 * (32 / 224) ** 2)
    handler = logging.Handler()
    seen: list[str] = []
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("busi")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        assert cache.start_engine().name == "tensorflow" and cache.engine is None
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert any("converting for OpenVINO would cost more than it saves" in m for m in seen), seen
    # BUSI at 224 px: ~660 train + val images through the whole backbone repay it; at 64 px not
    assert worth_converting(660, "float32") and worth_converting(660 * 0.8, "auto")
    assert not worth_converting(660 * (64 / 224) ** 2, "auto")
