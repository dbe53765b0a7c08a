"""Run ``python -m MODULE ARGS...`` and record every file-system write it makes under a folder.

    python tests/audit_writes.py LOG_PREFIX ROOT MODULE [ARGS...]

An audit hook (PEP 578) sees each ``open`` for writing, ``os.open`` with write flags, rename,
replace, mkdir, remove, rmdir, rmtree, link, symlink and truncate that Python code makes, and
appends the path (one repr per line) to ``LOG_PREFIX<rank>.txt`` when it lies under ``ROOT``;
the rank comes from the launcher's environment (``HOROVOD_RANK``, ``OMPI_COMM_WORLD_RANK``,
``PMI_RANK``), 0 for one process. tests/test_dist.py runs each Horovod rank through it to prove
that only the primary rank writes the run directory. Writes by C++ code (TensorFlow's own file
system) are not seen; busi creates every run-directory file or folder from Python first.
"""

from __future__ import annotations

import os
import runpy
import sys
from typing import Any

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
PATH_EVENTS = {
    "os.rename": (0, 1), "os.mkdir": (0,), "os.remove": (0,), "os.rmdir": (0,), "shutil.rmtree": (0,),
    "os.link": (0, 1), "os.symlink": (0, 1), "os.truncate": (0,),
}


def _rank(env: dict[str, str]) -> str:
    for var in ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if env.get(var, "").isdigit():
            return env[var]
    return "0"


def install(log_prefix: str, root: str) -> None:
    """Record writes under ``root`` into ``log_prefix<rank>.txt``."""
    root = os.path.realpath(root)
    log_path = f"{log_prefix}{_rank(dict(os.environ))}.txt"
    busy = False

    def under_root(path: Any) -> str | None:
        if isinstance(path, int):
            return None  # a file descriptor: its path was recorded when it was opened
        try:
            full = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return None
        return full if full == root or full.startswith(root + os.sep) else None

    def hook(event: str, args: tuple[Any, ...]) -> None:
        nonlocal busy
        if busy:
            return
        paths: list[Any] = []
        if event == "open" and args:
            mode, flags = args[1], args[2] if len(args) > 2 else 0
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & WRITE_FLAGS)
            if writing:
                paths.append(args[0])
        elif event in PATH_EVENTS:
            paths.extend(args[i] for i in PATH_EVENTS[event] if i < len(args))
        hits = [p for p in map(under_root, paths) if p is not None]
        if not hits:
            return
        busy = True
        try:
            with open(log_path, "a", encoding="utf-8") as fh:
                for p in hits:
                    fh.write(f"{event} {p!r}\n")
        finally:
            busy = False

    sys.addaudithook(hook)


def main(argv: list[str]) -> None:
    log_prefix, root, module, *args = argv
    install(log_prefix, root)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
