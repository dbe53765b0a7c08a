"""Shared fixtures and the test tiers.

Tiers (markers; every test has exactly one, from ``MODULE_TIER`` unless it is marked itself):

* ``unit``: no subprocess, no training; a few seconds at most. ``make test-fast`` runs these.
* ``integration``: trains a (tiny) model or starts busi or TensorFlow in subprocesses.
* ``system``: needs something beyond Python: a Slurm cluster, Horovod, a browser, an install
  into a prefix, a container engine. Each skips with its reason where that is absent.

A unit test that starts a subprocess fails (``_unit_tests_start_no_process``): the tiers stay true.

Shared, built once per session and only read by the tests that use them: ``trained_run`` (one
real ``busi-job train`` run, shared by every test that only reads a finished run, across
pytest-xdist workers), ``synth_data`` (synthetic datasets by parameters), the BUSI sample.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SAMPLE_ZIP = REPO.parent / "shared" / "data" / "busi-sample.zip"
CLASSES = ("normal", "benign", "malignant")
TIERS = ("unit", "integration", "system")

# The tier of a module's tests where a test does not say otherwise.
MODULE_TIER = {
    "test_job": "integration", "test_predict": "integration", "test_resume": "integration",
    "test_features": "integration", "test_trainer": "integration", "test_engines": "integration",
    "test_external": "integration", "test_cv": "integration", "test_bench": "integration",
    "test_cli_data": "integration", "test_quantize": "integration", "test_class_sets": "integration",
    "test_backbones": "integration", "test_slurm": "system", "test_report": "system", "test_benchmarks": "integration",
}

# `make test` runs the suite on pytest-xdist workers, one module per worker at a time
# (`--dist loadscope`). Modules start longest first, so the last one to start is short and the
# workers finish together; test_job first, so the shared trained run is built while the other
# workers run modules that do not need it (test_predict, test_engines and test_external do,
# later). Order only: every module also runs alone (`pytest tests/X.py`).
LONGEST_FIRST = ("test_job", "test_cluster", "test_image", "test_benchmarks", "test_resume", "test_slurm",
                 "test_containers", "test_dist", "test_backbones", "test_cv", "test_dicom", "test_trainer",
                 "test_features", "test_predict", "test_engines", "test_quantize", "test_public_sets",
                 "test_class_sets", "test_external", "test_table", "test_bench", "test_model", "test_runtime")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = Path(str(item.fspath)).stem
        if not any(item.get_closest_marker(t) for t in TIERS):
            item.add_marker(getattr(pytest.mark, MODULE_TIER.get(module, "unit")))

    def rank(item: pytest.Item) -> int:
        module = Path(str(item.fspath)).stem
        return LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a module stays as written


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``unit`` test that starts a subprocess fails, naming the tier it belongs to."""
    if request.node.get_closest_marker("unit") is None:
        return
    import platform

    # Keras asks platform.processor() when it is first imported, which runs `uname -p` once per
    # process: ask it now, before the guard, so that a module run alone behaves as in the suite.
    platform.processor()

    def refuse(self: Any, args: Any, *a: Any, **k: Any) -> None:
        raise AssertionError(f"a unit test starts no subprocess ({args!r}): mark it integration or system")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture(scope="session")
def sample_zip() -> Path:
    """55 real BUSI images with masks; only in the project's CI workspace."""
    if not SAMPLE_ZIP.is_file():
        pytest.skip(f"{SAMPLE_ZIP} not present (the BUSI sample ships only beside the project's CI checkout)")
    return SAMPLE_ZIP


@pytest.fixture(scope="session")
def horovod() -> None:
    """Skip unless Horovod imports with TensorFlow support (checked in a subprocess: it imports TF)."""
    import importlib.util

    if importlib.util.find_spec("horovod") is None:
        pytest.skip("horovod is not installed in this environment; build it with `make horovod`")
    proc = subprocess.run([sys.executable, "-c", "import horovod.tensorflow"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if proc.returncode != 0:
        pytest.skip(f"horovod.tensorflow does not import ({proc.stderr.strip().splitlines()[-1:]}); "
                    "rebuild it with `make horovod`")


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``make(per_class, size=32, seed=0)``: a synthetic BUSI-layout dataset, written once per
    parameter set and worker. Read-only: a test that changes files copies the dataset first."""
    from busi.data.synth import write_synthetic_dataset

    made: dict[tuple[int, int, int], Path] = {}

    def make(per_class: int, size: int = 32, seed: int = 0) -> Path:
        key = (per_class, size, seed)
        if key not in made:
            root = tmp_path_factory.mktemp(f"synth-{per_class}x{size}-{seed}")
            made[key] = write_synthetic_dataset(root / "ds", per_class=per_class, size=size, seed=seed)
        return made[key]

    return make


@pytest.fixture(scope="session")
def synth_small(synth_data: Callable[..., Path]) -> Path:
    """A small synthetic dataset: 12 images per class, 48 px."""
    return synth_data(12, 48, 1)


@pytest.fixture
def write_job(tmp_path: Path) -> Callable[..., Path]:
    """Write a job file from a dict and return its path."""

    def _write(data: dict[str, Any], name: str = "job.yaml") -> Path:
        p = tmp_path / name
        p.write_text(yaml.safe_dump(data, sort_keys=False))
        return p

    return _write


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run ``busi-job`` in a real subprocess, in a user's environment (TensorFlow's log level
    left to busi); returns the completed process (text output)."""
    full_env = {**{k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "busi", *args],
        capture_output=True, text=True, env=full_env, cwd=cwd or REPO, timeout=timeout,
    )


def run_main(*args: str, env: dict[str, str] | None = None,
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``busi-job ARGS`` in this process (``busi.cli.main``), with ``run_cli``'s result: its exit
    code, stdout and stderr (busi's log lines, as a batch log shows them). No new Python and
    TensorFlow start (3-5 s of CPU each, the largest cost of a tiny run), so tests of what busi
    writes and says run here; tests of the process itself (exit by signal, TensorFlow's own
    start-up lines, threads, the environment a batch system gives a job) keep ``run_cli``. What a
    run changes in this process is put back: the environment, the working folder, the root
    logger, the Keras precision policy and TensorFlow's op determinism (signal handlers: busi's
    Stopper restores its own)."""
    import contextlib
    import io
    import logging

    from busi.cli import main
    from busi.runtime.logs import DATEFMT, FORMAT, LibraryRecords

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter(FORMAT, DATEFMT))
    handler.addFilter(LibraryRecords())
    root = logging.getLogger()
    level, environ, here = root.level, dict(os.environ), os.getcwd()
    policy, deterministic = _tf_state()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        os.environ.update(env or {})
        os.chdir(cwd or REPO)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse's usage errors
                code = e.code if isinstance(e.code, int) else 1
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        os.chdir(here)
        os.environ.clear()
        os.environ.update(environ)
        _restore_tf_state(policy, deterministic)
    return subprocess.CompletedProcess([sys.executable, "-m", "busi", *args], code, out.getvalue(), err.getvalue())


def _tf_state() -> tuple[Any, bool]:
    """Keras's global precision policy and TensorFlow's op determinism, where TensorFlow is loaded."""
    if "tensorflow" not in sys.modules:
        return None, False
    import keras
    from tensorflow.python.framework import config  # the switch's reader is not in tf.config

    return keras.mixed_precision.global_policy(), config.is_op_determinism_enabled()


def _restore_tf_state(policy: Any, deterministic: bool) -> None:
    if "tensorflow" not in sys.modules:
        return
    import keras
    from tensorflow.python.framework import config

    keras.mixed_precision.set_global_policy(policy if policy is not None else "float32")
    if config.is_op_determinism_enabled() and not deterministic:
        config.disable_op_determinism()


# The model of the tests that check machinery (resuming, folds, class sets, data formats, launchers,
# faults), not ResNet50 and not accuracy: MobileNet at width 0.25 (0.2 M parameters against
# ResNet50's 23.5 M, so its saves, checkpoints and OpenVINO conversion take a tenth of the time)
# and no SavedModel (`output.saved_model: false`, 5-40 s of export). From random weights and a few
# epochs it gives every image the same probabilities (its ReLU6 features saturate), so a test that
# compares images' probabilities (ensembles, a frame against its PNG) keeps ResNet50. `trained_run`
# keeps `make demo`'s ResNet50 and the whole run-directory contract; tests/test_backbones.py and
# tests/test_model.py cover each backbone.
SMALL_MODEL = ("model.backbone=mobilenet", "model.alpha=0.25", "output.saved_model=false")
SMALL = tuple(arg for pair in SMALL_MODEL for arg in ("--set", pair))


# The one trained run of a test session (``trained_run``): `make demo`'s job on its data (60
# images per class at 64 px, 1 + 10 epochs from random weights), deterministic and calibrated,
# fine-tuning only ResNet50's last stage (``conv5``) on the feature cache of the stages before it:
# 42 s against 87 s for every layer, the same test accuracy (0.78 with seed 0; 0.74 and 0.78 with
# seeds 1 and 2; Intel Xeon with AMX, 2026-12-07). Smaller runs are not safe: with 30 images per
# class and BatchNorm trained from scratch, the moving statistics lag the weights, and on some
# CPUs (an Intel with AMX: float32 kernels that round differently) the epoch picked by val_loss
# predicted one class for everything.
TRAINED_DATA = {"per_class": 60, "size": 64, "seed": 0}
TRAINED_SETS = ("runtime.deterministic=true", "train.calibration=temperature", "train.finetune.unfreeze=conv5")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``{"out": run directory, "data": dataset, "stderr": the run's log}`` of one real
    ``busi-job train`` (a subprocess, as a batch system runs it), built once per test session:
    the first pytest-xdist worker that asks trains under a lock, the others wait and read the
    same finished run. Read-only: tests copy what they change."""
    from busi.data.synth import write_synthetic_dataset
    from busi.runtime.locks import exclusive_lock

    base = tmp_path_factory.getbasetemp()
    # under pytest-xdist each worker's base is a folder of the session's: share the session's
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "trained-run"
    root.mkdir(exist_ok=True)
    with exclusive_lock(root / ".lock", "the trained run of the tests", wait=True):
        done = root / "done.json"
        if not done.exists():
            data = write_synthetic_dataset(root / "data", **TRAINED_DATA)
            out = root / "run"
            sets = [f"--set={s}" for s in (f"data.source={data}", f"output.dir={out}", *TRAINED_SETS)]
            proc = run_cli("train", str(REPO / "job" / "demo.yaml"), *sets)
            done.write_text(json.dumps({"out": str(out), "data": str(data), "stderr": proc.stderr,
                                        "returncode": proc.returncode}))
        info = json.loads(done.read_text())
    assert info["returncode"] == 0, info["stderr"][-3000:]
    return {"out": Path(info["out"]), "data": Path(info["data"]), "stderr": info["stderr"]}


def linked_copies(src: Path, dest: Path, copies: int) -> int:
    """``copies`` hard-linked copies of every image under ``src`` (masks left out) in
    ``dest/copy-K/...``: more files to predict at no cost in disk or set-up, so a test that
    stops a run part-way has more work than any machine finishes before the stop arrives.
    Returns the number of files."""
    images = sorted(p for p in src.rglob("*.png") if "_mask" not in p.name)
    for k in range(copies):
        for p in images:
            target = dest / f"copy-{k:03d}" / p.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(p, target)
    return copies * len(images)


def make_model_dir(root: Path, size: int = 32, classes: tuple[str, ...] = CLASSES, seed: int = 0,
                   backbone: str = "resnet50", alpha: float = 1.0) -> Path:
    """A run directory's model folder as training writes it (``busi.model.folder``, without the
    SavedModel and the OpenVINO model), from a ``weights: none`` model: real weights, no training needed."""
    import keras

    from busi.config.schema import ModelConfig
    from busi.files.rundir import RunDir
    from busi.model.folder import write_model_dir
    from busi.model.network import build_model

    keras.utils.set_random_seed(seed)
    built = build_model(ModelConfig(backbone=backbone, alpha=alpha, weights="none"), size, classes)  # type: ignore[arg-type]
    write_model_dir(RunDir(root), built.model, classes, size, "stretch", saved_model=False, openvino=False,
                    backbone=backbone, alpha=alpha)
    return root


def spread_model(model: Any, size: int, classes: Sequence[str]) -> Any:
    """busi's model for ``model`` (a ModelConfig; random weights) with activations of a trained
    network's size, as ``BuiltModel``. A random MobileNet keeps BatchNorm's initial statistics
    (mean 0, variance 1) in inference mode, and each of its blocks then shrinks its input ~10x: the
    pooled features are ~1e-18 and every image's probabilities exactly 1/3, a network on which any
    two paths agree. So each BatchNorm's variance becomes the mean square of its input on 9 noise
    images, one value for the whole layer (layer by layer: MobileNet is one chain): every layer's
    output stays near 1, and a relative change of the input grows ~4x through the network
    (ResNet50: ~1.5x; per channel instead, the near-dead channels grow it ~100x). A training-mode
    step still moves the statistics: they are not the batch's."""
    import keras

    from busi.model.network import build_model

    built = build_model(model, size, tuple(classes))
    noise = np.random.default_rng(5).uniform(0, 255, (9, size, size, 3)).astype(np.float32)
    h = built.model.get_layer("preprocess")(noise)
    for layer in built.backbone.layers[1:]:  # after the input, each layer on the one before
        if isinstance(layer, keras.layers.BatchNormalization):
            seen = np.asarray(h, np.float64)
            variance = np.full(layer.moving_variance.shape, (seen**2).mean())
            layer.moving_variance.assign(variance.astype(layer.moving_variance.dtype))
        h = layer(h, training=False)
    return built


def read_tensorboard(folder: Path) -> dict[str, dict[str, list[tuple[int, Any]]]]:
    """A run's TensorBoard logs through TensorBoard's own reader (EventAccumulator):
    ``{run: {tag: [(step, value array), ...]}}`` for the runs (subfolders) of ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    out: dict[str, dict[str, list[tuple[int, Any]]]] = {}
    for run in sorted(p.name for p in folder.iterdir() if p.is_dir()):
        acc = EventAccumulator(str(folder / run), size_guidance={"tensors": 0})
        acc.Reload()
        out[run] = {tag: [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]
                    for tag in acc.Tags()["tensors"]}
    return out


def scalars(values: list[tuple[int, Any]]) -> list[tuple[int, float]]:
    """(step, value) pairs of a scalar tag, values rounded to 6 places (TensorBoard keeps float32)."""
    return [(step, round(float(v), 6)) for step, v in values]


PLAIN_KERAS = """
import sys
import numpy as np
import keras
model = keras.saving.load_model(sys.argv[1])   # safe_mode on, no custom objects
np.save(sys.argv[3], np.asarray(model.predict(np.load(sys.argv[2]), verbose=0)))
assert not [m for m in sys.modules if m == "busi" or m.startswith("busi.")], "busi was imported"
print("plain keras ok")
"""


def plain_keras_probabilities(model_file: Path, x: Any, work: Path) -> Any:
    """``model_file``'s probabilities for the batch ``x``, computed by a fresh Python that
    imports only Keras (and fails if anything imports busi)."""
    import numpy as np

    np.save(work / "plain-x.npy", x)
    (work / "plain.py").write_text(PLAIN_KERAS)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    r = subprocess.run([sys.executable, str(work / "plain.py"), str(model_file), str(work / "plain-x.npy"),
                        str(work / "plain-p.npy")], capture_output=True, text=True, cwd=work, env=env, timeout=600)
    assert r.returncode == 0 and "plain keras ok" in r.stdout, r.stderr[-3000:]
    return np.load(work / "plain-p.npy")


# ----------------------------------------------------------- a real browser (busi.report)


def chromium() -> str:
    """Headless Chromium's path (the test skips where there is none)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium here (apt-get install chromium; .ci/run installs it)")


def render(page: Path, out: Path) -> tuple[str, np.ndarray]:
    """The DOM Chromium builds from ``page`` and a screenshot of it (no network: a data-only page)."""
    from PIL import Image

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             "--no-first-run", "--user-data-dir=" + str(out / "profile")]
    url = page.resolve().as_uri()
    dom = subprocess.run([chromium(), *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = out / "shot.png"
    r = subprocess.run([chromium(), *flags, f"--screenshot={shot}", "--window-size=1200,2400", url],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    with Image.open(shot) as im:
        return dom.stdout, np.asarray(im.convert("RGB"))


def assert_rendered(page: Path, tmp_path: Path, values: list[str]) -> str:
    text = page.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text, "the page must need no network"
    dom, shot = render(page, tmp_path)
    for v in values:
        assert v in dom, f"{v!r} not in the rendered page"
    assert shot.std() > 10, "the screenshot is blank"
    # the inlined plots were decoded: the reliability diagram's histogram green (matplotlib's
    # tab:green, 44,160,44) fills thousands of pixels of the screenshot
    green = np.all(np.abs(shot.astype(int) - (44, 160, 44)) < 12, axis=-1)
    assert green.sum() > 1000, "no plot pixels in the screenshot"
    return dom
