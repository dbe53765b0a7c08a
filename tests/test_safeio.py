"""Input files from uncurated folders: only regular files are read, and nothing blocks."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from busi.runtime.safeio import NotRegularFile, is_regular_file, read_regular_file


@pytest.mark.timeout(20)  # a blocking open on the FIFO would hang here; the timeout fails the test
def test_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "scan.png"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFile, match="FIFO"):
        read_regular_file(fifo)
    assert not is_regular_file(fifo)


def test_regular_files_links_sockets_and_broken_links(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"\x89PNG data")
    (tmp_path / "link.png").symlink_to(tmp_path / "a.png")
    (tmp_path / "broken.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "s.png"))
    try:
        assert read_regular_file(tmp_path / "link.png") == b"\x89PNG data"
        assert is_regular_file(tmp_path / "a.png") and is_regular_file(tmp_path / "link.png")
        for name in ("broken.png", "loop.png", "s.png"):
            assert not is_regular_file(tmp_path / name), name
        with pytest.raises(FileNotFoundError):
            read_regular_file(tmp_path / "broken.png")
        with pytest.raises(OSError):  # a socket cannot even be opened; it never blocks either
            read_regular_file(tmp_path / "s.png")
        with pytest.raises(NotRegularFile, match="directory"):
            read_regular_file(tmp_path)
    finally:
        sock.close()
