#!/usr/bin/env bash
# `make image`: build the CPU image with whichever of podman or docker is installed.
#
#   containers/build-image.sh [EXTRA BUILD OPTIONS ...]
#
# Environment (all optional):
#   IMAGE_TAG=busi:0.1.0          the tag to build
#   CONTAINER_ENGINE=podman       podman or docker (default: podman if installed, else docker)
#   BASE_IMAGE=                   the base; default python:3.11.9-slim-bookworm from a registry,
#                                 or, where no registry can be reached (or BUSI_LOCAL_BASE=1), a
#                                 Debian base built here from Debian's packages (debian-base.sh)
#   BUSI_CA_BUNDLE=/path/ca.pem   a CA bundle for the build's downloads behind a TLS-intercepting
#                                 proxy; default: the host's bundle where there is one. Handed to
#                                 the build as a secret (never stored in the image)
#   BUSI_WEIGHTS_FILE=/path.h5    the ImageNet ResNet50 (no top) weights file to install instead of
#                                 downloading it; BUSI_FETCH_WEIGHTS=0 builds without weights
#   BUSI_BACKBONES=resnet50,...   the backbones whose ImageNet files the build downloads
#   BUSI_WITH_HOROVOD=1           0: no Horovod. 1: the wheel scripts/build_horovod.sh cached for
#                                 these versions (WHEEL_ONLY), else compiled in the builder stage
#   BUSI_WHEELHOUSE=              (see containers/install.sh) install offline from a wheel folder
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
say() { echo "build-image: $*" >&2; }
die() { say "ERROR: $*"; exit 2; }

tag="${IMAGE_TAG:-busi:0.1.0}"
engine="${CONTAINER_ENGINE:-$(command -v podman || command -v docker || true)}"
[[ -n "$engine" ]] || die "neither podman nor docker is installed (apt-get install podman)"
name="$(basename "$engine")"
opts=()
[[ "$name" == podman ]] && opts+=(--format docker)   # keeps HEALTHCHECK and SHELL (OCI drops them)
# Hard limits below the engine's defaults refuse every container ("setrlimit RLIMIT_NOFILE:
# Operation not permitted"): ask for what the host allows.
if (( $(ulimit -Hn) < 1048576 )); then opts+=(--ulimit "nofile=1024:$(ulimit -Hn)"); fi
# (nproc: at most 32768; runc was refused 65536 on a host whose hard limit is 96362)
if [[ "$(ulimit -Hu)" != unlimited ]]; then
    nproc=$(( $(ulimit -Hu) < 32768 ? $(ulimit -Hu) : 32768 )); opts+=(--ulimit "nproc=$nproc:$nproc")
fi
[[ "$name" == podman && -z "${CONTAINERS_RUNTIME:-}" ]] && command -v runc >/dev/null 2>&1 &&
    opts+=(--runtime runc)   # crun fails where cgroups are in hybrid mode; runc does not

# The base: a registry's, else one built here from Debian's packages.
base="${BASE_IMAGE:-python:3.11.9-slim-bookworm}"
if [[ "${BUSI_LOCAL_BASE:-0}" == 1 ]] || { [[ -z "${BASE_IMAGE:-}" ]] &&
        ! "$engine" image exists "$base" 2>/dev/null && ! timeout 120 "$engine" pull --quiet "$base" >/dev/null 2>&1; }; then
    base=localhost/busi-base:bookworm
    if ! "$engine" image exists "$base" 2>/dev/null; then
        say "no registry reachable for python:3.11.9-slim-bookworm: building a Debian base from Debian's packages"
        CONTAINER_ENGINE="$engine" bash "$here/debian-base.sh" "$base" >/dev/null
    fi
fi

# What the build context carries besides the source (image-inputs/, cleared each build): a
# Horovod wheel for these versions, a weights file.
inputs="$repo/image-inputs"
clear_inputs() { rm -rf "$inputs"/*.whl "$inputs"/weights/*.h5 "$inputs/wheelhouse"; }
clear_inputs
if [[ "${BUSI_WITH_HOROVOD:-1}" == 1 && -x "$repo/.venv/bin/python" ]]; then
    wheel="$(PYTHON="$repo/.venv/bin/python" WHEEL_ONLY=1 bash "$repo/scripts/build_horovod.sh" 2>/dev/null | tail -n1 || true)"
    if [[ -f "$wheel" ]]; then
        cp "$wheel" "$inputs/"
        say "reusing the Horovod wheel $wheel"
    fi
fi
fetch="${BUSI_FETCH_WEIGHTS:-1}"
if [[ -n "${BUSI_WEIGHTS_FILE:-}" ]]; then
    [[ -s "$BUSI_WEIGHTS_FILE" ]] || die "BUSI_WEIGHTS_FILE=$BUSI_WEIGHTS_FILE: no such file"
    cp "$BUSI_WEIGHTS_FILE" "$inputs/weights/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    fetch=0
fi
if [[ -n "${BUSI_WHEELHOUSE:-}" ]]; then
    cp -r "$BUSI_WHEELHOUSE" "$inputs/wheelhouse"
    opts+=(--build-arg "BUSI_WHEELHOUSE=/opt/busi/src/image-inputs/wheelhouse")
fi

# A CA bundle for the downloads inside the build (pip; Debian's mirror is plain HTTP), as a secret.
ca="${BUSI_CA_BUNDLE:-}"
if [[ -z "$ca" ]]; then
    for f in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
        [[ -s "$f" ]] && { ca="$f"; break; }
    done
fi
if [[ -n "$ca" ]]; then
    [[ -s "$ca" ]] || die "BUSI_CA_BUNDLE=$ca: no such file"
    opts+=(--secret "id=ca,src=$ca")
fi
[[ "$name" == docker ]] && export DOCKER_BUILDKIT=1   # secrets need BuildKit

revision="$(git -C "$repo" rev-parse HEAD 2>/dev/null || true)"
# The image this tag names now: replaced by the build, it would stay behind untagged (2.5 GB
# each rebuild; CI rebuilds busi:ci on every run and a shared disk filled up).
previous="$("$engine" image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
say "building $tag with $name from $base"
start=$(date +%s)
"$engine" build "${opts[@]}" --network host -f "$here/Dockerfile" -t "$tag" \
    --build-arg "BASE_IMAGE=$base" \
    --build-arg "BUSI_WITH_HOROVOD=${BUSI_WITH_HOROVOD:-1}" \
    --build-arg "BUSI_FETCH_WEIGHTS=$fetch" \
    --build-arg "BUSI_BACKBONES=${BUSI_BACKBONES:-resnet50}" \
    --build-arg "BUSI_REVISION=$revision" \
    "$@" "$repo"
clear_inputs
# Removed only when the build left it with no name at all (another tag may name the same image:
# a fully cached build under a second tag gets the same ID, and rmi by ID would delete it with
# that tag), and never while a container uses it (rmi without --force refuses).
if [[ -n "$previous" && "$previous" != "$("$engine" image inspect --format '{{.Id}}' "$tag")" &&
      "$("$engine" image inspect --format '{{len .RepoTags}}' "$previous" 2>/dev/null)" == 0 ]]; then
    if "$engine" rmi "$previous" >/dev/null 2>&1; then say "removed the image $tag named before (${previous:0:12})"; fi
fi
size="$("$engine" image inspect --format '{{.Size}}' "$tag")"
say "built $tag in $(( $(date +%s) - start )) s: $(( size / 1000000 )) MB"
echo "$tag"
