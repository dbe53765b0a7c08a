"""Layered job files: several files merged left to right (mappings deep-merge, anything else
replaces), then the command line's flags, then each ``--set``. ``Layered`` remembers which
layer set each key, so an error names the file that set the bad key and ``busi-job config
--explain`` lists every resolved key with its source."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from busi.config.tree import flatten, join_key, map_leaves
from busi.errors import ConfigError

# Where a value of the resolved config came from (besides a job file's path).
DEFAULT_SOURCE = "default"
SET_SOURCE = "--set"
FLAG_SOURCE = "command line"


@dataclass
class Layered:
    """The raw job tree after merging its layers, and for each key path a layer set, the layer
    (a job file's path, ``--set`` or ``command line``) whose value is the one that stands."""

    data: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def merge(self, layer: Mapping[str, Any], source: str) -> None:
        """Deep-merge ``layer`` over the tree: a mapping merges into a mapping, anything else
        (a value, a list, null) replaces what was there."""
        _merge_into(self.data, layer, "", source, self.sources)

    def set(self, keys: Sequence[str], value: Any, source: str) -> None:
        """Set one key path (``--set``, a command-line flag), creating missing sections."""
        node = self.data
        for i, k in enumerate(keys[:-1]):
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {'.'.join(keys)}: {'.'.join(keys[: i + 1])} is not a section")
            node = child
        node[keys[-1]] = map_leaves(value)
        _record(self.sources, ".".join(keys), value, source)

    def sources_of(self, key: str) -> list[str]:
        """The layers that set ``key`` (``data.classes[1]`` counts as ``data.classes``): the
        one that set it or a section holding it, else every layer that set a key inside it."""
        key = re.sub(r"\[\d+\]", "", key)
        parts = key.split(".")
        for n in range(len(parts), 0, -1):
            hit = self.sources.get(".".join(parts[:n]))
            if hit is not None:
                return [hit]
        inside = [src for k, src in self.sources.items() if k.startswith(key + ".")]
        return list(dict.fromkeys(inside))

    def locate(self, error: ConfigError) -> ConfigError:
        """``error`` with the layers that set its keys in front: ``site.yaml: train.x: ...``."""
        found = list(dict.fromkeys(src for key in error.keys for src in self.sources_of(key) if src))
        if not found:
            return error
        if found == [SET_SOURCE]:
            return ConfigError(f"{SET_SOURCE} {error}", keys=error.keys)  # "--set train.x: expected ..."
        return ConfigError(f"{', '.join(found)}: {error}", keys=error.keys)


def _merge_into(node: dict[str, Any], layer: Mapping[str, Any], prefix: str, source: str,
                sources: dict[str, str]) -> None:
    for k, v in layer.items():
        path = join_key(prefix, k)
        if isinstance(v, dict) and isinstance(node.get(k), dict):
            _merge_into(node[k], v, path, source, sources)
        else:
            node[k] = map_leaves(v)
            _record(sources, path, v, source)


def _record(sources: dict[str, str], path: str, value: Any, source: str) -> None:
    """``path`` now holds ``value`` from ``source``: forget what earlier layers set there."""
    for k in [k for k in sources if k == path or k.startswith(path + ".")]:
        del sources[k]
    for key, _ in flatten(value, path):
        sources[key] = source
