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
from busi.errors import BusiError, ConfigError

log = logging.getLogger("busi")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_DATA, EXIT_INTERRUPTED = 0, 1, 2, 3, 75


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a job-file key (YAML-typed, repeatable), e.g. --set train.head.epochs=3",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="busi-job",
        description="Breast ultrasound (BUSI) classifier: train and predict as a batch job.",
        epilog="Exit codes: 0 ok, 1 unexpected failure, 2 bad config or usage, 3 bad or unsafe data, "
        "75 interrupted (resumable; requeue the job).",
    )
    parser.add_argument("--version", action="version", version=f"busi {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("config", help="print the resolved job config (validates it)")
    p.add_argument("job", help="job file (YAML)")
    _add_set(p)

    p = sub.add_parser("inspect", help="report on a dataset: counts, sizes, masks, duplicates, conflicts")
    p.add_argument("target", help="a job file (YAML), or a dataset folder or archive")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_set(p)

    p = sub.add_parser("train", help="train and evaluate; writes the run directory (output.dir)")
    p.add_argument("job", help="job file (YAML)")
    p.add_argument("--restart", action="store_true", help="replace a completed run in output.dir")
    _add_set(p)

    p = sub.add_parser("fetch-weights", help="download ImageNet ResNet50 weights (needs internet) into a folder")
    p.add_argument("--dir", default=None, help="target folder (default: $BUSI_WEIGHTS_DIR or ~/.keras/models)")

    p = sub.add_parser("synth", help="write a synthetic BUSI-like dataset (same layout, with masks)")
    p.add_argument("out_dir", help="folder to create (must not exist or be empty)")
    p.add_argument("--per-class", type=int, default=40, help="images per class (default 40)")
    p.add_argument("--size", type=int, default=64, help="image height in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def _load_job(path: str, overrides: Sequence[str]) -> Any:
    from busi.config import load_config

    return load_config(path, overrides)


def cmd_config(args: argparse.Namespace) -> int:
    from busi.config import dump_config

    sys.stdout.write(dump_config(_load_job(args.job, args.overrides)))
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    from busi.config import load_config
    from busi.data.prepare import prepare_data

    target = Path(args.target)
    if target.suffix.lower() in (".yaml", ".yml"):
        cfg = load_config(target, args.overrides)
    else:
        base = {"data": {"source": str(target)}, "output": {"dir": "unused-by-inspect"}}
        cfg = load_config(None, args.overrides, base=base)
    prepared = prepare_data(cfg.data, cfg.runtime.seed)
    if args.json:
        sys.stdout.write(json.dumps(prepared.report, indent=2) + "\n")
    else:
        sys.stdout.write(format_report(prepared.report))
    return EXIT_OK


def format_report(r: dict[str, Any]) -> str:
    """Human-readable inspect report."""
    c = r["counts"]
    lines = [f"dataset: {r['root']}", f"images: {c['images']} ({c['used']} used)"]
    classes = r["classes"]
    width = max(len(x) for x in classes + ["class"])
    lines.append(f"  {'class':<{width}}  {'total':>6}  {'train':>6}  {'val':>6}  {'test':>6}")
    for cl in classes:
        cells = [c["per_split"][s][cl] for s in ("train", "val", "test")]
        lines.append(f"  {cl:<{width}}  {c['per_class'][cl]:>6}  " + "  ".join(f"{v:>6}" for v in cells))
    size = r["image_size"]
    if size["width"]:
        lines.append(
            f"image size: width {size['width'][0]}-{size['width'][1]} px, height {size['height'][0]}-{size['height'][1]} px"
        )
    lines.append("modes: " + ", ".join(f"{k} {v}" for k, v in r["modes"].items()))
    m = r["masks"]
    lines.append(
        f"masks: {m['mask_files']} files; {m['images_with_masks']} images with masks, "
        f"{len(m['images_without_masks'])} without, {len(m['orphan_masks'])} masks without an image"
    )
    for p in m["orphan_masks"][:20]:
        lines.append(f"  orphan mask: {p}")
    d = r["duplicates"]
    lines.append(f"duplicate groups ({d['mode']}, threshold {d['near_threshold']}): {len(d['groups'])}")
    for g in d["groups"]:
        kind = "exact" if g["exact"] else "near"
        lines.append(f"  {g['id']} [{kind}]: " + ", ".join(g["members"]))
    lines.append(f"label conflicts: {len(r['label_conflicts'])}")
    for g in r["label_conflicts"]:
        lines.append(f"  {g['id']} ({'/'.join(g['labels'])}, {g['action']}): " + ", ".join(g["members"]))
    lines.append(f"skipped (not images): {len(r['skipped_files'])}")
    for p in r["skipped_files"][:20]:
        lines.append(f"  {p}")
    lines.append(f"corrupt images: {len(r['corrupt_images'])}")
    for e in r["corrupt_images"]:
        lines.append(f"  {e['path']}: {e['error']}")
    if r["excluded"]["not_in_splits_file"]:
        lines.append(f"not in data.splits file (excluded): {len(r['excluded']['not_in_splits_file'])}")
    return "\n".join(lines) + "\n"


def cmd_synth(args: argparse.Namespace) -> int:
    from busi.data.synth import write_synthetic_dataset

    out = write_synthetic_dataset(args.out_dir, per_class=args.per_class, size=args.size, seed=args.seed)
    print(f"wrote {3 * args.per_class} images with masks to {out}")
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from busi.job import run_training

    cfg = _load_job(args.job, args.overrides)
    run_training(cfg, restart=args.restart, argv=["busi-job", *sys.argv[1:]])
    return EXIT_OK


def cmd_fetch_weights(args: argparse.Namespace) -> int:
    from busi.model import fetch_imagenet_weights, imagenet_search_dirs

    target = Path(args.dir) if args.dir else imagenet_search_dirs()[0]
    path = fetch_imagenet_weights(target)
    print(f"ImageNet ResNet50 weights at {path}; export BUSI_WEIGHTS_DIR={path.parent}")
    return EXIT_OK


COMMANDS = {
    "config": cmd_config,
    "inspect": cmd_inspect,
    "train": cmd_train,
    "fetch-weights": cmd_fetch_weights,
    "synth": cmd_synth,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        return COMMANDS[args.command](args)
    except BusiError as e:
        print(f"busi-job: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("busi-job: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
