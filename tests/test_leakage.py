"""busi.evaluate.leakage: evaluation images that are training images again (exact, near) or other
images of a training patient; data/hashes.csv written and read back (and a file from before
patients)."""

from __future__ import annotations

from pathlib import Path

import pytest

from busi.errors import DataError
from busi.evaluate.leakage import Fingerprint, count_kinds, find_overlap, hashes_text, read_hashes

TRAINING = [
    Fingerprint("benign/a.png", "train", "aa" * 32, 0x0F0F_0F0F_0F0F_0F0F, "P01"),
    Fingerprint("benign/b.png", "val", "bb" * 32, 0x7000_0000_0000_0000, "P02"),
    Fingerprint("normal/c.png", "train", "cc" * 32, 0x0000_0000_0000_FFFF, ""),
]


def test_exact_near_and_patient_overlap() -> None:
    paths = ["x/copy.png", "x/near.png", "x/p01-other.png", "x/p09.png", "x/none.png"]
    sha = ["aa" * 32, "11" * 32, "22" * 32, "33" * 32, "44" * 32]
    phash = [0, 0x0000_0000_0000_FFFE, 0x5555_0000_5555_0000, 0x5555_0000_5555_0000, 0x2AAA_AAAA_AAAA_AAAA]
    found = find_overlap(paths, sha, phash, TRAINING, threshold=2, patients=[None, None, "P01", "P09", None])
    assert [(o.path, o.training_path, o.kind, o.distance) for o in found] == [
        ("x/copy.png", "benign/a.png", "exact", 0),
        ("x/near.png", "normal/c.png", "near", 1),
        ("x/p01-other.png", "benign/a.png", "patient", None),
    ]
    assert count_kinds(found) == {"exact": 1, "near": 1, "patient": 1} and count_kinds([])["patient"] == 0
    # without patients of the evaluation images, only the images are compared
    assert [o.kind for o in find_overlap(paths, sha, phash, TRAINING, 2)] == ["exact", "near"]
    # a training image without a patient ID never matches an evaluation image without one
    assert find_overlap(["y.png"], ["55" * 32], [0x2AAA_AAAA_AAAA_AAAA], TRAINING, 2, patients=[""]) == []


def test_hashes_round_trip_and_a_file_from_before_patients(tmp_path: Path) -> None:
    f = tmp_path / "hashes.csv"
    f.write_text(hashes_text(TRAINING), encoding="utf-8")
    assert read_hashes(f) == TRAINING
    legacy = "path,split,sha256,phash\nbenign/a.png,train," + "aa" * 32 + ",0f0f0f0f0f0f0f0f\n"
    f.write_text(legacy, encoding="utf-8")
    assert read_hashes(f) == [Fingerprint("benign/a.png", "train", "aa" * 32, 0x0F0F_0F0F_0F0F_0F0F, "")]
    f.write_text("path,split\nx,train\n", encoding="utf-8")
    with pytest.raises(DataError, match="cannot read the training hashes"):
        read_hashes(f)
