"""``python tests/damage_after_scan.py FILE cut|empty busi-job-args...``: ``busi-job`` with
``FILE`` cut to half its bytes (``cut``) or emptied (``empty``) after the training job's data
stage has scanned it and before the model is built: a file changed on a shared disk while a job
runs, at a moment a test can name (tests/test_pipeline.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import busi.train.job as job
from busi.cli import main


def _damaging(build: Any, victim: Path, how: str) -> Any:
    def build_after_damage(j: Any, *args: Any) -> Any:
        data = victim.read_bytes()
        victim.write_bytes(b"" if how == "empty" else data[: len(data) // 2])
        return build(j, *args)

    return build_after_damage


if __name__ == "__main__":
    job.build = _damaging(job.build, Path(sys.argv[1]), sys.argv[2])
    sys.exit(main(sys.argv[3:]))
