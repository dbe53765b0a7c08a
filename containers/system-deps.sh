#!/usr/bin/env bash
# System packages of the images (Debian or Ubuntu bases), run as root by both recipes
# (containers/Dockerfile, containers/busi*.def) before containers/install.sh:
#
#   system-deps.sh runtime    what a running image needs
#   system-deps.sh build      that, and what compiling Horovod needs (the Dockerfile's builder stage)
#   system-deps.sh purge      remove the build-only packages again (Apptainer's single stage)
#
#   - tini: PID 1 in the Docker image; forwards SIGTERM to busi-job and reaps children
#   - openmpi-bin: Horovod's MPI controller at run time (mpirun, srun --mpi)
#   - build-essential, cmake, libopenmpi-dev: compiling Horovod (scripts/build_horovod.sh)
#   - python3, python3-venv (python3-dev to build): only where the base has no Python (the CUDA bases)
# Versions are those of the base image's distribution release: the base image tag pins them.
set -euo pipefail

mode="${1:-runtime}"
export DEBIAN_FRONTEND=noninteractive
runtime=(ca-certificates tini openmpi-bin)
build=(build-essential cmake libopenmpi-dev)

case "$mode" in
    runtime | build)
        packages=("${runtime[@]}")
        [[ "$mode" == build ]] && packages+=("${build[@]}")
        if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
            packages+=(python3 python3-venv)
            [[ "$mode" == build ]] && packages+=(python3-dev)
        fi
        apt-get update
        apt-get install -y --no-install-recommends "${packages[@]}"
        ;;
    purge)
        apt-get purge -y --auto-remove "${build[@]}"
        ;;
    *)
        echo "usage: system-deps.sh runtime|build|purge" >&2
        exit 2
        ;;
esac
apt-get clean
rm -rf /var/lib/apt/lists/*
