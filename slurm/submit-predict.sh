#!/usr/bin/env bash
# Submit a prediction array (slurm/predict.sh) and the job that merges its shard CSVs
# (slurm/merge.sh, --dependency=afterok on the whole array). Run on a login node, from the
# project folder:
#
#   slurm/submit-predict.sh [SBATCH OPTIONS --] [JOB.yaml ...] [--set predict.key=value ...]
#
#   slurm/submit-predict.sh job/predict.yaml --set predict.model=runs/busi-1234
#   slurm/submit-predict.sh --array=0-15 --time=00:30:00 -- job/predict.yaml
#
# SBATCH OPTIONS (before --) go to the array job only. Options for both jobs (partition,
# account, QOS) go through sbatch's own environment variables, e.g.
#   SBATCH_PARTITION=cpu SBATCH_ACCOUNT=myproject slurm/submit-predict.sh job/predict.yaml
# Prints the two job ids. If a shard fails, the merge job never starts (afterok; it is removed,
# --kill-on-invalid-dep): fix it, then `sbatch slurm/merge.sh JOB.yaml [--set ...]` by hand.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=slurm/lib.sh
source "$here/lib.sh"   # run from the checkout on a login node (not spooled): lib.sh is beside it
busi_split_options "$@"
set -- ${BUSI_ARGS[@]+"${BUSI_ARGS[@]}"}

array_id="$(busi_sbatch ${BUSI_OPTIONS[@]+"${BUSI_OPTIONS[@]}"} "$here/predict.sh" "$@")"
echo "Submitted prediction array job $array_id"
merge_id="$(busi_sbatch_after "$array_id" "$here/merge.sh" "$@")"
echo "Submitted merge job $merge_id (starts after every task of $array_id succeeded)"
