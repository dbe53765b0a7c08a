#!/usr/bin/env bash
# The container entrypoint (Docker ENTRYPOINT, Apptainer %runscript, cloud batch commands).
# Installed as $BUSI_PREFIX/job/entrypoint.sh (/opt/busi/job/entrypoint.sh in the images).
#
#   entrypoint.sh JOB.yaml [MORE.yaml ...] [--set KEY=VALUE ...] [--restart]
#                                 -> busi-job run JOB.yaml ... (job files layered left to right)
#                                    (train, or predict when the job file has a predict: section)
#   entrypoint.sh demo [--set ...]   -> synthetic data in ./data/demo (once), then job/demo.yaml
#   entrypoint.sh smoke-test         -> busi-smoke-test: a tiny synthetic train + predict
#   entrypoint.sh horovodrun ARGS... -> horovodrun ARGS... (several ranks in one container)
#   entrypoint.sh COMMAND ARGS...    -> busi-job COMMAND ARGS... (predict, merge, config, inspect, ...)
#   entrypoint.sh                    -> busi-job --help
#
# busi-job replaces this shell (exec): it receives SIGTERM/SIGUSR1 directly, checkpoints and
# exits 75 (resumable), and its exit code is the container's.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Installed layout: <prefix>/job/entrypoint.sh beside <prefix>/bin/busi-job. From a source
# checkout (job/entrypoint.sh) there is no ../bin/busi-job: use the one on PATH.
if [[ -x "$here/../bin/busi-job" ]]; then
    bindir="$(cd "$here/../bin" && pwd)"
    busi_job="$bindir/busi-job"
    smoke_test="$bindir/busi-smoke-test"
else
    busi_job="busi-job"
    smoke_test="busi-smoke-test"
fi

# An arbitrary UID has no passwd entry and a HOME it cannot write (/, or a read-only root file
# system): tools that keep state there (horovodrun's ~/.horovod cache) would fail. /tmp instead.
if [[ -z "${HOME:-}" || ! -w "${HOME}" ]]; then
    export HOME=/tmp
fi

if [[ $# -eq 0 ]]; then
    exec "$busi_job" --help
fi

case "$1" in
    *.yaml | *.yml)
        exec "$busi_job" run "$@"
        ;;
    demo)
        shift
        data="${BUSI_DEMO_DATA:-data/demo}"
        if [[ ! -e "$data/.complete" ]]; then
            rm -rf "$data"
            "$busi_job" synth "$data" --per-class 60 --size 64 --seed 0
            touch "$data/.complete"
        fi
        export BUSI_DEMO_DATA="$data"
        exec "$busi_job" run "$here/demo.yaml" "$@"
        ;;
    smoke-test)
        shift
        exec "$smoke_test" "$@"
        ;;
    horovodrun)
        shift
        exec "${bindir:+$bindir/}horovodrun" "$@"
        ;;
    *)
        exec "$busi_job" "$@"
        ;;
esac
