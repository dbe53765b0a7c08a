"""The benchmarks run: each script of ``benchmarks/`` once at its smallest size, in a subprocess as a
user runs it (``python benchmarks/bench_X.py ...`` from the repository root), on synthetic data
and a tiny backbone (``--backbone mobilenet --alpha 0.25``, 32 px), so that a change that breaks
one fails here. Each test checks what the script printed: the rows and columns of its table, and
that its figures are finite and of the right sign (never how fast: the machine's speed is no test).

Shared, built once for the module: the synthetic dataset (``synth_data``), ``$BUSI_BENCH_CACHE``
(the BUSI-sized folders the scripts render), and one tiny cross-validation, made by
``bench_ensemble.py``, whose folds are the trained models ``bench_engines.py`` compares and whose
finished folds ``bench_accuracy.py`` resumes instead of training again (as it resumes an
interrupted run). ``bench_horovod.py`` skips where Horovod is not built.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
from conftest import REPO


BENCH = REPO / "benchmarks"
TINY = ("--backbone", "mobilenet", "--alpha", "0.25")  # the smallest network busi builds
CV_CONFIG = "mobilenet@0.25:none"
CV_SETS = ("--set", "train.head.epochs=1", "--set", "train.finetune.epochs=1", "--set", "train.quantize=int8",
           "--set", "output.saved_model=false")  # no prediction here reads a SavedModel
RESAMPLES = ("--resamples", "200")  # of the scripts' own bootstrap intervals (busi's 2000 take seconds each)
NUMBER = r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?"


@pytest.fixture(scope="module")
def bench_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The scripts' environment: their folder cache in a fresh folder of this module's, quiet TensorFlow."""
    env = {k: v for k, v in os.environ.items() if k != "BUSI_FAIL_AT_STEP"}
    env["BUSI_BENCH_CACHE"] = str(tmp_path_factory.mktemp("bench-cache"))
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


@pytest.fixture(scope="module")
def run_bench(bench_env: dict[str, str]) -> Callable[..., str]:
    """``run_bench("bench_X.py", *args)``: the script's stdout, after asserting that it exited 0
    and printed the command that made its figures."""

    def run(script: str, *args: str, timeout: float = 600) -> str:
        assert (BENCH / script).is_file(), script
        proc = subprocess.run([sys.executable, f"benchmarks/{script}", *args], capture_output=True, text=True,
                              cwd=REPO, env=bench_env, timeout=timeout)
        assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        assert "Traceback" not in proc.stderr, proc.stderr[-5000:]
        if script != "bench_horovod.py":  # the others say how their figures were made
            assert f"# command: python benchmarks/{script}" in proc.stdout, proc.stdout[:2000]
        return proc.stdout

    return run


@pytest.fixture(scope="module")
def data(synth_data: Callable[..., Path]) -> Path:
    """24 synthetic images (8 per class) at 32 px, BUSI's layout."""
    return synth_data(8, 32, 0)


def floats(text: str) -> list[float]:
    return [float(v) for v in re.findall(NUMBER, text)]


def positive(*values: float) -> None:
    for v in values:
        assert math.isfinite(v) and v > 0, values


def finite_at_least_zero(*values: float) -> None:
    for v in values:
        assert math.isfinite(v) and v >= 0, values


def line(stdout: str, pattern: str) -> re.Match[str]:
    """The first line of ``stdout`` that ``pattern`` matches from its start (the test fails where none does)."""
    for ln in stdout.splitlines():
        m = re.match(pattern, ln)
        if m:
            return m
    raise AssertionError(f"no line matches {pattern!r} in:\n{stdout[-4000:]}")


# ------------------------------------------------------------------ scripts that build their own model


def test_bench_checkpoint(run_bench: Callable[..., str], tmp_path: Path) -> None:
    out = run_bench("bench_checkpoint.py", "--size", "32", "--repeats", "1", "--unfreeze", "conv5,all",
                    "--dir", str(tmp_path), *TINY, "--no-wait")
    rows = re.findall(rf"^unfreeze (\S+)\s*:\s+([\d,]+) trainable, (\d+) optimizer variables, checkpoint\s+({NUMBER}) "
                      rf"MiB: save median ({NUMBER}) s, max ({NUMBER}) s \[(.*)\]; load ({NUMBER}) s$", out, re.M)
    assert [r[0] for r in rows] == ["conv5", "all"], out
    trainable = {r[0]: int(r[1].replace(",", "")) for r in rows}
    assert 0 < trainable["conv5"] < trainable["all"]
    for _, _, variables, mib, median, worst, runs, load in rows:
        positive(int(variables), float(mib))
        finite_at_least_zero(float(median), float(worst), float(load), *floats(runs))
        assert len(floats(runs)) == 1 and float(median) <= float(worst)
    assert "32 px mobilenet" in out
    assert list(tmp_path.iterdir()) == [], "the benchmark left its run directory behind"


def test_bench_dicom(run_bench: Callable[..., str]) -> None:
    out = run_bench("bench_dicom.py", "--images", "6", "--size", "32", "--batch-size", "4", "--repeats", "1",
                    "--decode-files", "3", *TINY, "--no-wait")
    assert line(out, r"# 6 files per folder, 32 px mobilenet, batch 4, \d+ cores, engine ")
    rows = {m[0]: [float(v) for v in m[1:]] for m in
            re.findall(rf"^\| (\S+) \| ({NUMBER}) \| ({NUMBER}) \| ({NUMBER}) \| ({NUMBER}) \|$", out, re.M)}
    assert list(rows) == ["png", "dicom-rgb", "dicom-jpeg"], out
    for values in rows.values():
        positive(*values)
    assert rows["png"][1] == 1.0 and rows["png"][3] == 1.0  # the ratios are to PNG


def test_bench_pipeline(run_bench: Callable[..., str]) -> None:
    out = run_bench("bench_pipeline.py", "--images", "8", "--size", "32", "--batch-size", "4", "--epochs", "1",
                    "--precision", "float32", *TINY, "--no-wait")
    m = line(out, rf"float32\s+(\d+)/(\d+)\s+({NUMBER}) img/s\s+({NUMBER}) img/s\s+({NUMBER}) img/s\s+({NUMBER})%$")
    positive(*(float(v) for v in m.groups()[:5]))
    assert math.isfinite(float(m[6]))  # the pipeline's cost: negative where it ran faster than in memory
    runs = line(out, r"#   runs: cached \[(.*)\], in-memory \[(.*)\]; 8 images = 2 steps/epoch; tracing")
    assert len(floats(runs[1])) == 1 and len(floats(runs[2])) == 2  # the in-memory runs surround the cached epoch
    positive(*floats(runs[1]), *floats(runs[2]))


def test_bench_predict(run_bench: Callable[..., str]) -> None:
    """TensorFlow's row and OpenVINO INT8's (the model quantized here, predicted without the Keras
    model: the path that once crashed), then the peak RSS of two ``busi-job predict`` processes."""
    out = run_bench("bench_predict.py", "--images", "8", "--size", "32", "--batch-size", "4", "--batches", "1",
                    "--repeats", "1", "--notebook", "2", "--precision", "float32", "--engines", "openvino:int8",
                    "--rss-files", "8,16", "--rss-size", "32", *TINY, "--no-wait")
    rows = re.findall(rf"^(tensorflow float32|openvino int8)\s+(\d+)/(\d+)\s+({NUMBER}) img/s\s+({NUMBER}) img/s\s+"
                      rf"({NUMBER}) img/s\s+({NUMBER})\s+({NUMBER}) img/s\s+({NUMBER})x$", out, re.M)
    assert [r[0] for r in rows] == ["tensorflow float32", "openvino int8"], out
    for r in rows:
        positive(*(float(v) for v in r[1:]))
    limits = re.findall(rf"^#   two-core limit: decode ({NUMBER}) ms .* limit ({NUMBER}) img/s; end to end ({NUMBER})% of it",
                        out, re.M)
    assert len(limits) == 2
    positive(*(float(v) for lim in limits for v in lim))
    engines = re.findall(r"^#   (.+): 8 files \(8 classified, 0 errors\)", out, re.M)
    assert len(engines) == 2 and engines[0].startswith("tensorflow") and engines[1].endswith("int8"), out
    rss = re.findall(rf"^\s+(\d+) files: peak RSS\s+({NUMBER}) MiB, wall\s+({NUMBER}) s", out, re.M)
    assert [int(r[0]) for r in rss] == [8, 16], out
    positive(*(float(v) for r in rss for v in r[1:]))
    positive(float(line(out, rf"# RSS ratio 16 / 8 files: ({NUMBER})")[1]))


def test_bench_threads(run_bench: Callable[..., str]) -> None:
    if shutil.which("taskset") is None:
        pytest.skip("taskset (util-linux) is not installed: bench_threads.py pins its runs to one core with it")
    out = run_bench("bench_threads.py", "--size", "32", "--train-steps", "1", "--infer-steps", "1", "--repeats", "1",
                    "--rounds", "1", "--modes", "auto,1x1,defaults", *TINY, "--no-wait")
    rows = {m[0]: m[1:] for m in re.findall(
        rf"^(busi auto \(cores: auto\)|manual intra 1 inter 1|TensorFlow defaults)\s+(\d+/\d+)\s+({NUMBER})\s+({NUMBER})\s+\[",
        out, re.M)}
    assert list(rows) == ["busi auto (cores: auto)", "manual intra 1 inter 1", "TensorFlow defaults"], out
    assert rows["busi auto (cores: auto)"][0] == "1/1"  # taskset -c 0: busi sees one core
    assert rows["manual intra 1 inter 1"][0] == "1/1" and rows["TensorFlow defaults"][0] == "0/0"
    positive(*(float(v) for r in rows.values() for v in r[1:]))
    positive(*(float(v) for v in line(out, rf"# busi auto vs best manual: training ({NUMBER}) \(1x1\), "
                                           rf"inference ({NUMBER}) \(1x1\)").groups()))
    positive(*(float(v) for v in line(out, rf"# TensorFlow defaults vs busi auto: training ({NUMBER}), "
                                           rf"inference ({NUMBER})").groups()))


def test_bench_startup(run_bench: Callable[..., str]) -> None:
    out = run_bench("bench_startup.py", "--images", "12", "--size", "32", "--runs", "1", *TINY, "--no-wait")
    stages = re.findall(rf"^(data:|runtime:|phase head:|feature cache:|first training step done).*? at\s+({NUMBER}) s"
                        rf"\s+\(\+\s*({NUMBER}) s\)$", out, re.M)
    assert [s[0] for s in stages] == ["data:", "runtime:", "phase head:", "feature cache:", "first training step done"], out
    times = [float(s[1]) for s in stages]
    positive(*times)
    assert times == sorted(times)  # the log lines arrived in order
    finite_at_least_zero(*(float(s[2]) for s in stages))
    for label in ("busi-job --help", "busi-job config job/busi.yaml"):
        m = line(out, rf"{re.escape(label)}\s+({NUMBER}) s\s+\[({NUMBER})\]  imports TensorFlow: (YES|no)$")
        positive(float(m[1]))
        assert m[3] == "no", f"{label} imports TensorFlow"
    positive(float(line(out, rf"python -c 'import tensorflow'\s+({NUMBER}) s")[1]))
    assert "one 32-px image, mobilenet model folder with openvino/ (process wall, median of 1, alternated)" in out
    for engine in ("openvino", "tensorflow"):
        positive(float(line(out, rf"--engine {engine}\s+({NUMBER}) s\s+\[")[1]))
    positive(float(line(out, rf"ratio tensorflow / openvino\s+({NUMBER})x")[1]))


def test_bench_endtoend(run_bench: Callable[..., str]) -> None:
    out = run_bench("bench_endtoend.py", "--recipe", "demo", "--images", "24", "--size", "32", "--head", "1",
                    "--finetune", "0", "--batch-size", "8", *TINY, "--set", "train.quantize=none",
                    "--set", "output.saved_model=false", "--no-wait")
    assert line(out, r"# data: 24 synthetic BUSI-sized PNGs in .*; 32 px, batch 8, 1 \+ 0 epochs, mobilenet \(alpha 0.25\)")
    assert line(out, r"## float32 \(busi precision float32, threads \d+/\d+")
    assert line(out, r"\s+train \(process wall\)\s+test accuracy\s+predict 24 files$")
    busi = line(out, rf"busi\s+({NUMBER}) s\s+({NUMBER})\s+({NUMBER}) s wall, ({NUMBER}) img/s$")
    notebook = line(out, rf"notebook\s+({NUMBER}) s\s+({NUMBER})\s+({NUMBER}) s loop, ({NUMBER}) img/s$")
    for m in (busi, notebook):
        positive(float(m[1]), float(m[3]), float(m[4]))
        assert 0 <= float(m[2]) <= 1  # test accuracy
    speed = line(out, rf"speedup   training end to end ({NUMBER})x; prediction ({NUMBER})x \(images/s\), ({NUMBER})x")
    positive(*(float(v) for v in speed.groups()))
    seconds = json.loads(line(out, r"#   busi seconds: (\{.*\}); test split")[1])
    positive(seconds["total"])


# ------------------------------------------------------------------ scripts that train or read trained models


@pytest.fixture(scope="module")
def ensemble(run_bench: Callable[..., str], data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """``bench_ensemble.py``'s stdout and output folder: a 2-fold cross-validation of the tiny
    network (1 + 1 epochs, each fold also quantized to INT8) on the synthetic data less its held-out test split."""
    out = tmp_path_factory.mktemp("bench-ensemble")
    stdout = run_bench("bench_ensemble.py", "--data", str(data), "--config", CV_CONFIG, "--folds", "2", "--size", "32",
                       "--batch-size", "8", *CV_SETS, *RESAMPLES, "--out", str(out), "--no-wait")
    return stdout, out


def interval(cell: str) -> tuple[float, float, float]:
    m = re.fullmatch(rf"({NUMBER}) \[({NUMBER}), ({NUMBER})\]", cell.strip())
    assert m, cell
    point, lo, hi = (float(v) for v in m.groups())
    assert all(math.isfinite(v) for v in (point, lo, hi)) and lo <= hi, cell
    return point, lo, hi


def test_bench_ensemble(ensemble: tuple[str, Path]) -> None:
    out, folder = ensemble
    held = line(out, r"# held out: (\d+) images \(busi's test split, whole duplicate groups\); cross-validation on (\d+)$")
    n_test, n_cv = int(held[1]), int(held[2])
    assert n_test > 0 and n_test + n_cv == 24
    assert f"{n_test} held-out images, 2 fold models, 32 px" in out
    variants = ["single fold", "single fold + flip", "ensemble of 2", "ensemble of 2 + flip"]
    cells = rf"((?:\s+{NUMBER} \[{NUMBER}, {NUMBER}\]){{5}})$"
    measured, diffs = out.split("paired difference against a single fold", 1)
    table = {m[0]: re.findall(rf"{NUMBER} \[{NUMBER}, {NUMBER}\]", m[1])
             for m in re.findall(rf"^({'|'.join(re.escape(v) for v in variants)})\s*{cells}", measured, re.M)}
    assert list(table) == variants, out
    for row in table.values():
        (auc, *_), (mal, *_), (bal, *_), (brier, *_), (ece, *_) = (interval(c) for c in row)
        assert all(0 <= v <= 1 for v in (auc, mal, bal, ece)) and 0 <= brier <= 2
    # then the paired differences against a single fold: the other three
    assert len(re.findall(rf"^(?:{'|'.join(re.escape(v) for v in variants[1:])})\s*{cells}", diffs, re.M)) == 3
    result = json.loads((folder / "result.json").read_text())
    assert result["held_out"] == n_test and set(variants) <= set(result)
    assert all(len(result[v]["macro_auc"]) == 3 for v in variants)
    assert (folder / "cv" / "fold-0" / "model" / "model.keras").is_file()


def test_bench_accuracy(run_bench: Callable[..., str], ensemble: tuple[str, Path], tmp_path: Path) -> None:
    """bench_accuracy on the cross-validation's data, its output folder the ensemble's cross-validation:
    ``busi-job cv`` resumes its finished folds (as it resumes an interrupted benchmark), the rest of
    the script (the report, the summary, the prediction rate) runs as it does after training; then
    ``--compare`` of that cross-validation with itself, whose differences are all exactly 0."""
    _, folder = ensemble
    out_dir = tmp_path / "acc"
    out_dir.mkdir()
    label = "mobilenet@0.25-none-scratch"  # bench_accuracy's folder name for CV_CONFIG
    (out_dir / label).symlink_to(folder / "cv", target_is_directory=True)
    out = run_bench("bench_accuracy.py", "--data", str(folder / "data" / "cv"), "--config", CV_CONFIG, "--folds", "2",
                    "--size", "32", "--batch-size", "8", *CV_SETS, *RESAMPLES, "--out", str(out_dir), "--no-wait")
    assert line(out, r"## mobilenet alpha 0.25, weights none \((\d+) images, 2 folds, 32 px;")
    for metric in ("macro_auc", "malignant_auc", "balanced_accuracy", "ece"):
        m = line(out, rf"{metric}\s+({NUMBER} \[{NUMBER}, {NUMBER}\])\s+({NUMBER}) \+- ({NUMBER})$")
        point, _, _ = interval(m[1])
        assert 0 <= point <= 1 and 0 <= float(m[2]) <= 1
        finite_at_least_zero(float(m[3]))
    minutes = line(out, rf"minutes per fold\s+({NUMBER}) \(({NUMBER}), ({NUMBER})\)$")
    finite_at_least_zero(*(float(v) for v in minutes.groups()))  # printed to 0.1 min: a fast fold reads 0.0
    rate = float(line(out, rf"predict img/s\s+({NUMBER}) \(busi-job predict, OpenVINO, 32 px")[1])
    positive(rate)
    saved = json.loads((out_dir / f"{label}.json").read_text())
    assert saved["folds"] == 2 and saved["predict_images_per_second"] > 0 and len(saved["minutes_per_fold"]) == 2

    cmp = run_bench("bench_accuracy.py", "--compare", str(folder / "cv"), str(folder / "cv"), *RESAMPLES)
    assert line(cmp, r"## cv against cv: folds 0, 1 \((\d+) images, pooled out of fold\)")
    for metric in ("macro_auc", "malignant_auc"):
        m = line(cmp, rf"{metric}\s+({NUMBER} \[{NUMBER}, {NUMBER}\])  against  ({NUMBER} \[{NUMBER}, {NUMBER}\]); "
                      rf"difference ({NUMBER}) \[({NUMBER}), ({NUMBER})\]$")
        assert interval(m[1]) == interval(m[2])
        assert float(m[3]) == float(m[4]) == float(m[5]) == 0.0


def test_bench_engines(run_bench: Callable[..., str], ensemble: tuple[str, Path]) -> None:
    """Every precision this CPU offers against TensorFlow float32, on a trained fold and the held-out images."""
    _, folder = ensemble
    run, images = folder / "cv" / "fold-0", folder / "data" / "test"
    n = sum(1 for p in images.rglob("*.png") if "_mask" not in p.name)
    out = run_bench("bench_engines.py", "--model", str(run), "--data", str(images), "--batch-size", "4")
    rows = re.findall(rf"^\S+\s+32\s+(\d+)\s+(openvino \S+ (\S+).*?)\s+({NUMBER})%\s+({NUMBER})\s+({NUMBER})\s+"
                      rf"({NUMBER})/({NUMBER})/({NUMBER})$", out, re.M)
    precisions = [r[2] for r in rows]
    assert precisions[0] == "float32", out
    assert ("int8" in precisions) == (run / "model" / "openvino-int8" / "model.xml").is_file(), out
    for images_n, _, precision, agree, max_diff, mean_diff, *margins in rows:
        assert int(images_n) == n
        assert 0 <= float(agree) <= 100
        finite_at_least_zero(float(max_diff), float(mean_diff), *(float(v) for v in margins))
        assert float(mean_diff) <= float(max_diff) <= 1
        if precision == "float32":  # the same model in the same precision: rounding apart
            assert float(max_diff) < 1e-3, out


# ------------------------------------------------------------------ Horovod


@pytest.mark.system
def test_bench_horovod(horovod: None, run_bench: Callable[..., str]) -> None:
    """One process with every core against two Horovod ranks (where Horovod is built: conftest's ``horovod``)."""
    out = run_bench("bench_horovod.py", "--size", "32", "--global-batch", "4", "--steps", "1", "--warmup", "1",
                    "--np", "2", *TINY)
    assert line(out, r"mobilenet \(alpha 0.25\), all layers trainable, 32 px, float32, global batch 4, 1 timed steps")
    rows = re.findall(rf"^\s+(\d+) x (\d+)\s+(\d+)\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})$", out, re.M)
    assert [(int(r[0]), int(r[2])) for r in rows] == [(1, 4), (2, 2)], out
    for ranks, threads, _, step_s, img_s, allreduce_s in rows:
        positive(int(threads), float(step_s), float(img_s))
        finite_at_least_zero(float(allreduce_s))
    positive(float(line(out, rf"gradients per step: ({NUMBER}) MB float32")[1]))


@pytest.mark.system
def test_bench_nodes(horovod: None, run_bench: Callable[..., str]) -> None:
    """Two ranks on two namespace nodes against two on one (where the namespace cluster can be
    built: root, Slurm, munge, iproute2)."""
    from netcluster import unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(f"cannot build the namespace cluster here: {reason}")
    out = run_bench("bench_nodes.py", "--size", "32", "--global-batch", "2", "--steps", "1", "--repeats", "1", *TINY)
    assert line(out, r"mobilenet \(alpha 0.25\), all layers trainable, 32 px, float32, global batch 2, 1 timed steps")
    rows = re.findall(rf"^\s*(two nodes|one node)\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})$", out, re.M)
    assert [r[0] for r in rows] == ["two nodes", "one node"], out
    for _, step_s, allreduce_s, rate in rows:
        positive(float(step_s), float(allreduce_s), float(rate))
    positive(float(line(out, rf"allreduce, two nodes / one node: ({NUMBER})")[1]))
