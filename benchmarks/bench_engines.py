"""Issue #15 item 6: the inference engines' accuracy contract on trained models.

For each trained run directory given, every image of a folder (recursive, masks left out) is
decoded once as ``busi-job predict`` decodes it, then classified by TensorFlow in float32 (the
reference) and by each OpenVINO precision this CPU offers. Per engine: the share of images
whose label equals the reference's, the largest absolute probability difference, and the
mean. Contract (README, "Inference engines"): OpenVINO float32 within 1e-4 of TensorFlow;
bfloat16 labels equal on at least 99.5% of images.

    .venv/bin/python benchmarks/bench_engines.py --model runs/demo --data data/demo [--model RUN --data DIR ...]

Prints numbers; not a test.
"""

from __future__ import annotations

import argparse

import common


def compare(model_dir: str, data: str, batch_size: int) -> list[dict]:
    import numpy as np

    from busi.data.images import load_image
    from busi.data.inputs import expand_inputs
    from busi.model.predictor import load_predictor

    reference = load_predictor(model_dir, "tensorflow", "auto", batch_size)
    files = expand_inputs([data])  # masks left out, as predict leaves them
    x = np.stack([load_image(f.file, reference.image_size, reference.resize) for f in files]).astype(np.float32)
    expected = reference.engine.run(x)
    rows = []
    import openvino as ov

    precisions = ["float32"]
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        precisions.append("bfloat16")
    for precision in precisions:
        engine = load_predictor(model_dir, "openvino", precision, batch_size).engine
        got = engine.run(x)
        diff = np.abs(got - expected)
        rows.append({
            "model": model_dir, "size": reference.image_size, "images": len(files), "engine": engine.info.label(),
            "agree": float(np.mean(got.argmax(1) == expected.argmax(1))), "max_diff": float(diff.max()),
            "mean_diff": float(diff.mean()),
            "margin": float(np.median(np.sort(expected, axis=1)[:, -1] - np.sort(expected, axis=1)[:, -2])),
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
    print("# reference: TensorFlow float32 on the same decoded images; agree: labels equal; margin: median "
          "top-1 minus top-2 probability of the reference")
    print(f"{'model':<24} {'px':>4} {'images':>6}  {'engine':<34} {'agree':>7} {'max |dp|':>10} {'mean |dp|':>10} "
          f"{'margin':>7}")
    for model_dir, data in zip(args.model, args.data):
        for r in compare(model_dir, data, args.batch_size):
            print(f"{r['model']:<24} {r['size']:>4} {r['images']:>6}  {r['engine']:<34} {r['agree']:>7.2%} "
                  f"{r['max_diff']:>10.2e} {r['mean_diff']:>10.2e} {r['margin']:>7.3f}", flush=True)


if __name__ == "__main__":
    main()
