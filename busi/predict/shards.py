"""Which 1/N of the inputs this process predicts: the shard of an array job (Slurm, AWS Batch,
Google Cloud Batch: ``busi.runtime.schedulers``) or of a multi-process launch
(``busi.distributed.launchers``' table), or ``--shard I/N``; and the file name of a shard's CSV
(``<stem>.part-IIIII-of-NNNNN.csv``), the one definition ``busi.predict.output`` and
``busi.predict.merge`` share."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from busi.data.inputs import InputFile
from busi.distributed.launchers import LAUNCHERS
from busi.errors import ConfigError
from busi.runtime.schedulers import detect_scheduler, env_int

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
    """The shard of an array job (``busi.runtime.schedulers``: the task ID minus the array's
    lowest ID), or this process's rank under a multi-process launcher
    (``busi.distributed.launchers.LAUNCHERS``)."""
    env = os.environ if env is None else env
    scheduler = detect_scheduler(env)
    task = scheduler.array_task(env) if scheduler else None
    if scheduler and task:
        return _checked(scheduler.name, task.shard_index, task.count, task.id_var, task.count_var)
    for launcher in LAUNCHERS:  # ranks of a multi-process launch: the one table of launcher variables
        rank = env_int(env, launcher.rank)
        if rank is not None:
            return _checked(launcher.name, rank, env_int(env, launcher.size), launcher.rank, launcher.size)
    return Shard(0, 1, "none")


def _checked(source: str, index: int, count: int | None, index_var: str, count_var: str) -> Shard:
    """Shard ``index`` of ``count`` from ``source``, or a ConfigError naming the variables."""
    if count is None:
        raise ConfigError(f"{index_var} is set but {count_var} is not: set it, or pass --shard I/N")
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"{source} array: task index {index} is outside 0..{count - 1}; pass --shard I/N")
    return Shard(index, count, source)


def shard_of(setting: str) -> Shard:
    """``predict.shard`` (``--shard``): ``auto`` (the array job's or launcher's, else all), ``none``
    (all, even inside an array job) or ``I/N``."""
    if setting == "auto":
        return shard_from_env()
    if setting == "none":
        return Shard(0, 1, "none")
    return parse_shard(setting)


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
