"""busi.runtime.locks: one holder at a time, the refused job names the holder, the kernel frees the lock
of a killed holder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from busi.runtime.locks import LockHeld, exclusive_lock, is_locked

HOLD = """
import sys, time
from pathlib import Path
from busi.runtime.locks import exclusive_lock
with exclusive_lock(Path(sys.argv[1]), "test"):
    print("held", flush=True)
    time.sleep(3600)
"""


def _holder(lock: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.integration
def test_a_second_holder_is_refused_naming_the_first_ones_host_and_pid(tmp_path: Path) -> None:
    lock = tmp_path / ".busi.lock"
    proc = _holder(lock)
    try:
        assert is_locked(lock)
        with pytest.raises(LockHeld) as e:
            with exclusive_lock(lock, "output.dir runs/x"):
                pass
        msg = str(e.value)
        assert "output.dir runs/x is in use" in msg and f"pid {proc.pid}" in msg and socket.gethostname() in msg
        assert LockHeld.exit_code == 2
    finally:
        proc.kill()
        proc.wait()
    # SIGKILL: the kernel released it; the lock file stays (deleting lock files is racy)
    assert not is_locked(lock) and lock.exists()
    with exclusive_lock(lock, "output.dir runs/x") as held:
        assert held and f"pid {os.getpid()}" in lock.read_text().replace('"pid": ', "pid ")


@pytest.mark.integration
def test_waiting_holders_take_turns(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    proc = _holder(lock)
    told: list[str] = []
    try:
        # release the holder after we started waiting; the wait is on an event, not a duration
        def on_wait(who: str) -> None:
            told.append(who)
            proc.send_signal(signal.SIGTERM)

        with exclusive_lock(lock, "staging", wait=True, on_wait=on_wait) as held:
            assert held
    finally:
        proc.kill()
        proc.wait()
    assert told and f"pid {proc.pid}" in told[0]


def test_an_unwritable_lock_location_is_a_config_error(tmp_path: Path) -> None:
    from busi.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot create the lock file"):
        with exclusive_lock(tmp_path / "missing" / "x.lock", "--output p.csv"):
            pass
