"""The inference engines and precisions against TensorFlow float32 on trained models.

For each trained run directory given, every image of a folder (recursive, masks left out) is
decoded once as ``busi-job predict`` decodes it, then classified by TensorFlow in float32 (the
reference) and by each OpenVINO precision this CPU offers: float32, bfloat16 (AMX or
AVX512-BF16) and INT8 (where the run's model folder holds ``openvino-int8/``). Per engine: the
share of images whose label equals the reference's, the largest and mean absolute probability
difference, and how the reference's margins (top-1 minus top-2 probability) are spread
(10th percentile, median, 90th): a model whose margins are all near 1 says little about a
precision. The accuracy contract itself is measured by training (docs/prediction.md).

    .venv/bin/python benchmarks/bench_engines.py --model runs/demo --data data/demo [--model RUN --data DIR ...]

Its size is the run's and the folder's: tests/test_benchmarks.py runs it on a fold of the smallest
``bench_ensemble.py`` cross-validation (a 32 px MobileNet, quantized to INT8) and its few held-out
images. Prints one row per engine and model; not a test.
"""

from __future__ import annotations

import argparse

import common


def compare(model_dir: str, data: str, batch_size: int) -> list[dict]:
    import numpy as np

    from busi.data.images import load_image
    from busi.data.inputs import expand_inputs
    from busi.model.openvino import import_openvino
    from busi.model.predictor import load_predictor
    from busi.model.quantize import INT8_DIR

    reference = load_predictor(model_dir, "tensorflow", "auto", batch_size)
    files = expand_inputs([data])  # masks left out, as predict leaves them
    x = np.stack([load_image(f.file, reference.image_size, reference.resize, reference.dicom)
                  for f in files]).astype(np.float32)
    expected = reference.engine.run(x)
    rows = []
    ov = import_openvino()  # telemetry off
    precisions = ["float32"]
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        precisions.append("bfloat16")
    if (reference.source.parent / INT8_DIR / "model.xml").is_file():
        precisions.append("int8")
    margins = np.sort(expected, axis=1)[:, -1] - np.sort(expected, axis=1)[:, -2]
    spread = "/".join(f"{np.percentile(margins, q):.2f}" for q in (10, 50, 90))
    for precision in precisions:
        engine = load_predictor(model_dir, "openvino", precision, batch_size).engine
        got = engine.run(x)
        diff = np.abs(got - expected)
        rows.append({
            "model": model_dir, "size": reference.image_size, "images": len(files), "engine": engine.info.label(),
            "agree": float(np.mean(got.argmax(1) == expected.argmax(1))), "max_diff": float(diff.max()),
            "mean_diff": float(diff.mean()), "margin": spread,
        })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, help="a trained run directory (repeatable)")
    ap.add_argument("--data", action="append", required=True, help="its image folder (one per --model)")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    if len(args.model) != len(args.data):
        ap.error("give one --data per --model")
    common.print_command()
    from busi.runtime.cores import detect_cores
    from busi.runtime.startup import start_tensorflow

    start_tensorflow(detect_cores("auto"), seed=0)
    print("# reference: TensorFlow float32 on the same decoded images; agree: labels equal; margin: the "
          "reference's top-1 minus top-2 probability, 10th percentile/median/90th")
    print(f"{'model':<24} {'px':>4} {'images':>6}  {'engine':<34} {'agree':>7} {'max |dp|':>10} {'mean |dp|':>10} "
          f"{'margin':>15}")
    for model_dir, data in zip(args.model, args.data):
        for r in compare(model_dir, data, args.batch_size):
            print(f"{r['model']:<24} {r['size']:>4} {r['images']:>6}  {r['engine']:<34} {r['agree']:>7.2%} "
                  f"{r['max_diff']:>10.2e} {r['mean_diff']:>10.2e} {r['margin']:>15}", flush=True)


if __name__ == "__main__":
    main()
