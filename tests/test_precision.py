"""busi.evaluate.precision (the accuracy contract of a reduced precision) and
busi.model.engines.choose_precision (what ``--precision auto`` takes, and why), with the CPU's
feature flags injected: both answers of every capability are tested, whatever this CPU has."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from busi.evaluate.bootstrap import bootstrap_intervals
from busi.evaluate.precision import AGREEMENT, not_measured, precision_contract
from busi.model.engines import choose_precision
from busi.model.quantize import INT8_DIR, calibration_sample
from busi.runtime.cpu import BF16_FLAGS, INT8_FLAGS

CLASSES = ("normal", "benign", "malignant")


def _split(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities of a decent classifier whose margins are spread (not saturated)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), y] += 1.5
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


def test_a_precision_that_changes_nothing_passes() -> None:
    y, p = _split()
    ci = bootstrap_intervals(y, p, CLASSES, seed=0)
    r = precision_contract(y, p, p + 1e-7, ci, CLASSES)
    assert r["passed"] and r["measured"] and r["label_agreement"] == 1.0 and r["images"] == len(y)
    assert all(r["within_ci95"].values())
    assert r["metrics"]["accuracy"] == pytest.approx(r["float32"]["accuracy"])


def test_labels_that_disagree_on_more_than_one_percent_fail() -> None:
    y, p = _split()
    ci = bootstrap_intervals(y, p, CLASSES, seed=0)
    q = p.copy()
    flip = np.argsort(p.max(axis=1))[: int(len(y) * (1 - AGREEMENT)) + 2]  # the least confident images
    q[flip] = np.roll(q[flip], 1, axis=1)
    r = precision_contract(y, p, q, ci, CLASSES)
    assert not r["passed"] and r["label_agreement"] < AGREEMENT
    assert "labels agree" in r["reason"]


def test_a_metric_outside_float32s_interval_fails_even_when_labels_agree() -> None:
    """ROC AUC ranks probabilities: scrambling them within each image's own top class keeps
    every label and moves the AUC out of float32's interval."""
    y, p = _split(400, seed=3)
    ci = bootstrap_intervals(y, p, CLASSES, seed=0)
    rng = np.random.default_rng(1)
    q = np.full_like(p, 0.1)
    q[np.arange(len(y)), p.argmax(axis=1)] = 0.8 + 0.1 * rng.random(len(y))  # labels kept, ranking lost
    r = precision_contract(y, p, q, ci, CLASSES)
    assert r["label_agreement"] == 1.0
    assert not r["passed"] and r["within_ci95"]["roc_auc_macro"] is False
    assert "roc_auc_macro" in r["reason"]


def test_no_images_is_not_measured() -> None:
    r = precision_contract([], np.zeros((0, 3)), np.zeros((0, 3)), {}, CLASSES)
    assert r == not_measured("no evaluated images") and not r["passed"]


def _model_dir(tmp_path: Path, int8: dict | None, bf16: dict | None, int8_model: bool = True) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    if int8_model:
        (d / INT8_DIR).mkdir()
        (d / INT8_DIR / "model.xml").write_text("<net/>")
    contracts = {k: v for k, v in (("int8", int8), ("bfloat16", bf16)) if v is not None}
    if contracts:
        (d / "precisions.json").write_text(json.dumps(contracts))
    return d


PASSED = {"measured": True, "passed": True, "reason": "labels and metrics within the contract"}
MISSED = {"measured": True, "passed": False, "reason": "labels agree with float32 on 97.0% of the images"}
VNNI = frozenset({"avx512f", "avx512_vnni"})
AMX = frozenset({"avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"})
PLAIN = frozenset({"avx2", "fma"})


def test_auto_takes_int8_only_where_it_passed_and_the_cpu_has_vnni(tmp_path: Path) -> None:
    d = _model_dir(tmp_path, PASSED, PASSED)
    assert choose_precision("auto", d, VNNI)[0] == "int8"
    assert choose_precision("auto", d, AMX)[0] == "int8"
    precision, why = choose_precision("auto", d, PLAIN)  # no VNNI/AMX: the next best, saying why
    assert precision == "float32" and "no VNNI or AMX-INT8" in why and "bfloat16" in why
    assert choose_precision("auto", d, frozenset({"avx512_bf16"}))[0] == "bfloat16"
    assert INT8_FLAGS & AMX and BF16_FLAGS & AMX


def test_auto_keeps_a_failed_int8_out_and_says_why(tmp_path: Path) -> None:
    d = _model_dir(tmp_path, MISSED, PASSED)
    precision, why = choose_precision("auto", d, AMX)
    assert precision == "bfloat16" and "missed its accuracy contract" in why and "97.0%" in why
    assert choose_precision("auto", d, VNNI)[0] == "float32"


def test_auto_keeps_a_failed_bfloat16_out(tmp_path: Path) -> None:
    d = _model_dir(tmp_path, MISSED, MISSED)
    precision, why = choose_precision("auto", d, AMX)
    assert precision == "float32" and "bfloat16 missed" in why


def test_a_model_without_contracts_keeps_the_runtimes_choice(tmp_path: Path) -> None:
    """A model trained before contracts were measured: no INT8, bfloat16 where the CPU has it."""
    d = _model_dir(tmp_path, None, None, int8_model=False)
    assert choose_precision("auto", d, AMX)[0] == "bfloat16"
    precision, why = choose_precision("auto", d, PLAIN)
    assert precision == "float32" and "no INT8 model" in why
    assert choose_precision("int8", d, PLAIN) == ("int8", "asked for")  # asked for: the engine decides


def test_the_calibration_sample_is_seeded_ordered_and_bounded() -> None:
    paths = [f"img-{i:04d}.png" for i in range(1000)]
    a, b = calibration_sample(paths, 7, 300), calibration_sample(paths, 7, 300)
    assert a == b and len(a) == 300 and a == sorted(a) and set(a) <= set(paths)
    assert calibration_sample(paths, 8, 300) != a
    assert calibration_sample(paths[:10], 7, 300) == paths[:10]


def _with_source(d: Path, model_bytes: bytes, recorded: bytes) -> Path:
    """``d``'s model.keras holds ``model_bytes``; its INT8 folder records the hash of ``recorded``."""
    import hashlib
    import zipfile

    with zipfile.ZipFile(d / "model.keras", "w") as z:  # a .keras file is a zip archive
        z.writestr("config.json", model_bytes)
    recorded_zip = d / "recorded.keras"
    with zipfile.ZipFile(recorded_zip, "w") as z:
        z.writestr("config.json", recorded)
    sha = hashlib.sha256(recorded_zip.read_bytes()).hexdigest()
    (d / INT8_DIR / "source.json").write_text(json.dumps({"model_keras_sha256": sha}))
    return d / "model.keras"


def test_an_int8_model_of_another_model_keras_is_never_run(tmp_path: Path) -> None:
    """INT8 is taken only where its source.json records this model.keras' hash: under auto the
    next best precision (on both CPU answers), asked for a DataError naming the folder and the
    command; a model.keras that is no archive at all is named itself."""
    from busi.errors import DataError
    from busi.files.digest import file_sha256
    from busi.model.engines import resolve_precision

    d = _model_dir(tmp_path, PASSED, PASSED)
    model = _with_source(d, b"same", b"same")
    assert resolve_precision("auto", model, lambda: file_sha256(model), VNNI)[0] == "int8"  # its own: taken
    assert resolve_precision("int8", model, lambda: file_sha256(model), PLAIN) == ("int8", "asked for")

    model = _with_source(d, b"retrained", b"same")  # model.keras replaced after the INT8 model was made
    for flags, expected in ((VNNI, "float32"), (AMX, "bfloat16")):
        precision, why = resolve_precision("auto", model, lambda: file_sha256(model), flags)
        assert precision == expected and "was not quantized from this model.keras" in why, flags
    assert resolve_precision("auto", model, lambda: file_sha256(model), PLAIN)[0] == "float32"  # never INT8 here
    with pytest.raises(DataError) as e:
        resolve_precision("int8", model, lambda: file_sha256(model), VNNI)
    assert e.value.path == str(d / INT8_DIR) and "busi-job export --model" in e.value.reason
    assert "--precision int8" in e.value.reason

    model.write_bytes(model.read_bytes()[:40])  # cut short: not an archive
    with pytest.raises(DataError) as e:
        resolve_precision("int8", model, lambda: file_sha256(model), VNNI)
    assert e.value.path == str(model) and "not a readable Keras model" in e.value.reason
    asked: list[bool] = []
    (tmp_path / "no-int8").mkdir()
    d2 = _model_dir(tmp_path / "no-int8", None, None, int8_model=False)
    assert resolve_precision("auto", d2 / "model.keras", lambda: asked.append(True) or "", VNNI)[0] == "float32"
    assert not asked  # no INT8 model: the file is not hashed
