"""Failure injection for the tests: ``BUSI_FAIL_AT_STEP=<rank>:<step>[:kill|wait]`` makes that
rank raise ``RuntimeError`` (or, with ``kill``, die at once by SIGKILL, as the OOM killer does it)
just before its training step ``<step>`` (1-based, counted across epochs and phases). With
``wait`` the rank instead logs ``waiting at step <step> for a stop signal`` and waits there until
the job receives one (``runtime.signals``), then takes the step and stops as any signalled run
does (checkpoint, exit 75); after ``WAIT_LIMIT`` seconds without a signal it raises. A fault
is injected once per Slurm job: its requeued starts (``SLURM_RESTART_COUNT`` above 0) run clean.

The tests use it to prove that one failing rank ends the whole job, that a killed run resumes,
and (``wait``) that a signal from outside (``podman stop``, ``scancel --signal``) lands mid-epoch
on a machine of any speed: the test sends it once the line is logged, where a run left to
itself might already have finished. It is read here, once, into a ``FailAtStep`` hook the
training job hands the loop only when the variable is set; nothing of it lives in the
production ``Dist``. Never set it in a production job.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

from busi.errors import ConfigError

FAIL_AT_STEP_VAR = "BUSI_FAIL_AT_STEP"
HOW = ("raise", "kill", "wait")
WAIT_LIMIT = 600.0  # seconds a ``wait`` hook waits for its signal before it fails the run

log = logging.getLogger("busi")


@dataclass(frozen=True)
class FailAtStep:
    """The hook: called with each global step number before the step runs."""

    rank: int
    step: int
    how: str = "raise"  # one of HOW
    # ``wait``: whether the job has received its stop signal (the job's Stopper)
    signalled: Callable[[], bool] = field(default=lambda: False, compare=False, repr=False)

    def __call__(self, step: int) -> None:
        if step != self.step:
            return
        if self.how == "wait":
            self._wait(step)
            return
        if self.how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"{FAIL_AT_STEP_VAR}: injected failure on rank {self.rank} at step {step}")

    def _wait(self, step: int) -> None:
        log.warning("%s: rank %d waiting at step %d for a stop signal", FAIL_AT_STEP_VAR, self.rank, step)
        deadline = time.monotonic() + WAIT_LIMIT
        while not self.signalled():  # the signal handler runs between these sleeps
            if time.monotonic() > deadline:
                raise RuntimeError(f"{FAIL_AT_STEP_VAR}: rank {self.rank} waited {WAIT_LIMIT:.0f} s at step {step} "
                                   "and no stop signal came")
            time.sleep(0.05)


def failure_from_env(rank: int, env: Mapping[str, str] | None = None,
                     signalled: Callable[[], bool] = lambda: False) -> FailAtStep | None:
    """The hook ``BUSI_FAIL_AT_STEP`` asks of ``rank``; None when unset, meant for another rank,
    or in a requeued start of a Slurm job. ``signalled`` tells a ``wait`` hook that the job's
    stop signal has come."""
    env = os.environ if env is None else env
    raw = env.get(FAIL_AT_STEP_VAR, "").strip()
    if not raw or env.get("SLURM_RESTART_COUNT", "0").strip() not in ("", "0"):
        return None
    parts = [p.strip() for p in raw.split(":")]
    if not (
        len(parts) in (2, 3) and parts[0].isdigit() and parts[1].isdigit() and int(parts[1]) >= 1
        and (len(parts) == 2 or parts[2] in HOW)
    ):
        raise ConfigError(f"{FAIL_AT_STEP_VAR}={raw!r}: expected <rank>:<step>[:{'|'.join(HOW[1:])}], e.g. 1:2 "
                          "(a test hook)")
    if int(parts[0]) != rank:
        return None
    return FailAtStep(rank, int(parts[1]), parts[2] if len(parts) == 3 else "raise", signalled)
