"""Where the backbone's weights come from: ``imagenet`` (the backbone's Keras file, staged
locally, never downloaded at run time: compute nodes have no internet), a path, or ``none``.

``imagenet`` looks for the file by the name Keras gives it (``busi.model.backbones``:
``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``, ``mobilenet_2_5_224_tf_no_top.h5``,
...) in ``$BUSI_WEIGHTS_DIR`` (the container image sets it to the files it ships), then Keras'
own cache (``$KERAS_HOME/models``). A missing file is a configuration error (exit 2) that says
how to stage it, never a silent fall-back to random weights. A file that is there but wrong (cut
short, another backbone's, another hash than ``model.weights_sha256`` or than the one Keras lists
for its own file) is a data error (exit 3) naming it. The file's sha256 goes into the manifest
and the model card.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from busi.errors import BusiError, DataError, WeightsError
from busi.files.digest import file_digest, file_sha256
from busi.model.backbones import Backbone, backbone

IMAGENET_FILE = backbone("resnet50").weights_file()  # the default backbone's file (the image ships it)

log = logging.getLogger("busi")

# Where Keras publishes each backbone's files (keras.applications' own addresses)
KERAS_WEIGHTS_URL = {
    "ResNet50": "https://storage.googleapis.com/tensorflow/keras-applications/resnet/",
    "MobileNet": "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/",
    "MobileNetV2": "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/",
    "EfficientNet": "https://storage.googleapis.com/keras-applications/",
    "ConvNeXt": "https://storage.googleapis.com/tensorflow/keras-applications/convnext/",
}


@dataclass(frozen=True)
class WeightsFile:
    """The weights a model is built from: the file and its sha256 (recorded with the run)."""

    path: Path
    sha256: str


class FetchError(BusiError):
    """``fetch-weights`` could not download a file (no network, a proxy, a refused address)."""

    exit_code = 1


def imagenet_search_dirs(env: dict[str, str] | None = None) -> list[Path]:
    """Where ``weights: imagenet`` is looked up, in order: $BUSI_WEIGHTS_DIR, Keras' cache."""
    env = dict(os.environ) if env is None else env
    dirs = []
    if env.get("BUSI_WEIGHTS_DIR"):
        dirs.append(Path(env["BUSI_WEIGHTS_DIR"]))
    keras_home = Path(env.get("KERAS_HOME", Path.home() / ".keras"))
    dirs.append(keras_home / "models")
    return dirs


def find_weights(setting: str, backbone_name: str = "resnet50", alpha: float = 1.0, image_size: int = 224,
                 env: dict[str, str] | None = None) -> Path | None:
    """The weights file ``setting`` names (``imagenet``: the backbone's Keras file, found
    locally), or None for ``none``. WeightsError (exit 2) says how to stage a missing one."""
    if setting.lower() == "none":
        return None
    if setting.lower() == "imagenet":
        name = backbone(backbone_name).weights_file(alpha, image_size)
        dirs = imagenet_search_dirs(env)
        for d in dirs:
            if (d / name).is_file():
                return d / name
        looked = ", ".join(str(d) for d in dirs)
        raise WeightsError(
            f"model.weights: imagenet weights file {name} ({backbone_name}) not found (looked in {looked}). "
            f"Compute nodes have no internet: on a machine with internet run "
            f"`busi-job fetch-weights --backbone {backbone_name} --dir DIR`, copy DIR to the cluster and export "
            "BUSI_WEIGHTS_DIR=DIR (the container image ships the files its build fetched), or set model.weights to a "
            "file path or to none"
        )
    p = Path(os.path.expanduser(setting))
    if not p.is_file():
        raise WeightsError(f"model.weights: file {p} not found; give an existing weights file, imagenet or none")
    return p


def check_weights(path: Path, expected_sha256: str | None = None, b: Backbone | None = None) -> WeightsFile:
    """``path`` with its sha256, checked against ``expected_sha256`` (``model.weights_sha256``):
    DataError (exit 3) naming the file where it differs (another file, or one cut short or
    changed in a copy). A file by Keras' own name whose hash is not the one Keras lists for it
    is logged as such (a converted or stand-in file can carry that name); whether it fits the
    network is what loading it decides (``busi.model.network``)."""
    sha = file_sha256(path)
    if expected_sha256 is not None and sha != expected_sha256.lower():
        raise DataError(path, f"sha256 {sha}, but model.weights_sha256 is {expected_sha256.lower()}: the file is "
                        "another one, or was cut short or changed in a copy; copy it again or fix the key")
    if b is not None and b.weights_hash is not None and path.name == b.weights_file():
        algorithm = "sha256" if len(b.weights_hash) == 64 else "md5"
        got = sha if algorithm == "sha256" else file_digest(path, algorithm)
        if got != b.weights_hash:
            log.warning("weights: %s has %s %s, not the %s Keras lists for its file of that name: not Keras' "
                        "published file (a copy cut short fails to load; a converted file loads)", path, algorithm,
                        got, b.weights_hash)
    return WeightsFile(path, sha)


def resolve_weights(setting: str, env: dict[str, str] | None = None, backbone_name: str = "resnet50",
                    alpha: float = 1.0, image_size: int = 224) -> Path | None:
    """``find_weights``: the file a job's weights setting names (kept for its callers)."""
    return find_weights(setting, backbone_name, alpha, image_size, env)


def fetch_imagenet_weights(target_dir: str | Path, backbones: Sequence[str] = ("resnet50",),
                           alpha: float = 1.0) -> list[Path]:
    """Download each backbone's ImageNet (no top) file into ``target_dir`` by Keras' name,
    checked against Keras' hash where it lists one (needs internet). FetchError where a download
    fails, naming the file, the address and what to do instead."""
    import keras

    target = Path(target_dir).resolve()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FetchError(f"fetch-weights --dir {target}: cannot create it ({e.strerror or e})") from None
    out = []
    for name in backbones:
        b = backbone(name)
        file = b.weights_file(alpha if len(b.alphas) > 1 else 1.0)
        family = next(k for k in KERAS_WEIGHTS_URL if b.application.startswith(k))
        url = KERAS_WEIGHTS_URL[family] + file
        try:
            path = keras.utils.get_file(file, url, cache_dir=str(target), cache_subdir=".", file_hash=b.weights_hash)
        except Exception as e:  # urllib, ssl, socket and Keras' own errors: no network is the usual one
            (target / file).unlink(missing_ok=True)  # never a partial file under the name a job looks for
            raise FetchError(
                f"fetch-weights: cannot download {file} ({name}) from {url}: {type(e).__name__}: {str(e)[:200]}. "
                f"This machine cannot reach it: download the file on a machine that can (the same command, or the "
                f"address with any browser), copy it into {target} or a folder named by BUSI_WEIGHTS_DIR, or point "
                "model.weights at the file"
            ) from None
        out.append(Path(path))
    return out
