"""What to predict on: input paths expanded into one sorted list of files, and its shards.

Pure functions except for reading folders and list files (archives go through the safe
staging of ``busi.data.staging``). The order is stable (natural sort of the reported path),
so shards, resumed runs and merged CSVs always agree on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from busi.artifacts import text_of
from busi.data.names import is_junk
from busi.data.scan import is_mask_name, natural_key
from busi.data.staging import ArchiveLimits, is_archive, stage_source
from busi.errors import ConfigError, DataError
from busi.ranks import LAUNCHERS
from busi.safeio import read_regular_file

ARCHIVE_SEP = "!/"  # archive members are reported as "<archive>!/<member>", like jar URLs


@dataclass(frozen=True)
class InputFile:
    """``path``: as reported in the CSV (stable across nodes); ``file``: where to read it."""

    path: str
    file: Path


def expand_inputs(
    inputs: Sequence[str],
    include_masks: bool = False,
    staging_dir: str | None = None,
    limits: ArchiveLimits = ArchiveLimits(),
    skip: Callable[[Path], bool] | None = None,
) -> list[InputFile]:
    """Folders (recursive), files, archives and ``@list.txt`` files -> sorted, de-duplicated files.

    Every regular, non-hidden file counts (a non-image gets a row with its error later);
    mask files (``X_mask.png``) are left out unless ``include_masks``, and files in folders for
    which ``skip`` is true (the job's own outputs). A missing input is a DataError naming it.
    """
    found: dict[str, InputFile] = {}
    for item in _expand_lists(inputs):
        p = Path(item)
        if p.is_dir():
            for f in _walk(p, skip):
                _add(found, InputFile(path=os.path.join(item, f.relative_to(p).as_posix()), file=f), include_masks)
        elif p.is_file() and is_archive(p):
            root = stage_source(p, staging_dir, limits)
            for f in _walk(root):
                _add(found, InputFile(path=f"{item}{ARCHIVE_SEP}{f.relative_to(root).as_posix()}", file=f), include_masks)
        elif p.exists() or p.is_symlink():  # a FIFO or device too: its row gets the error, nothing blocks
            _add(found, InputFile(path=item, file=p), include_masks)
        else:
            raise DataError(f"{item}: input not found (give folders, image files, archives or @list.txt files)")
    return sorted(found.values(), key=lambda f: natural_key(f.path))


def _add(found: dict[str, InputFile], f: InputFile, include_masks: bool) -> None:
    if include_masks or not is_mask_name(f.file.name):
        found.setdefault(f.path, f)


def _expand_lists(inputs: Sequence[str]) -> list[str]:
    """``@list.txt``: one path a line (blank lines and ``#`` comments skipped); relative
    paths are relative to the list file's folder, so a list travels with its data."""
    out: list[str] = []
    for item in inputs:
        if not item.startswith("@"):
            out.append(item)
            continue
        list_file = Path(item[1:])
        try:
            # one path a line; a name that is not UTF-8 keeps its bytes (busi.artifacts' text rule)
            lines = text_of(read_regular_file(list_file)).split("\n")
        except OSError as e:
            raise DataError(f"{list_file}: cannot read input list: {getattr(e, 'strerror', None) or e}") from None
        for line in lines:
            line = line.strip(" \t\r")  # not str.strip(): U+2028 or \x1c may end a name
            if line and not line.startswith("#"):
                out.append(line if os.path.isabs(line) else os.path.join(list_file.parent, line))
    return out


def _walk(folder: Path, skip: Callable[[Path], bool] | None = None) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not is_junk(d)]
        files.extend(f for f in (Path(dirpath) / n for n in filenames if not is_junk(n)) if skip is None or not skip(f))
    return files


# ----------------------------------------------------------------------- sharding


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
    under a multi-process launcher (``busi.ranks.LAUNCHERS``)."""
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
        # AWS Batch exports only the index; the job definition sets the size (README).
        ("aws-batch", "AWS_BATCH_JOB_ARRAY_INDEX", "AWS_BATCH_JOB_ARRAY_SIZE", None),
        ("gcp-batch", "BATCH_TASK_INDEX", "BATCH_TASK_COUNT", None),
        # ranks of a multi-process launch: busi.ranks' table, the one list of launcher variables
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
    if shard.count == 1:
        return output
    return output.with_name(f"{output.stem}.part-{shard.index:05d}-of-{shard.count:05d}{output.suffix or '.csv'}")
