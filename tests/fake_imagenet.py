"""A stand-in for Keras' ImageNet ResNet50 (no top) weights file, which cannot be downloaded on
the CI machine: the same file name and legacy HDF5 layout, seeded random weights.

    python tests/fake_imagenet.py OUT.h5      # .ci/run: the weights file the CI image installs

``model.weights: imagenet`` finds it (``BUSI_WEIGHTS_DIR``) and loads it into the backbone as
it would the real one (tests/test_model.py, tests/test_image.py)."""

from __future__ import annotations

import sys
from pathlib import Path

NAME = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"


def write_fake_imagenet_weights(path: Path, seed: int = 0) -> Path:
    import h5py
    import keras
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    keras.utils.set_random_seed(seed)
    backbone = keras.applications.ResNet50(include_top=False, weights=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        save_weights_to_hdf5_group(f, backbone)
    return path


if __name__ == "__main__":
    print(write_fake_imagenet_weights(Path(sys.argv[1])))  # noqa: T201
