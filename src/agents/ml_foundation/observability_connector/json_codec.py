"""The one JSON module: every store, wire body and cache entry is encoded here.

Two policies, both never raising, so one odd value never costs a row, a batch or an answer:

* :func:`json_text` — the text every store writes for ``attributes`` and ``events``: ASCII
  escapes, compact separators, NaN/infinity as strings (Python would otherwise write ``NaN``,
  which is not JSON and makes every ``json_extract`` over the table fail), non-string keys as
  strings, cycles and deep nesting cut, odd objects made readable. A value therefore reads back
  the same from every backend. :func:`json_text_without_nul` is the same text for Postgres's
  ``jsonb``, which refuses ``\\u0000``.
* :func:`json_bytes` — compact UTF-8 bytes for wire bodies (Opik) and cache entries: orjson
  first (C speed, datetimes formatted in C as RFC 3339, UTC with a ``Z``, naive ones taken as
  UTC); what orjson refuses (an integer past 64 bits, a lone surrogate, a non-string key) goes
  through the standard encoder with the same datetime format, and what that refuses through the
  store policy.

:func:`loads` reads either back (orjson when installed).

Core layer: imports nothing of the package, so sinks and the pipeline can all use it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from decimal import Decimal
from json.encoder import c_make_encoder as _c_make_encoder  # type: ignore[attr-defined]
from json.encoder import encode_basestring_ascii as _encode_str  # type: ignore[attr-defined]
from typing import Any, Final

from pydantic import BaseModel

__all__ = ["json_bytes", "json_text", "json_text_without_nul", "loads", "safe_str"]

_MAX_DEPTH: Final = 64


def safe_str(value: object) -> str:
    """``str(value)``, or a placeholder naming its type when its ``__str__`` raises."""
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _readable(value: object) -> object:
    """Make common non-JSON values readable instead of failing the row (``str`` as last resort)."""
    if isinstance(value, Decimal):
        return float(value) if value.is_finite() else str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return list(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, BaseModel):
        try:
            return value.model_dump(mode="json")
        except Exception:
            pass
    return safe_str(value)


def _sanitize(value: object, default: Callable[[object], object], ancestors: set[int], depth: int) -> object:
    """Slow path for what the encoder refuses: NaN/inf, non-string keys, cycles, deep nesting."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth >= _MAX_DEPTH:
        return "<too deep>"
    if isinstance(value, dict | list | tuple):
        if id(value) in ancestors:
            return "<circular>"
        ancestors.add(id(value))
        try:
            if isinstance(value, dict):
                return {
                    (k if isinstance(k, str) else safe_str(k)): _sanitize(v, default, ancestors, depth + 1)
                    for k, v in value.items()
                }
            return [_sanitize(v, default, ancestors, depth + 1) for v in value]
        finally:
            ancestors.discard(id(value))
    converted = default(value)
    if isinstance(converted, str):
        return converted
    return _sanitize(converted, default, ancestors, depth + 1)


# Built once: json.dumps() with non-default options constructs a new encoder on every call.
_ENCODER: Final = json.JSONEncoder(default=_readable, allow_nan=False, separators=(",", ":"))
_SAFE_ENCODER: Final = json.JSONEncoder(default=safe_str, allow_nan=False, separators=(",", ":"))
# The C encoder behind ``_ENCODER``, built once: ``encode()`` builds a new one on every call, a
# large part of the cost per row. Same output (ASCII escapes, compact separators, NaN refused,
# the same default); no cycle bookkeeping: a cycle ends in RecursionError and the slow path.
_C_ENCODE: Final = (
    _c_make_encoder(None, _readable, _encode_str, None, ":", ",", False, False, False) if _c_make_encoder else None
)


def json_text(value: object, empty: str) -> str:
    """The stores' JSON text for ``value`` (``empty`` for None); never raises."""
    if value is None:
        return empty
    kind = value.__class__
    try:
        if kind is dict or kind is list:
            if not value:  # events are usually []
                return "[]" if kind is list else "{}"
            if _C_ENCODE is not None:
                return "".join(_C_ENCODE(value, 0))
        return _ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError):
        return _SAFE_ENCODER.encode(_sanitize(value, _readable, set(), 0))


def _strip_nul(value: object) -> object:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_strip_nul(k): _strip_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_nul(v) for v in value]
    return value


def json_text_without_nul(value: object, empty: str) -> str:
    """:func:`json_text` with NUL characters replaced by U+FFFD (``jsonb`` refuses ``\\u0000``)."""
    text = json_text(value, empty)
    # Only then pay for a second pass: the escape is rare, the check cheap.
    if "\\u0000" in text:
        text = json_text(_strip_nul(json.loads(text)), empty)
    return text


def _rfc3339(value: datetime) -> str:
    """What orjson's ``OPT_UTC_Z | OPT_NAIVE_UTC`` writes: naive values as UTC, UTC with a ``Z``."""
    text = (value.replace(tzinfo=UTC) if value.tzinfo is None else value).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _wire_default(value: object) -> object:
    if isinstance(value, datetime):
        return _rfc3339(value)
    return _readable(value)


_WIRE_ENCODER: Final = json.JSONEncoder(default=_wire_default, allow_nan=False, separators=(",", ":"))

_orjson_dumps: Callable[..., bytes] | None
loads: Callable[[str | bytes], Any]
try:
    import orjson

    _ORJSON_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC
    _orjson_dumps = orjson.dumps
    loads = orjson.loads
except ImportError:  # pragma: no cover - a required dependency; the same JSON either way, slower
    _ORJSON_OPTIONS = 0
    _orjson_dumps = None
    loads = json.loads


def json_bytes(value: object) -> bytes:
    """Compact JSON bytes for a wire body or a cache entry; never raises."""
    if _orjson_dumps is not None:
        try:
            return _orjson_dumps(value, option=_ORJSON_OPTIONS)
        except (TypeError, ValueError):
            pass
    try:
        return _WIRE_ENCODER.encode(value).encode()
    except (TypeError, ValueError, RecursionError):
        return _SAFE_ENCODER.encode(_sanitize(value, _wire_default, set(), 0)).encode()
