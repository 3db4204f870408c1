"""The rules a value must satisfy to be stored, and the words a rejection is explained in.

Each span is judged alone, before any sink sees it, by the limits here: ids, names and labels
(patterns checked inside pydantic-core), strict numbers, times that stay in range. Shared by the
event model (``events``), the span emitter's path for our own spans, and anything that checks
one value (``check_id`` / ``check_name`` / ``check_label``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    Strict,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

from .constants import MAX_DURATION_MS, MAX_INT4, MAX_TIME_NS

#: ``timeout`` is its own value, not a kind of ``error``: the host's metrics count it apart
#: (``status_distribution``) and leave it out of error rates.
SpanStatus = Literal["ok", "error", "timeout", "started"]

#: Every spelling existing callers use, mapped onto the four stored values.
STATUS_ALIASES: dict[str, SpanStatus] = {
    "ok": "ok",
    "completed": "ok",
    "complete": "ok",
    "success": "ok",
    "succeeded": "ok",
    "error": "error",
    "failed": "error",
    "failure": "error",
    "timeout": "timeout",
    "timed_out": "timeout",
    "timed-out": "timeout",
    "timedout": "timeout",
    "time_out": "timeout",
    "started": "started",
    "running": "started",
    "in_progress": "started",
}

MAX_ID_LENGTH = 64
#: What an event without an agent or operation name is stored under.
UNKNOWN = "unknown"

# -- what a value must be to be stored honestly ------------------------------------------------
# Each span is judged alone, before any sink sees it: a value outside these limits rejects that
# span with a reason (the rest of its batch goes on), where it would otherwise make a datetime
# overflow, a database refuse the row or a metric lie.

#: Ids (``span_id``, ``trace_id``, ``parent_span_id``): 1-64 visible ASCII characters ("!" to
#: "~"). That takes every id callers send (W3C hex, UUIDs, "span_123", "run-<uuid>") and refuses
#: spaces, control characters, NUL and look-alike Unicode: ids end up in headers, URLs and logs.
ID_PATTERN = r"^[!-~]+\z"  # with 1 to 64 characters (the length constraints)
_PARENT_PATTERN = r"^[!-~]*\z"  # "" is taken as "no parent"
_ID_CHARS = re.compile(r"[!-~]{1,64}")  # the same rule for Python code (fullmatch)
#: Names (``agent_name``, ``operation``): 1-64 printable characters, surrounding whitespace
#: removed. Printable as ``str.isprintable`` means it: no control, format, surrogate or
#: separator characters but the plain space. Unknown agent names are fine (the unknown tier).
NAME_PATTERN = r"^(?:[^\p{C}\p{Z}]|\x20)+\z"
MAX_NAME_LENGTH = 64
#: Labels (``model_used``, ``error_type``): at most 256 printable characters, kept as sent. A NUL
#: or a lone surrogate there is refused by Postgres or SQLite; control characters are garbage.
LABEL_PATTERN = r"^(?:[^\p{C}\p{Z}]|\x20)*\z"
MAX_LABEL_LENGTH = 256
MIN_INT4 = -(2**31)
#: Span times lie between the epoch and 2262-04-11, where signed 64-bit nanoseconds since the
#: epoch end: the range of ``Span.start_ns`` and of OTLP/Opik timestamps, well inside every
#: store's range and far enough from year 9999 that adding a duration can never overflow.
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = MIN_TIME + timedelta(microseconds=MAX_TIME_NS // 1000)  # 2262-04-11T00:00:00Z
MIN_TIME_NS = 0
_MAX_DURATION = timedelta(milliseconds=MAX_DURATION_MS)
_LATEST_START = MAX_TIME - _MAX_DURATION  # no span starting earlier can end past MAX_TIME

# Checked by pydantic-core itself (patterns, strict numbers): no Python call per field, and
# describe_validation_error turns its messages into the rules' own words.
EventId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)]
ParentId = Annotated[str, StringConstraints(max_length=MAX_ID_LENGTH, pattern=_PARENT_PATTERN)]
Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN)
]
Label = Annotated[str, StringConstraints(max_length=MAX_LABEL_LENGTH, pattern=LABEL_PATTERN)]
#: Strict numbers: ``"10"`` tokens are not 10, ``True`` is not 1, ``"high"`` is no confidence.
Tokens = Annotated[int, Strict(), Field(ge=0, le=MAX_INT4)]
DurationMs = Annotated[float, Strict(), Field(ge=0, le=MAX_DURATION_MS, allow_inf_nan=False)]
Confidence = Annotated[float, Strict(), Field(ge=0, le=1, allow_inf_nan=False)]
Tier = Annotated[int, Strict(), Field(ge=MIN_INT4, le=MAX_INT4)]

# The same rules for code that checks one value (the span_emitter's fast path, callers).
_ID_RULE: TypeAdapter[str] = TypeAdapter(EventId)
_NAME_RULE: TypeAdapter[str] = TypeAdapter(Name)
_LABEL_RULE: TypeAdapter[str] = TypeAdapter(Label)

_RULES = {  # pattern: (what the value must be, its length limit)
    ID_PATTERN: ("1-64 visible ASCII characters (letters, digits, punctuation): no spaces, control "
                 "characters or other Unicode", MAX_ID_LENGTH),
    _PARENT_PATTERN: ("at most 64 visible ASCII characters (letters, digits, punctuation): no spaces, "
                      "control characters or other Unicode", MAX_ID_LENGTH),
    NAME_PATTERN: ("1-64 printable characters: no control characters, tabs, line breaks or NUL", MAX_NAME_LENGTH),
    LABEL_PATTERN: ("at most 256 printable characters: no control characters, tabs, line breaks or NUL",
                    MAX_LABEL_LENGTH),
}  # fmt: skip


def check_id(value: object) -> str:
    """``value`` if it is an id by the rule of ``span_id`` / ``trace_id``, else ValueError saying why."""
    return _check(_ID_RULE, value)


def check_name(value: object) -> str:
    """The name ``value`` stands for (surrounding whitespace removed) by the rule of ``agent_name``
    and ``operation``, else ValueError saying why."""
    return _check(_NAME_RULE, value)


def check_label(value: object) -> str:
    """``value`` if it is a label by the rule of ``model_used`` / ``error_type``, else ValueError."""
    return _check(_LABEL_RULE, value)


def _check(rule: TypeAdapter[str], value: object) -> str:
    try:
        return rule.validate_python(value)
    except ValidationError as exc:
        raise ValueError(_message(exc.errors(include_url=False)[0])) from None


def _rule_message(pattern: str, value: object) -> str:
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    rule, limit = _RULES[pattern]
    if not value.strip() and pattern in (ID_PATTERN, NAME_PATTERN):
        return "must not be empty or blank"
    length = len(value if pattern in (ID_PATTERN, _PARENT_PATTERN) else value.strip())
    if length > limit:
        return f"is {length:,} characters long; at most {limit} are accepted"
    return f"must be {rule}"


def normalize_status(value: object) -> SpanStatus:
    """Map any accepted status spelling to ``ok`` / ``error`` / ``timeout`` / ``started``."""
    if isinstance(value, str):
        found = STATUS_ALIASES.get(value.strip().lower())
        if found is not None:
            return found
    accepted = ", ".join(sorted(STATUS_ALIASES))
    raise ValueError(f"status {value!r} is not one of: {accepted}")


def _aware(value: datetime) -> datetime:
    """Naive timestamps are taken as UTC: every producer in the system logs UTC."""
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+14:00 is in year 0 in UTC
        raise ValueError(f"{value.isoformat()} is outside the range of dates in UTC") from None


def describe_validation_error(exc: ValidationError | list[Any], payload: object) -> str:
    """One readable line per problem: field path, message and the offending value (each quoted
    value at most 80 characters); ``exc`` may also be a list of its ``errors()``."""
    parts = []
    for err in exc if isinstance(exc, list) else exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "event"
        parts.append(f"{loc}: {_message(err)} (got {_shown(err.get('input'))})")
    span_id = payload.get("span_id") if isinstance(payload, dict) else None
    prefix = f"span_id={_shown(span_id)}: " if span_id else ""
    return prefix + "; ".join(parts)


def _message(err: Any) -> str:
    """pydantic's message, in the words of the rule it enforces where pydantic's would only quote
    a regular expression or a bare limit."""
    kind = err["type"]
    if kind == "string_pattern_mismatch":
        pattern = (err.get("ctx") or {}).get("pattern")
        if pattern in _RULES:
            return _rule_message(pattern, err.get("input"))
    elif kind == "string_too_long" and isinstance(err.get("input"), str):
        limit = (err.get("ctx") or {}).get("max_length")
        return f"is {len(err['input']):,} characters long; at most {limit} are accepted"
    elif kind == "string_too_short":
        return "must not be empty or blank"
    elif kind == "string_unicode":
        return "holds a lone surrogate: not valid Unicode text"
    elif kind == "less_than_equal" and tuple(err["loc"]) == ("duration_ms",):
        return (
            f"is over {MAX_DURATION_MS // 86_400_000} days ({MAX_DURATION_MS} ms), the longest span accepted "
            "(a duration in nanoseconds or microseconds given as milliseconds?)"
        )
    return str(err["msg"]).removeprefix("Value error, ")


def _shown(value: object) -> str:
    try:
        shown = repr(value[:100] if type(value) is str else value)
    except Exception:  # an object whose repr raises is still described
        shown = f"<{type(value).__name__}>"
    return shown if len(shown) <= 80 else shown[:77] + "..."
