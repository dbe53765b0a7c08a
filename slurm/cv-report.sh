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

# Slurm runs a copy of this script from its spool folder: find slurm/lib.sh beside the original.
busi_slurm_dir() {
    local d cmd=""
    if [[ -n "${SLURM_JOB_ID:-}" ]]; then
        cmd="$(scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null | grep -o 'Command=[^ ]*' | head -n1 | cut -d= -f2-)" || true
    fi
    for d in "${BUSI_SLURM_DIR:-}" "${cmd%/*}" "$(dirname "${BASH_SOURCE[0]}")" "${SLURM_SUBMIT_DIR:-.}/slurm"; do
        [[ -n "$d" && -f "$d/lib.sh" ]] && { echo "$d"; return; }
    done
    echo "cannot find slurm/lib.sh: set BUSI_SLURM_DIR=/path/to/busi/slurm" >&2
    exit 2
}
# shellcheck source=slurm/lib.sh
source "$(busi_slurm_dir)/lib.sh"

busi_job_args job/busi.yaml "sbatch slurm/cv-report.sh [JOB.yaml ...] [--set key=value ...]" "$@"
set -- ${BUSI_ARGS[@]+"${BUSI_ARGS[@]}"}
jobs=("${BUSI_JOBS[@]}")
[[ -n "${BUSI_CV_DIR:-}" ]] || busi_die 2 "BUSI_CV_DIR is not set: the cv dir the folds ran in (slurm/cv.sh sets it)"
busi_cmd busi-job
busi_log "reporting the folds in $BUSI_CV_DIR"
rc=0
"${BUSI_CMD[@]}" cv-report "${jobs[@]}" --set "output.dir=$BUSI_CV_DIR" "$@" || rc=$?
busi_finish "$rc"
