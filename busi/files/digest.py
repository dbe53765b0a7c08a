"""File hashes: the one hash of a file's bytes (archives, model files, weights: sha256; the md5
Keras lists for some weights files), read in chunks (an archive can be many GB)."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """The sha256 hex digest of the file at ``path`` (OSError where it cannot be read)."""
    return file_digest(path, "sha256")


def file_digest(path: str | Path, algorithm: str) -> str:
    """The ``algorithm`` (a hashlib name) hex digest of the file at ``path``."""
    h = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()
