"""The container image, built and run for real (system tier): what a cluster or cloud user runs
on their first day.

CI builds the image once (`make image`, `.ci/run`) and names it in ``BUSI_TEST_IMAGE``; these
tests then must find it. Elsewhere they use ``busi:0.1.0`` where podman or docker has it, and
skip, saying why, where there is no engine or no image. Every container runs as users really run
it: a non-root UID with no passwd entry, a read-only root file system, a tmpfs /tmp, the data
bind-mounted read-only and the output on a bind mount.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from conftest import SMALL, run_cli

pytestmark = pytest.mark.system

UID = "12345:12345"
TELEMETRY = re.compile(r"telemetry|client id", re.I)


def _engine() -> str | None:
    return os.environ.get("CONTAINER_ENGINE") or shutil.which("podman") or shutil.which("docker")


def _limits() -> list[str]:
    """--ulimit options within the host's hard limits (podman's defaults are above them here)."""
    import resource

    opts: list[str] = []
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if 0 < nofile < 1048576:
        opts += ["--ulimit", f"nofile=1024:{nofile}"]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    if nproc != resource.RLIM_INFINITY:  # at most 32768: runc was refused 65536 under a 96362 hard limit
        nproc = min(nproc, 32768)
        opts += ["--ulimit", f"nproc={nproc}:{nproc}"]
    return opts


class Image:
    """An image and its engine; ``run`` starts a container as users run it."""

    def __init__(self, engine: str, tag: str) -> None:
        self.engine, self.tag = engine, tag
        # crun fails where cgroups are in hybrid mode; runc does not (podman's global option)
        self.global_opts = ["--runtime", "runc"] if Path(engine).name == "podman" and shutil.which("runc") else []
        self.opts = _limits()
        # podman schedules HEALTHCHECK through systemd, which a CI container lacks (an error line per run)
        self.no_healthcheck = ["--no-healthcheck"] if Path(engine).name == "podman" else []

    def run_args(self, *args: str, mounts: tuple[str, ...] = (), name: str | None = None,
                 entrypoint: str | None = None, user: str = UID, env: tuple[str, ...] = ()) -> list[str]:
        cmd = [self.engine, *self.global_opts, "run", "--rm", *self.opts, *self.no_healthcheck, "--user", user, "--read-only",
               "--tmpfs", "/tmp:rw,exec,size=2g", "--network", "none"]
        for m in mounts:
            cmd += ["-v", m]
        for e in env:
            cmd += ["-e", e]
        if name:
            cmd += ["--name", name]
        if entrypoint:
            cmd += ["--entrypoint", entrypoint]
        return [*cmd, self.tag, *args]

    def run(self, *args: str, timeout: float = 900, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.run_args(*args, **kw), capture_output=True, text=True, timeout=timeout)

    def sh(self, script: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run("-c", script, entrypoint="/bin/bash", **kw)


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    engine = _engine()
    wanted = os.environ.get("BUSI_TEST_IMAGE")
    if engine is None:
        if wanted:
            pytest.fail(f"BUSI_TEST_IMAGE={wanted} but no podman or docker here")
        pytest.skip("no container engine here (apt-get install podman runc; .ci/run does it)")
    tag = wanted or "busi:0.1.0"
    found = subprocess.run([engine, "image", "inspect", tag], capture_output=True, text=True)
    if found.returncode != 0:
        if wanted:
            pytest.fail(f"BUSI_TEST_IMAGE={wanted}: {engine} has no such image: {found.stderr[-500:]}")
        pytest.skip(f"no image {tag} here (make image builds it; .ci/run does)")
    yield Image(engine, tag)


def _assert_quiet(*outputs: str) -> None:
    """No job may try to send usage data: no OpenVINO telemetry line in any output."""
    for text in outputs:
        assert not TELEMETRY.search(text), TELEMETRY.search(text)


def test_the_smoke_test_passes_inside_the_image(image: Image) -> None:
    r = image.run("smoke-test")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "smoke-test: OK" in r.stderr
    _assert_quiet(r.stdout, r.stderr)


def test_the_image_holds_no_test_data_repository_or_compiler(image: Image) -> None:
    r = image.sh("for c in gcc cc g++ c++ cmake make; do command -v $c && exit 3; done; id -u")
    assert r.returncode == 0, f"a compiler in the image: {r.stdout}{r.stderr}"
    assert r.stdout.strip() == "12345"
    r = image.sh("ls -A /opt/busi/src /opt/busi")
    listed = set(r.stdout.split())
    assert {"busi", "job", "containers", "pyproject.toml", "bin", "weights"} <= listed, r.stdout
    assert not {".git", ".venv", "runs", "tests", "image-inputs", "wheels", "data"} & listed, listed
    r = image.sh("find / -xdev \\( -name .git -o -name .venv -o -name 'busi-sample*' -o -name '*.png' \\) "
                 "-not -path '*/site-packages/*' -not -path '/usr/share/*' 2>/dev/null; true")
    assert r.stdout.strip() == "", f"test data or a repository in the image: {r.stdout[:500]}"
    size = subprocess.run([image.engine, "image", "inspect", "--format", "{{.Size}}", image.tag], capture_output=True,
                          text=True).stdout.strip()
    print(f"image {image.tag}: {int(size) / 1e6:.0f} MB")  # noqa: T201 (the size, in the test log)


def test_imagenet_weights_resolve_inside_the_image(image: Image) -> None:
    """model.weights: imagenet finds the file the build installed (BUSI_TEST_WEIGHTS: the
    legacy-HDF5 file .ci/run made for the build, where the real one cannot be downloaded)."""
    r = image.run("config", "/opt/busi/job/busi.yaml", "--set", "data.source=x.zip", "--set", "output.dir=/tmp/r")
    assert r.returncode == 0, r.stderr
    code = ("import hashlib, sys; from busi.model.weights import resolve_weights; p = resolve_weights('imagenet'); "
            "print(p); print(hashlib.sha256(p.read_bytes()).hexdigest())")
    r = image.run("-c", code, entrypoint="/opt/busi/bin/python")
    assert r.returncode == 0, r.stderr[-2000:]
    path, digest = r.stdout.split()
    assert path == "/opt/busi/weights/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    expected = os.environ.get("BUSI_TEST_WEIGHTS")
    if expected:
        import hashlib

        assert digest == hashlib.sha256(Path(expected).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained_in_image(image: Image, sample_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A training job on the real BUSI sample inside the image, as an arbitrary UID with a
    read-only root file system; the output on a bind mount. ResNet50 (the image's prediction is
    compared with the venv's image by image), fine-tuning conv5 on the feature cache."""
    out = tmp_path_factory.mktemp("image-out")
    os.chmod(out, 0o777)  # the container's UID 12345 writes here
    r = image.run("/opt/busi/job/demo.yaml", "--set", "data.source=/data/busi-sample.zip",
                  "--set", "output.dir=/out/run", "--set", "data.staging_dir=/tmp/staging",
                  "--set", "train.finetune.epochs=1", "--set", "train.finetune.unfreeze=conv5",
                  "--set", "data.image_size=64",
                  mounts=(f"{sample_zip}:/data/busi-sample.zip:ro", f"{out}:/out"))
    return {"out": out / "run", "proc": r, "root": out}


def test_training_on_the_busi_sample_writes_a_complete_run_owned_by_the_user(trained_in_image: dict[str, Any]) -> None:
    from busi.files.rundir import RUN_FILES

    r, run = trained_in_image["proc"], trained_in_image["out"]
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    missing = [rel for rel in RUN_FILES.values() if not (run / rel).exists()]
    assert not missing, missing
    assert json.loads((run / "manifest.json").read_text())["status"] == "completed"
    owners = {p.stat().st_uid for p in run.rglob("*")}
    assert owners == {12345}, owners
    _assert_quiet(r.stdout, r.stderr)


def test_prediction_in_the_image_matches_the_venv(image: Image, trained_in_image: dict[str, Any], sample_zip: Path,
                                                  tmp_path: Path) -> None:
    """The same model, the same folder: the image's busi and this checkout's give the same labels
    and, on the same engine and precision, probabilities within float32's tolerance."""
    import zipfile

    run, root = trained_in_image["out"], trained_in_image["root"]
    images = tmp_path / "images"
    with zipfile.ZipFile(sample_zip) as z:
        for name in z.namelist():
            if name.endswith(".png") and "_mask" not in name and "/benign/" in name:
                target = images / Path(name).name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(name))
    os.chmod(tmp_path, 0o777)
    r = image.run("predict", "--model", "/out/run", "--input", "/in", "--output", "/preds/image.csv",
                  "--engine", "openvino", "--precision", "float32",
                  mounts=(f"{root}:/out:ro", f"{images}:/in:ro", f"{tmp_path}:/preds"))
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_quiet(r.stdout, r.stderr)
    local = run_cli("predict", "--model", str(run), "--input", str(images), "--output", str(tmp_path / "venv.csv"),
                    "--engine", "openvino", "--precision", "float32")
    assert local.returncode == 0, local.stderr[-3000:]

    def rows(p: Path) -> dict[str, dict[str, str]]:
        with p.open(newline="") as fh:
            return {Path(r["path"]).name: r for r in csv.DictReader(fh)}

    a, b = rows(tmp_path / "image.csv"), rows(tmp_path / "venv.csv")
    assert set(a) == set(b) and len(a) > 5
    probs = [c for c in next(iter(a.values())) if c.startswith("prob_")]
    assert all(a[k]["label"] == b[k]["label"] for k in a)
    np.testing.assert_allclose([[float(a[k][c]) for c in probs] for k in sorted(a)],
                               [[float(b[k][c]) for c in probs] for k in sorted(a)], atol=1e-4)


def test_stop_checkpoints_exits_75_and_the_same_run_resumes(image: Image, synth_data: Any, tmp_path: Path) -> None:
    """`podman stop -t 30` during training: SIGTERM through tini reaches busi, which checkpoints
    and exits 75; the same `run` again resumes and completes, every epoch once. The stop lands
    mid-epoch on a machine of any speed: the run waits before its third step until it is
    signalled (the test hook ``BUSI_FAIL_AT_STEP=0:3:wait``), and the test stops the container
    once the run says so. The small model: the machinery is under test (test_resume.py
    compares a resumed run with an uninterrupted one)."""
    data = synth_data(10, 32, 2)
    os.chmod(tmp_path, 0o777)
    name = f"busi-stop-{os.getpid()}"
    epochs = 2
    job = ("/opt/busi/job/demo.yaml", "--set", "data.source=/data", "--set", "output.dir=/out/run",
           "--set", "data.image_size=32", "--set", "train.batch_size=4", "--set", "train.finetune.epochs=0",
           "--set", f"train.head.epochs={epochs}", "--set", f"train.head.patience={epochs}",
           "--set", "train.quantize=none", *SMALL)
    mounts = (f"{data}:/data:ro", f"{tmp_path}:/out")
    proc = subprocess.Popen(image.run_args(*job, mounts=mounts, name=name, env=("BUSI_FAIL_AT_STEP=0:3:wait",)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen: list[str] = []
    for line in proc.stderr:  # until the run waits at its step (or ends: the asserts below say how)
        seen.append(line)
        if "waiting at step 3 for a stop signal" in line:
            break
    subprocess.run([image.engine, *image.global_opts, "stop", "-t", "30", name], capture_output=True, timeout=120)
    _, rest = proc.communicate(timeout=300)
    err = "".join(seen) + rest
    assert proc.returncode == 75, err[-3000:]
    assert "received SIGTERM" in err
    assert (tmp_path / "run" / "checkpoint" / "latest.json").is_file()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and "at epoch 1, step 3" in manifest["interrupted"]
    again = image.run(*job, mounts=mounts, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stderr
    with (tmp_path / "run" / "history.csv").open(newline="") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == list(range(1, epochs + 1))
    _assert_quiet(err, again.stderr)


def test_horovod_two_ranks_in_one_container_end_with_identical_weights(image: Image, synth_data: Any,
                                                                       tmp_path: Path) -> None:
    """`run IMAGE horovodrun --gloo -np 2 ...` as an arbitrary UID on a read-only root: the ranks
    agree on the weights (horovodrun's ~/.horovod cache lands in /tmp: the entrypoint's HOME).
    ``horovodrun --check-build`` (six TensorFlow starts, 37 s) runs only to explain a failure."""
    data = synth_data(8, 32, 0)
    os.chmod(tmp_path, 0o777)
    r = image.run("horovodrun", "--gloo", "-np", "2", "-H", "localhost:2", "/opt/busi/bin/busi-job", "train",
                  "/opt/busi/job/demo.yaml", "--set", "data.source=/data", "--set", "output.dir=/out/run",
                  "--set", "data.image_size=32", "--set", "train.batch_size=4", "--set", "train.head.epochs=2",
                  "--set", "train.finetune.epochs=0",  # tests/test_dist.py checks fine-tuning's allreduce
                  "--set", "train.quantize=none", *SMALL,
                  mounts=(f"{data}:/data:ro", f"{tmp_path}:/out"))
    if r.returncode != 0:
        check = image.run("horovodrun", "--check-build")
        pytest.fail(f"horovodrun exited {r.returncode}: {(r.stdout + r.stderr)[-3000:]}\n"
                    f"horovodrun --check-build: {check.stdout}{check.stderr[-1000:]}")
    sums = set(re.findall(r"final weights sha256 ([0-9a-f]{64})", r.stdout + r.stderr))
    assert len(sums) == 1, f"ranks disagree: {sums}"
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["distributed"]["size"] == 2
    _assert_quiet(r.stdout, r.stderr)
