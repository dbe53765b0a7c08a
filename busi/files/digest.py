"""File hashes: the one sha256 of a file's bytes (archives, model files, weights), read in
chunks (an archive can be many GB)."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """The sha256 hex digest of the file at ``path`` (OSError where it cannot be read)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()
