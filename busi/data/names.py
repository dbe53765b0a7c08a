"""Names that are never data: the one rule that dataset scanning, archive staging and the
prediction inputs share.

Hidden files and folders (``.DS_Store``, ``._x.png`` resource forks, ``.git``, busi's own
``.busi-staged.json`` marker and temp files) and the folders tools leave beside data
(``__MACOSX`` from macOS zips, ``.ipynb_checkpoints`` from Jupyter) are skipped everywhere.
"""

from __future__ import annotations

from typing import Iterable

JUNK_DIRS = frozenset({"__MACOSX", ".ipynb_checkpoints"})


def is_junk(name: str) -> bool:
    """True for a hidden name or a junk folder's name (one path component)."""
    return name.startswith(".") or name in JUNK_DIRS


def has_junk_part(parts: Iterable[str]) -> bool:
    """True if any component of a relative path is junk: the file is skipped."""
    return any(is_junk(p) for p in parts)
