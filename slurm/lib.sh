# shellcheck shell=bash disable=SC2034  # sets variables for the scripts that source it
# Shared by the batch scripts of slurm/ (train, train-horovod, predict, merge, cv-fold, cv-report)
# and its submitters (submit-predict, cv) (sourced, never run). Users change nothing here; the
# environment variables below are the knobs.
#
#   BUSI_IMAGE=/path/busi.sif   run busi inside this Apptainer/Singularity image (apptainer exec)
#   BUSI_ENGINE=podman          run BUSI_IMAGE (then an image name: busi:0.1.0) with podman instead,
#                               one container per task: the node's network, host name and IPC, the
#                               caller's user, the working folder, scratch and BUSI_BIND at the same
#                               paths, Slurm's, Horovod's, TensorFlow's and busi's variables passed in;
#                               site settings (runtime, ulimits) in containers.conf
#   BUSI_NV=1|0                 pass --nv (GPUs) to apptainer; default: on when Slurm gave the job GPUs
#   BUSI_BIND=/data,/project    extra bind paths (the scratch folder is bound already)
#   BUSI_VENV=/path/.venv       else run $BUSI_VENV/bin/busi-job; else busi-job from PATH
#   BUSI_SCRATCH=/local/dir     node-local scratch for unpacked datasets; default SLURM_TMPDIR,
#                               TMPDIR, /scratch/$USER, /tmp (first that is set / exists)
#   BUSI_MAX_REQUEUES=20        stop requeueing after this many restarts (a run that never gets on)
#
# Exit codes of busi-job: 0 ok, 1 bug, 2 config, 3 data, 75 interrupted and resumable.

BUSI_EXIT_INTERRUPTED=75

busi_log() {
    local who="${SLURM_JOB_ID:-local}"
    [[ -n "${SLURM_ARRAY_TASK_ID:-}" ]] && who="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} ($who)"
    printf '%s busi-slurm[%s]: %s\n' "$(date '+%F %T')" "$who" "$*" >&2
}

busi_die() {  # busi_die CODE MESSAGE
    local code=$1
    shift
    busi_log "ERROR: $*"
    exit "$code"
}

# busi_job_args DEFAULT USAGE "$@": the job files every script takes first. Sets the array
# BUSI_JOBS (the leading arguments that are not options: one job file, or several layered left
# to right, e.g. job/busi.yaml site.yaml; DEFAULT when there are none) and the array BUSI_ARGS
# (the arguments after them, the --set overrides); exits 2 naming a missing file.
busi_job_args() {
    local default=$1 usage=$2 f
    shift 2
    BUSI_JOBS=()
    while [[ $# -gt 0 && "$1" != -* ]]; do
        BUSI_JOBS+=("$1")
        shift
    done
    [[ ${#BUSI_JOBS[@]} -gt 0 ]] || BUSI_JOBS=("$default")
    BUSI_ARGS=("$@")
    for f in "${BUSI_JOBS[@]}"; do
        [[ -f "$f" ]] || busi_die 2 "job file $f not found (from $(pwd)); usage: $usage"
    done
}

# busi_split_options "$@": a submitter's arguments, [SBATCH OPTIONS --] REST. Sets the arrays
# BUSI_OPTIONS (before an argument that is exactly "--"; none without one) and BUSI_ARGS (REST).
busi_split_options() {
    BUSI_OPTIONS=()
    local arg separated=0
    for arg in "$@"; do   # an argument that is exactly "--" (not one that merely contains it)
        [[ "$arg" == -- ]] && { separated=1; break; }
    done
    if ((separated)); then
        while [[ $# -gt 0 && "$1" != -- ]]; do
            BUSI_OPTIONS+=("$1")
            shift
        done
        shift
    fi
    BUSI_ARGS=("$@")
}

# busi_sbatch SBATCH ARGUMENTS...: a submitter's sbatch; prints the new job's id alone (sbatch
# --parsable prints <id>[;<cluster>]) and fails as sbatch failed. busi_sbatch_after ID ...: a job
# that starts once every task of job ID succeeded (afterok); if one fails, Slurm removes it
# (--kill-on-invalid-dep) rather than leave it pending for ever.
busi_sbatch() {
    local out
    out="$(sbatch --parsable "$@")" || return
    echo "${out%%;*}"
}

busi_sbatch_after() {
    local after=$1
    shift
    busi_sbatch --dependency="afterok:$after" --kill-on-invalid-dep=yes "$@"
}

# busi_begin DEFAULT USAGE PROGRAM "$@": the start of a batch script that runs busi: signals
# trapped (forwarded to busi once it runs), the job files and the rest of the arguments
# (busi_job_args: BUSI_JOBS, BUSI_ARGS), node-local scratch (busi_scratch) and the command
# that runs PROGRAM (busi_cmd: BUSI_CMD). The script then does: set -- "${BUSI_ARGS[@]}".
busi_begin() {
    local default=$1 usage=$2 program=$3
    shift 3
    busi_trap_signals
    busi_job_args "$default" "$usage" "$@"
    busi_scratch
    busi_cmd "$program"
}

# busi_cmd PROGRAM: sets the array BUSI_CMD to the command that runs PROGRAM (busi-job,
# python): in the container image, from the venv, or from PATH.
busi_cmd() {
    local program=$1
    if [[ -n "${BUSI_IMAGE:-}" && "${BUSI_ENGINE:-apptainer}" == podman ]]; then
        busi_podman "$program"
    elif [[ -n "${BUSI_IMAGE:-}" ]]; then
        [[ "${BUSI_ENGINE:-apptainer}" == apptainer ]] ||
            busi_die 2 "BUSI_ENGINE=$BUSI_ENGINE: expected apptainer (the default) or podman"
        local engine
        engine="$(command -v apptainer || command -v singularity || true)"
        [[ -n "$engine" ]] || busi_die 2 "BUSI_IMAGE=$BUSI_IMAGE but neither apptainer nor singularity is on PATH (module load apptainer?)"
        [[ -e "$BUSI_IMAGE" ]] || busi_die 2 "BUSI_IMAGE=$BUSI_IMAGE: no such image file"
        BUSI_CMD=("$engine" exec)
        local nv="${BUSI_NV:-auto}"
        if [[ "$nv" == auto ]]; then
            nv=0
            [[ -n "${SLURM_JOB_GPUS:-}${SLURM_STEP_GPUS:-}${SLURM_GPUS_ON_NODE:-}" ]] && nv=1
        fi
        [[ "$nv" == 1 ]] && BUSI_CMD+=(--nv)
        [[ -n "${BUSI_SCRATCH_DIR:-}" ]] && BUSI_CMD+=(--bind "$BUSI_SCRATCH_DIR")
        [[ -n "${BUSI_BIND:-}" ]] && BUSI_CMD+=(--bind "$BUSI_BIND")
        BUSI_CMD+=("$BUSI_IMAGE" "$program")
    elif [[ -n "${BUSI_VENV:-}" ]]; then
        [[ -x "$BUSI_VENV/bin/$program" ]] || busi_die 2 "BUSI_VENV=$BUSI_VENV has no bin/$program (make install)"
        BUSI_CMD=("$BUSI_VENV/bin/$program")
    else
        command -v "$program" >/dev/null 2>&1 ||
            busi_die 2 "$program is not on PATH: set BUSI_VENV=/path/to/.venv or BUSI_IMAGE=/path/to/busi.sif"
        BUSI_CMD=("$program")
    fi
}

# busi_podman PROGRAM: BUSI_CMD runs PROGRAM in a podman container of BUSI_IMAGE, as one task of
# the job: busi-job through the image's entrypoint (tini passes signals on), anything else as the
# entrypoint. Exit codes and signals pass through `podman run`.
busi_podman() {
    local program=$1 dir
    command -v podman >/dev/null 2>&1 || busi_die 2 "BUSI_ENGINE=podman but podman is not on PATH"
    BUSI_CMD=(podman run --rm --label "busi.slurm-job=${SLURM_JOB_ID:-none}" --network host --uts host --ipc host
        --no-healthcheck --user "$(id -u):$(id -g)"
        --env 'SLURM*' --env 'HOROVOD_*' --env 'BUSI_*' --env 'TF_*' -v "$PWD:$PWD" -w "$PWD")
    [[ -n "${BUSI_SCRATCH_DIR:-}" ]] && BUSI_CMD+=(-v "$BUSI_SCRATCH_DIR:$BUSI_SCRATCH_DIR")
    local IFS=,
    for dir in ${BUSI_BIND:-}; do
        BUSI_CMD+=(-v "$dir:$dir")
    done
    [[ "$program" == busi-job ]] || BUSI_CMD+=(--entrypoint "$program")
    BUSI_CMD+=("$BUSI_IMAGE")
}

# busi_python: sets the array BUSI_CMD to the Python that runs busi (and so loads its Horovod):
# the image's, the venv's, or the one beside busi-job on PATH.
busi_python() {
    if [[ -n "${BUSI_IMAGE:-}" || -n "${BUSI_VENV:-}" ]]; then
        busi_cmd python
        return
    fi
    busi_cmd busi-job
    BUSI_CMD=("$(dirname "$(command -v busi-job)")/python")
    [[ -x "${BUSI_CMD[0]}" ]] || BUSI_CMD=(python3)
}

# busi_scratch: sets BUSI_SCRATCH_DIR (node-local, created) and BUSI_STAGING_DIR inside it.
busi_scratch() {
    local dir="${BUSI_SCRATCH:-${SLURM_TMPDIR:-${TMPDIR:-}}}"
    if [[ -z "$dir" ]]; then
        if [[ -d "/scratch/${USER:-$(id -un)}" && -w "/scratch/${USER:-$(id -un)}" ]]; then
            dir="/scratch/${USER:-$(id -un)}"
        else
            dir=/tmp
        fi
    fi
    mkdir -p "$dir" || busi_die 2 "cannot create the scratch folder $dir (set BUSI_SCRATCH)"
    BUSI_SCRATCH_DIR="$dir"
    BUSI_STAGING_DIR="$dir/busi-staging"
}

# ---- signals: the batch shell receives them (--signal=B:USR1@..., scancel --batch) and
# forwards them to busi, which finishes its step, writes a checkpoint and exits 75.
BUSI_CHILD=""          # pid we wait for
BUSI_SIGNALS=""        # signals received so far, e.g. "USR1 "
BUSI_TRAPPED=0
BUSI_SIGNAL_HOOK=""    # a function run first on each signal, given its name (train-horovod.sh sets one)

busi_forward_child() {
    kill -s "$1" "$BUSI_CHILD" 2>/dev/null || true
}

_busi_on_signal() {
    local sig=$1
    BUSI_SIGNALS+="$sig "
    BUSI_TRAPPED=1
    [[ -n "$BUSI_SIGNAL_HOOK" ]] && "$BUSI_SIGNAL_HOOK" "$sig"
    if [[ -n "$BUSI_CHILD" ]]; then
        busi_log "received SIG$sig: forwarding it to busi (it finishes the step, checkpoints, exits 75)"
        busi_forward_child "$sig"
    else
        busi_log "received SIG$sig before busi started"
    fi
}

busi_trap_signals() {
    trap '_busi_on_signal USR1' USR1
    trap '_busi_on_signal TERM' TERM
    trap '_busi_on_signal INT' INT
}

# busi_run CMD...: run CMD in the background, forward signals to it, wait for it; sets BUSI_RC.
busi_run() {
    if [[ -n "$BUSI_SIGNALS" ]]; then
        # Asked to stop before anything ran: nothing to checkpoint, the next start does the work.
        BUSI_RC=$BUSI_EXIT_INTERRUPTED
        return
    fi
    "$@" &
    BUSI_CHILD=$!
    busi_wait "$BUSI_CHILD"
}

# busi_wait PID: wait until PID has exited, also across trapped signals (a trapped signal
# interrupts `wait` with 128+n while the child goes on); sets BUSI_RC to its exit status.
busi_wait() {
    local pid=$1 rc again
    while :; do
        BUSI_TRAPPED=0
        rc=0
        wait "$pid" || rc=$?
        if ((BUSI_TRAPPED)) && ((rc > 128)); then
            kill -0 "$pid" 2>/dev/null && continue   # still running: wait again
            again=0
            wait "$pid" || again=$?                  # exited meanwhile: its real status
            ((again != 127)) && rc=$again
        fi
        break
    done
    BUSI_RC=$rc
}

# busi_finish RC: the end of every script. 75 after SIGUSR1 (walltime warning, scancel
# --signal=USR1 --batch): requeue this job; it restarts with the same job id, so the same
# output directory, and busi resumes from the checkpoint. 75 after SIGTERM (scancel,
# preemption, the walltime itself): no requeue; the run stays resumable by hand.
busi_finish() {
    local rc=$1
    if ((rc == BUSI_EXIT_INTERRUPTED)); then
        if [[ -z "${SLURM_JOB_ID:-}" ]]; then
            busi_log "interrupted (exit 75) outside Slurm: run the same command again to resume"
            exit "$rc"
        fi
        if [[ "$BUSI_SIGNALS" == *TERM* || "$BUSI_SIGNALS" == *INT* ]]; then
            busi_log "stopped after SIGTERM/SIGINT (scancel, preemption or the time limit): checkpoint kept, not requeueing;" \
                "resume with 'scontrol requeue $SLURM_JOB_ID' (same job id) or resubmit with the same output.dir"
            exit "$rc"
        fi
        local restarts="${SLURM_RESTART_COUNT:-0}" max="${BUSI_MAX_REQUEUES:-20}"
        if ((restarts >= max)); then
            busi_log "interrupted again after $restarts restarts (BUSI_MAX_REQUEUES=$max): not requeueing; resubmit to go on"
            exit "$rc"
        fi
        busi_log "checkpoint written (exit 75): requeueing job $SLURM_JOB_ID (restart $((restarts + 1)));" \
            "it resumes the same run when it starts again"
        if ! scontrol requeue "$SLURM_JOB_ID"; then
            busi_log "scontrol requeue $SLURM_JOB_ID failed: resubmit the same command to resume"
            exit "$rc"
        fi
        exit 0
    fi
    if ((rc == 0)); then
        busi_log "done"
    else
        busi_log "busi-job failed with exit code $rc (1 bug, 2 config, 3 data; the message is above)"
    fi
    exit "$rc"
}
