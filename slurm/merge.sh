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

# Slurm runs a spooled copy of this script: source lib.sh from beside the original (the job's
# Command), this file's folder or the submit folder's slurm/; BUSI_SLURM_DIR overrides.
# shellcheck source=slurm/lib.sh
source "$(for d in "${BUSI_SLURM_DIR:-}" "$(scontrol show job -o "${SLURM_JOB_ID:-none}" 2>/dev/null | grep -o 'Command=[^ ]*' | head -n1 | cut -d= -f2- | sed 's|/[^/]*$||')" "$(dirname "${BASH_SOURCE[0]}")" "${SLURM_SUBMIT_DIR:-.}/slurm"; do [[ -f "$d/lib.sh" ]] && echo "$d/lib.sh" && break; done)" || { echo "cannot find slurm/lib.sh: set BUSI_SLURM_DIR=/path/to/busi/slurm" >&2; exit 2; }

busi_job_args job/predict.yaml "sbatch slurm/merge.sh [JOB.yaml ...] [--set predict.key=value ...]" "$@"
set -- ${BUSI_ARGS[@]+"${BUSI_ARGS[@]}"}
busi_cmd busi-job
busi_log "merging the shards of ${BUSI_JOBS[*]}"
rc=0
"${BUSI_CMD[@]}" merge "${BUSI_JOBS[@]}" "$@" || rc=$?
busi_finish "$rc"
