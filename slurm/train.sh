#!/usr/bin/env bash
# Train busi as one Slurm batch job that outlives its time limit by requeueing itself.
#
#   sbatch slurm/train.sh [JOB.yaml ...] [--set key.path=value ...]       (default job/busi.yaml)
#   sbatch --time=08:00:00 --cpus-per-task=16 slurm/train.sh job/busi.yaml --set train.batch_size=64
#   BUSI_IMAGE=$HOME/busi.sif sbatch --partition=gpu --gres=gpu:1 slurm/train.sh job/busi.yaml
#
# Run it from the project folder (relative paths in job files are relative to where you submit).
# Options on the sbatch command line override the #SBATCH lines below. What each line does
# (CHANGE marks what users usually change):
#
#   --job-name        name in squeue; %x in the log file name
#   --ntasks=1        one process: busi uses threads on one node (several ranks: train-horovod.sh)
#   --cpus-per-task   CHANGE: cores; busi reads SLURM_CPUS_PER_TASK (runtime.cores: auto)
#   --mem             CHANGE: memory for the node-local job (224 px BUSI, batch 32: about 12 GB)
#   --time            CHANGE: time limit of ONE run; longer training continues in requeued runs
#   --signal=B:USR1@180  send SIGUSR1 to this batch shell 180 s (Slurm: up to 60 s more) before the
#                     time limit; the script forwards it, busi checkpoints and exits 75, the
#                     script requeues the job. Raise it if one training step takes minutes.
#   --requeue         the job may be requeued (by this script, node failure or preemption)
#   --open-mode=append  a requeued run appends to the same log instead of truncating it
#   --output          the log, busi-train-<jobid>.out in the submit folder (same across requeues)
#   --partition, --account, --gres   CHANGE (commented out): your site's partition, account, GPUs
#
# Environment knobs (see slurm/lib.sh): BUSI_IMAGE (Apptainer image), BUSI_VENV, BUSI_SCRATCH,
# BUSI_BIND, BUSI_NV, BUSI_MAX_REQUEUES; BUSI_RUN_DIR=DIR sets output.dir (default: the job
# file's, which job/busi.yaml keys by ${SLURM_JOB_ID}: the id survives requeues, so the
# requeued job finds its checkpoint). Data are staged to node-local scratch (data.staging_dir).
#
#SBATCH --job-name=busi-train
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=16G
#SBATCH --time=04:00:00
#SBATCH --signal=B:USR1@180
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
##SBATCH --partition=gpu
##SBATCH --gres=gpu:1
##SBATCH --account=myproject
set -euo pipefail

# Slurm runs a spooled copy of this script: source lib.sh from beside the original (the job's
# Command), this file's folder or the submit folder's slurm/; BUSI_SLURM_DIR overrides.
# shellcheck source=slurm/lib.sh
source "$(for d in "${BUSI_SLURM_DIR:-}" "$(scontrol show job -o "${SLURM_JOB_ID:-none}" 2>/dev/null | grep -o 'Command=[^ ]*' | head -n1 | cut -d= -f2- | sed 's|/[^/]*$||')" "$(dirname "${BASH_SOURCE[0]}")" "${SLURM_SUBMIT_DIR:-.}/slurm"; do [[ -f "$d/lib.sh" ]] && echo "$d/lib.sh" && break; done)" || { echo "cannot find slurm/lib.sh: set BUSI_SLURM_DIR=/path/to/busi/slurm" >&2; exit 2; }
busi_begin job/busi.yaml "sbatch slurm/train.sh [JOB.yaml ...] [--set key=value ...]" busi-job "$@"
set -- ${BUSI_ARGS[@]+"${BUSI_ARGS[@]}"}
sets=(--set "data.staging_dir=$BUSI_STAGING_DIR")
[[ -n "${BUSI_RUN_DIR:-}" ]] && sets+=(--set "output.dir=$BUSI_RUN_DIR")

busi_log "job files ${BUSI_JOBS[*]}; restart ${SLURM_RESTART_COUNT:-0}; ${SLURM_CPUS_PER_TASK:-?} cores on $(hostname); staging to $BUSI_STAGING_DIR"
busi_log "running: ${BUSI_CMD[*]} train ${BUSI_JOBS[*]} ${sets[*]} $*"
# A rerun of the same command on the same output.dir resumes from its checkpoint.
busi_run "${BUSI_CMD[@]}" train "${BUSI_JOBS[@]}" "${sets[@]}" "$@"
busi_finish "$BUSI_RC"
