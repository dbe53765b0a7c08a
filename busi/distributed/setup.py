"""Joining the ranks of a job: ``init_dist`` picks one process or Horovod, and rank-aware logging.

``init_dist`` returns a ``busi.distributed.group.Dist`` (one process: its reductions are
identities) or a ``busi.distributed.horovod.HorovodDist``; everything else asks that value
(``dist.is_primary``, the gradient and metric reductions) instead of looking at ranks itself.
This is the only module that imports ``busi.distributed.horovod`` (and so Horovod), lazily.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping

from busi.distributed.group import Dist
from busi.distributed.launchers import horovod_env_from_slurm, launched_size
from busi.errors import ConfigError

# ``log.info(..., extra=ALL_RANKS)``: a record every rank logs (others log warnings only).
ALL_RANKS = {"all_ranks": True}
from busi.config.schema import DISTRIBUTED_MODES


def init_dist(mode: str = "auto", env: Mapping[str, str] | None = None) -> Dist:
    """``none``: one process. ``horovod``: initialise Horovod. ``auto``: Horovod when the
    launcher started more than one rank. A rank that srun started to meet at a Gloo rendezvous
    first gets the variables horovodrun would have set (``horovod_env_from_slurm``), in
    ``os.environ``, where Horovod reads them."""
    if mode not in DISTRIBUTED_MODES:
        raise ConfigError(f"runtime.distributed: expected one of {', '.join(DISTRIBUTED_MODES)}, got {mode!r}")
    from_slurm = horovod_env_from_slurm(os.environ if env is None else env)
    launched = launched_size(env)
    if mode == "none" and launched > 1:
        raise ConfigError(
            f"runtime.distributed: none, but the launcher started {launched} ranks: each would train alone "
            "and write the same output.dir; use auto or horovod, or launch one process"
        )
    if mode == "none" or (mode == "auto" and launched <= 1):
        return Dist()
    try:
        from busi.distributed.horovod import (
            HorovodDist,  # imports Horovod lazily, only here
        )
    except ImportError as e:
        raise ConfigError(
            f"runtime.distributed: {mode} needs Horovod with TensorFlow support ({launched} ranks "
            f"launched), but it does not import ({e}); build it with `make horovod` "
            "(scripts/build_horovod.sh), or set runtime.distributed: none and launch one process"
        ) from None
    if env is None:
        os.environ.update(from_slurm)
    return HorovodDist.create()


def configure_rank_logging(dist: Dist, logger: logging.Logger, all_ranks: bool = False) -> None:
    """One log, not N copies: ranks other than the primary log warnings and errors only
    (and records marked ``extra=ALL_RANKS``) unless ``all_ranks`` (``runtime.log_all_ranks``);
    every line of a multi-rank run names its rank. Applied to the handlers, so it covers
    child loggers (``busi.data...``) and libraries too."""
    if dist.size > 1:
        rank_filter = _RankFilter(dist.rank, dist.is_primary or all_ranks)
        for handler in {*logger.handlers, *logging.getLogger().handlers}:
            handler.addFilter(rank_filter)


class _RankFilter(logging.Filter):
    def __init__(self, rank: int, verbose: bool) -> None:
        super().__init__()
        self.rank, self.verbose = rank, verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.verbose and record.levelno < logging.WARNING and not getattr(record, "all_ranks", False):
            return False
        if not getattr(record, "rank_prefixed", False):
            record.msg, record.rank_prefixed = f"rank {self.rank}: {record.msg}", True
        return True



