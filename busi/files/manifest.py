"""``manifest.json`` of a run directory: what ran, where and how, and how it ended."""

from __future__ import annotations

from typing import Any

from busi.files.rundir import RunDir
from busi.runtime.clock import utc_now


class Manifest:
    """``manifest.json``: what ran, where and how, one entry per attempt (a resumed run adds
    one), and how the run ended. Facts are recorded with ``record`` as the run learns them;
    ``start`` and ``finish`` write the file (primary rank only, atomically, as every
    ``RunDir`` write), so each of its writers is one call."""

    def __init__(self, run: RunDir, facts: dict[str, Any], previous: dict[str, Any] | None = None,
                 host: str = "", resumed_from: dict[str, Any] | None = None) -> None:
        self.run = run
        previous = previous or {}
        attempts = list(previous.get("attempts", []))
        attempts.append({"started_at": utc_now(), "host": host, "resumed_from": resumed_from})
        self.data: dict[str, Any] = {
            "status": "running", "started_at": previous.get("started_at") or utc_now(), "ended_at": None,
            **facts, "attempts": attempts, "seconds": {},
        }

    @property
    def seconds(self) -> dict[str, float]:
        """Seconds per stage of the run (data, model_build, phase_*, evaluate, save, total)."""
        return self.data["seconds"]

    def record(self, **facts: Any) -> None:
        self.data.update(facts)

    def start(self) -> None:
        self.run.write_json("manifest", self.data)

    def finish(self, status: str, **facts: Any) -> None:
        """End the run (and its attempt) as ``completed``, ``interrupted`` or ``failed``."""
        now = utc_now()
        self.data.update(status=status, ended_at=now, **facts)
        self.data["attempts"][-1].update(ended_at=now, status=status)
        self.run.write_json("manifest", self.data)
