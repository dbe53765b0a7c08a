"""``busi-job bench``: a tiny real measurement (a subprocess per configuration, pinned to one
core) writes bench.csv and bench.png with positive rates, and ``--estimate`` turns rates and a
job file into ``sbatch --time`` values."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, SMALL, run_cli, run_main

HMS = re.compile(r"--time=(\d{2,}):([0-5]\d):([0-5]\d) --cpus-per-task=(\d+)")


@pytest.fixture(scope="module")
def demo_data(synth_data: Any) -> Path:
    return synth_data(8, 32, 0)


@pytest.mark.integration
def test_tiny_bench_writes_csv_png_and_estimate(tmp_path: Path, demo_data: Path) -> None:
    out = tmp_path / "bench"
    # the job's backbone is measured: conftest's SMALL (MobileNet 0.25), one configuration, one timed step
    r = run_cli(
        "bench", "--image-size", "32", "--steps", "1", "--repeats", "1", "--cores", "1",
        "--precision", "float32", "--out", str(out),
        "--estimate", "job/demo.yaml", "--set", f"data.source={demo_data}", *SMALL, timeout=240,
    )
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((out / "bench.csv").open()))
    assert len(rows) == 1
    row = rows[0]
    assert row["cores"] == "1" and row["precision"] == "float32" and row["image_size"] == "32"
    assert (row["backbone"], float(row["alpha"])) == ("mobilenet", 0.25)
    assert float(row["train_images_per_second"]) > 0 and float(row["infer_images_per_second"]) > 0
    assert row["intra_op_threads"] == "1"  # the child was pinned to one core
    png = (out / "bench.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    assert "train img/s" in r.stdout  # the table
    # 24 images, 64 px job measured at 32 px: the estimate says so and gives a --time per core count
    assert "estimate for job/demo.yaml" in r.stdout
    assert "measured at 32 px" in r.stdout
    times = HMS.findall(r.stdout)
    assert [t[3] for t in times] == ["1"]
    # the request is the printed compute time with the estimate's margin (the compute time is
    # printed rounded up to the second, so within a minute)
    from busi.perf.estimate import with_margin
    from busi.runtime.walltime import parse_hms

    line = next(ln for ln in r.stdout.splitlines() if "request --time=" in ln)
    compute = parse_hms(re.search(r"compute (\d+:\d\d:\d\d)", line).group(1))  # type: ignore[union-attr]
    request = parse_hms(re.search(r"--time=(\d+:\d\d:\d\d)", line).group(1))  # type: ignore[union-attr]
    assert compute > 0 and abs(request - with_margin(compute)) <= 60

    # the same rates, a job whose data is not here: --images N, no measuring (no TensorFlow: in this process)
    r2 = run_main("bench", "--rates", str(out / "bench.csv"), "--estimate", "job/busi.yaml",
                  "--set", "data.source=/nonexistent/busi.zip", "--images", "780")
    assert r2.returncode == 0, r2.stderr
    assert "546 train / 117 val / 117 test images (--images 780)" in r2.stdout
    assert len(HMS.findall(r2.stdout)) == 1


def test_estimate_needs_images_without_data(tmp_path: Path) -> None:
    rates = tmp_path / "bench.csv"
    rates.write_text(
        "cores,precision,image_size,batch_size,infer_batch_size,unfreeze,batchnorm,"
        "train_images_per_second,infer_images_per_second\n"
        "1,float32,224,32,32,conv5,frozen,3.0,12.0\n2,float32,224,32,32,conv5,frozen,6.0,24.0\n"
    )
    r = run_main("bench", "--rates", str(rates), "--estimate", "job/busi.yaml", "--set", "data.source=/nonexistent.zip")
    assert r.returncode == 2 and "--images" in r.stderr
    r = run_main("bench", "--rates", str(rates), "--estimate", "job/busi.yaml",
                 "--set", "data.source=/nonexistent.zip", "--images", "780")
    assert r.returncode == 0, r.stderr
    times = HMS.findall(r.stdout)
    assert [t[3] for t in times] == ["1", "2"]
    secs = [int(h) * 3600 + int(m) * 60 + int(s) for h, m, s, _ in times]
    assert secs[0] > secs[1]  # twice the rate, less time


def test_bad_cores_exit_2_and_no_tensorflow() -> None:
    r = run_main("bench", "--cores", "1,4096")  # refused before a worker starts
    assert r.returncode == 2 and "4096" in r.stderr
    code = "import sys, busi.cli, busi.perf.bench; busi.cli.build_parser().parse_args(['bench']); " \
           "print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "False", out.stderr

