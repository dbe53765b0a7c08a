"""The tf.data pipeline: class weights, steps per epoch, and one epoch order for images and
cached features (deterministic, sharded, resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from busi.config.schema import AugmentConfig
from busi.data.pipeline import balanced_class_weights

N = 11  # odd, so two shards drop a ragged tail
NO_AUGMENT = AugmentConfig(flip=False, rotation=0.0, zoom=0.0, brightness=0.0, contrast=0.0)


@pytest.fixture(scope="module")
def pipeline(synth_data: Any) -> Any:
    from busi.data.pipeline import Pipeline, SplitData

    root = synth_data(4, 32, 4)
    paths = sorted(str(p) for p in root.rglob("*.png") if "_mask" not in p.name)[:N]
    labels = [("normal", "benign", "malignant").index(Path(p).parent.name) for p in paths]
    return Pipeline(SplitData(tuple(paths), tuple(labels)), 32, "stretch")


def _order(pipeline: Any, seed: int, epoch: int, shard: tuple[int, int] = (0, 1), skip: int = 0) -> list[int]:
    """Which samples an epoch of images visits, in order (each synthetic image is unique)."""
    index = {bytes(x.numpy().astype(np.uint8)): i for i, (x, _) in enumerate(pipeline.eval_dataset(1).dataset.unbatch())}
    order = []
    for x, _, _ in pipeline.train_dataset(3, seed, epoch, NO_AUGMENT, np.ones(3, np.float32), shard, skip):
        order.extend(index[bytes(im.astype(np.uint8))] for im in x.numpy())
    return order


def _feature_order(pipeline: Any, seed: int, epoch: int, shard: tuple[int, int] = (0, 1), skip: int = 0) -> list[int]:
    """Which samples an epoch on cached features visits: FeatureCache.train_dataset over
    features that are each sample's own index."""
    from busi.model.features import FeatureCache

    cache = FeatureCache.__new__(FeatureCache)  # no model needed: only the epoch order is read
    cache.train, cache.variants = pipeline, 1
    cache.train_features = [np.arange(N, dtype=np.float32)[:, None]]
    batches = cache.train_dataset(3, seed, epoch, np.ones(3, np.float32), shard=shard, skip_batches=skip)
    return [int(f[0]) for feats, _, _ in batches for f in feats]


def test_images_and_cached_features_take_one_epoch_order(pipeline: Any) -> None:
    for seed, epoch in ((0, 1), (0, 2), (7, 1)):
        images = _order(pipeline, seed, epoch)
        assert sorted(images) == list(range(N))
        assert _feature_order(pipeline, seed, epoch) == images
    assert _order(pipeline, 0, 1) != _order(pipeline, 0, 2)  # a new order every epoch
    assert _order(pipeline, 0, 1) == _order(pipeline, 0, 1)  # and the same one on a rerun


def test_shards_split_one_order_and_resume_skips_batches(pipeline: Any) -> None:
    whole = _order(pipeline, 3, 5)
    shards = [_order(pipeline, 3, 5, shard=(r, 2)) for r in range(2)]
    # ranks take alternate samples of the epoch's order, the ragged tail (1 of 11) dropped
    assert shards == [whole[0:10:2], whole[1:10:2]]
    assert [_feature_order(pipeline, 3, 5, shard=(r, 2)) for r in range(2)] == shards
    # a resumed epoch skips the batches done (of 3 samples) and continues in the same order
    assert _order(pipeline, 3, 5, skip=2) == whole[6:] == _feature_order(pipeline, 3, 5, skip=2)
    assert pipeline.steps(3) == 4 and pipeline.steps(3, shards=2) == 2  # 11 -> 4 batches; 5 per rank -> 2


def test_balanced_class_weights() -> None:
    w = balanced_class_weights([0, 1, 1, 1, 2, 2], 3)
    np.testing.assert_allclose(w, [2.0, 2 / 3, 1.0])
    assert float(np.dot(np.bincount([0, 1, 1, 1, 2, 2]), w)) == pytest.approx(6.0)  # mean weight 1
    np.testing.assert_allclose(balanced_class_weights([0, 0, 2], 3), [0.75, 0.0, 1.5])  # absent class: 0


def test_files_whose_names_are_not_utf8_or_hold_line_breaks_are_read(tmp_path: Path) -> None:
    """A share's names as the scan reports them (os.fsdecode: surrogates for non-UTF-8 bytes)
    must reach the decoder intact through tf.data, which holds bytes."""
    import os

    from PIL import Image

    from busi.data.pipeline import Pipeline, SplitData

    names = [b"scan\xff.png", b"a\nb.png", "c\u2028d.png".encode()]
    paths = []
    for i, n in enumerate(names):
        raw = os.path.join(os.fsencode(tmp_path), n)
        Image.fromarray(np.full((20, 20), 40 * (i + 1), np.uint8)).save(raw, format="PNG")
        paths.append(os.fsdecode(raw))
    p = Pipeline(SplitData(tuple(paths), (0, 1, 2)), 32, "stretch", cache=False)
    means = [float(x.numpy().mean()) for x, _ in p.eval_dataset(1).dataset.unbatch()]
    assert means == pytest.approx([40.0, 80.0, 120.0], abs=0.5)


def test_a_file_that_stops_decoding_is_a_data_error_naming_it_never_a_tensorflow_error(tmp_path: Path) -> None:
    """A file cut short (or emptied) after the scan: iterating any dataset of the pipeline ends
    in busi's DataError naming it (exit 3), raised in Python, not TensorFlow's UnknownError from
    inside the pipeline; and no iteration hands out the black stand-in as if it were the image."""
    import tensorflow as tf
    from PIL import Image

    from busi.data.pipeline import Pipeline, SplitData
    from busi.errors import DataError

    paths = []
    for i in range(6):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40), np.uint8)).save(p)
        paths.append(str(p))
    Path(paths[3]).write_bytes(Path(paths[3]).read_bytes()[:60])
    Path(paths[5]).write_bytes(b"")
    for make in (lambda p: p.eval_dataset(2), lambda p: p.variant_dataset(2, 0, 0, NO_AUGMENT),
                 lambda p: p.train_dataset(2, 0, 1, NO_AUGMENT, np.ones(3, np.float32))):
        pipe = Pipeline(SplitData(tuple(paths), (0, 1, 2, 0, 1, 2)), 32, "stretch")
        seen = 0
        with pytest.raises(DataError) as e:
            for _ in make(pipe):
                seen += 1
        assert not isinstance(e.value.__context__, tf.errors.OpError)
        assert e.value.path in (paths[3], paths[5]) and "changed or was damaged while the job ran" in e.value.reason
        assert seen < 3  # the batch holding a failed file is never handed out
        assert {p for p, _ in pipe.failures.failed} <= {paths[3], paths[5]}


@pytest.mark.integration
@pytest.mark.parametrize("damage", ["cut", "empty"])
def test_training_on_a_file_damaged_after_the_scan_exits_3_naming_it(damage: str, synth_data: Any,
                                                                     tmp_path: Path) -> None:
    """The whole job, as a batch system runs it: an image cut short or emptied between the scan
    and the first epoch (tests/damage_after_scan.py). 64 px and batches of 8, where main hung at
    exit until killed (the tf.data iterator's destructor at interpreter shutdown): the process
    ends by itself (the timeout fails the test), exit 3, the file named, no traceback, and the
    run directory says the run failed. The data, not the network, is under test: MobileNet 0.25
    (``SMALL``) builds in a fraction of ResNet50's time."""
    import json
    import shutil
    import subprocess
    import sys

    from conftest import REPO, SMALL

    data = tmp_path / "ds"
    shutil.copytree(synth_data(8, 64, 0), data)
    victim = data / "benign" / "benign (3).png"
    out = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, str(REPO / "tests" / "damage_after_scan.py"), str(victim), damage,
         "train", str(REPO / "job" / "demo.yaml"), "--set", f"data.source={data}", "--set", f"output.dir={out}",
         "--set", "train.batch_size=8", "--set", "train.finetune.epochs=1", "--set", "train.quantize=none", *SMALL],
        capture_output=True, text=True, timeout=240, cwd=REPO)
    assert r.returncode == 3, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "UnknownError" not in r.stderr, r.stderr[-3000:]
    assert f"busi-job: error: {victim}: cannot decode image" in r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and str(victim) in manifest["error"]


def test_shift_and_speckle_augment_per_seed_and_never_flip_depth() -> None:
    """``augment.shift`` moves the image (a bright square lands elsewhere, by seed), ``speckle``
    multiplies each pixel by its own noise; the same seed gives the same image; the rows never
    swap ends (depth stays down), whatever the seed."""
    import tensorflow as tf

    from busi.data.pipeline import augment_image

    x = np.zeros((32, 32, 3), np.float32)
    x[:8, 12:20] = 200.0  # near the top: near the probe
    shift = AugmentConfig(flip=False, rotation=0.0, zoom=0.0, brightness=0.0, contrast=0.0, shift=0.2)
    outs = [augment_image(tf.constant(x), tf.constant([s, 0], tf.int64), shift).numpy() for s in range(6)]
    assert len({o.tobytes() for o in outs}) > 1
    np.testing.assert_array_equal(outs[0], augment_image(tf.constant(x), tf.constant([0, 0], tf.int64), shift).numpy())
    for o in outs:
        rows = o.sum(axis=(1, 2))
        assert rows[:16].sum() > rows[16:].sum()  # still in the top half: shifted at most 0.2 of the side
    speckle = AugmentConfig(flip=True, rotation=0.0, zoom=0.0, brightness=0.0, contrast=0.0, speckle=0.2)
    flat = np.full((32, 32, 3), 100.0, np.float32)
    noisy = augment_image(tf.constant(flat), tf.constant([1, 0], tf.int64), speckle).numpy()
    assert 10 < noisy[..., 0].std() < 30 and abs(noisy.mean() - 100) < 3
    np.testing.assert_array_equal(noisy[..., 0], noisy[..., 2])  # one factor per pixel, grey stays grey
