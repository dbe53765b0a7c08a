"""Loading job files: strict YAML (``_JobLoader``), the layers (``busi.config.layers``), the
environment (``busi.config.interpolate``), then validation against the schema
(``busi.config.validate``). Every error is a ``ConfigError`` naming the file, line or key."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import yaml

from busi.config.interpolate import interpolate_tree
from busi.config.layers import DEFAULT_SOURCE, FLAG_SOURCE, SET_SOURCE, Layered
from busi.config.schema import JobConfig, PredictJobConfig
from busi.config.tree import flatten, map_leaves
from busi.config.validate import build, check_signals, validate_semantics
from busi.errors import ConfigError
from busi.runtime.safeio import NotRegularFile, read_regular_file


class _JobLoader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter for job files. It refuses anchors and aliases (``&a`` /
    ``*a``): a job file has no use for them, and they allow a recursive alias or a
    "billion laughs" file that exhausts memory before anything is validated. It refuses a key
    given twice in one mapping, naming both lines (YAML would silently keep the last)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent) or getattr(self.peek_event(), "anchor", None):
            event = self.peek_event()
            raise yaml.MarkedYAMLError(problem="anchors and aliases (&name, *name) are not allowed in a job file",
                                       problem_mark=event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                continue  # an unhashable key: construct_mapping below reports it
            if key in seen:
                raise yaml.MarkedYAMLError(
                    problem=f"key {key!r} is given twice in this mapping (lines {seen[key].line + 1} and "
                            f"{key_node.start_mark.line + 1}); keep one",
                    problem_mark=key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; syntax errors name the file, line and column."""
    p = Path(path)
    try:
        text = read_regular_file(p).decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: job file not found") from None
    except NotRegularFile as e:
        raise ConfigError(f"{p}: cannot read job file: it is {e}; give a YAML file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read job file: {e}") from None
    try:
        data = yaml.load(text, Loader=_JobLoader)  # noqa: S506 (a SafeLoader: no aliases, no duplicate keys)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ConfigError(f"{p}{where}: YAML syntax error: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: YAML error: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a job file must be a mapping of sections (data, model, train, output, runtime)")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """``train.head.epochs=3`` -> (['train', 'head', 'epochs'], 3); the value is YAML-typed."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. --set train.head.epochs=3")
    try:
        value = yaml.load(raw, Loader=_JobLoader) if raw.strip() else ""  # noqa: S506 (safe, stricter)
    except yaml.MarkedYAMLError as e:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML: {e}") from None
    return key.split("."), value


JobFiles = Union[str, Path, Sequence[Union[str, Path]], None]


def job_files(paths: JobFiles) -> list[Path]:
    """One job file or several (layered left to right) as a list of paths."""
    if paths is None:
        return []
    if isinstance(paths, (str, Path)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def _apply(layered: Layered, overrides: Sequence[str], settings: Mapping[str, Any] | None) -> None:
    for key, value in (settings or {}).items():
        layered.set(key.split("."), value, FLAG_SOURCE)
    for item in overrides:
        keys, value = parse_override(item)
        layered.set(keys, value, SET_SOURCE)


def resolve_layers(
    paths: JobFiles,
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    base: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Layered:
    """The job files merged left to right (or ``base`` without any), then ``settings`` (the
    command-line flags), then each ``--set``; then the environment interpolated."""
    layered = Layered()
    files = job_files(paths)
    if not files and base:
        layered.merge(base, "")  # a program's own starting values: not named in errors
    for f in files:
        layered.merge(read_yaml(f), str(f))
    _apply(layered, overrides, settings)
    try:
        layered.data = interpolate_tree(layered.data, os.environ if env is None else env)
    except ConfigError as e:
        raise layered.locate(e) from None
    return layered


def _build_located(cls: type, layered: Layered) -> Any:
    """``build`` + the checks across keys, errors naming the layer that set the bad key."""
    try:
        cfg = build(cls, layered.data, "")
        if isinstance(cfg, JobConfig):
            validate_semantics(cfg)
        else:
            check_signals(cfg.runtime.signals)
    except ConfigError as e:
        raise layered.locate(e) from None
    return cfg


def load_config(
    paths: JobFiles,
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    base: Mapping[str, Any] | None = None,
) -> JobConfig:
    """Read a training job file, or several layered left to right (or start from ``base``),
    apply ``--set`` overrides, interpolate the environment, and validate against the schema."""
    return _build_located(JobConfig, resolve_layers(paths, overrides, env, base))


def load_predict_config(
    paths: JobFiles,
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    base: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> PredictJobConfig:
    """Like ``load_config`` for a prediction job file (a ``predict:`` section). ``settings``:
    ``{"predict.output": ...}`` from command-line flags, over the files, under ``--set``."""
    return _build_located(PredictJobConfig, resolve_layers(paths, overrides, env, base, settings))


def load_any(
    paths: JobFiles, overrides: Sequence[str] = (), env: Mapping[str, str] | None = None,
) -> JobConfig | PredictJobConfig:
    """A prediction job when the layered files hold a ``predict:`` section, else a training job."""
    return _build_located(*_kind(resolve_layers(paths, overrides, env)))


def _kind(layered: Layered) -> tuple[type, Layered]:
    return (PredictJobConfig if "predict" in layered.data else JobConfig), layered


def explain_config(
    paths: JobFiles, overrides: Sequence[str] = (), env: Mapping[str, str] | None = None,
) -> list[tuple[str, Any, str]]:
    """Every key of the resolved config, ``(key.path, value, source)`` in schema order; source:
    the job file, ``--set`` or ``default`` that gave the value."""
    cls, layered = _kind(resolve_layers(paths, overrides, env))
    cfg = _build_located(cls, layered)
    rows = []
    for key, value in flatten(cfg.to_dict()):
        found = layered.sources_of(key)
        rows.append((key, value, found[0] if len(found) == 1 else DEFAULT_SOURCE))
    return rows


def format_explain(rows: Sequence[tuple[str, Any, str]]) -> str:
    """``explain_config`` as aligned lines: ``key: value   # source``."""
    cells = [(f"{key}: {json.dumps(value, ensure_ascii=False)}", source) for key, value, source in rows]
    width = max((len(c) for c, _ in cells), default=0)
    return "".join(f"{c:<{width}}  # {source}\n" for c, source in cells)


def dump_config(cfg: JobConfig | PredictJobConfig) -> str:
    """The resolved config as YAML, in schema order. A literal ``${`` is written as ``$${``,
    so loading the dump gives the same config."""
    escaped = map_leaves(cfg.to_dict(), lambda _path, v: v.replace("${", "$${") if isinstance(v, str) else v)
    return yaml.safe_dump(escaped, sort_keys=False, default_flow_style=False)
