"""The walltime model: seconds from rates, split sizes and the job's schedule; the margin."""

from __future__ import annotations

import pytest

from busi.config.load import load_config
from busi.perf.estimate import SplitCounts, estimate_seconds, with_margin
from busi.runtime.walltime import format_hms


# the phases' epochs pinned: the arithmetic below counts 10 of each, whatever job/busi.yaml says
TEN = ["data.source=x.zip", "train.head.epochs=10", "train.finetune.epochs=10"]


def test_estimate_model() -> None:
    job = load_config("job/busi.yaml", TEN)
    counts = SplitCounts(546, 117, 117, "test")
    total, parts = estimate_seconds(job, counts, train_rate=10.0, infer_rate=20.0)
    # head: one cached inference pass over train + val, 10 epochs of ~1 s on features
    assert parts["head"] == pytest.approx((546 + 117) / 20.0 + 10 * 1.0)
    # finetune conv5 on cached conv4 outputs: one pass of conv1-conv4 (88% of inference) over
    # train + val, then 10 x (the rest of a train step + the rest of val inference + checkpoint)
    epoch = 546 * (1 - 0.53) / 10.0 + 117 * (1 - 0.88) / 20.0 + 5.0
    assert parts["finetune"] == pytest.approx((546 + 117) * 0.88 / 20.0 + 10 * epoch)
    # uncached (configured so, or the cache over train.feature_cache_max_gb: 14x14x1024 float32
    # is 0.77 MiB per image, 0.5 GiB for 663 images): 10 x (train pass + val inference + checkpoint)
    uncached = 10 * (546 / 10.0 + 117 / 20.0 + 5.0)
    for sets in (["train.feature_cache=none"], ["train.feature_cache_max_gb=0.4"]):
        job = load_config("job/busi.yaml", [*TEN, *sets])
        assert estimate_seconds(job, counts, train_rate=10.0, infer_rate=20.0)[1]["finetune"] == pytest.approx(uncached)
    job = load_config("job/busi.yaml", [*TEN, "train.feature_cache_max_gb=0.6"])
    assert estimate_seconds(job, counts, train_rate=10.0, infer_rate=20.0)[1]["finetune"] < uncached
    assert parts["evaluate"] == pytest.approx(117 / 20.0)
    assert total == pytest.approx(sum(parts.values()))
    # the request: whole minutes, the compute time with room for a slower node (at least 30%
    # more) and for start-up, staging and the final evaluation (at least 10 minutes more)
    for compute in (0.0, 59.0, 3600.0, 36000.5):
        request = with_margin(compute)
        assert request % 60 == 0 and request >= 1.3 * compute and request >= compute + 600
        assert request < with_margin(compute + 600), "more compute, a longer request"
    assert format_hms(3600 * 1.3 + 600) == "01:28:00" and format_hms(100 * 3600) == "100:00:00"
