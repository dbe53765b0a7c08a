#!/usr/bin/env bash
# Submit a K-fold cross-validation: an array of K tasks (slurm/cv-fold.sh, one fold each) and
# the report over them (slurm/cv-report.sh, --dependency=afterok on the whole array). Run on a
# login node, from the project folder:
#
#   slurm/cv.sh [SBATCH OPTIONS --] --folds K [JOB.yaml ...] [--set key=value ...]
#
#   slurm/cv.sh --folds 5 job/busi.yaml
#   slurm/cv.sh --time=02:00:00 --cpus-per-task=16 -- --folds 10 job/busi.yaml --set train.head.epochs=20
#
# SBATCH OPTIONS (before --) go to the array only (add %N to --array's range by hand for at most N
# at once: --array is 0-(K-1)). The folds and the report share the cv dir BUSI_CV_DIR, default
# runs/cv-<array job id>. Prints the two job ids. If a fold fails the report never starts
# (afterok; --kill-on-invalid-dep): resubmit that fold (sbatch --array=I --export=ALL,BUSI_CV_DIR=DIR,
# BUSI_CV_FOLDS=K slurm/cv-fold.sh JOB.yaml), then the report (slurm/cv-report.sh) by hand.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=slurm/lib.sh
source "$here/lib.sh"   # run from the checkout on a login node (not spooled): lib.sh is beside it
busi_split_options "$@"
set -- ${BUSI_ARGS[@]+"${BUSI_ARGS[@]}"}
if [[ "${1:-}" != --folds || ! "${2:-}" =~ ^[0-9]+$ ]]; then
    echo "usage: slurm/cv.sh [SBATCH OPTIONS --] --folds K [JOB.yaml ...] [--set key=value ...]" >&2
    exit 2
fi
folds=$2
shift 2
(( folds >= 2 )) || { echo "slurm/cv.sh: --folds $folds: give at least 2" >&2; exit 2; }

array_id="$(busi_sbatch --array="0-$((folds - 1))" --export="ALL,BUSI_CV_FOLDS=$folds" \
    ${BUSI_OPTIONS[@]+"${BUSI_OPTIONS[@]}"} "$here/cv-fold.sh" "$@")"
cv_dir="${BUSI_CV_DIR:-runs/cv-$array_id}"
echo "Submitted cross-validation array job $array_id ($folds folds into $cv_dir)"
report_id="$(busi_sbatch_after "$array_id" --export="ALL,BUSI_CV_DIR=$cv_dir" "$here/cv-report.sh" "$@")"
echo "Submitted report job $report_id (starts after every fold of $array_id succeeded)"
