"""When to stop early and come back later: termination signals and the walltime budget.

Schedulers end jobs at their walltime whether training is done or not: Slurm sends SIGTERM
(or the ``--signal`` of the job) and SIGKILL about 30 s later; cloud batch services do the
same. ``Stopper`` turns a signal into a flag the loop checks after every step, and knows
the walltime deadline, so the loop can checkpoint and exit 75 before the kill.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from busi.errors import ConfigError, Interrupted

__all__ = ["Interrupted", "Stopper", "format_hms", "parse_hms", "resolve_deadline", "slurm_end_time"]

log = logging.getLogger("busi")


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


class Stopper:
    """Signal flag plus walltime deadline. Install in the main thread; restore when done."""

    def __init__(
        self,
        signals: Sequence[str] = ("SIGTERM", "SIGUSR1", "SIGINT"),
        deadline: float | None = None,
        margin: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.signal_names = tuple(signals)
        self.deadline = deadline
        self.margin = margin
        self.clock = clock
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> "Stopper":
        for name in self.signal_names:
            try:
                signum = getattr(signal, name)
            except AttributeError:
                raise ConfigError(f"runtime.signals: unknown signal {name!r}") from None
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __enter__(self) -> "Stopper":
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            log.warning("received %s: finishing the current step, then checkpointing", name)
        self.received = name

    def time_left(self) -> float | None:
        return None if self.deadline is None else self.deadline - self.clock()

    def reason(self, next_epoch_seconds: float | None = None) -> str | None:
        """Why to stop now, or None. Mid-epoch (``next_epoch_seconds`` None) only a signal or
        a deadline inside the margin stops; at an epoch's end also a deadline that leaves
        less than another epoch plus the margin."""
        if self.received:
            return f"signal {self.received}"
        left = self.time_left()
        if left is None:
            return None
        needed = self.margin + (next_epoch_seconds or 0.0)
        if left < needed:
            return f"walltime budget ({left:.0f} s left, {needed:.0f} s needed)"
        return None
