#!/usr/bin/env bash
# Predict with busi as a Slurm array: every array task classifies its shard of the inputs.
# Submit it with slurm/submit-predict.sh, which also queues the merge of the shard CSVs:
#
#   slurm/submit-predict.sh [SBATCH OPTIONS --] [JOB.yaml ...] [--set predict.key=value ...]
#   slurm/submit-predict.sh --array=0-7 -- job/predict.yaml --set predict.model=runs/busi-1234
#
# or by hand:  sbatch slurm/predict.sh JOB.yaml   then, when it is done:  busi-job merge JOB.yaml
#
# Task I of N (N = array size, from SLURM_ARRAY_TASK_ID/_MIN/_COUNT) predicts every N-th input
# file from I and writes <output>.part-0000I-of-0000N.csv beside predict.output, with --resume:
# a task requeued after SIGUSR1 (time limit) continues its CSV instead of starting again.
#
# #SBATCH lines (sbatch command-line options override them; CHANGE marks the usual edits):
#   --array=0-3       CHANGE: number of shards; keep a contiguous range from 0 (0-7 = 8 shards;
#                     0-7%2 runs at most 2 at once). The merge expects exactly this many shards.
#   --ntasks=1, --cpus-per-task   CHANGE: cores per shard (busi reads SLURM_CPUS_PER_TASK)
#   --mem             CHANGE: memory per shard
#   --time            CHANGE: time limit of one run of a shard
#   --signal=B:USR1@120  SIGUSR1 to the batch shell 120 s before the limit: busi finishes the batch,
#                     flushes the CSV and exits 75, the script requeues the task
#   --requeue, --open-mode=append   requeueable; a requeued task appends to its log
#   --output          busi-predict-<array job id>_<task>.out in the submit folder
#
# Environment knobs: as slurm/train.sh (BUSI_IMAGE, BUSI_VENV, BUSI_SCRATCH, BUSI_BIND, BUSI_NV).
# Archives among the inputs unpack once per node into node-local scratch (predict.staging_dir).
#
#SBATCH --job-name=busi-predict
#SBATCH --array=0-3
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=4
#SBATCH --mem=8G
#SBATCH --time=01:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%A_%a.out
##SBATCH --partition=cpu
##SBATCH --account=myproject
set -euo pipefail

# Slurm runs a spooled copy of this script: source lib.sh from beside the original (the job's
# Command), this file's folder or the submit folder's slurm/; BUSI_SLURM_DIR overrides.
# shellcheck source=slurm/lib.sh
source "$(for d in "${BUSI_SLURM_DIR:-}" "$(scontrol show job -o "${SLURM_JOB_ID:-none}" 2>/dev/null | grep -o 'Command=[^ ]*' | head -n1 | cut -d= -f2- | sed 's|/[^/]*$||')" "$(dirname "${BASH_SOURCE[0]}")" "${SLURM_SUBMIT_DIR:-.}/slurm"; do [[ -f "$d/lib.sh" ]] && echo "$d/lib.sh" && break; done)" || { echo "cannot find slurm/lib.sh: set BUSI_SLURM_DIR=/path/to/busi/slurm" >&2; exit 2; }
busi_begin job/predict.yaml "sbatch slurm/predict.sh [JOB.yaml ...] [--set predict.key=value ...]" busi-job "$@"
set -- ${BUSI_ARGS[@]+"${BUSI_ARGS[@]}"}
sets=(--set "predict.staging_dir=$BUSI_STAGING_DIR")

busi_log "job files ${BUSI_JOBS[*]}; shard ${SLURM_ARRAY_TASK_ID:-0} of ${SLURM_ARRAY_TASK_COUNT:-1}; restart ${SLURM_RESTART_COUNT:-0}; ${SLURM_CPUS_PER_TASK:-?} cores on $(hostname)"
busi_run "${BUSI_CMD[@]}" predict "${BUSI_JOBS[@]}" --resume "${sets[@]}" "$@"
busi_finish "$BUSI_RC"
