"""Configuration errors, worded for the person who made them.

Every problem is one line naming where the value came from (the file or the ``OBS_*`` variable),
the key, the value and what is accepted; pydantic's own messages name only the bound that failed.
Values echoed back are redacted: a secret may have been put in the wrong place.
"""

from __future__ import annotations

import json
import os
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_settings import SettingsError

from .settings import ENV_DELIMITER, ENV_PREFIX, ObservabilitySettings

__all__ = ["ConfigError", "check_env_sections", "explain", "explain_env_parse_error", "report"]


class ConfigError(ValueError):
    """A configuration problem, naming the file, the key, the bad value and what is accepted."""


def report(file: Path, lines: list[str]) -> str:
    """The one message for every problem found in ``file`` (and the environment), redacted."""
    from .redaction import redact_text  # only on this error path: redaction compiles its patterns on import

    # A value echoed back may be a secret someone put in the wrong place.
    body = "\n".join(f"  {redact_text(line)}" for line in lines)
    return f"invalid observability configuration ({file}):\n{body}"


def _env_var_for(loc: tuple[Any, ...]) -> str | None:
    """The ``OBS_*`` variable that supplied the value at ``loc``, if one did (longest match wins)."""
    env = {name.upper(): name for name in os.environ if name.upper().startswith(ENV_PREFIX)}
    parts = [str(p).upper() for p in loc]
    for length in range(len(parts), 0, -1):
        name = ENV_PREFIX + ENV_DELIMITER.join(parts[:length])
        if name in env:
            return env[name]
    return None


def check_env_sections(file: Path) -> None:
    """``OBS_SAMPLNG__DEFAULT_RATE`` names no section: pydantic-settings would ignore it silently."""
    sections = ObservabilitySettings.model_fields
    lines = []
    for name in sorted(os.environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or ENV_DELIMITER not in upper[len(ENV_PREFIX) :]:
            continue
        section = upper[len(ENV_PREFIX) :].split(ENV_DELIMITER, 1)[0].lower()
        if section not in sections:
            lines.append(
                f"environment variable {name}: {section!r} is an unknown section; "
                f"accepted sections: {', '.join(sections)}"
            )
    if lines:
        raise ConfigError(report(file, lines))


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The settings model that holds the last key of ``loc``, through nested models and the values
    of ``dict[str, Model]`` (``pricing.overrides.<model>``); None below any other dict or a list."""
    model: type[BaseModel] = ObservabilitySettings
    parts = iter(loc[:-1])
    for part in parts:
        info = model.model_fields.get(str(part))
        annotation = info.annotation if info is not None else None
        if typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
            if next(parts, None) is None:  # ``loc`` names a key of the mapping itself
                return None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _constraints_at(loc: tuple[Any, ...]) -> list[Any]:
    """The annotated-types constraints (Ge, Le, ...) on the value at ``loc``, through nested
    models, ``dict[str, X]`` values, lists and ``X | None``."""
    annotation: Any = ObservabilitySettings
    constraints: list[Any] = []
    for part in loc:
        constraints = []
        while True:  # unwrap Annotated[...] and X | None, keeping the constraints found
            origin = typing.get_origin(annotation)
            if origin is typing.Annotated:
                annotation, *extra = typing.get_args(annotation)
                for item in extra:
                    constraints.extend(getattr(item, "metadata", None) or [item])
            elif origin in (typing.Union, types.UnionType):
                options = [a for a in typing.get_args(annotation) if a is not type(None)]
                if len(options) != 1:
                    break
                annotation = options[0]
            else:
                break
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            info = annotation.model_fields.get(str(part))
            if info is None:
                return []
            annotation = info.annotation
            constraints = list(info.metadata)
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
        elif typing.get_origin(annotation) is list:
            annotation = typing.get_args(annotation)[0]
        else:
            return []
    while typing.get_origin(annotation) in (typing.Annotated, typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if typing.get_origin(annotation) is typing.Annotated:
            for item in args[1:]:
                constraints.extend(getattr(item, "metadata", None) or [item])
        annotation = args[0]
    return constraints


def _bounds(loc: tuple[Any, ...], ctx: dict[str, Any]) -> dict[str, Any]:
    """Every bound of the field at ``loc`` (pydantic's error names only the one that failed)."""
    found: dict[str, Any] = {}
    for constraint in _constraints_at(loc):
        for name in ("gt", "ge", "lt", "le"):
            value = getattr(constraint, name, None)
            if value is not None:
                found[name] = value
    for name in ("gt", "ge", "lt", "le"):
        if name in ctx:
            found.setdefault(name, ctx[name])
    return found


def _num(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _range_text(bounds: dict[str, Any]) -> str:
    low = ("ge", bounds["ge"]) if "ge" in bounds else ("gt", bounds["gt"]) if "gt" in bounds else None
    high = ("le", bounds["le"]) if "le" in bounds else ("lt", bounds["lt"]) if "lt" in bounds else None
    if low and high and low[0] == "ge" and high[0] == "le":
        return f"is not between {_num(low[1])} and {_num(high[1])}"
    parts = []
    if low:
        parts.append(f"{'at least' if low[0] == 'ge' else 'greater than'} {_num(low[1])}")
    if high:
        parts.append(f"{'at most' if high[0] == 'le' else 'less than'} {_num(high[1])}")
    return "is out of range: accepted values are " + " and ".join(parts)


_TYPE_NAMES = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "string": "a string",
    "list": "a list",
    "dict": "a mapping of keys to values",
    "model": "a mapping of keys to values",
    "model_attributes": "a mapping of keys to values",
}


def explain(err: Any, file: Path) -> str:
    """One line for one pydantic error: where it came from, the key, the value, what is accepted."""
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    env_var = _env_var_for(loc)
    value = err.get("input")
    shown = value if env_var is not None and isinstance(value, str) else repr(value)
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        model = _model_at(loc)
        accepted = ", ".join(model.model_fields) if model is not None else "none"
        what = "section" if len(loc) == 1 else "key"
        problem = f"unknown {what}; accepted {what}s: {accepted}"
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        problem = f"{shown} {_range_text(_bounds(loc, ctx))}"
    elif kind == "literal_error":
        problem = f"{shown} is not one of: {ctx.get('expected', '')}".rstrip()
    elif kind == "missing":
        problem = "is required"
    elif kind == "value_error":
        problem = err["msg"].removeprefix("Value error, ")
    else:
        base = kind.removesuffix("_parsing").removesuffix("_type").removesuffix("_from_float")
        expected = _TYPE_NAMES.get(base)
        if expected is not None:
            problem = f"{shown} is not {expected} (got {type(value).__name__})"
        elif "min_length" in ctx or "max_length" in ctx:
            problem = f"{shown} has the wrong length: {err['msg'].lower()}"
        else:
            problem = f"{shown} is not accepted: {err['msg']}"
    where = f"environment variable {env_var}" if env_var is not None else str(file)
    return f"{where}: {key}: {problem}"


def explain_env_parse_error(exc: SettingsError) -> list[str]:
    """pydantic-settings could not parse a complex (JSON) value from the environment."""
    lines = []
    for name in sorted(os.environ):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        raw = os.environ[name]
        try:
            json.loads(raw)
        except ValueError:
            path = name[len(ENV_PREFIX) :].lower().split(ENV_DELIMITER)
            model = _model_at(tuple(path))
            info = model.model_fields.get(path[-1]) if model is not None else None
            if info is None or info.annotation in (str, int, float, bool):
                continue
            lines.append(
                f"environment variable {name}: {'.'.join(path)}: {raw} is not valid JSON "
                "(sections, lists and mappings are given as JSON, e.g. '[\"orchestrator\"]' or "
                "'{\"gap_analyzer\": 0.5}')"
            )
    return lines or [f"environment: {exc}"]
