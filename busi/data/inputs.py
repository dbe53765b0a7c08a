"""What to predict on: input paths expanded into one sorted list of files, and its shards.

Pure functions except for reading folders and list files (archives go through the safe
staging of ``busi.data.staging``). The order is stable (natural sort of the reported path),
so shards, resumed runs and merged CSVs always agree on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from busi.data.names import is_junk
from busi.data.scan import is_mask_name, natural_key
from busi.data.staging import ArchiveLimits, is_archive, stage_source
from busi.errors import DataError
from busi.files.text import text_of
from busi.runtime.safeio import read_regular_file

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
            raise DataError(item, "input not found (give folders, image files, archives or @list.txt files)")
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
            # one path a line; a name that is not UTF-8 keeps its bytes (busi.files.text' text rule)
            lines = text_of(read_regular_file(list_file)).split("\n")
        except OSError as e:
            raise DataError(list_file, f"cannot read input list: {getattr(e, 'strerror', None) or e}") from None
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
