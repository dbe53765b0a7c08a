"""``busi-job``'s arguments: every command, its options and their help, in one parser
(``build_parser``); ``busi.cli`` runs what it parses. Standard library and busi's tables of
allowed values only: ``busi-job --help`` answers without TensorFlow."""

from __future__ import annotations

import argparse
from typing import Any

from busi import __version__
from busi.config.schema import (
    BACKBONES,
    DICOM_FRAMES,
    ENGINES,
    EXPORT_FORMATS,
    EXPORT_PRECISIONS,
    INFERENCE_PRECISIONS,
    POLICIES,
    TTA_MODES,
    UNFREEZE_MODES,
)


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a job-file key (YAML-typed, repeatable), e.g. --set train.head.epochs=3",
    )


def _add_jobs(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", nargs="+", metavar="JOB.yaml",
                   help="job file (YAML); several are merged left to right (mappings deep-merged, lists "
                   "replaced), e.g. job/busi.yaml job/overlays/smoke.yaml; --set applies last")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="busi-job",
        description="Breast ultrasound (BUSI) classifier: train and predict as a batch job.",
        epilog="Exit codes: 0 ok, 1 unexpected failure (or a failed bench worker), 2 bad config or usage, "
        "3 bad or unsafe data, 75 interrupted (resumable; requeue the job), 130 Ctrl-C.",
    )
    parser.add_argument("--version", action="version", version=f"busi {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_data_commands(sub)
    _add_training_commands(sub)
    _add_prediction_commands(sub)
    _add_model_commands(sub)
    return parser


def _add_data_commands(sub: Any) -> None:
    p = sub.add_parser("config", help="print the resolved job config (validates it)")
    _add_jobs(p)
    p.add_argument("--explain", action="store_true",
                   help="print each resolved key with the job file, --set or default it came from")
    _add_set(p)

    p = sub.add_parser("inspect", help="report on a dataset: counts, sizes, masks, duplicates, conflicts")
    p.add_argument("target", nargs="+", help="job files (YAML, layered left to right), or a dataset folder or "
                   "archive")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_set(p)

    p = sub.add_parser("synth", help="write a synthetic BUSI-like dataset (same layout, with masks)")
    p.add_argument("out_dir", help="folder to create (must not exist or be empty)")
    p.add_argument("--per-class", type=int, default=40, help="images per class (default 40)")
    p.add_argument("--size", type=int, default=64, help="image height in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _add_training_commands(sub: Any) -> None:
    p = sub.add_parser("train", help="train and evaluate; writes the run directory (output.dir)")
    _add_jobs(p)
    p.add_argument("--restart", action="store_true", help="replace a completed run in output.dir")
    _add_set(p)

    p = sub.add_parser("run", help="run a job file: train, or predict if it has a predict: section")
    _add_jobs(p)
    p.add_argument("--restart", action="store_true", help="(train) replace a completed run")
    _add_set(p)

    p = sub.add_parser("cv", help="group-aware stratified K-fold cross-validation: one training run per fold "
                       "in output.dir/fold-I/")
    _add_jobs(p)
    p.add_argument("--folds", type=int, required=True, metavar="K", help="number of folds (2-20)")
    p.add_argument("--fold", type=int, metavar="I", help="run fold I only (0..K-1; default: $SLURM_ARRAY_TASK_ID "
                   "in an array job, else every fold not yet completed, in turn)")
    _add_set(p)

    p = sub.add_parser("cv-report", help="gather a cross-validation: metrics across folds, out-of-fold predictions")
    p.add_argument("target", nargs="+", metavar="OUT|JOB.yaml",
                   help="the cross-validation's output.dir, or the job files (and --set) it ran with")
    p.add_argument("--seed", type=int, default=0, help="seed of the pooled metrics' bootstrap (default 0)")
    _add_set(p)

    p = sub.add_parser(
        "bench", help="measure training and inference images/s per core count and precision; "
        "estimate a job's walltime (--estimate JOB.yaml)",
    )
    p.add_argument("--cores", help="comma-separated core counts, one subprocess each (default 1,2,4,... up to "
                   "the cores available)")
    p.add_argument("--precision", help=f"comma-separated: {', '.join(POLICIES)}, auto (default float32, and "
                   "mixed_bfloat16 where the CPU has fast bf16; with --estimate the job's)")
    p.add_argument("--image-size", type=int, help="model input side in px (default 224; with --estimate the job's)")
    p.add_argument("--batch-size", type=int, help="training batch (default 16; with --estimate the job's)")
    p.add_argument("--infer-batch-size", type=int, help="inference batch (default 32; with --estimate the job's)")
    p.add_argument("--unfreeze", choices=[m for m in UNFREEZE_MODES if m != "none"],
                   help="backbone blocks trained in the timed step (default all; with --estimate the job's finetune)")
    p.add_argument("--steps", type=int, default=5, help="timed batches per repeat (default 5)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported (default 3)")
    p.add_argument("--out", default="bench", help="folder for bench.csv and bench.png (default bench/)")
    p.add_argument("--estimate", metavar="JOB.yaml", help="print the walltime this job needs per core count")
    p.add_argument("--images", type=int, help="(--estimate) number of images when data.source is not here")
    p.add_argument("--rates", metavar="bench.csv", help="(--estimate) use an earlier bench.csv instead of measuring")
    _add_set(p)


def _add_prediction_commands(sub: Any) -> None:
    p = sub.add_parser("predict", help="classify folders, files, archives; one CSV row per image")
    p.add_argument("job", nargs="*", help="optional prediction job files (YAML, a predict: section; several "
                   "are layered left to right)")
    p.add_argument("--model", help="run directory, model.keras (labels.json beside it), or a cross-validation's "
                   "output.dir (its fold models predict together)")
    p.add_argument("--input", dest="inputs", action="append", metavar="PATH",
                   help="folder (recursive), file, archive or @list.txt (repeatable)")
    p.add_argument("--output", help="CSV path (default predictions.csv)")
    p.add_argument("--batch-size", type=int, help="images per forward pass (default 32)")
    p.add_argument("--include-masks", action="store_true", default=None, help="also predict on *_mask files")
    p.add_argument("--resume", action="store_true", default=None, help="skip paths already in the output CSV")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an existing output CSV")
    p.add_argument("--shard", help="I/N: take shard I of N (default: from array-job env vars)")
    p.add_argument("--gradcam", metavar="DIR", help="write a Grad-CAM overlay PNG per image into DIR")
    p.add_argument("--dicom-sr", metavar="DIR",
                   help="write a DICOM Structured Report per classified DICOM image into DIR (for the PACS)")
    p.add_argument("--dicom-frame", choices=DICOM_FRAMES,
                   help="the frames of a multi-frame DICOM to classify; all: a row per frame "
                   "(default: as the model was trained)")
    p.add_argument("--engine", choices=ENGINES,
                   help="inference engine (default auto: OpenVINO on a CPU-only node where installed)")
    p.add_argument("--precision", choices=INFERENCE_PRECISIONS,
                   help="OpenVINO's inference precision (default auto: the fastest on this CPU)")
    p.add_argument("--tta", choices=TTA_MODES,
                   help="test-time augmentation: flip averages each image with its mirror image (default none)")
    p.add_argument("--cores", help="cores to use (default auto)")
    _add_set(p)

    p = sub.add_parser("merge", help="join shard CSVs (<stem>.part-I-of-N.csv) into one CSV")
    p.add_argument("--allow-mixed-engines", action="store_true",
                   help="merge shards predicted by different engines or precisions")
    p.add_argument("output", nargs="+", help="the merged CSV to write (shards are found beside it), or the "
                   "prediction job files (YAML) the shards ran with: their predict.output")
    _add_set(p)


def _add_model_commands(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="external validation: a trained model on another labelled dataset, "
                       "with a check for overlap with its training images")
    p.add_argument("job", nargs="*", help="job files whose data: section reads the set (a label table with its "
                   "joins, templates and label map; layered left to right); none: --data holds class folders")
    p.add_argument("--model", required=True, metavar="RUN_DIR", help="a completed run directory")
    p.add_argument("--data", metavar="SOURCE", help="a folder or archive in the class-folder layout (the model's "
                   "classes, or some of them); with job files: replaces data.source")
    p.add_argument("--output", metavar="DIR", help="the evaluation folder (default ./evaluation-<data name>)")
    p.add_argument("--engine", choices=ENGINES, default="auto")
    p.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="auto")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--keep-overlap", action="store_true",
                   help="count images that duplicate training images in the metrics (default: left out)")
    p.add_argument("--no-leakage-check", action="store_true",
                   help="skip the overlap check (a model without its run directory's data/hashes.csv)")
    p.add_argument("--group-pattern", metavar="REGEX",
                   help="the patient ID in each file name (as data.group_pattern; default: the run's): images of a "
                   "training patient count as overlap")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in --output")
    _add_set(p)

    p = sub.add_parser("export", help="write a trained model as an OpenVINO model or a SavedModel")
    p.add_argument("model", metavar="RUN_DIR", help="a completed run directory, or a model.keras file")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="what to write")
    p.add_argument("--out", help="a folder (default: beside model.keras: openvino/, saved_model/)")
    p.add_argument("--precision", choices=EXPORT_PRECISIONS, default="float32",
                   help="openvino only: int8 quantizes a completed run's model on its training images into "
                   "model/openvino-int8/ and measures its accuracy contract on the run's test split")

    p = sub.add_parser("fetch-weights", help="download backbones' ImageNet weights (needs internet) into a folder")
    p.add_argument("--dir", default=None, help="target folder (default: $BUSI_WEIGHTS_DIR or ~/.keras/models)")
    p.add_argument("--backbone", default="resnet50", metavar="NAME[,NAME...]",
                   help=f"comma-separated backbones (default resnet50): {', '.join(BACKBONES)}")
    p.add_argument("--alpha", type=float, default=1.0, help="width of mobilenet and mobilenet_v2 (default 1.0)")
