"""Validation: a raw job tree against the schema's dataclasses (types, bounds, allowed values,
unknown and missing keys), then the checks that span several keys. Errors name the key path
(``train.head.epochs: expected a positive integer, got 'ten'``)."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any, Literal, Mapping, Sequence, Union

from busi.config.schema import DataConfig, JobConfig
from busi.config.templates import replace_problem, template_problem
from busi.config.tree import join_key, key_error
from busi.errors import ConfigError

# -------------------------------------------------------------------- validation


def build(cls: type, data: Any, path: str) -> Any:
    """Validate ``data`` against dataclass ``cls``; errors name the key path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or '<job>'}: expected a mapping of keys, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise key_error(join_key(path, key), f"unknown key; known keys here: {known}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key_path = join_key(path, name)
        if name not in data:
            if f.default is dataclasses.MISSING and dataclasses.is_dataclass(hints[name]):
                kwargs[name] = build(hints[name], {}, key_path)  # a missing section: name its missing key
                continue
            if f.default is dataclasses.MISSING:
                raise key_error(key_path, f"missing required key ({f.metadata.get('doc', '')})")
            if dataclasses.is_dataclass(f.default):
                kwargs[name] = f.default
            continue
        tp = hints[name]
        section = optional_section(tp)
        if section is not None:  # a section that may be null (data.table): null, or its keys from scratch
            kwargs[name] = None if data[name] is None else build(section, data[name], key_path)
        elif dataclasses.is_dataclass(tp):
            # A section starts from the field's own default (phases differ in defaults).
            default = f.default if dataclasses.is_dataclass(f.default) else None
            kwargs[name] = _build_section(tp, data[name], key_path, default)
        else:
            kwargs[name] = _check(data[name], tp, key_path, f.metadata)
    return cls(**kwargs)


def optional_section(tp: Any) -> type | None:
    """The dataclass of a ``Union[Section, None]`` key (a section that may be null), else None."""
    if typing.get_origin(tp) not in (Union, types.UnionType):
        return None
    options = [o for o in typing.get_args(tp) if o is not type(None)]
    return options[0] if len(options) == 1 and dataclasses.is_dataclass(options[0]) else None


def _build_section(tp: type, value: Any, path: str, default: Any) -> Any:
    if value is None:
        value = {}
    if default is None or not isinstance(value, dict):
        return build(tp, value, path)
    merged = {**{f.name: getattr(default, f.name) for f in dataclasses.fields(tp)}, **value}
    # nested dataclass defaults are instances, which build() accepts as already valid
    return build(tp, {k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v) for k, v in merged.items()}, path)


def _check(value: Any, tp: Any, path: str, meta: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _check(value, opt, path, meta)
            except ConfigError:
                continue
        raise key_error(path, f"expected {describe(tp, meta)}, got {_show(value)}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and isinstance(value, str):
            return value
        raise key_error(path, f"expected {describe(tp, meta)}, got {_show(value)}")
    if origin is tuple:
        return _check_items(value, tp, path, meta)
    if origin is dict:  # a mapping of names to names (data.table.label_map): numbers read as names
        if not isinstance(value, dict) or not value:
            raise key_error(path, f"expected {describe(tp, meta)}, got {_show(value)}")
        names = {"names": True}
        pairs = [(_check(k, str, f"{path}.{k}", names), _check(v, str, f"{path}.{k}", names)) for k, v in value.items()]
        return dict(pairs)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise key_error(path, f"expected true or false, got {_show(value)}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise key_error(path, f"expected {describe(tp, meta)}, got {_show(value)}")
        _range(value, path, tp, meta)
        return value
    if tp is float:
        return _check_float(value, path, meta)
    if tp is str:
        if meta.get("names") and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = as_name(value)  # a name YAML reads as a number: classes [2, 3, 4, 5] (BI-RADS), a column 2023
        if not isinstance(value, str) or not value.strip():
            raise key_error(path, f"expected a non-empty string, got {_show(value)}")
        return value
    raise TypeError(f"unsupported schema type {tp!r} at {path}")  # a bug in the schema, not user input


def _check_items(value: Any, tp: Any, path: str, meta: Mapping[str, Any]) -> tuple[Any, ...]:
    """A list of ``tuple[X, ...]``: each item checked (or built, for a dataclass), then the
    ``min_items`` and ``unique`` rules."""
    (item_tp, _ellipsis) = typing.get_args(tp)
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise key_error(path, f"expected {describe(tp, meta)}, got {_show(value)}")
    item_meta = {"names": meta.get("names", False)}
    items = tuple(build(item_tp, v, f"{path}[{i}]") if dataclasses.is_dataclass(item_tp)
                  else _check(v, item_tp, f"{path}[{i}]", item_meta) for i, v in enumerate(value))
    if len(items) < meta.get("min_items", 0):
        raise key_error(path, f"expected {describe(tp, meta)}, got {_show(value)}")
    if meta.get("unique") and len(set(items)) != len(items):
        raise key_error(path, f"entries must be unique, got {_show(value)}")
    return items


def _check_float(value: Any, path: str, meta: Mapping[str, Any]) -> float:
    """A finite number in range; ``1e-3`` written as YAML 1.1 reads it (a string) too."""
    if isinstance(value, str) and _SCI_NUMBER.fullmatch(value.strip()):
        value = float(value)  # PyYAML (YAML 1.1) reads 1e-3 as a string; users mean a number
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise key_error(path, f"expected {describe(float, meta)}, got {_show(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        number = math.inf
    if not math.isfinite(number):
        raise key_error(path, f"expected {describe(float, meta)} (finite), got {_show(value)}")
    _range(number, path, float, meta)
    return number


def as_name(value: int | float) -> str:
    """A number YAML read where a name was meant, as the user typed it (``4``, ``4.5``)."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


_SCI_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _range(value: float, path: str, tp: Any, meta: Mapping[str, Any]) -> None:
    lo, hi = meta.get("min"), meta.get("max")
    bad = (lo is not None and (value < lo or (meta.get("exclusive_min") and value == lo))) or (
        hi is not None and value > hi
    )
    if bad:
        raise key_error(path, f"expected {describe(tp, meta)}, got {_show(value)}")
    limit = meta.get("limit")  # a bound no real job reaches: it only stops typos (1e30 epochs)
    if limit is not None and value > limit:
        raise key_error(path, f"expected at most {limit:,}, got {_show(value)}")


def describe(tp: Any, meta: Mapping[str, Any]) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        parts = [describe(o, meta) for o in typing.get_args(tp) if o is not type(None)]
        text = " or ".join(parts)
        return text + (" or null" if type(None) in typing.get_args(tp) else "")
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if dataclasses.is_dataclass(item_tp):
            return "a list of sections"
        n = meta.get("min_items", 0)
        return f"a list of at least {n} names" if n else "a list of names"
    if origin is dict:
        return "a mapping of names to names"
    lo, hi = meta.get("min"), meta.get("max")
    if tp is int:
        if lo == 1 and hi is None:
            return "a positive integer"
        if lo == 0 and hi is None:
            return "a non-negative integer"
        if lo is not None and hi is not None:
            return f"an integer from {lo} to {hi}"
        return "an integer"
    if tp is float:
        if meta.get("exclusive_min") and lo == 0 and hi is None:
            return "a positive number"
        if lo is not None and hi is not None:
            return f"a number from {lo} to {hi}"
        return "a number"
    if tp is str:
        return "a string"
    if tp is bool:
        return "true or false"
    return str(tp)


def _show(value: Any) -> str:
    return "nothing (null)" if value is None else repr(value)


# ------------------------------------------------------------------ derived values


def check_groups(data: DataConfig) -> None:
    """``data.group_pattern`` compiles and has a group; it and ``data.table.group`` are not both set;
    ``data.table.file`` stays inside ``data.source``; the table's templates and substitutions work."""
    table, pattern = data.table, data.group_pattern
    if table is not None:
        parts = table.file.replace("\\", "/").split("/")
        if table.file.startswith(("/", "\\")) or ".." in parts or (len(parts[0]) > 1 and parts[0][1] == ":"):
            raise key_error("data.table.file", f"{table.file!r}: give the table's path relative to data.source "
                            "(no absolute path, no '..')")
        for key, why in (("path_format", template_problem(table.path_format)),
                         ("mask_format", template_problem(table.mask_format)),
                         ("path_replace", replace_problem(table.path_replace)),
                         ("mask_replace", replace_problem(table.mask_replace))):
            if why:
                raise key_error(f"data.table.{key}", why)
        if table.mask_separator is not None and not table.mask_separator.strip():
            raise key_error("data.table.mask_separator", "expected the text between mask names (e.g. '&'), not blanks")
    if pattern is None:
        return
    if table is not None and table.group is not None:
        raise ConfigError("data.group_pattern, data.table.group: give one source of patients, not both",
                          keys=("data.group_pattern", "data.table.group"))
    check_group_pattern(pattern, "data.group_pattern")


def check_group_pattern(pattern: str, key: str) -> None:
    """A patient pattern compiles and has a group (``key``: where it was given, for the error)."""
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise key_error(key, f"{pattern!r} is not a regular expression: {e}") from None
    if compiled.groups == 0:
        raise key_error(key, f"{pattern!r} has no group: put the patient part in parentheses, "
                        "e.g. ^(bus_\\d+) or ^(?P<group>[A-Z]+)_\\d+")


UNCATCHABLE_SIGNALS = ("SIGKILL", "SIGSTOP")


def check_signals(names: Sequence[str]) -> None:
    """``runtime.signals``: names of signals a handler can catch (SIGKILL and SIGSTOP cannot be)."""
    import signal as _signal

    for name in names:
        if name not in _signal.Signals.__members__:
            raise ConfigError(f"runtime.signals: {name!r} is not a signal name (e.g. SIGTERM, SIGUSR1)",
                              keys=("runtime.signals",))
        if name in UNCATCHABLE_SIGNALS:
            raise ConfigError(f"runtime.signals: {name} cannot be caught by any program; list signals such as "
                              "SIGTERM, SIGUSR1, SIGINT", keys=("runtime.signals",))


def validate_semantics(cfg: JobConfig) -> None:
    """Checks that span several keys."""
    s = cfg.data.split
    total = s.train + s.val + s.test
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(
            f"data.split: train + val + test must sum to 1, got {s.train} + {s.val} + {s.test} = {total:g}",
            keys=("data.split",),
        )
    if s.train <= 0:
        raise key_error("data.split.train", "expected a number above 0")
    walltime = cfg.runtime.walltime
    if isinstance(walltime, str) and walltime != "auto":
        from busi.runtime.walltime import parse_hms

        try:
            parse_hms(walltime)
        except ConfigError as e:
            raise ConfigError(str(e), keys=("runtime.walltime",)) from None
    check_signals(cfg.runtime.signals)
    check_groups(cfg.data)
    for name in cfg.data.classes:
        if name in (".", "..") or "/" in name or "\0" in name or name != name.strip() or name.startswith("."):
            raise ConfigError(
                f"data.classes: {name!r} is not a folder name; each class is one folder directly under the "
                "dataset root (no '/', not '.', '..' or hidden, no leading or trailing spaces)",
                keys=("data.classes",),
            )
    positive = cfg.evaluate.positive_class
    if positive is not None and positive not in cfg.data.classes:
        raise ConfigError(
            f"evaluate.positive_class: {positive!r} is not one of data.classes ({', '.join(cfg.data.classes)}); "
            "name one of them, or null for no positive-vs-rest table",
            keys=("evaluate.positive_class", "data.classes"),
        )
    sha = cfg.model.weights_sha256
    if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha.lower())):
        raise ConfigError(f"model.weights_sha256: expected 64 hex digits, got {sha!r}", keys=("model.weights_sha256",))
    if cfg.train.head.epochs + cfg.train.finetune.epochs == 0:
        raise ConfigError("train.head.epochs, train.finetune.epochs: at least one phase needs epochs > 0",
                          keys=("train.head.epochs", "train.finetune.epochs"))
    if cfg.train.warmup_epochs > cfg.train.head.epochs:
        raise ConfigError(
            f"train.warmup_epochs: the warmup ramps the head phase, so it needs at most train.head.epochs "
            f"({cfg.train.head.epochs}) epochs, got {cfg.train.warmup_epochs}",
            keys=("train.warmup_epochs", "train.head.epochs"),
        )
