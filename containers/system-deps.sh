#!/usr/bin/env bash
# System packages of the images (Debian or Ubuntu bases): run as root by both recipes
# (containers/Dockerfile, containers/busi*.def) before containers/install.sh.
#   - tini: PID 1 in the Docker image; forwards SIGTERM to busi-job and reaps children
#   - build-essential, cmake: to compile Horovod (scripts/build_horovod.sh)
#   - openmpi-bin, libopenmpi-dev: Horovod's MPI controller (mpirun, srun --mpi)
#   - python3, python3-venv, python3-dev: only where the base has no Python (the CUDA bases)
# Versions are those of the base image's distribution release: the base image tag pins them.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
packages=(ca-certificates tini build-essential cmake openmpi-bin libopenmpi-dev)
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    packages+=(python3 python3-venv python3-dev)
fi

apt-get update
apt-get install -y --no-install-recommends "${packages[@]}"
apt-get clean
rm -rf /var/lib/apt/lists/*
