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

from busi.config.schema import (
    BACKBONES,
)
from busi.errors import BusiError, ConfigError, DataError
from busi.cli_args import build_parser
from busi.runtime.logs import setup_logging

log = logging.getLogger("busi")

EXIT_OK, EXIT_CTRL_C = 0, 130  # the others: busi.errors (1, 2, 3, 75)


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
