"""Walltime-safe runs: checkpoint on signal (exit 75), automatic resume, walltime budget,
SIGKILL at random moments, atomic artifacts. Real subprocesses and real signals."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import (
    REPO,
    SMALL,
    linked_copies,
    make_model_dir,
    read_tensorboard,
    run_cli,
    run_main,
    scalars,
)
from PIL import Image

from busi.config.load import load_config
from busi.files.atomic import is_temp_name
from busi.runtime.locks import is_locked

# Fine-tuning conv5 (job/busi.yaml's setting: the backbone's stride-32 stage) trains on the
# feature cache of the stages before it, so a signal lands while the cache fills or during a
# cached epoch, and the resumed run refills it. The machinery, not the network, is under test:
# MobileNet at width 0.25 without the SavedModel (``SMALL``), whose checkpoints, saves and
# OpenVINO conversion take a tenth of ResNet50's time. Random, it predicts 1/3 for every class
# (val_loss is ln 3 in every epoch); the training loss, with BatchNorm in training mode, is
# what tells one trajectory from another, and the kept weights' sha256 what tells the models.
TINY = [
    "--set", "data.image_size=32", "--set", "train.batch_size=2", "--set", "train.head.epochs=1",
    "--set", "train.finetune.epochs=2", "--set", "train.finetune.patience=5", "--set", "train.finetune.unfreeze=conv5",
    "--set", "runtime.deterministic=true", *SMALL,
    "--set", "train.quantize=none",  # tests/test_quantize.py covers the INT8 stage; these the training before it
    "--set", "train.gradcam_masks=false",  # tests/test_job.py covers Grad-CAM against the masks
]


@pytest.fixture(scope="module")
def data(synth_data: Any) -> Path:
    return synth_data(10, 32, 2)


def _popen(out: Path, data: Path, *extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "busi", "train", str(REPO / "job" / "demo.yaml"), "--set", f"data.source={data}",
           "--set", f"output.dir={out}", *TINY, *extra]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(cond: Any, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def _history(out: Path) -> list[dict[str, str]]:
    with (out / "history.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def _train(out: Path, data: Path, *extra: str, process: bool = False) -> subprocess.CompletedProcess[str]:
    """A whole run to its end, in this process (conftest ``run_main``) unless ``process``: the
    signals and kills under test here go to the runs ``_popen`` starts."""
    run = run_cli if process else run_main
    return run("train", str(REPO / "job" / "demo.yaml"), "--set", f"data.source={data}",
               "--set", f"output.dir={out}", *TINY, *extra)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Path:
    out = tmp_path_factory.mktemp("whole") / "run"
    proc = _train(out, data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_sigterm_checkpoints_exits_75_and_resume_matches_an_uninterrupted_run(
    tmp_path: Path, data: Path, uninterrupted: Path
) -> None:
    out = tmp_path / "run"
    proc = _popen(out, data)
    # mid-epoch: once the fine-tuning phase has filled its feature cache (its log line, the
    # second cache's), in the first step of its first epoch (whose step function it traces first)
    assert proc.stderr is not None
    caches = 0
    for line in proc.stderr:
        caches += "feature cache (" in line
        if caches == 2:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and "SIGTERM" in manifest["interrupted"]
    latest = json.loads((out / "checkpoint" / "latest.json").read_text())
    assert (out / "checkpoint" / latest["name"] / "variables.npz").is_file()
    assert "checkpoint" in err and "resume" in err

    resumed = _train(out, data)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed" and len(manifest["attempts"]) == 2
    assert not (out / "checkpoint").exists(), "a completed run drops its checkpoint"

    # same metrics and history as the run that was never interrupted (deterministic mode)
    h1, h2 = _history(uninterrupted), _history(out)
    assert [r["epoch"] for r in h2] == ["1", "2", "3"]
    # TensorBoard: each epoch once across both attempts, the values history.csv holds
    train = read_tensorboard(out / "tensorboard")["train"]
    logged = sorted(scalars(train["head/loss"]) + scalars(train["finetune/loss"]))
    assert logged == [(int(r["epoch"]), round(float(r["loss"]), 6)) for r in h2]
    for a, b in zip(h1, h2):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-5), (key, a, b)
    assert (json.loads((uninterrupted / "manifest.json").read_text())["weights_sha256"]
            == manifest["weights_sha256"]), "the kept weights differ from the uninterrupted run's"
    m1 = json.loads((uninterrupted / "metrics.json").read_text())
    m2 = json.loads((out / "metrics.json").read_text())
    assert m1["confusion_matrix"] == m2["confusion_matrix"]
    assert m1["accuracy"] == pytest.approx(m2["accuracy"])
    p1, p2 = _csv_rows(uninterrupted / "predictions" / "test.csv"), _csv_rows(out / "predictions" / "test.csv")
    assert len(p1) == len(p2) > 0 and [(a["path"], a["label"]) for a in p1] == [(b["path"], b["label"]) for b in p2]
    probs = [f"prob_{c}" for c in ("normal", "benign", "malignant")]
    np.testing.assert_allclose([[float(a[k]) for k in probs] for a in p1], [[float(b[k]) for k in probs] for b in p2],
                               atol=1e-4)


def _published(out: Path, pattern: str) -> list[Path]:
    """Files matching ``pattern`` outside busi's temp names: a killed writer's temp file or
    folder (``.x.json.ab12cd34.tmp``, ``.ckpt-000002.ab12cd34.tmp/``) is not an artifact; the
    next run on the folder removes it (checked at the end of the test)."""
    return [p for p in out.rglob(pattern) if not any(is_temp_name(part) for part in p.relative_to(out).parts)]


def _check_artifacts(out: Path) -> None:
    """Every artifact present parses: a kill leaves files complete or absent."""
    for p in _published(out, "*.json"):
        json.loads(p.read_text())
    for p in _published(out, "*.csv"):
        with p.open(newline="") as fh:
            rows = list(csv.reader(fh))
        assert rows and all(len(r) == len(rows[0]) for r in rows), p
    for p in _published(out, "*.png"):
        with Image.open(p) as im:
            im.verify()
    for p in _published(out, "*.npz"):
        with np.load(p) as z:
            [z[k] for k in z.files]
    if (out / "config.yaml").exists():
        load_config(out / "config.yaml")
    model = out / "model" / "model.keras"
    if model.exists():
        from busi.model.network import load_saved_model

        load_saved_model(model)


def test_sigkill_at_random_moments_never_leaves_a_broken_artifact(tmp_path: Path, data: Path) -> None:
    """Five runs on one folder, each killed at a random point of its own progress: after a
    random line of its log (start-up, a cache fill, an epoch, a checkpoint), or at the latest
    once its final weights are logged (saving the model folder, SavedModel included, then
    evaluating and publishing), plus a random fraction of a second: a run of any speed is
    killed mid-way (random seconds after the start would miss a fast run's end, or all of it).
    After every kill each artifact present parses; the last run completes the same history and
    cleans the killed writers' temps."""
    out = tmp_path / "run"
    rng = random.Random(7)
    kills = 0
    three = ("--set", "train.finetune.epochs=3", "--set", "output.saved_model=true")
    while kills < 5:
        proc = _popen(out, data, *three)
        assert proc.stderr is not None
        lines = rng.randint(1, 16)
        for line in proc.stderr:
            lines -= 1
            if lines == 0 or "final weights" in line:
                break
        time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is not None:
            break  # finished before the kill: fine, the loop below checks the end state
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        kills += 1
        _check_artifacts(out)
    final = _train(out, data, *three)
    if final.returncode == 2 and "completed run" in final.stderr:
        pass  # a run finished between kills; it must then be complete
    else:
        assert final.returncode == 0, final.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert [r["epoch"] for r in _history(out)] == ["1", "2", "3", "4"]
    _check_artifacts(out)
    assert [p for p in out.rglob("*") if is_temp_name(p.name)] == [], "the last run cleans killed writers' temps"
    assert kills >= 3


def test_walltime_budget_ends_the_run_with_75_before_the_budget(tmp_path: Path, data: Path) -> None:
    """A real run with more work than any machine finishes inside its budget (100,000 epochs):
    it must stop by itself, checkpoint and exit 75 before the budget ends. One phase only, so
    the one long uninterruptible unit (tracing the step, 1-5 s for MobileNet 0.25) comes at the
    start, long before the budget runs out; after it every step and cache batch is a stop check
    (tests/test_trainer.py checks the loop's stop policy exactly, on a fake clock). The budget
    leaves start-up (importing TensorFlow, building, tracing: 5-25 s on a loaded machine) room
    to spare; the margin is many times a checkpoint and exit (under a second for this model)."""
    out = tmp_path / "run"
    budget, margin = 50, 15
    started = time.time()
    proc = _train(out, data, "--set", "train.head.epochs=0", "--set", "train.finetune.epochs=100000",
                  "--set", "train.finetune.patience=100000", "--set", f"runtime.walltime={budget}",
                  "--set", f"runtime.walltime_margin={margin}",
                  "--set", "runtime.cores=1",  # one core: the other stays with the rest of the suite
                  process=True)  # the budget counts from the process's start
    elapsed = time.time() - started
    assert proc.returncode == 75, proc.stderr[-3000:]
    assert elapsed < budget, f"ran {elapsed:.0f} s, past its {budget} s budget"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and "walltime" in manifest["interrupted"]
    assert manifest["walltime"]["source"] == "config"
    assert manifest["attempts"][-1]["status"] == "interrupted"
    assert json.loads((out / "checkpoint" / "latest.json").read_text())["name"].startswith("ckpt-")
    assert "walltime budget" in proc.stderr and "resume" in proc.stderr


def test_resume_with_other_settings_is_refused_and_restart_starts_fresh(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "run"
    proc = _popen(out, data)
    _wait_for(lambda: (out / "checkpoint" / "latest.json").exists())
    proc.send_signal(signal.SIGUSR1)
    proc.communicate(timeout=120)
    assert proc.returncode == 75
    other = _train(out, data, "--set", "train.head.learning_rate=0.01")
    assert other.returncode == 2
    assert "train.head.learning_rate" in other.stderr and "--restart" in other.stderr
    fresh = _train(out, data, "--set", "train.head.learning_rate=0.01", "--set", "train.finetune.epochs=1",
                   "--restart")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "resuming" not in fresh.stderr


def test_predict_stops_on_sigterm_and_resumes(tmp_path: Path, data: Path) -> None:
    model_dir = make_model_dir(tmp_path / "model", size=32, backbone="mobilenet", alpha=0.25)
    inputs = tmp_path / "in"
    n = linked_copies(data, inputs, 100)  # 3,000 files: still running when the signal comes, however fast
    out = tmp_path / "p.csv"
    cmd = [sys.executable, "-m", "busi", "predict", "--model", str(model_dir), "--input", str(inputs),
           "--output", str(out), "--batch-size", "1", "--cores", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: out.exists() and out.read_text().count("\n") >= 3)
    with out.open(newline="") as fh:
        seen = len(list(csv.DictReader(fh)))  # rows on disk when the signal is sent (at least 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err[-2000:]
    assert not Path(str(out) + ".done.json").exists()
    with out.open(newline="") as fh:
        before = [r["path"] for r in csv.DictReader(fh)]
    # every row written before the signal is kept (a signal right after a batch's stop check
    # ends the run with exactly those rows: no more are promised), and the run stopped early
    assert 2 <= seen <= len(before) < n
    again = run_cli("predict", "--model", str(model_dir), "--input", str(inputs), "--output", str(out), "--resume")
    assert again.returncode == 0, again.stderr[-2000:]
    with out.open(newline="") as fh:
        paths = [r["path"] for r in csv.DictReader(fh)]
    assert len(paths) == len(set(paths)) == n and paths[: len(before)] == before


UNBOUNDED = ("--set", "train.head.epochs=0", "--set", "train.finetune.epochs=100000",
             "--set", "train.finetune.patience=100000")  # still running when the test acts, however fast


def _started(out: Path) -> bool:
    """The run holds its lock and handles signals (splits.csv is written inside the handled block)."""
    return (out / "data" / "splits.csv").exists()


def test_a_second_run_on_the_same_output_dir_exits_2_naming_the_first(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "run"
    first = _popen(out, data, *UNBOUNDED)
    try:
        _wait_for(lambda: _started(out) or first.poll() is not None)
        assert first.poll() is None, first.communicate()[1][-3000:]
        manifest = (out / "manifest.json").read_bytes()
        second = _train(out, data)
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"output.dir {out} is in use by another busi job" in second.stderr
        assert f"pid {first.pid}" in second.stderr and socket.gethostname() in second.stderr
        assert (out / "manifest.json").read_bytes() == manifest  # the second changed nothing
        assert is_locked(out / ".busi.lock")
    finally:
        first.kill()  # however the holder dies, the kernel frees its lock
        first.communicate()
    assert not is_locked(out / ".busi.lock")


def test_an_interrupted_restart_leaves_no_old_results_and_predict_refuses_it(
    tmp_path: Path, data: Path, uninterrupted: Path
) -> None:
    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    (out / "predictions" / "all.csv").write_text("the user's own predictions\n")  # not busi's: kept
    old = [out / rel for rel in ("model/model.keras", "metrics.json", "plots/loss.png", "predictions/test.csv")]
    assert all(p.exists() for p in old)
    (out / "data" / "splits.csv").unlink()  # so _started() sees the new run's file
    proc = _popen(out, data, "--restart", *UNBOUNDED)
    try:
        _wait_for(lambda: _started(out) or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
    finally:
        proc.kill()  # the hardest interruption: no handler runs
        proc.communicate()
    assert [p for p in old if p.exists()] == [], "an old run's results must not survive a restart"
    assert (out / "predictions" / "all.csv").read_text() == "the user's own predictions\n"
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"
    pred = run_cli("predict", "--model", str(out), "--input", str(data), "--output", str(tmp_path / "p.csv"))
    assert pred.returncode == 2 and "not completed" in pred.stderr, pred.stderr[-2000:]


def _csv_rows(path: Path) -> list[dict[str, str]]:
    """A CSV busi wrote, read with the csv module (names may hold commas and line breaks)."""
    import csv

    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as fh:
        return list(csv.DictReader(fh))
