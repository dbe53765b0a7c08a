#!/usr/bin/env bash
# Install busi into a self-contained prefix: the ONE install script that both container recipes
# (containers/Dockerfile and containers/busi*.def) run, and that tests/test_containers.py runs for
# real, so the images and the tested install cannot drift apart.
#
#   containers/install.sh [SRC_DIR]          # SRC_DIR: the busi source tree (default: this checkout)
#
# Environment (all optional):
#   BUSI_PREFIX=/opt/busi       the venv (python3 -m venv); busi-job ends up in $BUSI_PREFIX/bin
#   PYTHON=python3              the interpreter that creates the venv
#   TF_PACKAGE=                 empty: the TensorFlow pinned in pyproject.toml (tensorflow-cpu);
#                               else that requirement instead, e.g. 'tensorflow[and-cuda]==2.21.0'
#   BUSI_WITH_HOROVOD=0         1: Horovod into the venv: the wheel in HOROVOD_WHEEL_DIR where there
#                               is one (the Dockerfile's builder stage made it), else compiled
#                               (scripts/build_horovod.sh)
#   HOROVOD_WHEEL_DIR=          a folder holding a horovod-*.whl built for this Python and TensorFlow
#   BUSI_WHEELHOUSE=            install offline: every wheel from this folder (pip download
#                               on a machine with internet), nothing from the network
#   BUSI_FETCH_WEIGHTS=0        1: download the ImageNet weights of BUSI_BACKBONES into BUSI_WEIGHTS_DIR
#   BUSI_BACKBONES=resnet50     comma-separated backbones whose weights to download (busi-job fetch-weights)
#                               (needs internet: image build time, never on compute nodes); a
#                               weights file already there (a local file the build copied) is kept
#   BUSI_WEIGHTS_DIR=$BUSI_PREFIX/weights
#   BUSI_DEPS_ONLY=0            1: only the venv, busi's declared dependencies (pyproject.toml, with
#                               TF_PACKAGE's swap) and a Horovod wheel from HOROVOD_WHEEL_DIR; SRC_DIR
#                               needs only pyproject.toml. The Dockerfile runs this before it copies
#                               the source, so a source change rebuilds a layer of megabytes, not the
#                               2.3 GB of TensorFlow and the rest; the full install then finds them.
#
# What it lays out under the prefix:
#   bin/busi-job                 the CLI (non-editable install of SRC_DIR)
#   bin/busi-smoke-test          containers/smoke-test.sh: a tiny synthetic train + predict
#   job/entrypoint.sh            the container entrypoint (job/entrypoint.sh)
#   job/*.yaml                   the shipped job files (demo.yaml, busi.yaml, predict.yaml)
#   job/overlays/*.yaml          overlays layered over them (smoke, gpu, bigmem, site-example)
#   weights/                     ImageNet weights, when BUSI_FETCH_WEIGHTS=1
# and ends with a smoke check (busi-job --version/--help, TensorFlow imports, the demo job
# validates; Horovod and the weights file when asked for).
set -euo pipefail

say() { echo "install.sh: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="$(cd "${1:-$here/..}" && pwd)"
prefix="${BUSI_PREFIX:-/opt/busi}"
base_python="${PYTHON:-python3}"
tf_package="${TF_PACKAGE:-}"
with_horovod="${BUSI_WITH_HOROVOD:-0}"
fetch_weights="${BUSI_FETCH_WEIGHTS:-0}"
backbones="${BUSI_BACKBONES:-resnet50}"
weights_dir="${BUSI_WEIGHTS_DIR:-$prefix/weights}"

deps_only="${BUSI_DEPS_ONLY:-0}"

[[ -f "$src/pyproject.toml" ]] || die "$src is not the busi source tree (no pyproject.toml)"
[[ "$deps_only" == 1 || -f "$src/job/entrypoint.sh" ]] || die "$src/job/entrypoint.sh is missing"
command -v "$base_python" >/dev/null 2>&1 || die "PYTHON=$base_python not found"

# 1. the venv
if [[ ! -x "$prefix/bin/python" ]]; then
    say "creating the venv $prefix ($("$base_python" --version 2>&1))"
    "$base_python" -m venv "$prefix"
fi
py="$prefix/bin/python"
pip=("$py" -m pip --disable-pip-version-check)
if [[ -n "${BUSI_WHEELHOUSE:-}" ]]; then
    say "installing offline from the wheelhouse $BUSI_WHEELHOUSE"
    pip+=(--no-index --find-links "$BUSI_WHEELHOUSE")
fi

# 2. busi's declared dependencies (pyproject.toml), TensorFlow swapped for TF_PACKAGE when one is
# given (tensorflow-cpu and tensorflow side by side would leave one package directory written by
# two distributions), then busi itself (a regular, non-editable install: the source can go away)
deps_text="$("$py" - "$src/pyproject.toml" "$tf_package" <<'EOF'
import re
import sys

try:
    import tomllib
except ImportError:  # Python 3.10: the TOML reader pip carries
    from pip._vendor import tomli as tomllib

with open(sys.argv[1], "rb") as f:
    requirements = tomllib.load(f)["project"]["dependencies"]
swap = sys.argv[2]
for req in requirements:
    name = re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")
    if not (swap and name in ("tensorflow", "tensorflow-cpu")):
        print(req)
if swap:
    print(swap)
EOF
)"
mapfile -t deps <<<"$deps_text"
horovod_wheel="$(compgen -G "${HOROVOD_WHEEL_DIR:-/nonexistent}/horovod-*.whl" | head -n1 || true)"
if [[ "$deps_only" == 1 ]]; then
    say "installing busi's dependencies only (${tf_package:-TensorFlow as pinned in pyproject.toml})"
    "${pip[@]}" install "${deps[@]}"
    if [[ "$with_horovod" == 1 && -n "$horovod_wheel" ]]; then
        say "installing Horovod from $horovod_wheel"
        "${pip[@]}" install "$horovod_wheel"
    fi
    "$py" -c 'import tensorflow as tf; print(f"tensorflow {tf.__version__}")'
    say "dependencies installed in $prefix"
    exit 0
fi
if [[ -z "$tf_package" ]]; then
    say "installing busi from $src (TensorFlow as pinned in pyproject.toml)"
    "${pip[@]}" install "$src"
else
    say "installing busi from $src with $tf_package instead of the pinned TensorFlow"
    "${pip[@]}" install --no-deps "$src"
    "${pip[@]}" install "${deps[@]}"
fi

# 3. the entrypoint, the job files and the smoke test, at fixed places under the prefix
install -d "$prefix/job" "$prefix/bin"
install -m 0755 "$src/job/entrypoint.sh" "$prefix/job/entrypoint.sh"
install -m 0644 "$src"/job/*.yaml "$prefix/job/"
install -d "$prefix/job/overlays"
install -m 0644 "$src"/job/overlays/*.yaml "$prefix/job/overlays/"
install -m 0755 "$src/containers/smoke-test.sh" "$prefix/bin/busi-smoke-test"

# 4. Horovod (optional): a wheel built earlier, else minutes of C++ compiling
if [[ "$with_horovod" == 1 ]]; then
    if [[ -n "$horovod_wheel" ]]; then
        say "installing Horovod from $horovod_wheel"
        "${pip[@]}" install "$horovod_wheel"
    else
        say "building Horovod into $prefix"
        PYTHON="$py" bash "$src/scripts/build_horovod.sh"
    fi
fi

# 5. ImageNet weights (optional; needs internet)
weights_file="$weights_dir/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
if [[ -s "$weights_file" && "$backbones" == resnet50 ]]; then
    say "ImageNet weights already in place: $weights_file"
    chmod -R a+rX "$weights_dir"
    fetch_weights=0
fi
if [[ "$fetch_weights" == 1 ]]; then
    say "fetching the ImageNet weights of $backbones into $weights_dir"
    "$prefix/bin/busi-job" fetch-weights --backbone "$backbones" --dir "$weights_dir" ||
        die "no ImageNet weights (this machine cannot download them): build with BUSI_WEIGHTS_FILE=/path/to/$(basename "$weights_file") (a copy you have), or BUSI_FETCH_WEIGHTS=0 for an image without weights (jobs then need model.weights: none or a file)"
    chmod -R a+rX "$weights_dir"
fi

# 6. smoke check: what every later step relies on
say "smoke check"
"$prefix/bin/busi-job" --version
"$prefix/bin/busi-job" --help >/dev/null
"$py" -c 'import tensorflow as tf, keras; print(f"tensorflow {tf.__version__}, keras {keras.__version__}")'
"$prefix/bin/busi-job" config "$prefix/job/demo.yaml" >/dev/null
if [[ "$with_horovod" == 1 ]]; then
    "$py" -c 'import horovod, horovod.tensorflow; print(f"horovod {horovod.__version__}")'
fi
if [[ -s "$weights_file" ]]; then
    BUSI_WEIGHTS_DIR="$weights_dir" "$py" -c 'from busi.model.weights import resolve_weights; print("imagenet weights:", resolve_weights("imagenet"))'
fi
say "busi installed in $prefix"
