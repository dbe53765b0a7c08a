"""The one walk over a job's tree of mappings, lists and values (YAML as loaded, or a config's
``to_dict``), and the key paths that name a place in it (``train.head.epochs``,
``data.classes[1]``): what interpolation, layering, dumping and checkpoints share."""

from __future__ import annotations

from typing import Any, Callable, Iterator

from busi.errors import ConfigError


def join_key(prefix: str, key: Any) -> str:
    """``train`` + ``head`` -> ``train.head`` (the key path of a child)."""
    return f"{prefix}.{key}" if prefix else str(key)


def key_error(path: str, text: str) -> ConfigError:
    """``path: text``, remembering ``path`` (a layered config names the file that set it)."""
    return ConfigError(f"{path}: {text}", keys=(path,))


def map_leaves(value: Any, fn: Callable[[str, Any], Any] = lambda _path, v: v, path: str = "") -> Any:
    """A copy of ``value`` with every leaf (anything but a dict, list or tuple) replaced by
    ``fn(key_path, leaf)``; tuples come back as lists (YAML has no tuples)."""
    if isinstance(value, dict):
        return {k: map_leaves(v, fn, join_key(path, k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [map_leaves(v, fn, f"{path}[{i}]") for i, v in enumerate(value)]
    return fn(path, value)


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(key.path, value)`` for every key of nested mappings, in order; lists are values."""
    if isinstance(value, dict) and value:
        for k, v in value.items():
            yield from flatten(v, join_key(prefix, k))
    else:
        yield prefix, value
