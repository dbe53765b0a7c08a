"""``busi-job``: a thin command line over the library. It parses, wires and maps errors to exit codes.

Commands that only read configs or data (``--help``, ``config``, ``inspect``, ``synth``)
never import TensorFlow, so they answer instantly on a login node.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

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
from busi.errors import BusiError, ConfigError, DataError
from busi.runtime.logs import setup_logging

log = logging.getLogger("busi")

EXIT_OK, EXIT_CTRL_C = 0, 130  # the others: busi.errors (1, 2, 3, 75)


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


def _is_job_file(path: str) -> bool:
    return Path(path).suffix.lower() in (".yaml", ".yml")


def cmd_config(args: argparse.Namespace) -> int:
    from busi.config.load import dump_config, explain_config, format_explain, load_any

    if args.explain:
        sys.stdout.write(format_explain(explain_config(args.job, args.overrides)))
    else:
        sys.stdout.write(dump_config(load_any(args.job, args.overrides)))
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    from busi.config.load import load_config
    from busi.data.prepare import prepare_data
    from busi.report.text import format_inspect

    if all(_is_job_file(t) for t in args.target):
        cfg = load_config(args.target, args.overrides)
    elif len(args.target) > 1:
        raise ConfigError("inspect: give one dataset folder or archive, or job files (YAML) only")
    else:
        base = {"data": {"source": args.target[0]}, "output": {"dir": "unused-by-inspect"}}
        cfg = load_config(None, args.overrides, base=base)
    prepared = prepare_data(cfg.data, cfg.runtime.seed, exclude=[cfg.output.dir])
    if args.json:
        sys.stdout.write(json.dumps(prepared.report, indent=2) + "\n")
    else:
        sys.stdout.write(format_inspect(prepared.report))
    return EXIT_OK


def cmd_synth(args: argparse.Namespace) -> int:
    from busi.data.synth import write_synthetic_dataset

    out = write_synthetic_dataset(args.out_dir, per_class=args.per_class, size=args.size, seed=args.seed)
    print(f"wrote {3 * args.per_class} images with masks to {out}")
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from busi.config.load import load_config
    from busi.train.job import run_training

    cfg = load_config(args.job, args.overrides)
    run_training(cfg, restart=args.restart, argv=["busi-job", *sys.argv[1:]])
    return EXIT_OK


def cmd_cv(args: argparse.Namespace) -> int:
    import os

    from busi.config.load import load_config
    from busi.train.cv import array_fold, run_cv

    cfg = load_config(args.job, args.overrides)
    fold = args.fold if args.fold is not None else array_fold(dict(os.environ))
    run_cv(cfg, args.folds, fold, argv=["busi-job", *sys.argv[1:]])
    return EXIT_OK


def cmd_cv_report(args: argparse.Namespace) -> int:
    from busi.config.load import load_config
    from busi.evaluate.crossval import OOF, cv_report
    from busi.files.cvdir import REPORT_FILE
    from busi.report.text import format_cv

    if all(_is_job_file(t) for t in args.target):  # the job files name output.dir (slurm/cv-report.sh)
        root = Path(load_config(args.target, args.overrides).output.dir)
    elif len(args.target) > 1 or args.overrides:
        raise ConfigError("cv-report: give the cross-validation's folder, or the job files (YAML) it ran with")
    else:
        root = Path(args.target[0])
    report = cv_report(root, seed=args.seed)
    print(format_cv(report))
    print(f"wrote {root / REPORT_FILE}, {root / OOF.predictions} and {root / OOF.plot('*')}")
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    flags = {
        "model": args.model, "inputs": args.inputs, "output": args.output, "batch_size": args.batch_size,
        "include_masks": args.include_masks, "resume": args.resume, "overwrite": args.overwrite,
        "shard": args.shard, "gradcam": args.gradcam, "engine": args.engine, "precision": args.precision,
        "dicom_sr": args.dicom_sr, "dicom_frame": args.dicom_frame, "tta": args.tta,
    }
    settings = {f"predict.{k}": v for k, v in flags.items() if v is not None}
    if args.cores is not None:
        settings["runtime.cores"] = int(args.cores) if args.cores.strip().isdigit() else args.cores
    if not args.job and "predict.model" not in settings:
        raise ConfigError("predict: give --model RUN_DIR|model.keras and --input PATH (or a job file)")
    if not args.job and "predict.inputs" not in settings:
        raise ConfigError("predict: give at least one --input PATH")
    return _predict(args.job, settings, args.overrides)


def _predict(job: Sequence[str], settings: dict[str, Any], overrides: Sequence[str]) -> int:
    """A prediction job: the job file (if any), command-line flags over it, ``--set`` last."""
    from busi.config.load import load_predict_config
    from busi.predict.job import run_predict

    cfg = load_predict_config(job, overrides, settings=settings)
    summary = run_predict(cfg)
    return EXIT_OK if summary.classified > 0 else DataError.exit_code


def cmd_merge(args: argparse.Namespace) -> int:
    from busi.predict.merge import merge_shards

    if all(_is_job_file(o) for o in args.output):  # the array's job files name the output
        from busi.config.load import load_predict_config

        output = Path(load_predict_config(args.output, args.overrides).predict.output)
    elif len(args.output) > 1:
        raise ConfigError("merge: give one CSV, or the prediction job files (YAML) the shards ran with")
    elif args.overrides:
        raise ConfigError("merge: --set needs a prediction job file (merge JOB.yaml --set ...), not a CSV")
    else:
        output = Path(args.output[0])
    n = merge_shards(output, allow_mixed_engines=args.allow_mixed_engines)
    print(f"merged {n} rows into {output}")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from busi.config.load import load_any
    from busi.config.schema import PredictJobConfig

    if isinstance(load_any(args.job, args.overrides), PredictJobConfig):
        return _predict(args.job, {}, args.overrides)
    return cmd_train(args)


def cmd_export(args: argparse.Namespace) -> int:
    from busi.model.export import export_model
    from busi.runtime.cores import detect_cores
    from busi.runtime.startup import start_tensorflow

    cores = detect_cores("auto")
    start_tensorflow(cores, seed=0)
    if args.precision == "int8":
        if args.format != "openvino" or args.out:
            raise ConfigError("export --precision int8: with --format openvino and no --out (the INT8 model goes "
                              "into the run's model/openvino-int8/, beside its accuracy contract)")
        from busi.train.quantize import export_int8

        path = export_int8(args.model, threads=cores.cores)
    else:
        path = export_model(args.model, args.format, args.out)
    print(f"wrote {path}")
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from busi.evaluate.external import EvaluateRequest, run_evaluate
    from busi.evaluate.external_data import NO_SET
    from busi.runtime.cores import detect_cores
    from busi.runtime.startup import start_tensorflow

    if args.batch_size < 1:
        raise ConfigError("--batch-size: must be at least 1")
    if args.data is None and not args.job and not args.overrides:
        raise ConfigError(NO_SET, keys=("--data",))  # before a model is loaded
    cores = detect_cores("auto")
    run_evaluate(EvaluateRequest(
        model=args.model, data=args.data, jobs=tuple(args.job), overrides=tuple(args.overrides), output=args.output,
        engine=args.engine, precision=args.precision,
        batch_size=args.batch_size, keep_overlap=args.keep_overlap, leakage_check=not args.no_leakage_check,
        overwrite=args.overwrite, group_pattern=args.group_pattern,
    ), threads=cores.cores, start=lambda: start_tensorflow(cores, seed=0))
    return EXIT_OK


def cmd_fetch_weights(args: argparse.Namespace) -> int:
    from busi.model.weights import fetch_imagenet_weights, imagenet_search_dirs

    names = [n.strip() for n in args.backbone.split(",") if n.strip()]
    unknown = [n for n in names if n not in BACKBONES]
    if not names or unknown:
        raise ConfigError(f"fetch-weights --backbone {args.backbone}: expected names among {', '.join(BACKBONES)}")
    target = Path(args.dir) if args.dir else imagenet_search_dirs()[0]
    for path in fetch_imagenet_weights(target, names, args.alpha):
        print(f"ImageNet weights at {path}")
    print(f"export BUSI_WEIGHTS_DIR={target.resolve()}")
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from busi.perf.bench import BenchRequest, run_bench

    return run_bench(BenchRequest(
        cores=args.cores, precision=args.precision, image_size=args.image_size, batch_size=args.batch_size,
        infer_batch_size=args.infer_batch_size, unfreeze=args.unfreeze, steps=args.steps, repeats=args.repeats,
        out=args.out, estimate=args.estimate, images=args.images, rates=args.rates, overrides=tuple(args.overrides),
    ))


COMMANDS = {
    "config": cmd_config,
    "inspect": cmd_inspect,
    "train": cmd_train,
    "cv": cmd_cv,
    "cv-report": cmd_cv_report,
    "predict": cmd_predict,
    "merge": cmd_merge,
    "run": cmd_run,
    "export": cmd_export,
    "evaluate": cmd_evaluate,
    "fetch-weights": cmd_fetch_weights,
    "synth": cmd_synth,
    "bench": cmd_bench,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        return COMMANDS[args.command](args)
    except BusiError as e:
        print(f"busi-job: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("busi-job: interrupted", file=sys.stderr)
        return EXIT_CTRL_C


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
