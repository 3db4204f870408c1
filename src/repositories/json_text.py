"""The JSON text every store writes for ``attributes`` and ``events``: one policy for all backends.

It never raises (NaN/infinity, non-string keys, cycles, deep nesting, odd objects are converted),
so one odd value never costs a row, and a value reads back the same from every backend.
"""

from __future__ import annotations

import json
import math
from datetime import date, datetime, time
from decimal import Decimal
from json.encoder import c_make_encoder as _c_make_encoder  # type: ignore[attr-defined]
from json.encoder import encode_basestring_ascii as _encode_str  # type: ignore[attr-defined]
from typing import Final

from pydantic import BaseModel

__all__ = ["json_text", "safe_str"]


def _json_default(value: object) -> object:
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


def safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


_MAX_DEPTH: Final = 64


def _sanitize(value: object, ancestors: set[int], depth: int) -> object:
    """Slow path for what ``json.dumps`` refuses: NaN/inf, non-string keys, cycles, deep nesting."""
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
                    (k if isinstance(k, str) else safe_str(k)): _sanitize(v, ancestors, depth + 1)
                    for k, v in value.items()
                }
            return [_sanitize(v, ancestors, depth + 1) for v in value]
        finally:
            ancestors.discard(id(value))
    converted = _json_default(value)
    if isinstance(converted, str):
        return converted
    return _sanitize(converted, ancestors, depth + 1)


# Built once: json.dumps() with non-default options constructs a new encoder on every call.
_ENCODER: Final = json.JSONEncoder(default=_json_default, allow_nan=False, separators=(",", ":"))
_SAFE_ENCODER: Final = json.JSONEncoder(default=safe_str, allow_nan=False, separators=(",", ":"))
# The C encoder behind ``_ENCODER``, built once: ``encode()`` builds a new one on every call, a
# large part of the cost per row. Same output (ASCII escapes, compact separators, NaN refused,
# the same default); no cycle bookkeeping: a cycle ends in RecursionError and the slow path.
_C_ENCODE: Final = (
    _c_make_encoder(None, _json_default, _encode_str, None, ":", ",", False, False, False) if _c_make_encoder else None
)


def json_text(value: object, empty: str) -> str:
    """JSON text that never raises: the fast path handles almost everything, the slow path the rest.

    ``allow_nan=False`` matters: Python would otherwise write ``NaN``, which is not JSON and would
    make every ``json_extract`` over the table fail.
    """
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
        return _SAFE_ENCODER.encode(_sanitize(value, set(), 0))
