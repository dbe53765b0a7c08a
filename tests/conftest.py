"""Shared fixtures: the real BUSI sample (where present), synthetic datasets, a job-file writer."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SAMPLE_ZIP = REPO.parent / "shared" / "data" / "busi-sample.zip"
CLASSES = ("normal", "benign", "malignant")

# `make test` runs the suite on two pytest-xdist workers, one module per worker at a time
# (`--dist loadscope`). Modules start longest first, so the last one to start is short and
# the two workers finish together. Order only: every module also runs alone (`pytest tests/X.py`).
LONGEST_FIRST = ("test_resume", "test_slurm", "test_dist", "test_containers", "test_predict", "test_job",
                 "test_trainer", "test_features", "test_bench", "test_model")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        module = Path(str(item.fspath)).stem
        return LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a module stays as written


@pytest.fixture(scope="session")
def sample_zip() -> Path:
    """55 real BUSI images with masks; only in the project's CI workspace."""
    if not SAMPLE_ZIP.is_file():
        pytest.skip(f"{SAMPLE_ZIP} not present (the BUSI sample ships only beside the project's CI checkout)")
    return SAMPLE_ZIP


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset: 12 images per class, 48 px."""
    from busi.data.synth import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("synth") / "ds", per_class=12, size=48, seed=1)


@pytest.fixture
def write_job(tmp_path: Path) -> Callable[..., Path]:
    """Write a job file from a dict and return its path."""

    def _write(data: dict[str, Any], name: str = "job.yaml") -> Path:
        p = tmp_path / name
        p.write_text(yaml.safe_dump(data, sort_keys=False))
        return p

    return _write


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run ``busi-job`` in a real subprocess; returns the completed process (text output)."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "busi", *args],
        capture_output=True, text=True, env=full_env, cwd=cwd or REPO, timeout=timeout,
    )


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


def make_model_dir(root: Path, size: int = 32, classes: tuple[str, ...] = CLASSES, seed: int = 0) -> Path:
    """A run directory's model folder as training writes it (``busi.modeldir``, without the
    SavedModel), from a ``weights: none`` model: real weights, no training needed."""
    import keras

    from busi.artifacts import RunDir
    from busi.config import ModelConfig
    from busi.model import build_model
    from busi.modeldir import write_model_dir

    keras.utils.set_random_seed(seed)
    built = build_model(ModelConfig(weights="none"), size, classes)
    write_model_dir(RunDir(root), built.model, classes, size, "stretch", saved_model=False)
    return root


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
