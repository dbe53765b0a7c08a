#!/usr/bin/env bash
# A Debian bookworm base image built from Debian's own packages, for build nodes that cannot
# reach an image registry (air-gapped clusters, networks that block registries): mmdebstrap
# writes a minimal root file system, the container engine imports it as an image.
#
#   containers/debian-base.sh [TAG]      # default TAG localhost/busi-base:bookworm
#
# Needs mmdebstrap (apt-get install mmdebstrap) and podman or docker, as root (or with
# mmdebstrap's unshare mode). The base holds python3 with venv and the CA certificates: what
# containers/Dockerfile needs of BASE_IMAGE. Then:
#
#   BASE_IMAGE=localhost/busi-base:bookworm make image
set -euo pipefail

tag="${1:-localhost/busi-base:bookworm}"
say() { echo "debian-base: $*" >&2; }

engine="${CONTAINER_ENGINE:-$(command -v podman || command -v docker || true)}"
[[ -n "$engine" ]] || { say "ERROR: neither podman nor docker is installed"; exit 2; }
command -v mmdebstrap >/dev/null 2>&1 || { say "ERROR: mmdebstrap is not installed (apt-get install mmdebstrap)"; exit 2; }

work="$(mktemp -d "${TMPDIR:-/tmp}/busi-base.XXXXXX")"
trap 'rm -rf "$work"' EXIT
say "building a Debian bookworm root file system with python3 (mmdebstrap, Debian's packages)"
mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$work/rootfs.tar"
"$engine" import --change 'CMD ["/bin/bash"]' "$work/rootfs.tar" "$tag" >/dev/null
say "imported $tag ($(du -h "$work/rootfs.tar" | cut -f1) root file system)"
echo "$tag"
