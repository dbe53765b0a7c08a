"""Exclusive locks on what one busi process writes: a run directory, a prediction CSV, a staged
archive. The one place that takes an ``fcntl.flock``.

A lock is a file beside what it guards, holding the holder's host, pid and start time (so the
process that is refused can say who holds it). The kernel drops the lock when its holder dies,
however it dies (SIGKILL, OOM killer, node reboot), so a stale lock never blocks a requeued job;
the lock file itself is never deleted (deleting lock files reintroduces the race they prevent).
On file systems without lock support (some network mounts) the lock is skipped with a warning:
every write stays atomic, only two concurrent runs are no longer refused.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from busi.errors import ConfigError
from busi.runtime.clock import utc_now

try:  # POSIX only
    import fcntl
except ImportError:  # pragma: no cover - not exercised on Linux
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("busi")

# flock errnos meaning "this file system does not support locks" rather than a real failure
NO_LOCK_ERRNOS = frozenset(
    {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
)


class LockHeld(ConfigError):
    """Another live process holds the lock (exit 2: the second job is the one to change)."""


def holder_of(lock_path: Path) -> str:
    """Who holds (or last held) ``lock_path``: "host H, pid P, since T", or "unknown"."""
    try:
        info = json.loads(lock_path.read_text(encoding="utf-8"))
        return f"host {info['host']}, pid {info['pid']}, since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (no holder recorded)"


def _holder_json() -> str:
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": utc_now(),
                       "command": sys.argv[:8]}) + "\n"


@contextmanager
def exclusive_lock(lock_path: Path, what: str, wait: bool = False,
                   on_wait: Callable[[str], None] | None = None) -> Iterator[bool]:
    """Hold an exclusive lock on ``lock_path`` for the ``with`` block; yield whether a lock is
    really held (False only where the file system has no locks).

    ``wait=False``: a held lock raises LockHeld naming ``what`` and the holder's host and pid.
    ``wait=True``: block until the holder is done (``on_wait`` is told who it waits for).
    A lock file that cannot be created raises ConfigError naming it.
    """
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        raise ConfigError(f"{what}: cannot create the lock file {lock_path}: {e.strerror or e}; "
                          "check that the folder exists and is writable") from None
    try:
        held = False
        if fcntl is not None:
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = holder_of(lock_path)
                    if not wait:
                        raise LockHeld(f"{what} is in use by another busi job ({holder}); wait for it to "
                                       "end, or give this job its own output") from None
                    if on_wait is not None:
                        on_wait(holder)
                    fcntl.flock(fd, fcntl.LOCK_EX)
                held = True
            except OSError as e:
                if e.errno not in NO_LOCK_ERRNOS:
                    raise ConfigError(f"{what}: cannot lock {lock_path}: {e.strerror or e}") from None
                log.warning("%s: %s does not support file locks (%s); a second job on it is not refused",
                            what, lock_path.parent, e)
        if held:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, _holder_json().encode(), 0)
            except OSError:
                pass  # the holder record is a courtesy; the lock itself is held
        yield held
    finally:
        os.close(fd)  # releases the flock


def is_locked(lock_path: Path) -> bool:
    """True if a live process holds ``lock_path`` now (probe with a non-blocking lock)."""
    if fcntl is None:
        return False
    try:
        fd = os.open(lock_path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)
