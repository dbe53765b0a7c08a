"""Where the backbone's weights come from: ``imagenet`` (a locally staged Keras file, never
downloaded at run time: compute nodes have no internet), a path, or ``none``. A missing file is
an error (exit 2) that says how to stage it, never a silent fall-back to random weights."""

from __future__ import annotations

import os
from pathlib import Path

from busi.errors import WeightsError

IMAGENET_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + IMAGENET_FILE
IMAGENET_MD5 = "4d473c1dd8becc155b73f8504c6f6626"


def imagenet_search_dirs(env: dict[str, str] | None = None) -> list[Path]:
    """Where ``weights: imagenet`` is looked up, in order: $BUSI_WEIGHTS_DIR, Keras' cache."""
    env = dict(os.environ) if env is None else env
    dirs = []
    if env.get("BUSI_WEIGHTS_DIR"):
        dirs.append(Path(env["BUSI_WEIGHTS_DIR"]))
    keras_home = Path(env.get("KERAS_HOME", Path.home() / ".keras"))
    dirs.append(keras_home / "models")
    return dirs


def resolve_weights(setting: str, env: dict[str, str] | None = None) -> Path | None:
    """The weights file to load, or None for ``none``. WeightsError (exit 2) says how to stage it."""
    if setting.lower() == "none":
        return None
    if setting.lower() == "imagenet":
        dirs = imagenet_search_dirs(env)
        for d in dirs:
            if (d / IMAGENET_FILE).is_file():
                return d / IMAGENET_FILE
        looked = ", ".join(str(d) for d in dirs)
        raise WeightsError(
            f"model.weights: imagenet weights file {IMAGENET_FILE} not found (looked in {looked}). "
            "Compute nodes have no internet: on a machine with internet run "
            "`busi-job fetch-weights --dir DIR`, copy DIR to the cluster and export BUSI_WEIGHTS_DIR=DIR "
            "(the container images ship it already), or set model.weights to a file path or to none"
        )
    p = Path(os.path.expanduser(setting))
    if not p.is_file():
        raise WeightsError(f"model.weights: file {p} not found; give an existing weights file, imagenet or none")
    return p


def fetch_imagenet_weights(target_dir: str | Path) -> Path:
    """Download the ImageNet ResNet50 (no top) weights into target_dir (needs internet)."""
    import keras

    target = Path(target_dir).resolve()
    target.mkdir(parents=True, exist_ok=True)
    path = keras.utils.get_file(
        IMAGENET_FILE, IMAGENET_URL, cache_dir=str(target), cache_subdir=".", file_hash=IMAGENET_MD5
    )
    return Path(path)
