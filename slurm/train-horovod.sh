#!/usr/bin/env bash
# Data-parallel training with Horovod: one rank per Slurm task, threads per rank from
# --cpus-per-task; requeues itself at the time limit like slurm/train.sh.
#
#   sbatch slurm/train-horovod.sh [JOB.yaml ...] [--set key.path=value ...]   (default job/busi.yaml)
#   sbatch --nodes=2 --ntasks-per-node=4 --cpus-per-task=8 slurm/train-horovod.sh job/busi.yaml
#
# Needs Horovod with TensorFlow in the environment busi runs in (`make horovod`, or the image).
# Launch, decided at run time by asking Horovod's TensorFlow extension (the `horovodrun
# --check-build` answer, faster; BUSI_HVD_LAUNCHER=mpi|gloo skips the check):
#   MPI built in  -> srun --mpi=$BUSI_SRUN_MPI (default pmix; pmi2 on older MPIs): Slurm starts
#                    every rank, on every node. With BUSI_IMAGE: srun apptainer exec (hybrid model).
#   Gloo only     -> horovodrun --gloo -np $SLURM_NTASKS -H <node>:<tasks>,...: ranks on other
#                    nodes are started over ssh (passwordless ssh between the job's nodes needed;
#                    with BUSI_IMAGE, Gloo works on one node only - use an MPI build across nodes).
# The global batch is ranks x train.batch_size; train.scale_lr (default true) multiplies each
# phase's learning rate by the number of ranks, and train.warmup_epochs ramps the head phase to it.
#
# #SBATCH lines (sbatch command-line options override them; CHANGE marks the usual edits):
#   --nodes           CHANGE: nodes
#   --ntasks          CHANGE: Horovod ranks in total (or --ntasks-per-node)
#   --cpus-per-task   CHANGE: threads per rank (busi reads SLURM_CPUS_PER_TASK)
#   --mem             CHANGE: memory per node, for all its ranks
#   --time, --signal=B:USR1@180, --requeue, --open-mode=append, --output: as in slurm/train.sh
#   --partition, --account, --gres   CHANGE (commented out): site partition, account, GPUs
#
#SBATCH --job-name=busi-hvd
#SBATCH --nodes=1
#SBATCH --ntasks=4
#SBATCH --cpus-per-task=4
#SBATCH --mem=32G
#SBATCH --time=04:00:00
#SBATCH --signal=B:USR1@180
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
##SBATCH --partition=gpu
##SBATCH --gres=gpu:4
##SBATCH --account=myproject
set -euo pipefail

# Slurm runs a spooled copy of this script: source lib.sh from beside the original (the job's
# Command), this file's folder or the submit folder's slurm/; BUSI_SLURM_DIR overrides.
# shellcheck source=slurm/lib.sh
source "$(for d in "${BUSI_SLURM_DIR:-}" "$(scontrol show job -o "${SLURM_JOB_ID:-none}" 2>/dev/null | grep -o 'Command=[^ ]*' | head -n1 | cut -d= -f2- | sed 's|/[^/]*$||')" "$(dirname "${BASH_SOURCE[0]}")" "${SLURM_SUBMIT_DIR:-.}/slurm"; do [[ -f "$d/lib.sh" ]] && echo "$d/lib.sh" && break; done)" || { echo "cannot find slurm/lib.sh: set BUSI_SLURM_DIR=/path/to/busi/slurm" >&2; exit 2; }
busi_trap_signals

busi_job_args job/busi.yaml "sbatch slurm/train-horovod.sh [JOB.yaml ...] [--set key=value ...]" "$@"
set -- ${BUSI_ARGS[@]+"${BUSI_ARGS[@]}"}
[[ -n "${SLURM_JOB_ID:-}" ]] || busi_die 2 "run this script with sbatch (it reads the Slurm allocation)"
ntasks="${SLURM_NTASKS:-1}"
cpus="${SLURM_CPUS_PER_TASK:-1}"

busi_scratch
sets=(--set "data.staging_dir=$BUSI_STAGING_DIR" --set "runtime.distributed=horovod")
[[ -n "${BUSI_RUN_DIR:-}" ]] && sets+=(--set "output.dir=$BUSI_RUN_DIR")

launcher="${BUSI_HVD_LAUNCHER:-auto}"
if [[ "$launcher" == auto ]]; then
    # Ask the Horovod TensorFlow extension busi will load whether it was built with MPI
    # (what `horovodrun --check-build` reports, for this one extension, in seconds not a minute).
    if [[ -n "${BUSI_IMAGE:-}" || -n "${BUSI_VENV:-}" ]]; then
        busi_cmd python
    else
        busi_cmd horovodrun   # the python beside horovodrun on PATH
        py="$(dirname "$(command -v horovodrun)")/python"
        [[ -x "$py" ]] || py=python3
        BUSI_CMD=("$py")
    fi
    probe='import horovod.tensorflow as h; print("mpi" if h.mpi_built() else "gloo" if h.gloo_built() else "none")'
    launcher="$(TF_CPP_MIN_LOG_LEVEL=3 "${BUSI_CMD[@]}" -c "$probe" 2>/dev/null | tail -n 1)" || launcher=""
    case "$launcher" in
    mpi | gloo) ;;
    none) busi_die 2 "Horovod's TensorFlow extension has neither MPI nor Gloo built in; rebuild it (make horovod)" ;;
    *) busi_die 2 "Horovod with TensorFlow does not import with ${BUSI_CMD[*]} (make horovod, or an image built with Horovod)" ;;
    esac
fi
busi_log "job files ${BUSI_JOBS[*]}; restart ${SLURM_RESTART_COUNT:-0}; $ntasks ranks x $cpus threads on ${SLURM_JOB_NODELIST:-?}; launcher $launcher"

case "$launcher" in
mpi)
    # srun forwards the signals it receives to every rank; ranks agree on the step to stop at.
    # --kill-on-bad-exit=0: a rank that exits 75 first must not kill rank 0 while it writes
    # the checkpoint (a crashing rank still ends the job: busi shuts Horovod down on errors).
    busi_cmd busi-job
    busi_run srun --mpi="${BUSI_SRUN_MPI:-pmix}" --ntasks="$ntasks" --cpus-per-task="$cpus" \
        --kill-on-bad-exit=0 "${BUSI_CMD[@]}" train "${BUSI_JOBS[@]}" "${sets[@]}" "$@"
    busi_finish "$BUSI_RC"
    ;;
gloo) ;;
*) busi_die 2 "BUSI_HVD_LAUNCHER=$launcher: expected auto, mpi or gloo" ;;
esac

# Gloo: horovodrun starts the ranks. Each rank runs through a small wrapper that records its
# pid (signals go straight to the ranks: horovodrun would turn them into a kill) and its exit
# status (horovodrun reports 1 for any failure; rank 0's 75 means resumable). horovodrun
# terminates every rank as soon as one exits non-zero: so the other ranks report a 75 as 0,
# else the first of them to exit would kill rank 0 while it writes the checkpoint or exits.
hosts=""
mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
mapfile -t slots < <(tr ',' '\n' <<<"${SLURM_TASKS_PER_NODE:-$ntasks}" |
    sed -E 's/^([0-9]+)\(x([0-9]+)\)$/\1 \2/' | awk '{n = (NF == 2) ? $2 : 1; for (i = 0; i < n; i++) print $1}')
if ((${#nodes[@]} == 1)); then
    hosts="localhost:$ntasks"   # one node: no ssh at all
else
    for i in "${!nodes[@]}"; do
        hosts+="${hosts:+,}${nodes[$i]}:${slots[$i]:-1}"
    done
fi
rankdir="$BUSI_SCRATCH_DIR/busi-ranks-$SLURM_JOB_ID"
rm -rf "$rankdir"
mkdir -p "$rankdir"
trap 'rm -rf "$rankdir"' EXIT
# shellcheck disable=SC2016  # expanded by the rank's shell, not here
wrapper='d=$1; shift; mkdir -p "$d"; "$@" & pid=$!; echo "$pid" > "$d/rank-$HOROVOD_RANK.pid"
trap "kill -TERM $pid 2>/dev/null" TERM   # horovodrun ending the ranks: pass it on to busi
while :; do wait "$pid"; rc=$?; kill -0 "$pid" 2>/dev/null || break; done
echo "$rc" > "$d/rank-$HOROVOD_RANK.rc"
if [ "$rc" = 75 ] && [ "$HOROVOD_RANK" != 0 ]; then exit 0; fi
exit "$rc"'

# shellcheck disable=SC2317,SC2016  # called through BUSI_FORWARD; $1/$2 expand in the remote shell
forward_ranks() {
    local sig=$1
    if ((${#nodes[@]} > 1)); then
        # ranks on every node of the job: one small step per node, sharing the allocation
        srun --overlap --nodes="${#nodes[@]}" --ntasks-per-node=1 --ntasks="${#nodes[@]}" \
            bash -c 'for f in "$1"/rank-*.pid; do kill -s "$2" "$(cat "$f")" 2>/dev/null || true; done' \
            _ "$rankdir" "$sig" || true
    else
        local f
        for f in "$rankdir"/rank-*.pid; do
            [[ -f "$f" ]] && { kill -s "$sig" "$(cat "$f")" 2>/dev/null || true; }
        done
    fi
}
BUSI_FORWARD=forward_ranks

busi_cmd horovodrun
busi_job=(busi-job)   # in the image, horovodrun and its ranks run inside the container
[[ -z "${BUSI_IMAGE:-}" && -n "${BUSI_VENV:-}" ]] && busi_job=("$BUSI_VENV/bin/busi-job")
busi_run "${BUSI_CMD[@]}" --gloo -np "$ntasks" -H "$hosts" \
    bash -c "$wrapper" busi-rank "$rankdir" "${busi_job[@]}" train "${BUSI_JOBS[@]}" "${sets[@]}" "$@"
rc=$BUSI_RC
if ((rc != 0)) && [[ -f "$rankdir/rank-0.rc" ]]; then
    rank0="$(cat "$rankdir/rank-0.rc")"
    busi_log "horovodrun exited $rc; rank 0 exited $rank0"
    ((rank0 == BUSI_EXIT_INTERRUPTED)) && rc=$rank0
fi
busi_finish "$rc"
