"""When to stop early and come back later: termination signals and the walltime budget.

Schedulers end jobs at their walltime whether training is done or not: Slurm sends SIGTERM
(or the ``--signal`` of the job) and SIGKILL about 30 s later; cloud batch services do the
same. ``Stopper`` turns a signal into a flag the loop checks after every step, and knows
the walltime deadline, so the loop can checkpoint and exit 75 before the kill.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any, Callable, Sequence

from busi.errors import ConfigError

log = logging.getLogger("busi")


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
