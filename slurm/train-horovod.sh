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
#   Slurm starts every rank, on every node, with srun (with BUSI_IMAGE: srun apptainer exec);
#   MPI built in  -> srun --mpi=$BUSI_SRUN_MPI (default pmix; pmi2 on older MPIs).
#   Gloo only     -> srun, the ranks meeting at Horovod's rendezvous server, which this batch step
#                    runs (busi.distributed.rendezvous; what horovodrun does, without ssh between
#                    nodes). Each rank binds Gloo to the interface it reaches the batch node by;
#                    HOROVOD_GLOO_IFACE=ib0 chooses one, BUSI_RENDEZVOUS_ADDR the batch node's address.
# The global batch is ranks x train.batch_size; train.scale_lr (default true) multiplies each
# phase's learning rate by the number of ranks, and train.warmup_epochs ramps the head phase to it.
#
# #SBATCH lines (sbatch command-line options override them; CHANGE marks the usual edits):
#   --nodes           CHANGE: nodes
#   --ntasks-per-node CHANGE: Horovod ranks per node (ranks in all: nodes x ranks per node)
#   --cpus-per-task   CHANGE: threads per rank (busi reads SLURM_CPUS_PER_TASK)
#   --mem             CHANGE: memory per node, for all its ranks
#   --time, --signal=B:USR1@180, --requeue, --open-mode=append, --output: as in slurm/train.sh
#   --partition, --account, --gres   CHANGE (commented out): site partition, account, GPUs
#
#SBATCH --job-name=busi-hvd
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
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
    busi_python
    probe='import horovod.tensorflow as h; print("mpi" if h.mpi_built() else "gloo" if h.gloo_built() else "none")'
    launcher="$(TF_CPP_MIN_LOG_LEVEL=3 "${BUSI_CMD[@]}" -c "$probe" 2>/dev/null | tail -n 1)" || launcher=""
    case "$launcher" in
    mpi | gloo) ;;
    none) busi_die 2 "Horovod's TensorFlow extension has neither MPI nor Gloo built in; rebuild it (make horovod)" ;;
    *) busi_die 2 "Horovod with TensorFlow does not import with ${BUSI_CMD[*]} (make horovod, or an image built with Horovod)" ;;
    esac
fi
busi_log "job files ${BUSI_JOBS[*]}; restart ${SLURM_RESTART_COUNT:-0}; $ntasks ranks x $cpus threads on ${SLURM_JOB_NODELIST:-?}; launcher $launcher"

# Slurm starts every rank, on every node (srun), whichever the launcher: srun forwards the
# signals it receives to every rank (ranks agree on the step to stop at), and a lost node ends
# the step. --kill-on-bad-exit=0: a rank that exits 75 first must not kill rank 0 while it writes
# the checkpoint (a crashing rank still ends the job: busi shuts Horovod down on errors).
srun_args=(--ntasks="$ntasks" --cpus-per-task="$cpus" --kill-on-bad-exit=0)
run_env=()
# The job's nodes and their ranks, in rank order (srun's block distribution): node1:4,node2:4
mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
mapfile -t slots < <(tr ',' '\n' <<<"${SLURM_TASKS_PER_NODE:-$ntasks}" |
    sed -E 's/^([0-9]+)\(x([0-9]+)\)$/\1 \2/' | awk '{n = (NF == 2) ? $2 : 1; for (i = 0; i < n; i++) print $1}')
hosts=""
for i in "${!nodes[@]}"; do
    hosts+="${hosts:+,}${nodes[$i]}:${slots[$i]:-1}"
done

# lost_nodes: name each node of the job that Slurm no longer reaches, and the ranks it ran, once.
# Run when the job is ended (SIGTERM: Slurm cancels a job that lost a node, and requeues it
# where --requeue allows) and after a failed step.
lost_reported=""
lost_nodes() {
    local node state first=0 last ranks i
    for i in "${!nodes[@]}"; do
        node=${nodes[$i]}
        last=$((first + ${slots[$i]:-1} - 1))
        ranks="rank $first"
        ((last > first)) && ranks="ranks $first-$last"
        first=$((last + 1))
        [[ " $lost_reported " == *" $node "* ]] && continue
        state="$(sinfo -h -N -n "$node" -o %T 2>/dev/null | head -n 1)"
        case "$state" in
        down* | fail* | *'*')
            lost_reported+=" $node"
            busi_log "lost node $node ($ranks): Slurm reports it $state; the job ends, and the run" \
                "resumes from its last checkpoint when the job is requeued (--requeue) or resubmitted"
            ;;
        esac
    done
}
BUSI_SIGNAL_HOOK=lost_nodes
case "$launcher" in
mpi)
    srun_args+=(--mpi="${BUSI_SRUN_MPI:-pmix}")
    ;;
gloo)
    # Gloo: the ranks meet at Horovod's rendezvous server, which this batch step runs (as
    # horovodrun would, but without ssh to the other nodes). It is told every node and its
    # ranks (in rank order: srun's block distribution); each rank works out its place from
    # Slurm's variables (busi.distributed.launchers) and the interface it reaches this node by.
    busi_python
    coproc RENDEZVOUS { exec "${BUSI_CMD[@]}" -m busi.distributed.rendezvous --hosts "$hosts" \
        ${BUSI_RENDEZVOUS_ADDR:+--address "$BUSI_RENDEZVOUS_ADDR"}; }
    # shellcheck disable=SC2153  # set by coproc
    rendezvous_pid=$RENDEZVOUS_PID
    exec {rendezvous_out}<&"${RENDEZVOUS[0]}"   # bash forgets the coproc's fds once it exits
    # stop it, and wait: `podman run --rm` removes its container once that has exited
    trap 'kill "$rendezvous_pid" 2>/dev/null && wait "$rendezvous_pid" 2>/dev/null; true' EXIT
    if ! read -r -t 120 addr port <&"$rendezvous_out"; then
        # a signal before the ranks started: nothing to checkpoint, the next start does the work
        [[ -n "$BUSI_SIGNALS" ]] && busi_finish "$BUSI_EXIT_INTERRUPTED"
        busi_die 2 "the Gloo rendezvous server did not start (its message is above)"
    fi
    busi_log "Gloo rendezvous at $addr:$port for $hosts"
    run_env=(HOROVOD_GLOO_RENDEZVOUS_ADDR="$addr" HOROVOD_GLOO_RENDEZVOUS_PORT="$port"
        HOROVOD_CONTROLLER=gloo HOROVOD_CPU_OPERATIONS=gloo)
    srun_args+=(--distribution=block)
    ;;
*) busi_die 2 "BUSI_HVD_LAUNCHER=$launcher: expected auto, mpi or gloo" ;;
esac

busi_cmd busi-job
busi_run env "${run_env[@]}" srun "${srun_args[@]}" "${BUSI_CMD[@]}" train "${BUSI_JOBS[@]}" "${sets[@]}" "$@"
((BUSI_RC == 0 || BUSI_RC == BUSI_EXIT_INTERRUPTED)) || lost_nodes
busi_finish "$BUSI_RC"
