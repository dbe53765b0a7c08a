"""Environment references in job files: ``${VAR}`` (an error if VAR is unset) and
``${VAR:-default}`` (a default may hold references itself: ``${A:-${HOME}/data}``); ``$${``
stands for a literal ``${``. A value that is one whole ``${...}`` expression is re-read as YAML,
so ``cores: ${SLURM_CPUS_PER_TASK:-auto}`` gives the integer 4 or the string ``auto``."""

from __future__ import annotations

import re
from typing import Any, Mapping

import yaml

from busi.config.tree import key_error, map_leaves

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def interpolate(text: str, path: str, env: Mapping[str, str]) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}`` from env (a default may hold references
    itself: ``${A:-${HOME}/data}``); ``$${`` is a literal ``${``."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$${", i):
            out.append("${")
            i += 3
        elif text.startswith("${", i) and _NAME.match(text, i + 2):
            value, i = _reference(text, i, path, env)
            out.append(value)
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _reference(text: str, start: int, path: str, env: Mapping[str, str]) -> tuple[str, int]:
    """The value of the reference at ``text[start:]`` (``${NAME...}``) and the index after it."""
    m = _NAME.match(text, start + 2)
    assert m is not None
    name, i = m.group(0), m.end()
    default: str | None = None
    if text.startswith(":-", i):
        depth, j = 1, i + 2
        while j < len(text):
            if text.startswith("$${", j):
                j += 3
                continue
            if text.startswith("${", j):
                depth, j = depth + 1, j + 2
                continue
            if text[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        if depth:
            raise key_error(path, f"${{{name}:-...}} is not closed; add the missing }}")
        default, end = text[i + 2 : j], j + 1
    elif text.startswith("}", i):
        end = i + 1
    else:
        raise key_error(path, f"expected ${{{name}}} or ${{{name}:-default}} in {text!r}")
    value = env.get(name)
    if value is None or (value == "" and default is not None):
        if default is None:
            raise key_error(
                path, f"environment variable {name} is not set; export it or write ${{{name}:-default}}"
            )
        return interpolate(default, path, env), end
    return value, end


def _is_one_reference(text: str, path: str, env: Mapping[str, str]) -> bool:
    """True when ``text`` is exactly one ``${...}`` reference (its value then keeps YAML typing)."""
    if not (text.startswith("${") and _NAME.match(text, 2)):
        return False
    return _reference(text, 0, path, env)[1] == len(text)


def interpolate_tree(tree: Any, env: Mapping[str, str]) -> Any:
    """A copy of a job tree with every string's references replaced (errors name the key)."""
    return map_leaves(tree, lambda path, value: _interpolate_value(value, path, env))


def _interpolate_value(value: Any, path: str, env: Mapping[str, str]) -> Any:
    if not (isinstance(value, str) and "${" in value):
        return value
    whole = _is_one_reference(value, path, env)
    result = interpolate(value, path, env)
    if not whole:
        return result
    # A value that is one ${...} keeps YAML typing: "4" -> 4, "true" -> True.
    try:
        typed = yaml.safe_load(result) if result.strip() else result
    except yaml.YAMLError:
        return result
    return typed if isinstance(typed, (str, int, float, bool)) or typed is None else result
