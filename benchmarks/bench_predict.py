"""Prediction throughput and memory.

1. End to end: ``busi.predict.job.predict_files`` (the loop of ``busi-job predict``: Pillow decode
   in a thread pool, ``ahead`` batches decoding while the model runs, fixed-shape batches, the
   CSV written and fsynced per batch) over a folder of >= 780 PNGs of BUSI's sizes (190-1050 px
   wide), against the same model's forward pass on in-memory tensors of the same batch size
   (target >= 0.85), and against a notebook-style loop (PIL open, resize, ``model.predict`` on a
   batch of one; target >= 3x). 224 px, float32 and mixed_bfloat16 (the model saved under that
   policy, as a bf16 training run saves it), busi's thread settings (``runtime.cores: auto``).
2. Peak RSS of ``busi-job predict`` (a real subprocess; ``os.wait4``'s ``ru_maxrss``) on 10,000
   files against 1,000 (hard links to the same images), with a 64 px model so that 10,000 files
   take a minute or two here (memory held per batch is what grows with the image size; the file
   list with the number of files). Target: within 1.2x.
3. (``--real-sample``, when ../shared/data/busi-sample.zip exists) the end-to-end ratio on the
   55 real BUSI images, each linked 15 times (825 files).

    .venv/bin/python benchmarks/bench_predict.py [--quick] [--no-rss] [--precision float32,mixed_bfloat16]
        [--engines tensorflow,openvino:float32,openvino:auto] [--backbone resnet50 [--alpha 1.0]]

4. One row per inference engine (``busi.model.engines``): OpenVINO in float32, at ``auto`` and in
   INT8 (``openvino:int8``: the model quantized here with busi's own quantization,
   ``busi.model.quantize``, on 120 of the folder's images), the model saved in float32, against
   TensorFlow's in-memory float32 forward pass measured in the same process (targets: the default
   engine end to end >= 3x that, and >= 10x the notebook-style loop).
5. Per engine row, the two-core limit ``cores / (t_decode + t_infer)``: t_decode, the seconds of
   one core to decode and resize one file (``load_image``, one thread, measured before and after
   the end-to-end pass), t_infer = cores / the engine's in-memory rate (its core-seconds per
   image); and end to end as a share of that limit (target >= 90%).

The folder is cached in /tmp/busi-bench between runs. Forward-pass runs are taken before and
after the end-to-end pass (drift hits both). Tracing is excluded everywhere (predict_files
traces before its clock starts; the notebook loop's first call is reported apart).
``--backbone``/``--alpha``: the network measured, in every part (default ResNet50, the figures
in docs/performance.md). Smallest run (tests/test_benchmarks.py): ``--images 8 --size 32
--batch-size 4 --batches 1 --repeats 1 --notebook 2 --precision float32
--engines openvino:int8 --rss-files 8,16 --rss-size 32 --backbone mobilenet --alpha 0.25``.
Prints one row per precision and engine, then the RSS lines; not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common

SAMPLE_ZIP = common.REPO.parent / "shared" / "data" / "busi-sample.zip"


def worker(args: argparse.Namespace) -> dict:
    from busi.runtime.cores import detect_cores
    from busi.runtime.startup import start_tensorflow

    cores = detect_cores("auto")
    tf = start_tensorflow(cores, seed=0)
    import numpy as np
    from PIL import Image

    from busi.data.inputs import expand_inputs
    from busi.model.predictor import load_predictor
    from busi.predict.job import predict_files
    from busi.predict.output import CsvSink, prediction_columns

    tmp = common.scratch("busi-bench-predict-")
    common.make_model_dir(tmp / "run", args.size, args.precision, backbone=args.backbone, alpha=args.alpha)
    files = expand_inputs([args.folder])
    if args.engine_precision == "int8":
        quantize_model_dir(tmp / "run", [f.file for f in files[:120]], args.size)
    predictor = load_predictor(tmp / "run", args.engine, args.engine_precision, args.batch_size, cores.cores)
    model, bs, size = predictor.model, args.batch_size, predictor.image_size
    if model is None:  # OpenVINO predicts without the Keras model (busi.model.predictor); the reference needs it
        from busi.model.network import load_saved_model

        model = load_saved_model(predictor.source)

    @tf.function(input_signature=[tf.TensorSpec([bs, size, size, 3], tf.float32)])
    def forward(x):  # type: ignore[no-untyped-def]
        return model(x, training=False)

    xs = np.random.default_rng(0).uniform(0, 255, (bs, size, size, 3)).astype(np.float32)
    x = tf.constant(xs)
    forward(x).numpy()
    forward(x).numpy()
    predictor.engine.run(xs)

    def memory_runs(n: int) -> tuple[list[float], list[float]]:
        """TensorFlow's forward pass and the engine's, alternating, on in-memory batches."""
        tf_rates, engine_rates = [], []
        for _ in range(n):
            t = time.perf_counter()
            for _ in range(args.batches):
                forward(x).numpy()
            tf_rates.append(args.batches * bs / (time.perf_counter() - t))
            t = time.perf_counter()
            for _ in range(args.batches):
                predictor.engine.run(xs)
            engine_rates.append(args.batches * bs / (time.perf_counter() - t))
        return tf_rates, engine_rates

    def decode_seconds(n: int = 60) -> float:
        """One core's seconds per file to decode and resize (busi's load_image, one thread)."""
        from busi.data.images import load_image

        t = time.perf_counter()
        for f in files[:n]:
            load_image(f.file, size, predictor.resize, predictor.dicom)
        return (time.perf_counter() - t) / min(n, len(files))

    mem, engine_mem = memory_runs(args.repeats)
    decode = [decode_seconds()]
    sink = CsvSink(tmp / "pred.csv", prediction_columns(predictor.classes), resume=False, overwrite=True)
    summary = predict_files(predictor, files, sink, bs, workers=cores.cores)
    sink.close()
    more, more_engine = memory_runs(args.repeats)
    decode.append(decode_seconds())
    mem += more
    engine_mem += more_engine

    notebook: list[float] = []
    first_call = 0.0
    if args.notebook:
        paths = [f.file for f in files[: args.notebook + 1]]
        t_all = None
        for i, p in enumerate(paths):
            t = time.perf_counter()
            img = Image.open(p).convert("RGB").resize((size, size))
            arr = np.array(img, dtype=np.float32)
            model.predict(arr[None], verbose=0)
            if i == 0:
                first_call = time.perf_counter() - t
                t_all = time.perf_counter()
        assert t_all is not None
        notebook.append(args.notebook / (time.perf_counter() - t_all))
    return {
        "precision": args.precision, "files": len(files), "batch": bs,
        "threads": f"{cores.intra_op_threads}/{cores.inter_op_threads}",
        "end_to_end": summary.images_per_second, "classified": summary.classified, "errors": summary.errors,
        "memory": mem, "engine_memory": engine_mem, "engine": predictor.engine.info.label(), "notebook": notebook,
        "notebook_images": args.notebook, "notebook_first_call": first_call, "decode": decode, "cores": cores.cores,
    }


def quantize_model_dir(run: Path, calibration: list[Path], size: int) -> None:
    """The model folder's INT8 model, as training makes it (busi.model.quantize), calibrated on
    ``calibration`` (decoded as prediction decodes)."""
    from busi.files.digest import file_sha256
    from busi.model.openvino import openvino_model_for, write_openvino_dir
    from busi.model.quantize import INT8_DIR, calibration_images, quantize_int8

    model_file = run / "model" / "model.keras"
    quantized, made = quantize_int8(openvino_model_for(model_file), calibration_images(calibration, size, "stretch"))
    write_openvino_dir(run / "model" / INT8_DIR, quantized, file_sha256(model_file), made)
    print(f"# int8: {made['quantization']}", file=sys.stderr)


def run_worker(folder: Path, precision: str, args: argparse.Namespace, notebook: int, engine: str = "tensorflow",
               engine_precision: str = "auto") -> dict:
    cmd = [sys.executable, __file__, "--worker", "--folder", str(folder), "--precision", precision,
           "--engine", engine, "--engine-precision", engine_precision,
           "--size", str(args.size), "--batch-size", str(args.batch_size), "--batches", str(args.batches),
           "--repeats", str(args.repeats), "--notebook", str(notebook), "--backbone", args.backbone,
           "--alpha", str(args.alpha)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def linked_folder(name: str, sources: list[Path], n: int) -> Path:
    """``n`` hard links cycling over ``sources`` (same bytes, distinct paths), 1,000 per subfolder."""

    def build(tmp: Path) -> None:
        for i in range(n):
            sub = tmp / f"d{i // 1000:03d}"
            sub.mkdir(exist_ok=True)
            os.link(sources[i % len(sources)], sub / f"img{i:06d}.png")

    return common.cached_dir(name, build)


def peak_rss(model_dir: Path, folder: Path, out_csv: Path) -> tuple[float, float, str]:
    """Peak RSS (MiB) and wall seconds of a real ``busi-job predict`` process."""
    cmd = [str(Path(sys.executable).parent / "busi-job"), "predict", "--model", str(model_dir),
           "--input", str(folder), "--output", str(out_csv), "--overwrite"]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    _, status, rusage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"busi-job predict failed ({proc.returncode}):\n{err[-2000:]}")
    last = [ln for ln in err.splitlines() if "img/s" in ln]
    return rusage.ru_maxrss / 1024.0, wall, (last[-1].split(" INFO ")[-1] if last else "")


def rss_part(args: argparse.Namespace, sources: list[Path]) -> None:
    tmp = common.scratch("busi-bench-rss-")
    # the model directory, made in a helper process (this one never imports TensorFlow), with its
    # OpenVINO model as training writes it: else the first run measured would convert the model
    # (TensorFlow and the Keras model in its RSS) and the others read the converted one
    code = ("import sys; sys.path.insert(0, %r); import common; from pathlib import Path; "
            "from busi.runtime.cores import detect_cores; from busi.runtime.startup import start_tensorflow; start_tensorflow(detect_cores('auto'), 0); "
            "common.make_model_dir(Path(%r), %d, backbone=%r, alpha=%r, openvino=True)") % (
        str(Path(__file__).parent), str(tmp / "run"), args.rss_size, args.backbone, args.alpha)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if proc.returncode != 0:
        sys.exit(f"making the RSS part's model failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    print(f"\n# peak RSS of `busi-job predict --model RUN --input DIR --output CSV` ({args.rss_size} px "
          f"{args.backbone} model, "
          "batch 32, files are hard links to the BUSI-sized PNGs)")
    results = {}
    for n in args.rss_files:
        folder = linked_folder(f"links-{n}", sources, n)
        common.wait_for_quiet(skip=args.no_wait)
        rss, wall, line = peak_rss(tmp / "run", folder, tmp / f"pred-{n}.csv")
        results[n] = rss
        print(f"{n:>6} files: peak RSS {rss:7.1f} MiB, wall {wall:6.1f} s  [{line}]", flush=True)
    lo, hi = min(results), max(results)
    print(f"# RSS ratio {hi} / {lo} files: {results[hi] / results[lo]:.3f} (target <= 1.2)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=780, help="folder size (>= 780 for the issue's figure)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=5, help="in-memory batches per forward-pass repeat")
    ap.add_argument("--repeats", type=int, default=3, help="forward-pass repeats before and after end to end")
    ap.add_argument("--notebook", type=int, default=100, help="images for the notebook-style loop (0: skip)")
    ap.add_argument("--precision", default="float32,mixed_bfloat16")
    ap.add_argument("--rss-files", default="1000,10000", help="comma-separated file counts of the RSS part")
    ap.add_argument("--rss-size", type=int, default=64, help="model input size for the RSS part")
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--real-sample", action="store_true", help="also the 55 real BUSI images x 15 (float32)")
    ap.add_argument("--quick", action="store_true", help="float32 only, no RSS part")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    ap.add_argument("--engines", default="tensorflow,openvino:float32,openvino:auto,openvino:int8",
                    help="engine rows after the TensorFlow precisions: ENGINE[:PRECISION], comma-separated")
    common.add_model_options(ap)
    ap.add_argument("--engine", default="tensorflow", help=argparse.SUPPRESS)
    ap.add_argument("--engine-precision", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    args.rss_files = [int(v) for v in args.rss_files.split(",")]
    if args.quick:
        args.precision, args.no_rss = "float32", True
    common.print_command()
    folder = common.busi_sized_folder(args.images, seed=1, name=f"predict-{args.images}")
    files = common.image_files(folder)
    from PIL import Image

    widths = sorted(Image.open(p).size[0] for p in files)
    print(f"# data: {len(files)} synthetic PNGs in {folder}, widths {widths[0]}-{widths[-1]} px "
          f"(median {widths[len(widths) // 2]}), {args.size} px {args.backbone} model, batch {args.batch_size}")
    print("# end to end: busi's predict loop over the folder with the engine; engine (memory): the engine on "
          "in-memory batches; TF forward: TensorFlow's float32 (or the row's policy) forward pass on in-memory "
          "batches, alternating with the engine's in the same process; ratio: end to end / TF forward")
    print(f"{'row':<28} {'threads':>7} {'end to end':>12} {'engine (memory)':>16} {'TF forward':>12} {'ratio':>6} "
          f"{'notebook loop':>14} {'speedup':>8}")
    notebook_rate = [float("nan")]

    def report(label: str, r: dict) -> None:
        mem = statistics.median(r["memory"])
        eng = statistics.median(r["engine_memory"])
        e2e = r["end_to_end"]
        if r["notebook"]:
            notebook_rate[0] = r["notebook"][0]
        nb = notebook_rate[0]
        print(f"{label:<28} {r['threads']:>7} {e2e:>6.2f} img/s {eng:>10.2f} img/s {mem:>6.2f} img/s "
              f"{e2e / mem:>6.3f} {nb:>8.2f} img/s {e2e / nb:>7.2f}x", flush=True)
        t_decode = statistics.median(r["decode"])
        t_infer = r["cores"] / eng
        limit = r["cores"] / (t_decode + t_infer)
        print(f"#   two-core limit: decode {1000 * t_decode:.1f} ms of one core per file "
              f"({[round(1000 * v, 1) for v in r['decode']]}), inference {1000 * t_infer:.1f} core-ms per image: "
              f"limit {limit:.2f} img/s; end to end {e2e / limit:.1%} of it (target >= 90%)", flush=True)
        print(f"#   {r['engine']}: {r['files']} files ({r['classified']} classified, {r['errors']} errors); "
              f"TF forward runs {[round(v, 2) for v in r['memory']]}, engine runs "
              f"{[round(v, 2) for v in r['engine_memory']]}; notebook loop over {r['notebook_images']} images "
              f"(TensorFlow float32, the first row), first call {r['notebook_first_call']:.2f} s excluded", flush=True)

    first = True
    for precision in args.precision.split(","):
        common.wait_for_quiet(skip=args.no_wait)
        report(f"tensorflow {precision}", run_worker(folder, precision, args, args.notebook if first else 0))
        first = False
    for item in [e for e in args.engines.split(",") if e and e != "tensorflow"]:
        name, _, engine_precision = item.partition(":")
        common.wait_for_quiet(skip=args.no_wait)
        report(f"{name} {engine_precision or 'auto'}",
               run_worker(folder, "float32", args, 0, name, engine_precision or "auto"))
    if args.real_sample and SAMPLE_ZIP.is_file():
        import zipfile

        def unpack(tmp: Path) -> None:
            with zipfile.ZipFile(SAMPLE_ZIP) as z:
                z.extractall(tmp)

        real = common.cached_dir("busi-sample", unpack)
        sources = common.image_files(real)
        linked = linked_folder("busi-sample-x15", sources, 15 * len(sources))
        common.wait_for_quiet(skip=args.no_wait)
        report("float32 (real)", run_worker(linked, "float32", args, 0))
    if not args.no_rss:
        rss_part(args, files)
    print(f"# load average at end: {common.load1():.2f}")


if __name__ == "__main__":
    main()
