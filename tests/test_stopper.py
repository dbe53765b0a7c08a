"""Stopper: signals become a flag the loop checks; the walltime budget and where it comes from."""

from __future__ import annotations

import os
import signal

import pytest

from busi.errors import ConfigError
from busi.runtime.stopper import Stopper
from busi.runtime.walltime import format_hms, parse_hms, resolve_deadline


def test_parse_hms_and_deadlines() -> None:
    assert parse_hms("01:30:00") == 5400 and parse_hms("1-00:00:10") == 86410
    with pytest.raises(ConfigError):
        parse_hms("90 minutes")
    assert format_hms(5400) == "01:30:00" and format_hms(59.2) == "00:01:00" and format_hms(-3) == "00:00:00"
    assert parse_hms(format_hms(86410)) == 86410
    assert resolve_deadline(None, 100.0, {}) == (None, "none")
    assert resolve_deadline("00:01:00", 100.0, {}) == (160.0, "config")
    assert resolve_deadline(3600, 100.0, {}) == (3700.0, "config")
    assert resolve_deadline("auto", 100.0, {"BUSI_WALLTIME": "00:00:30"}) == (130.0, "BUSI_WALLTIME")
    assert resolve_deadline("auto", 100.0, {"BUSI_WALLTIME_END": "5000"}) == (5000.0, "BUSI_WALLTIME_END")
    assert resolve_deadline("auto", 100.0, {"SLURM_JOB_END_TIME": "7000"}) == (7000.0, "slurm")
    assert resolve_deadline("auto", 100.0, {}) == (None, "none")


def test_stopper_reasons() -> None:
    now = [1000.0]
    st = Stopper(signals=(), deadline=1100.0, margin=10.0, clock=lambda: now[0])
    assert st.reason() is None and st.reason(next_epoch_seconds=50) is None
    now[0] = 1045.0
    assert st.reason() is None  # mid-epoch: 55 s left > 10 s margin
    assert "walltime" in (st.reason(next_epoch_seconds=50) or "")  # no room for another epoch
    now[0] = 1095.0
    assert "walltime" in (st.reason() or "")


def test_stopper_turns_a_signal_into_a_flag() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    with Stopper(signals=("SIGUSR1",)) as st:
        assert st.reason() is None
        os.kill(os.getpid(), signal.SIGUSR1)
        assert st.reason() == "signal SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is before  # the previous handler is back
