#!/usr/bin/env bash
# One fold of a cross-validation (busi-job cv) per array task. Submit it with slurm/cv.sh, which
# also queues the report over the folds:
#
#   slurm/cv.sh [SBATCH OPTIONS --] --folds K [JOB.yaml ...] [--set key=value ...]
#
# Task I trains fold I into <cv dir>/fold-I/ (K = the array's size, or BUSI_CV_FOLDS). The cv
# dir is BUSI_CV_DIR, else runs/cv-<array job id>: the same for every task, so they share one
# folds.csv (the first task writes it under a lock). A requeued task resumes its fold from its
# checkpoint; a task whose fold is complete exits at once.
#
# #SBATCH lines (sbatch command-line options override them): as slurm/train.sh, one fold's
# training per task; --array is set by slurm/cv.sh from --folds.
#
#SBATCH --job-name=busi-cv
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=16G
#SBATCH --time=04:00:00
#SBATCH --signal=B:USR1@180
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
busi_begin job/busi.yaml "slurm/cv.sh [SBATCH OPTIONS --] --folds K [JOB.yaml ...] [--set key=value ...]" busi-job "$@"
set -- ${BUSI_ARGS[@]+"${BUSI_ARGS[@]}"}

folds="${BUSI_CV_FOLDS:-${SLURM_ARRAY_TASK_COUNT:-}}"
[[ "$folds" =~ ^[0-9]+$ ]] || busi_die 2 "no fold count: submit with slurm/cv.sh --folds K (or set BUSI_CV_FOLDS)"
cv_dir="${BUSI_CV_DIR:-runs/cv-${SLURM_ARRAY_JOB_ID:-local}}"

sets=(--set "data.staging_dir=$BUSI_STAGING_DIR" --set "output.dir=$cv_dir")

busi_log "job files ${BUSI_JOBS[*]}; fold ${SLURM_ARRAY_TASK_ID:-all} of $folds in $cv_dir; restart ${SLURM_RESTART_COUNT:-0}; ${SLURM_CPUS_PER_TASK:-?} cores on $(hostname)"
busi_run "${BUSI_CMD[@]}" cv "${BUSI_JOBS[@]}" --folds "$folds" "${sets[@]}" "$@"
busi_finish "$BUSI_RC"
