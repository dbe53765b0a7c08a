"""Timestamps: the one format of every time busi writes into a file (run manifest, checkpoints,
done markers, staging markers, lock holders)."""

from __future__ import annotations

import datetime as dt


def utc_now() -> str:
    """The current time in UTC, ISO 8601 to the second."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
