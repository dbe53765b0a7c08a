"""Which 1/N of the inputs this process predicts: the shard of an array job (Slurm, AWS Batch,
Google Cloud Batch) or of a multi-process launch (``busi.distributed.launchers``' table), or
``--shard I/N``; and the file name of a shard's CSV (``<stem>.part-IIIII-of-NNNNN.csv``), the one
definition ``busi.predict.output`` and ``busi.predict.merge`` share."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from busi.data.inputs import InputFile
from busi.distributed.launchers import LAUNCHERS
from busi.errors import ConfigError

SHARD_MARK = ".part-"  # <stem>.part-IIIII-of-NNNNN<suffix>


@dataclass(frozen=True)
class Shard:
    index: int  # 0-based
    count: int
    source: str  # where the numbers came from

    def select(self, items: Sequence[InputFile]) -> list[InputFile]:
        """Every ``count``-th item from ``index``: a deterministic, balanced 1/count of the list."""
        return list(items[self.index :: self.count])


def parse_shard(text: str) -> Shard:
    """``I/N`` with 0 <= I < N."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected I/N, e.g. --shard 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {text!r}: expected 0 <= I < N")
    return Shard(i, n, "option")


def shard_from_env(env: Mapping[str, str] | None = None) -> Shard:
    """The shard of an array job (Slurm, AWS Batch, Google Cloud Batch), or this process's rank
    under a multi-process launcher (``busi.distributed.launchers.LAUNCHERS``)."""
    env = os.environ if env is None else env

    def num(name: str) -> int | None:
        raw = env.get(name)
        if raw is None or raw == "":
            return None
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from None

    candidates: list[tuple[str, str, str, str | None]] = [
        ("slurm", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"),
        # AWS Batch exports only the index; the job definition sets the size (docs: clusters and clouds).
        ("aws-batch", "AWS_BATCH_JOB_ARRAY_INDEX", "AWS_BATCH_JOB_ARRAY_SIZE", None),
        ("gcp-batch", "BATCH_TASK_INDEX", "BATCH_TASK_COUNT", None),
        # ranks of a multi-process launch: the one table of launcher variables
        *((launcher.name, launcher.rank, launcher.size, None) for launcher in LAUNCHERS),
    ]
    for source, index_var, count_var, min_var in candidates:
        index, count = num(index_var), num(count_var)
        if index is None:
            continue
        if count is None:
            raise ConfigError(f"{index_var} is set but {count_var} is not: set it, or pass --shard I/N")
        index -= (num(min_var) or 0) if min_var else 0
        if count < 1 or not 0 <= index < count:
            raise ConfigError(f"{source} array: task index {index} is outside 0..{count - 1}; pass --shard I/N")
        return Shard(index, count, source)
    return Shard(0, 1, "none")


def shard_output_path(output: Path, shard: Shard) -> Path:
    """``preds.csv`` -> ``preds.part-00002-of-00008.csv`` when the job is one of several shards."""
    return output if shard.count == 1 else shard_file(output, shard.index, shard.count)


def shard_file(output: Path, index: int, count: int) -> Path:
    """Shard ``index`` of ``count``'s CSV beside ``output``."""
    return output.with_name(f"{output.stem}{SHARD_MARK}{index:05d}-of-{count:05d}{output.suffix or '.csv'}")


def shard_files(output: Path) -> list[Path]:
    """The shard CSVs beside ``output`` (sorted), whatever their count."""
    # glob.escape: a name such as br[1].csv holds glob characters
    return sorted(output.parent.glob(f"{glob.escape(output.stem)}{SHARD_MARK}*-of-*{output.suffix or '.csv'}"))


def shard_count(path: Path) -> str:
    """The ``NNNNN`` of a shard file's name (``shard_files``' names only)."""
    return path.name.rsplit("-of-", 1)[1].split(".")[0]


def is_shard_file(output: Path, name: str) -> bool:
    """Whether file name ``name`` is one of ``output``'s shard CSVs (or ``output`` itself)."""
    suffix = output.suffix or ".csv"
    return name == output.name or (name.startswith(f"{output.stem}{SHARD_MARK}") and name.endswith(suffix))
