#!/usr/bin/env bash
# Build and install Horovod 0.28.1 for TensorFlow into one Python environment.
#
#   PYTHON=.venv/bin/python scripts/build_horovod.sh      # `make horovod` runs this
#
# Why a script: 0.28.1 is the last Horovod release and it is an sdist only. Against TF >= 2.16
# its build fails in horovod/tensorflow/xla_mpi_ops.cc (the XLA headers it includes are no
# longer shipped), so we download the sdist, compile that file's XLA part out (busi uses no XLA
# ops) and build from source. The same script serves the venv, CI and the container recipes:
# the only input is $PYTHON.
#
# Controllers: Gloo always (horovodrun --gloo, no MPI needed); MPI as well when `mpicxx` is on
# PATH (apt-get install -y openmpi-bin libopenmpi-dev), for mpirun/srun --mpi launches.
# Other HOROVOD_* build variables in the environment (e.g. HOROVOD_GPU_OPERATIONS=NCCL on a GPU
# image) are passed through to the build.
#
# One wheel, built once: the compiled wheel is cached under $HOROVOD_WHEEL_CACHE (default
# ~/.cache/busi/wheels) in a folder named by the Horovod, TensorFlow and Python versions, the
# machine and the controllers (horovod-0.28.1-tf2.21.0-cp311-x86_64-gloo/). A later run for the
# same versions installs that wheel instead of compiling (the venv, and the image build, which
# copies it into its build context: containers/build-image.sh). WHEEL_ONLY=1 builds (or finds)
# the wheel and prints its path without installing it.
#
# Idempotent: does nothing when `import horovod.tensorflow` works and `horovodrun --check-build`
# lists TensorFlow. FORCE=1 rebuilds (and replaces the cached wheel).
set -euo pipefail

PYTHON="${PYTHON:-.venv/bin/python}"
VERSION="0.28.1"
PATCH_FILE="horovod/tensorflow/xla_mpi_ops.cc"
PATCH_FROM='#if TENSORFLOW_VERSION >= 2006000000'
PATCH_TO='#if TENSORFLOW_VERSION >= 2006000000 \&\& !defined(HOROVOD_NO_XLA_OPS)'

say() { echo "build_horovod: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

command -v "$PYTHON" >/dev/null 2>&1 || die "PYTHON=$PYTHON is not an executable python (run 'make install' first?)"

# horovodrun of this environment, found through $PYTHON (its scripts folder may not be on PATH).
horovodrun() {
    "$PYTHON" -c 'import sys; from horovod.runner.launch import run_commandline; sys.argv[0] = "horovodrun"; run_commandline()' "$@"
}

# True when Horovod imports with its TensorFlow ops; leaves the --check-build report in $report.
# (--check-build loads each extension in a subprocess: about half a minute, so run it once.)
report=""
built_ok() {
    "$PYTHON" -c 'import horovod.tensorflow' >/dev/null 2>&1 || return 1
    report="$(TF_CPP_MIN_LOG_LEVEL=3 horovodrun --check-build 2>/dev/null)" || return 1
    grep -q '\[X\] TensorFlow' <<<"$report"
}

# The cache folder for this environment's versions (TensorFlow read from the installed package's
# metadata: importing TensorFlow takes seconds).
tf_version="$("$PYTHON" -c 'from importlib.metadata import version, PackageNotFoundError
for name in ("tensorflow-cpu", "tensorflow", "tensorflow-gpu"):
    try:
        print(version(name)); break
    except PackageNotFoundError:
        pass' 2>/dev/null || true)"
py_tag="$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
controllers="gloo"
command -v mpicxx >/dev/null 2>&1 && controllers="mpi-gloo"
wheel_dir="${HOROVOD_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/busi/wheels}/horovod-$VERSION-tf${tf_version:-unknown}-$py_tag-$(uname -m)-$controllers"
cached_wheel() { compgen -G "$wheel_dir/horovod-$VERSION-*.whl" | head -n1; }

if [[ "${WHEEL_ONLY:-0}" != 1 && "${FORCE:-0}" != 1 ]] && built_ok; then
    say "horovod already built with TensorFlow support for $PYTHON; nothing to do (FORCE=1 rebuilds)"
    echo "$report"
    exit 0
fi

if [[ "${FORCE:-0}" != 1 && -n "$(cached_wheel)" ]]; then
    if [[ "${WHEEL_ONLY:-0}" == 1 ]]; then
        cached_wheel
        exit 0
    fi
    say "installing the cached wheel $(cached_wheel)"
    "$PYTHON" -m pip install --quiet "$(cached_wheel)"
    built_ok || die "the cached wheel $(cached_wheel) installed, but 'horovodrun --check-build' does not list TensorFlow; FORCE=1 rebuilds it"
    echo "$report"
    exit 0
fi

"$PYTHON" -c 'import tensorflow' 2>/dev/null || die "TensorFlow is not importable by $PYTHON; install it first (make install)"
command -v cmake >/dev/null 2>&1 || die "cmake not found on PATH (apt-get install -y cmake)"
command -v g++ >/dev/null 2>&1 || die "g++ not found on PATH (apt-get install -y g++)"

work="$(mktemp -d "${TMPDIR:-/tmp}/busi-horovod.XXXXXX")"
trap 'rm -rf "$work"' EXIT

say "downloading the horovod==$VERSION sdist"
"$PYTHON" -m pip download --quiet "horovod==$VERSION" --no-deps --no-binary :all: -d "$work"
tar -xzf "$work/horovod-$VERSION.tar.gz" -C "$work"
src="$work/horovod-$VERSION"

# The patch: guard the XLA ops behind a macro we define. Fail loudly if the line is not there
# exactly once (a different sdist would need a different patch, not a silently broken build).
target="$src/$PATCH_FILE"
[[ -f "$target" ]] || die "$PATCH_FILE not found in the sdist"
count="$(grep -cxF "$PATCH_FROM" "$target" || true)"
[[ "$count" == 1 ]] || die "expected the line '$PATCH_FROM' once in $PATCH_FILE, found it $count times"
sed -i "s|^${PATCH_FROM}\$|${PATCH_TO}|" "$target"
grep -qxF '#if TENSORFLOW_VERSION >= 2006000000 && !defined(HOROVOD_NO_XLA_OPS)' "$target" ||
    die "patching $PATCH_FILE failed"
say "patched $PATCH_FILE: $(grep -nF 'HOROVOD_NO_XLA_OPS' "$target")"

if command -v mpicxx >/dev/null 2>&1; then
    mpi_var="HOROVOD_WITH_MPI=1"
    say "mpicxx found: building with MPI and Gloo"
else
    mpi_var="HOROVOD_WITHOUT_MPI=1"
    say "no mpicxx on PATH: building with Gloo only (launch with horovodrun --gloo)"
fi

# --no-build-isolation builds against the TensorFlow already installed (its headers and ABI);
# setup.py needs these at build time.
"$PYTHON" -m pip install --quiet setuptools wheel packaging

say "building the wheel (a few minutes; MAKEFLAGS=${MAKEFLAGS:--j$(nproc)}) into $wheel_dir"
mkdir -p "$work/wheel"
env CXXFLAGS="${CXXFLAGS:-} -DHOROVOD_NO_XLA_OPS" \
    HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITH_GLOO=1 \
    "$mpi_var" MAKEFLAGS="${MAKEFLAGS:--j$(nproc)}" \
    "$PYTHON" -m pip wheel --quiet --no-build-isolation --no-deps --no-cache-dir -w "$work/wheel" "$src"
built="$(compgen -G "$work/wheel/horovod-*.whl" | head -n1)"
[[ -n "$built" ]] || die "pip wheel wrote no horovod wheel"
mkdir -p "$wheel_dir"
rm -f "$wheel_dir"/horovod-*.whl
cp "$built" "$wheel_dir/"   # the cache: the next venv or image of these versions installs it
if [[ "${WHEEL_ONLY:-0}" == 1 ]]; then
    cached_wheel
    exit 0
fi
"$PYTHON" -m pip install --quiet "$(cached_wheel)"

built_ok || die "horovod installed but 'horovodrun --check-build' does not list TensorFlow:
$report"
echo "$report"
say "done"
