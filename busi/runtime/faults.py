"""Failure injection for the tests: ``BUSI_FAIL_AT_STEP=<rank>:<step>[:kill]`` makes that rank
raise ``RuntimeError`` (or, with ``kill``, die at once by SIGKILL, as the OOM killer does it)
just before its training step ``<step>`` (1-based, counted across epochs and phases).

The tests use it to prove that one failing rank ends the whole job and that a killed run
resumes. It is read here, once, into a ``FailAtStep`` hook the training job hands the loop
only when the variable is set; nothing of it lives in the production ``Dist``. Never set it in a
production job.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Mapping

from busi.errors import ConfigError

FAIL_AT_STEP_VAR = "BUSI_FAIL_AT_STEP"


@dataclass(frozen=True)
class FailAtStep:
    """The hook: called with each global step number before the step runs."""

    rank: int
    step: int
    how: str = "raise"  # raise | kill

    def __call__(self, step: int) -> None:
        if step != self.step:
            return
        if self.how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"{FAIL_AT_STEP_VAR}: injected failure on rank {self.rank} at step {step}")


def failure_from_env(rank: int, env: Mapping[str, str] | None = None) -> FailAtStep | None:
    """The hook ``BUSI_FAIL_AT_STEP`` asks of ``rank``; None when unset or meant for another rank."""
    env = os.environ if env is None else env
    raw = env.get(FAIL_AT_STEP_VAR, "").strip()
    if not raw:
        return None
    parts = [p.strip() for p in raw.split(":")]
    if not (
        len(parts) in (2, 3) and parts[0].isdigit() and parts[1].isdigit() and int(parts[1]) >= 1
        and (len(parts) == 2 or parts[2] in ("raise", "kill"))
    ):
        raise ConfigError(f"{FAIL_AT_STEP_VAR}={raw!r}: expected <rank>:<step>[:kill], e.g. 1:2 (a test hook)")
    if int(parts[0]) != rank:
        return None
    return FailAtStep(rank, int(parts[1]), parts[2] if len(parts) == 3 else "raise")
