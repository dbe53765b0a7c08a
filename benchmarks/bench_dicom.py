"""Prediction speed over a folder of DICOM files beside the same images as PNG.

One folder of BUSI-sized images (``common.busi_sized_folder``: synthetic, 190-1050 px wide), and
the same pixels as DICOM files without a suffix, as a PACS export names them: uncompressed RGB
(``dicom-rgb``) and JPEG baseline YCbCr 4:2:2 at quality 95 (``dicom-jpeg``, the usual form of
an ultrasound export). In one process, one model (a ``weights: none`` ResNet50, the engine of
``--engine``), and alternating folder by folder for ``--repeats`` rounds so drift hits all alike:

1. End to end: ``busi.predict.job.predict_files`` (the loop of ``busi-job predict``) over each
   folder, images/s, and each DICOM folder's ratio to PNG (median over rounds).
2. Decode only: one core's milliseconds per file of ``busi.data.images.load_image`` (what the
   decode threads do), and the ratio to PNG.

    .venv/bin/python benchmarks/bench_dicom.py [--images 300] [--size 224] [--repeats 3] [--quick]
        [--backbone resnet50 [--alpha 1.0]]

The folders are cached in /tmp/busi-bench (``$BUSI_BENCH_CACHE``). Smallest run
(tests/test_benchmarks.py): ``--images 6 --size 32 --batch-size 4 --repeats 1 --decode-files 3
--backbone mobilenet --alpha 0.25``. Prints a Markdown table, one row per folder; not a test.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

import common

KINDS = ("png", "dicom-rgb", "dicom-jpeg")


def write_dicom_copy(png: Path, target: Path, jpeg: bool) -> None:
    """``png``'s pixels as a DICOM file (Ultrasound Image Storage) at ``target``."""
    import numpy as np
    from PIL import Image
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

    with Image.open(png) as im:
        rgb = np.asarray(im.convert("RGB"))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "US"
    if jpeg:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=95, subsampling=1)  # 4:2:2
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PlanarConfiguration = *rgb.shape[:2], 3, 0
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = encapsulate([buf.getvalue()])
    else:
        ds.set_pixel_data(rgb, "RGB", 8)
    ds.save_as(target, enforce_file_format=True)


def folders(n: int) -> dict[str, Path]:
    png = common.busi_sized_folder(n)
    out = {"png": png}
    for kind in KINDS[1:]:
        def build(tmp: Path, kind: str = kind) -> None:
            for p in common.image_files(png):
                target = tmp / p.relative_to(png).with_suffix("")
                target.parent.mkdir(parents=True, exist_ok=True)
                write_dicom_copy(p, target, jpeg=kind == "dicom-jpeg")

        out[kind] = common.cached_dir(f"{png.name}-{kind}", build)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=300, help="images per folder (default 300)")
    ap.add_argument("--size", type=int, default=224, help="model input size, px (default 224)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="rounds over the three folders, alternating")
    ap.add_argument("--decode-files", type=int, default=60, help="files per decode-only measurement")
    ap.add_argument("--engine", default="auto", help="tensorflow, openvino or auto (as busi-job predict)")
    common.add_model_options(ap)
    ap.add_argument("--quick", action="store_true", help="60 images at 64 px, one round: checks the script runs")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    args = ap.parse_args()
    if args.quick:
        args.images, args.size, args.repeats, args.decode_files = 60, 64, 1, 20
    common.print_command()
    paths = folders(args.images)
    common.wait_for_quiet(skip=args.no_wait or args.quick)

    from busi.runtime.cores import detect_cores
    from busi.runtime.startup import start_tensorflow

    cores = detect_cores("auto")
    start_tensorflow(cores, seed=0)
    from busi.data.images import load_image
    from busi.data.inputs import expand_inputs
    from busi.model.predictor import load_predictor
    from busi.predict.job import predict_files
    from busi.predict.output import CsvSink, prediction_columns

    tmp = common.scratch("busi-bench-dicom-")
    common.make_model_dir(tmp / "run", args.size, backbone=args.backbone, alpha=args.alpha)
    predictor = load_predictor(tmp / "run", args.engine, "auto", args.batch_size, cores.cores)
    files = {k: expand_inputs([str(p)]) for k, p in paths.items()}
    assert len({len(f) for f in files.values()}) == 1, {k: len(f) for k, f in files.items()}
    predictor.engine.run(__import__("numpy").zeros((args.batch_size, args.size, args.size, 3), "float32"))
    rates: dict[str, list[float]] = {k: [] for k in KINDS}
    decode_ms: dict[str, list[float]] = {k: [] for k in KINDS}
    for _ in range(args.repeats):
        for kind in KINDS:
            t = time.perf_counter()
            for f in files[kind][: args.decode_files]:
                load_image(f.file, args.size, predictor.resize, predictor.dicom)
            decode_ms[kind].append(1000 * (time.perf_counter() - t) / min(args.decode_files, len(files[kind])))
            sink = CsvSink(tmp / f"{kind}.csv", prediction_columns(predictor.classes), resume=False, overwrite=True)
            try:
                summary = predict_files(predictor, files[kind], sink, args.batch_size, workers=cores.cores)
            finally:
                sink.close()
            assert summary.errors == 0, f"{kind}: {summary.errors} errors"
            rates[kind].append(summary.images_per_second)
    print(f"# {len(files['png'])} files per folder, {args.size} px {args.backbone}, batch {args.batch_size}, {cores.cores} cores, "
          f"engine {predictor.engine.info.label()}, {args.repeats} rounds (median)")
    print("| folder | end to end img/s | vs PNG | decode ms/file (1 core) | vs PNG |")
    print("|---|---|---|---|---|")
    for kind in KINDS:
        r, d = statistics.median(rates[kind]), statistics.median(decode_ms[kind])
        r0, d0 = statistics.median(rates["png"]), statistics.median(decode_ms["png"])
        print(f"| {kind} | {common.fmt(r, 1)} | {common.fmt(r / r0)} | {common.fmt(d, 1)} | {common.fmt(d / d0)} |")


if __name__ == "__main__":
    main()
