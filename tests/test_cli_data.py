"""Tests for the data-side CLI commands (config, inspect, synth): busi-job in the test's process
(conftest ``run_main``) where the command starts no TensorFlow, real subprocesses where the
process itself is checked (no TensorFlow imported) and for ``train``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml
from conftest import REPO, run_cli
from conftest import run_main as busi_job  # config, inspect and synth start no TensorFlow: in this process

REPORT_KEYS = {"counts", "masks", "duplicates", "label_conflicts", "skipped_files", "corrupt_images"}


def _job(write_job, source: str | Path = "data/x", **extra) -> Path:
    return write_job({"data": {"source": str(source)}, "output": {"dir": "runs/x"}, **extra})


# ------------------------------------------------------------------------ config


def test_config_prints_resolved_yaml(write_job) -> None:
    job = _job(write_job, train={"batch_size": 8}, runtime={"cores": "${BUSI_TEST_CORES:-auto}"})
    p = busi_job("config", str(job), "--set", "train.head.epochs=3", env={"BUSI_TEST_CORES": "2"})
    assert p.returncode == 0, p.stderr
    out = yaml.safe_load(p.stdout)
    assert list(out) == ["data", "output", "model", "train", "evaluate", "runtime"]
    assert out["data"]["source"] == "data/x"
    assert out["data"]["classes"] == ["normal", "benign", "malignant"]
    assert out["train"]["batch_size"] == 8
    assert out["train"]["head"]["epochs"] == 3
    assert out["train"]["finetune"]["learning_rate"] == 1e-5
    assert out["runtime"]["cores"] == 2


def test_config_bad_override_exits_2_naming_key(write_job) -> None:
    p = busi_job("config", str(_job(write_job)), "--set", "train.head.epochs=ten")
    assert p.returncode == 2
    assert p.stdout == ""
    assert "train.head.epochs: expected a non-negative integer, got 'ten'" in p.stderr


def test_config_errors_exit_2(tmp_path: Path, write_job) -> None:
    missing = tmp_path / "nope.yaml"
    p = busi_job("config", str(missing))
    assert p.returncode == 2
    assert f"{missing}: job file not found" in p.stderr
    bad = write_job({"data": {"source": "x"}, "output": {"dir": "o"}, "train": {"epochz": 1}})
    p = busi_job("config", str(bad))
    assert p.returncode == 2
    assert "train.epochz: unknown key" in p.stderr
    p = busi_job("config", str(bad), "--set", "nodots")
    assert p.returncode == 2 and "expected key.path=value" in p.stderr
    p = busi_job()  # usage error from argparse
    assert p.returncode == 2


def test_config_demo_job() -> None:
    p = busi_job("config", "job/demo.yaml", env={"BUSI_DEMO_DATA": "/somewhere", "BUSI_OUTPUT": "/out"})
    assert p.returncode == 0, p.stderr
    out = yaml.safe_load(p.stdout)
    assert (out["data"]["source"], out["output"]["dir"]) == ("/somewhere", "/out")


# ----------------------------------------------------------------------- inspect


def test_inspect_folder_text(synth_small: Path) -> None:
    p = busi_job("inspect", str(synth_small))
    assert p.returncode == 0, p.stderr
    assert f"dataset: {synth_small}" in p.stdout
    assert "images: 36 (" in p.stdout
    for c in ("normal", "benign", "malignant"):
        assert any(line.split()[:2] == [c, "12"] for line in p.stdout.splitlines()), p.stdout
    assert "masks: 36 files; 36 images with masks, 0 without, 0 masks without an image" in p.stdout
    assert "skipped (not images): 0" in p.stdout
    assert "corrupt images: 0" in p.stdout


def test_inspect_folder_json(synth_small: Path) -> None:
    p = busi_job("inspect", str(synth_small), "--json", "--set", "data.dedupe=exact", "--set", "runtime.seed=5")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert REPORT_KEYS <= set(r)
    assert r["root"] == str(synth_small)
    assert r["counts"]["images"] == 36
    assert r["counts"]["per_class"] == {"normal": 12, "benign": 12, "malignant": 12}
    assert sum(sum(v.values()) for v in r["counts"]["per_split"].values()) == r["counts"]["used"] == 36
    assert r["masks"]["mask_files"] == 36 and r["masks"]["orphan_masks"] == []
    assert r["duplicates"]["mode"] == "exact"
    assert r["label_conflicts"] == [] and r["skipped_files"] == [] and r["corrupt_images"] == []


def test_inspect_job_file(synth_small: Path, write_job) -> None:
    job = write_job(
        {"data": {"source": str(synth_small), "split": {"train": 0.5, "val": 0.25, "test": 0.25}}, "output": {"dir": "o"}}
    )
    p = busi_job("inspect", str(job), "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["counts"]["images"] == 36
    assert r["counts"]["per_split"]["train"]["benign"] in (5, 6, 7)


def test_inspect_reports_corrupt_and_skipped(synth_small: Path, tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    shutil.copytree(synth_small, ds)
    (ds / "benign" / "benign (3).png").write_text("not a png")
    (ds / "benign" / "Thumbs.db").write_bytes(b"\0" * 16)
    p = busi_job("inspect", str(ds), "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["counts"]["images"] == 35
    assert r["skipped_files"] == ["benign/Thumbs.db"]
    assert [c["path"] for c in r["corrupt_images"]] == ["benign/benign (3).png"]


def test_inspect_missing_source_exits_3(tmp_path: Path) -> None:
    p = busi_job("inspect", str(tmp_path / "nothing-here"))
    assert p.returncode == 3
    assert "does not exist" in p.stderr


def test_inspect_unsafe_zip_exits_3_and_writes_nothing_outside(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    archive = work / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ds/normal/normal (1).png", b"x")
        zf.writestr("../evil.txt", b"evil")
    stage = work / "stage"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    p = busi_job("inspect", str(archive), "--set", f"data.staging_dir={stage}", cwd=work)
    assert p.returncode == 3, p.stderr
    assert "refusing to unpack" in p.stderr and "../evil.txt" in p.stderr
    assert p.stdout == ""
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    new = [q for q in after if q not in before]
    assert all(q.parts[:2] == ("work", "stage") for q in new), new
    assert not list(tmp_path.rglob("evil.txt"))
    assert not (work.parent / "evil.txt").exists() and not (REPO / "evil.txt").exists()
    # nothing but the lock file is left in the staging dir
    assert [q.name for q in stage.iterdir() if not q.name.endswith(".lock")] == []


# ------------------------------------------------------------------------- synth


def test_synth_writes_layout(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    p = busi_job("synth", str(out), "--per-class", "3", "--size", "32", "--seed", "1")
    assert p.returncode == 0, p.stderr
    assert f"wrote 9 images with masks to {out}" in p.stdout
    names = sorted(q.relative_to(out).as_posix() for q in out.rglob("*") if q.is_file())
    assert names == sorted(
        f"{c}/{c} ({n}){suffix}.png"
        for c in ("normal", "benign", "malignant")
        for n in (1, 2, 3)
        for suffix in ("", "_mask")
    )
    p = busi_job("synth", str(out), "--per-class", "3")
    assert p.returncode == 2
    assert str(out) in p.stderr


def test_synth_then_inspect(tmp_path: Path) -> None:
    out = tmp_path / "d"
    assert busi_job("synth", str(out), "--per-class", "4", "--size", "32").returncode == 0
    p = busi_job("inspect", str(out), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["counts"]["per_class"] == {"normal": 4, "benign": 4, "malignant": 4}


# ------------------------------------------------------------- no TensorFlow


def _no_tf(code: str) -> subprocess.CompletedProcess[str]:
    check = code + "\nbad = [m for m in sys.modules if m.startswith('tensorflow')]\nassert not bad, bad\nprint('NO_TF')"
    return subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_help_does_not_import_tensorflow() -> None:
    p = _no_tf(
        "import sys, busi.cli\n"
        "try:\n    busi.cli.main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
    )
    assert p.returncode == 0, p.stderr
    assert "NO_TF" in p.stdout and "busi-job" in p.stdout


def test_config_does_not_import_tensorflow(write_job) -> None:
    job = _job(write_job)
    p = _no_tf(f"import sys, busi.cli\nassert busi.cli.main(['config', {str(job)!r}]) == 0")
    assert p.returncode == 0, p.stderr
    assert "NO_TF" in p.stdout and "source: data/x" in p.stdout


def test_inspect_does_not_import_tensorflow(synth_small: Path) -> None:
    p = _no_tf(f"import sys, busi.cli\nassert busi.cli.main(['inspect', {str(synth_small)!r}]) == 0")
    assert p.returncode == 0, p.stderr
    assert "NO_TF" in p.stdout and "images: 36" in p.stdout


def test_config_prints_a_prediction_job() -> None:
    proc = busi_job("config", str(REPO / "job" / "predict.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert "predict:" in proc.stdout and "inputs:" in proc.stdout


# ------------------------------------------------------------- the run directory


def _train_on(out: Path, synth_small: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("train", str(REPO / "job" / "demo.yaml"), "--set", f"data.source={synth_small}",
                   "--set", f"output.dir={out}", *extra)


def test_train_refuses_an_output_dir_busi_did_not_write_and_leaves_it_alone(tmp_path: Path, synth_small: Path) -> None:
    out = tmp_path / "project"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "theirs.pt").write_bytes(b"weights")
    (out / "model").mkdir()
    (out / "model" / "README.md").write_text("their notes")
    before = sorted((str(p.relative_to(out)), p.read_bytes() if p.is_file() else b"") for p in out.rglob("*"))
    for extra in ((), ("--restart",)):
        p = _train_on(out, synth_small, *extra)
        assert p.returncode == 2, p.stderr[-2000:]
        assert "did not write" in p.stderr and "Traceback" not in p.stderr
    after = sorted((str(p.relative_to(out)), p.read_bytes() if p.is_file() else b"") for p in out.rglob("*")
                   if p.name != ".busi.lock")
    assert after == before


def test_train_on_an_output_dir_that_is_a_file_exits_2(tmp_path: Path, synth_small: Path) -> None:
    (tmp_path / "run").write_text("a file")
    p = _train_on(tmp_path / "run", synth_small)
    assert p.returncode == 2 and "is a file, not a folder" in p.stderr and "Traceback" not in p.stderr
    assert (tmp_path / "run").read_text() == "a file"


def test_synth_refuses_a_size_that_would_exhaust_memory(tmp_path: Path) -> None:
    p = busi_job("synth", str(tmp_path / "d"), "--size", "100000")
    assert p.returncode == 2 and "size must be from 16 to 4096" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "d").exists()
