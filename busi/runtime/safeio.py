"""Reading files from folders nobody curated: only regular files, and opening never blocks.

A shared cluster folder can hold FIFOs (named pipes), sockets and device files. Opening a FIFO
for reading waits for a writer, forever, and no signal handler runs meanwhile; so every file
busi reads as input (images, job files, input lists) is opened with ``O_NONBLOCK`` and checked
with ``fstat`` before a byte is read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
         stat.S_IFBLK: "a block device", stat.S_IFDIR: "a directory"}


class NotRegularFile(OSError):
    """The path names something other than a regular file (or a link to one)."""


def kind_of(mode: int) -> str:
    return KINDS.get(stat.S_IFMT(mode), "not a regular file")


def is_regular_file(path: str | Path) -> bool:
    """A regular file, or a symlink to one (a broken or looping link is not)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def open_regular_file(path: str | Path) -> BinaryIO:
    """The regular file at ``path``, open for binary reading (a decoder reads only what it
    needs). Raises FileNotFoundError, NotRegularFile (naming the kind) or another OSError;
    never waits on a FIFO: the open is non-blocking, and ``fstat`` checks what was opened."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(f"{kind_of(st.st_mode)}, not a regular file")
        return os.fdopen(fd, "rb")  # O_NONBLOCK changes nothing for a regular file's reads
    except BaseException:
        os.close(fd)
        raise


def read_regular_file(path: str | Path) -> bytes:
    """The bytes of the regular file at ``path`` (``open_regular_file``'s rules)."""
    with open_regular_file(path) as fh:
        return fh.read()
