#!/usr/bin/env bash
# The report over a cross-validation's folds (slurm/cv.sh queues this with
# --dependency=afterok:<array job>, so it starts once every fold is done):
#
#   sbatch --dependency=afterok:<array job id> --export=ALL,BUSI_CV_DIR=<cv dir> slurm/cv-report.sh [JOB.yaml ...] [--set ...]
#
# Writes <cv dir>/cv-metrics.json, oof.csv and plots/oof_*.png; busi-job cv-report exits 3
# naming every fold that is not complete.
#
#SBATCH --job-name=busi-cv-report
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --mem=2G
#SBATCH --time=00:15:00
#SBATCH --output=%x-%j.out
##SBATCH --partition=cpu
##SBATCH --account=myproject
set -euo pipefail

# Slurm runs a spooled copy of this script: source lib.sh from beside the original (the job's
# Command), this file's folder or the submit folder's slurm/; BUSI_SLURM_DIR overrides.
# shellcheck source=slurm/lib.sh
source "$(for d in "${BUSI_SLURM_DIR:-}" "$(scontrol show job -o "${SLURM_JOB_ID:-none}" 2>/dev/null | grep -o 'Command=[^ ]*' | head -n1 | cut -d= -f2- | sed 's|/[^/]*$||')" "$(dirname "${BASH_SOURCE[0]}")" "${SLURM_SUBMIT_DIR:-.}/slurm"; do [[ -f "$d/lib.sh" ]] && echo "$d/lib.sh" && break; done)" || { echo "cannot find slurm/lib.sh: set BUSI_SLURM_DIR=/path/to/busi/slurm" >&2; exit 2; }

busi_job_args job/busi.yaml "sbatch slurm/cv-report.sh [JOB.yaml ...] [--set key=value ...]" "$@"
set -- ${BUSI_ARGS[@]+"${BUSI_ARGS[@]}"}
[[ -n "${BUSI_CV_DIR:-}" ]] || busi_die 2 "BUSI_CV_DIR is not set: the cv dir the folds ran in (slurm/cv.sh sets it)"
busi_cmd busi-job
busi_log "reporting the folds in $BUSI_CV_DIR"
rc=0
"${BUSI_CMD[@]}" cv-report "${BUSI_JOBS[@]}" --set "output.dir=$BUSI_CV_DIR" "$@" || rc=$?
busi_finish "$rc"
