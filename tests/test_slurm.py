"""The Slurm scripts (``slurm/``) on a REAL one-node Slurm cluster (issue #7, part 2).

A session fixture starts a private cluster (``tests/slurmcluster.py``: its own munged,
slurmctld and slurmd, free ports, everything in a temp folder) and stops it afterwards. The
tests submit the scripts as users do and check what they leave behind:
  - ``sbatch --wait slurm/train.sh`` writes a completed run directory (through the container
    branch, with a stand-in ``apptainer`` that runs the command it is given);
  - ``scancel --signal=USR1 --batch`` mid-training: busi checkpoints and exits 75, the script
    requeues the job, the requeued job (same id) resumes and completes, epochs continuous;
  - ``slurm/submit-predict.sh``: an array of 3 shards plus an afterok merge job; the merged CSV
    holds every input file exactly once;
  - ``slurm/train-horovod.sh`` with 2 tasks: both ranks end with identical weights.
They skip, saying why, only where the machine cannot run Slurm (not root, Slurm/munge not
installed: ``.ci/run`` installs them with apt). Jobs are tiny (32 px, a few dozen synthetic
images, ``weights: none``, head phase only) because other work shares the 2 cores.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import REPO, SMALL
from slurmcluster import TERMINAL, SlurmCluster, unavailable_reason

SLURM = REPO / "slurm"
# A tiny training job: 32 px, head phase only, no pretrained weights, conftest's small model
# (tests/test_job.py checks ResNet50's whole run directory).
TINY = ["--set", "data.image_size=32", "--set", "train.batch_size=8", "--set", "train.finetune.epochs=0",
        "--set", "train.quantize=none", *SMALL]  # INT8: tests/test_quantize.py
NOISE = ("I0000 ", "WARNING: All log messages", "To enable the following", "oneDNN custom operations")


# --- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmCluster]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"cannot run a Slurm cluster here: {reason}")
    cluster = SlurmCluster()
    try:
        cluster.start()
    except Exception:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()
    if not os.environ.get("BUSI_KEEP_SLURM"):
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture
def job_env(slurm: SlurmCluster, tmp_path: Path) -> dict[str, str]:
    """What a user's shell exports before sbatch (sbatch passes the environment to the job)."""
    env = {**slurm.env, "TF_CPP_MIN_LOG_LEVEL": "2", "BUSI_SCRATCH": str(tmp_path / "scratch")}
    venv_busi = Path(sys.prefix) / "bin" / "busi-job"
    if venv_busi.exists():
        env["BUSI_VENV"] = sys.prefix  # the environment running these tests
    for key in [k for k in env if k.startswith("SLURM_") and k != "SLURM_CONF"]:
        env.pop(key)  # pytest itself inside a Slurm job: not this cluster's
    for key in ("BUSI_IMAGE", "BUSI_RUN_DIR", "BUSI_HVD_LAUNCHER", "BUSI_SLURM_DIR"):
        env.pop(key, None)
    return env


def _synth(root: Path, per_class: int, zip_it: bool = False) -> Path:
    from busi.data.synth import write_synthetic_dataset

    data = write_synthetic_dataset(root / "data", per_class=per_class, size=32, seed=1)
    if not zip_it:
        return data
    archive = root / "data.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted(data.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(data.parent))
    return archive


# --- helpers ------------------------------------------------------------------------------------

def _run(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def sbatch(args: list[str], env: dict[str, str], cwd: Path) -> str:
    p = _run(["sbatch", "--parsable", *args], env, cwd)
    assert p.returncode == 0, f"sbatch {' '.join(args)} failed: {p.stderr}"
    return p.stdout.strip().split(";")[0]


def wait_for(slurm: SlurmCluster, job: str, timeout: float, log: Path | None = None) -> list[dict[str, str]]:
    """Wait until every task of ``job`` is in a terminal state; scancel it and fail on timeout."""
    info = slurm.wait_job(job, timeout)
    if info is None:
        _run(["scancel", job], slurm.env, REPO)
        pytest.fail(f"job {job} not done after {timeout:.0f} s: {slurm.job_info(job)}\n{tail(log)}")
    return info


def tail(log: Path | None, n: int = 60) -> str:
    if log is None or not log.exists():
        return f"(no log {log})"
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if not ln.startswith(NOISE)]
    return f"--- {log.name} (last {n} lines) ---\n" + "\n".join(lines[-n:])


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _manifest(run: Path) -> dict[str, Any]:
    return json.loads((run / "manifest.json").read_text())


# --- no cluster needed -----------------------------------------------------------------------------

def test_every_batch_script_declares_walltime_signal_and_requeue() -> None:
    for name in ("train.sh", "train-horovod.sh", "predict.sh", "cv-fold.sh"):
        text = (SLURM / name).read_text()
        directives = re.findall(r"^#SBATCH (\S+)", text, re.M)
        assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text, name
        for opt in ("--time", "--cpus-per-task", "--signal=B:USR1@", "--requeue", "--open-mode=append", "--output"):
            assert any(d.startswith(opt) for d in directives), f"{name}: no #SBATCH {opt}"
    assert any(d.startswith("--array=") for d in re.findall(r"^#SBATCH (\S+)", (SLURM / "predict.sh").read_text(), re.M))


def test_lib_forwards_usr1_and_waits_for_the_real_exit_code(tmp_path: Path) -> None:
    """The batch-shell logic without Slurm: a trapped USR1 interrupts `wait`; the script must
    forward it, wait again, and see the child's own exit status (75), not 138."""
    child = tmp_path / "child.py"
    child.write_text(
        "import signal, sys, time, pathlib\n"
        "got = []\n"
        "signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))\n"
        f"pathlib.Path({str(tmp_path / 'ready')!r}).touch()\n"
        "while not got: time.sleep(0.05)\n"
        "time.sleep(1.0)  # 'finish the step and write the checkpoint'\n"
        "sys.exit(75)\n"
    )
    script = (f"source {SLURM / 'lib.sh'}; busi_trap_signals; busi_run {sys.executable} {child}; "
              "echo \"rc=$BUSI_RC signals=$BUSI_SIGNALS\"; busi_finish $BUSI_RC")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 30
    while not (tmp_path / "ready").exists() and time.monotonic() < end:
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=30)
    assert "rc=75 signals=USR1" in out, out + err
    assert proc.returncode == 75 and "outside Slurm: run the same command again to resume" in err, err


def test_job_args_take_every_leading_job_file(tmp_path: Path) -> None:
    """busi_job_args: the leading non-option arguments are job files (layered), the rest --set."""
    a, b = tmp_path / "a.yaml", tmp_path / "b 2.yaml"
    a.write_text("{}\n")
    b.write_text("{}\n")
    show = 'printf "<%s>" "${BUSI_JOBS[@]}"; echo; printf "<%s>" "${BUSI_ARGS[@]}"'
    script = f'source {SLURM / "lib.sh"}; busi_job_args default.yaml usage "$@"; {show}'
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", script, "x", str(a), str(b), "--set", "k=v"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"<{a}><{b}>", "<--set><k=v>"]
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", script, "x", str(a), str(tmp_path / "gone.yaml")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and f"job file {tmp_path / 'gone.yaml'} not found" in r.stderr, r.stderr


# --- on the cluster -------------------------------------------------------------------------------

@pytest.mark.system
def test_train_sh_writes_the_run_directory(slurm: SlurmCluster, job_env: dict[str, str], tmp_path: Path) -> None:
    """sbatch --wait slurm/train.sh JOB --set ...: a completed run, data staged to node-local
    scratch, threads from --cpus-per-task. Runs through the container branch (BUSI_IMAGE), with
    a stand-in `apptainer` that records its arguments and runs the command (no Apptainer here)."""
    data = _synth(tmp_path, per_class=8, zip_it=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "apptainer.calls"
    fake = bin_dir / "apptainer"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        "# test stand-in for `apptainer exec [--nv] [--bind P]... IMAGE CMD...`: records, then runs CMD\n"
        f"echo \"$*\" >> {calls}\n"
        "[[ $1 == exec ]] || exit 64\n"
        "shift\n"
        "while [[ $1 == --* ]]; do if [[ $1 == --bind ]]; then shift 2; else shift; fi; done\n"
        "shift  # the image\n"
        f"PATH={Path(sys.prefix) / 'bin'}:$PATH exec \"$@\"\n"
    )
    fake.chmod(0o755)
    image = tmp_path / "busi.sif"
    image.write_bytes(b"not really an image")
    env = {**job_env, "PATH": f"{bin_dir}:{job_env['PATH']}", "BUSI_IMAGE": str(image)}
    env.pop("BUSI_VENV", None)
    run = tmp_path / "run"
    site = tmp_path / "site.yaml"  # a site overlay layered over the shipped job file
    site.write_text("train:\n  head:\n    epochs: 1\n")
    job = sbatch([f"--chdir={tmp_path}", "--cpus-per-task=1", "--mem=1G", "--time=00:20:00", str(SLURM / "train.sh"),
                  str(REPO / "job" / "demo.yaml"), str(site), "--set", f"data.source={data}",
                  "--set", f"output.dir={run}", *TINY], env, tmp_path)
    log = tmp_path / f"busi-train-{job}.out"
    info = wait_for(slurm, job, 600, log)[0]
    assert (info["JobState"], info.get("ExitCode")) == ("COMPLETED", "0:0"), f"{info}\n{tail(log)}\n{slurm.logs()}"
    m = _manifest(run)
    assert m["status"] == "completed", tail(log)
    assert m["cores"]["cores"] == 1 and m["cores"]["source"] == "slurm", m["cores"]
    for rel in ("model/model.keras", "metrics.json", "history.csv", "data/splits.csv"):
        assert (run / rel).exists(), rel
    staged = list((tmp_path / "scratch" / "busi-staging").glob("data-*"))
    assert staged, f"nothing staged under {tmp_path / 'scratch' / 'busi-staging'}"
    call = calls.read_text().split("\n")[0]
    assert call.startswith(f"exec --bind {tmp_path / 'scratch'} {image} busi-job train {REPO / 'job' / 'demo.yaml'} {site}"), call
    assert "head:\n    epochs: 1\n" in (run / "config.yaml").read_text()  # the overlay's value ran
    assert "--nv" not in call  # no GPUs in this job
    assert "busi-slurm[" in log.read_text() and "done" in tail(log, 3)
    # TF_CPP_MIN_LOG_LEVEL=2 (job_env, as users set it) hides nothing before absl starts: busi's filter does
    assert "absl::InitializeLog" not in log.read_text() and "oneDNN custom operations" not in log.read_text()


@pytest.mark.system
def test_usr1_checkpoints_requeues_and_the_same_job_resumes(
    slurm: SlurmCluster, job_env: dict[str, str], tmp_path: Path
) -> None:
    """scancel --signal=USR1 --batch (what --signal=B:USR1@180 does before the time limit):
    busi exits 75 after a checkpoint, the script requeues the job, and the requeued job (same
    job id, so same output dir) resumes and completes, every epoch exactly once. The signal
    lands mid-epoch on a machine of any speed: the run waits before its third step until it is
    signalled (the test hook ``BUSI_FAIL_AT_STEP=0:3:wait``, which the requeued run, past that
    step, never reaches), and the test sends it once the log says so."""
    data = _synth(tmp_path, per_class=20)
    epochs = 2
    env = {**job_env, "BUSI_FAIL_AT_STEP": "0:3:wait"}
    # output.dir keyed by the job id (${SLURM_JOB_ID} is interpolated by busi, as in job/busi.yaml)
    job = sbatch([f"--chdir={tmp_path}", "--cpus-per-task=2", "--mem=1G", "--time=00:30:00", str(SLURM / "train.sh"),
                  str(REPO / "job" / "demo.yaml"), "--set", f"data.source={data}",
                  "--set", "output.dir=runs/busi-${SLURM_JOB_ID}", *TINY,
                  "--set", f"train.head.epochs={epochs}", "--set", f"train.head.patience={epochs}"], env, tmp_path)
    log = tmp_path / f"busi-train-{job}.out"
    run = tmp_path / "runs" / f"busi-{job}"
    history = run / "history.csv"
    end = time.monotonic() + 400
    while time.monotonic() < end:
        if log.exists() and "waiting at step 3 for a stop signal" in log.read_text(errors="replace"):
            break
        info = slurm.job_info(job)
        assert info and info[0].get("JobState") not in TERMINAL, f"job ended before its third step: {info}\n{tail(log)}"
        time.sleep(0.5)
    else:
        _run(["scancel", job], env, REPO)
        pytest.fail(f"the run did not reach its third step in 400 s\n{tail(log)}")
    p = _run(["scancel", "--signal=USR1", "--batch", job], env, REPO)
    assert p.returncode == 0, p.stderr
    info = wait_for(slurm, job, 600, log)[0]
    text = log.read_text(errors="replace")
    assert info["JobState"] == "COMPLETED", f"{info['JobState']} {info.get('ExitCode')}\n{tail(log)}"
    assert info["Restarts"] == "1", f"expected one requeue, Restarts={info['Restarts']}\n{tail(log)}"
    assert "received SIGUSR1: forwarding it to busi" in text
    assert f"requeueing job {job} (restart 1)" in text, tail(log)
    assert re.search(r"restart 1; \d+ cores", text), "the requeued job did not start again"
    m = _manifest(run)
    assert m["status"] == "completed", tail(log)
    rows = _csv(history)
    assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1)), [r["epoch"] for r in rows]


@pytest.mark.system
def test_predict_array_and_merge_cover_every_file_once(
    slurm: SlurmCluster, job_env: dict[str, str], tmp_path: Path, trained_run: dict[str, Any]
) -> None:
    """submit-predict.sh: 3 array tasks predict their shards of a zip (staged per node), the
    afterok merge job joins them; every image is in the merged CSV exactly once. The model: the
    session's trained run (only read)."""
    model = trained_run["out"]
    archive = _synth(tmp_path, per_class=6, zip_it=True)
    images = sorted(p.name for p in (tmp_path / "data").rglob("*.png") if "_mask" not in p.name)
    out = tmp_path / "preds" / "all.csv"
    env = {**job_env, "BUSI_MODEL": str(model), "BUSI_PREDICT_INPUT": str(archive), "BUSI_PREDICT_OUTPUT": str(out)}
    p = _run([str(SLURM / "submit-predict.sh"), "--array=0-2", "--cpus-per-task=1", "--mem=1G", "--time=00:20:00",
              "--", str(REPO / "job" / "predict.yaml"), "--set", "predict.batch_size=8"], env, tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    array_id = re.search(r"Submitted prediction array job (\d+)", p.stdout).group(1)  # type: ignore[union-attr]
    merge_id = re.search(r"Submitted merge job (\d+)", p.stdout).group(1)  # type: ignore[union-attr]
    merge_log = tmp_path / f"busi-merge-{merge_id}.out"
    pending = slurm.job_info(merge_id)[0]
    assert pending.get("JobState") == "PENDING" and f"afterok:{array_id}" in pending.get("Dependency", ""), pending
    merge_info = wait_for(slurm, merge_id, 600, merge_log)[0]
    tasks = wait_for(slurm, array_id, 60)
    task_logs = "\n".join(tail(tmp_path / f"busi-predict-{array_id}_{i}.out", 20) for i in range(3))
    assert sorted(t["JobState"] for t in tasks) == ["COMPLETED"] * 3, f"{tasks}\n{task_logs}"
    assert merge_info["JobState"] == "COMPLETED", f"{merge_info}\n{tail(merge_log)}\n{task_logs}"
    parts = sorted(out.parent.glob("all.part-*-of-00003.csv"))
    assert [p.name for p in parts] == [f"all.part-0000{i}-of-00003.csv" for i in range(3)]
    assert all(len(_csv(p)) == 6 for p in parts), [len(_csv(p)) for p in parts]
    rows = _csv(out)
    names = [Path(r["path"]).name for r in rows]
    assert len(names) == len(images) == 18 and sorted(names) == images, names
    assert all(r["label"] in ("normal", "benign", "malignant") and not r["error"] for r in rows)
    assert list((tmp_path / "scratch" / "busi-staging").glob("data-*")), "archive not staged in scratch"


@pytest.mark.system
def test_cv_array_and_report_predict_every_image_once(
    slurm: SlurmCluster, job_env: dict[str, str], tmp_path: Path
) -> None:
    """slurm/cv.sh --folds 3: 3 array tasks train one fold each into one cv dir (one folds.csv,
    written once), the afterok report job gathers them: every image predicted out of fold once."""
    data = _synth(tmp_path, per_class=5, zip_it=True)
    cv_dir = tmp_path / "cv"
    env = {**job_env, "BUSI_CV_DIR": str(cv_dir)}
    p = _run([str(SLURM / "cv.sh"), "--cpus-per-task=1", "--mem=1G", "--time=00:20:00", "--", "--folds", "3",
              str(REPO / "job" / "demo.yaml"), "--set", f"data.source={data}", *TINY], env, tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    array_id = re.search(r"Submitted cross-validation array job (\d+)", p.stdout).group(1)  # type: ignore[union-attr]
    report_id = re.search(r"Submitted report job (\d+)", p.stdout).group(1)  # type: ignore[union-attr]
    report_log = tmp_path / f"busi-cv-report-{report_id}.out"
    report = wait_for(slurm, report_id, 900, report_log)[0]
    tasks = wait_for(slurm, array_id, 60)
    task_logs = "\n".join(tail(tmp_path / f"busi-cv-{array_id}_{i}.out", 20) for i in range(3))
    assert sorted(t["JobState"] for t in tasks) == ["COMPLETED"] * 3, f"{tasks}\n{task_logs}"
    assert report["JobState"] == "COMPLETED", f"{report}\n{tail(report_log)}\n{task_logs}"
    folds = _csv(cv_dir / "folds.csv")
    oof = _csv(cv_dir / "oof.csv")
    assert len(folds) == 15 and sorted(r["path"] for r in oof) == sorted(r["path"] for r in folds)
    for i in range(3):
        assert _manifest(cv_dir / f"fold-{i}")["status"] == "completed"
    assert "3 folds, 15 images out of fold" in report_log.read_text()


@pytest.mark.system
def test_horovod_script_two_ranks_end_with_identical_weights(
    horovod: None, slurm: SlurmCluster, job_env: dict[str, str], tmp_path: Path
) -> None:
    data = _synth(tmp_path, per_class=8)
    run = tmp_path / "run"
    job = sbatch([f"--chdir={tmp_path}", "--ntasks-per-node=2", "--cpus-per-task=1", "--mem=2G", "--time=00:30:00",
                  str(SLURM / "train-horovod.sh"), str(REPO / "job" / "demo.yaml"), "--set", f"data.source={data}",
                  "--set", f"output.dir={run}", *TINY, "--set", "train.head.epochs=2"], job_env, tmp_path)
    log = tmp_path / f"busi-hvd-{job}.out"
    info = wait_for(slurm, job, 900, log)[0]
    assert (info["JobState"], info.get("ExitCode")) == ("COMPLETED", "0:0"), f"{info}\n{tail(log)}"
    text = log.read_text(errors="replace")
    assert re.search(r"2 ranks x 1 threads on \S+; launcher (gloo|mpi)", text), tail(log)
    m = _manifest(run)
    assert m["status"] == "completed" and m["distributed"]["size"] == 2, m.get("distributed")
    hashes = dict(re.findall(r"rank (\d): final weights sha256 ([0-9a-f]{64})", text))
    assert set(hashes) == {"0", "1"}, f"expected a final-weights line from each rank\n{tail(log)}"
    assert hashes["0"] == hashes["1"], hashes
    assert m["weights_sha256"] == hashes["0"]
