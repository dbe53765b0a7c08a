"""Walltime: ``HH:MM:SS`` (Slurm's ``D-HH:MM:SS`` too) both ways, when this process started, and
the deadline a job must stop by (from the job file, a wrapper's or cloud job definition's
environment, or the batch scheduler's end of the job)."""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path
from typing import Mapping

from busi.errors import ConfigError
from busi.runtime.schedulers import detect_scheduler

_HMS = re.compile(r"^(?:(\d+)-)?(\d+):(\d{1,2}):(\d{1,2})$")


def parse_hms(text: str, key: str = "runtime.walltime") -> float:
    """``HH:MM:SS`` or ``D-HH:MM:SS`` (Slurm's format) -> seconds."""
    m = _HMS.match(text.strip())
    if not m:
        raise ConfigError(f"{key}: expected HH:MM:SS, D-HH:MM:SS or auto, got {text!r}")
    days, h, mi, s = (int(g) if g else 0 for g in m.groups())
    return float(((days * 24 + h) * 60 + mi) * 60 + s)


def format_hms(seconds: float) -> str:
    """Seconds -> ``HH:MM:SS``, rounded up (hours may exceed 24): what ``sbatch --time`` takes,
    and the ETA of the epoch log line. The inverse of ``parse_hms``."""
    s = max(0, int(math.ceil(seconds)))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def process_start_time() -> float:
    """When this process started (epoch seconds): a walltime budget counts from there, not
    from when training code first ran (imports and start-up take seconds too)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 (starttime), counted after the ")" of field 2
        btime = next(int(l.split()[1]) for l in Path("/proc/stat").read_text().splitlines() if l.startswith("btime"))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def resolve_deadline(
    setting: int | str | None, started: float, env: Mapping[str, str] | None = None
) -> tuple[float | None, str]:
    """(deadline in epoch seconds or None, where it came from).

    ``HH:MM:SS``: that long after ``started``. ``auto``: ``BUSI_WALLTIME_END`` (epoch seconds,
    set by a wrapper), ``BUSI_WALLTIME`` (HH:MM:SS from the start, set by a cloud job
    definition), else the batch scheduler's end of the job (``busi.runtime.schedulers``: Slurm's);
    none of these: no budget.
    """
    env = os.environ if env is None else env
    if setting is None:
        return None, "none"
    if isinstance(setting, int):
        return started + float(setting), "config"
    if setting != "auto":
        return started + parse_hms(setting), "config"
    if env.get("BUSI_WALLTIME_END"):
        try:
            return float(env["BUSI_WALLTIME_END"]), "BUSI_WALLTIME_END"
        except ValueError:
            raise ConfigError(f"BUSI_WALLTIME_END={env['BUSI_WALLTIME_END']!r}: expected epoch seconds") from None
    if env.get("BUSI_WALLTIME"):
        return started + parse_hms(env["BUSI_WALLTIME"], "BUSI_WALLTIME"), "BUSI_WALLTIME"
    scheduler = detect_scheduler(env)
    if scheduler is not None and (end := scheduler.job_end_time(env)) is not None:
        return end, scheduler.name
    return None, "none"
