"""Named errors. Each carries the process exit code the CLI maps it to, and the fields a caller
needs (the key paths of a config error; the path, line and reason of a data error), so no
caller ever parses a message.

Exit codes are a documented contract (docs, "Exit codes"):
0 success, 1 unexpected failure (a bug, or a failed benchmark worker), 2 bad configuration or
usage, 3 bad or unsafe input data, 75 interrupted and resumable (EX_TEMPFAIL), 130 stopped by
Ctrl-C outside a training or prediction loop.
"""

from __future__ import annotations

import os
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]


class BusiError(Exception):
    """Base class: a failure the user can act on, with a message that says how."""

    exit_code = 1


class ConfigError(BusiError):
    """A job file, override or option is wrong; the message names the key path. ``keys``: the
    key paths the error is about (``train.head.epochs``), so a layered config can name the job
    file that set them."""

    exit_code = 2

    def __init__(self, message: str, keys: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.keys = tuple(keys)


class WeightsError(ConfigError):
    """Model weights were asked for but cannot be found locally."""


class DataError(BusiError):
    """Input data is missing, unreadable or unusable. ``path``: the file, folder or archive
    (``None`` where the problem is the data as a whole); ``line``: the 1-based line of ``path``
    the problem is on (a label table's or splits file's row), else ``None``; ``option``: the
    command-line option that gave ``path`` (``--model``), where the user knows it by that;
    ``reason``: what is wrong and what to do. The message is ``where: reason`` (``where``:
    ``path``, ``path:line`` or ``--option path``)."""

    exit_code = 3

    def __init__(self, path: PathLike | None, reason: str, *, line: int | None = None,
                 option: str | None = None) -> None:
        self.path = None if path is None else os.fspath(path)
        self.line = line
        self.option = option
        self.reason = reason
        super().__init__(reason if self.where is None else f"{self.where}: {reason}")

    @property
    def where(self) -> str | None:
        """Where the problem is, as the message names it; ``None`` for the data as a whole."""
        where = self.path
        if where is not None and self.line is not None:
            where = f"{where}:{self.line}"
        if self.option is not None:
            where = self.option if where is None else f"{self.option} {where}"
        return where


class UnsafeArchiveError(DataError):
    """An archive would write outside its staging dir, or is an archive bomb."""


class Interrupted(BusiError):
    """Stopped on a signal or the walltime budget, state saved: run the same command to resume."""

    exit_code = 75  # EX_TEMPFAIL: schedulers and wrappers requeue on it


class RankLost(BusiError):
    """A rank of a distributed job lost the others: a collective failed because another rank
    died or its node was lost. Exit 1, not 75: a rank that crashed (a bug) ends its peers
    this way too, and a requeue would only crash again."""

    def __init__(self, rank: int, host: str, peers: dict[int, str], cause: str) -> None:
        self.rank, self.host, self.peers, self.cause = rank, host, peers, cause
        others = ", ".join(f"{r} on {h}" for r, h in sorted(peers.items()))
        super().__init__(
            f"rank {rank} on {host} lost contact with the other ranks ({others}) in a collective: {cause}. "
            "A rank that failed says why above; a lost node, the scheduler says (Slurm: 'Node failure on NODE'). "
            "The last checkpoint is kept: run the same command again to resume")
