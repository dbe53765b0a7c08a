#!/usr/bin/env bash
# Join the shard CSVs of a prediction array into predict.output (slurm/submit-predict.sh
# queues this with --dependency=afterok:<array job>, so it starts once every shard is done).
#
#   sbatch --dependency=afterok:<array job id> slurm/merge.sh [JOB.yaml ...] [--set predict.key=value ...]
#
# The job file and --set options must be the ones the array ran with: they name the output.
# busi-job merge exits 3 naming every missing or incomplete shard.
#
#SBATCH --job-name=busi-merge
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

busi_job_args job/predict.yaml "sbatch slurm/merge.sh [JOB.yaml ...] [--set predict.key=value ...]" "$@"
set -- ${BUSI_ARGS[@]+"${BUSI_ARGS[@]}"}
jobs=("${BUSI_JOBS[@]}")
busi_cmd busi-job
busi_log "merging the shards of ${jobs[*]}"
rc=0
"${BUSI_CMD[@]}" merge "${jobs[@]}" "$@" || rc=$?
busi_finish "$rc"
