#!/usr/bin/env bash
# Smoke test of an installed busi (an image, or a prefix made by containers/install.sh):
# a tiny synthetic dataset (8 images per class, 32 px), a 1 + 1 epoch training run from scratch
# of a small backbone (MobileNet at width 0.25: the job's whole path, SavedModel, OpenVINO and INT8
# included, in a fraction of ResNet50's time) through the container entrypoint, then headless
# prediction over the same images. Under a minute on 2 cores. Exit 0 when everything a real job needs works.
#
# Installed as $BUSI_PREFIX/bin/busi-smoke-test. Run it as:
#   apptainer test busi.sif                                   (the %test section)
#   docker run --rm busi:VERSION smoke-test                    (through the entrypoint)
#   docker run --rm --entrypoint busi-smoke-test busi:VERSION
#   BUSI_PREFIX=/some/prefix containers/smoke-test.sh         (a prefix made by install.sh)
set -euo pipefail

say() { echo "smoke-test: $*" >&2; }
die() { say "FAILED: $*"; exit 1; }

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -n "${BUSI_PREFIX:-}" ]]; then
    prefix="$BUSI_PREFIX"
elif [[ -x "$here/busi-job" ]]; then
    prefix="$(cd "$here/.." && pwd)"      # installed as <prefix>/bin/busi-smoke-test
else
    prefix=/opt/busi
fi
busi_job="$prefix/bin/busi-job"
entrypoint="$prefix/job/entrypoint.sh"
[[ -x "$busi_job" ]] || die "$busi_job not found (set BUSI_PREFIX)"
[[ -x "$entrypoint" ]] || die "$entrypoint not found (set BUSI_PREFIX)"

work="$(mktemp -d "${TMPDIR:-/tmp}/busi-smoke.XXXXXX")"
if [[ "${BUSI_SMOKE_KEEP:-0}" != 1 ]]; then
    trap 'rm -rf "$work"' EXIT
fi

"$busi_job" --version
"$busi_job" synth "$work/data" --per-class 8 --size 32 --seed 0

say "training (MobileNet 0.25, 1 + 1 epochs, 32 px, weights none) through $entrypoint"
"$entrypoint" "$prefix/job/demo.yaml" \
    --set data.source="$work/data" \
    --set data.staging_dir="$work/staging" \
    --set data.image_size=32 \
    --set model.weights=none \
    --set model.backbone=mobilenet \
    --set model.alpha=0.25 \
    --set train.batch_size=8 \
    --set train.head.epochs=1 \
    --set train.finetune.epochs=1 \
    --set output.dir="$work/run"

for f in manifest.json metrics.json history.csv model/model.keras model/labels.json; do
    [[ -s "$work/run/$f" ]] || die "the run directory lacks $f"
done

say "predicting over the synthetic images"
# --shard none: one CSV even when this runs inside an array job (Slurm, AWS Batch, Google Batch)
"$entrypoint" predict --model "$work/run" --input "$work/data" --output "$work/predictions.csv" --shard none
rows="$(($(wc -l <"$work/predictions.csv") - 1))"
[[ "$rows" == 24 ]] || die "expected 24 prediction rows (3 classes x 8 images), got $rows"

say "OK (busi $("$busi_job" --version 2>&1 | awk '{print $2}'), run directory and 24 predictions)"
