"""Walltime: ``HH:MM:SS`` (Slurm's ``D-HH:MM:SS`` too) both ways, when this process started, and
the deadline a job must stop by (from the job file, a wrapper's or cloud job definition's
environment, or the Slurm job's end time)."""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from busi.errors import ConfigError

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


def slurm_end_time(env: Mapping[str, str], run: Callable[..., Any] = subprocess.run) -> float | None:
    """The Slurm job's end time (epoch seconds), from ``SLURM_JOB_END_TIME`` or ``squeue``."""
    raw = env.get("SLURM_JOB_END_TIME")
    if raw and raw.isdigit():
        return float(raw)
    job = env.get("SLURM_JOB_ID")
    if not job:
        return None
    try:
        out = run(["squeue", "-h", "-j", job, "-o", "%e"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or "").strip()
    try:
        return dt.datetime.fromisoformat(text).timestamp()  # local time, as squeue prints it
    except ValueError:
        return None  # "N/A", "UNLIMITED", or nothing


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
    definition), else the Slurm job's end time; none of these: no budget.
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
    end = slurm_end_time(env)
    if end is not None:
        return end, "slurm"
    return None, "none"
