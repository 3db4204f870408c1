"""Secrets and size limits: every span passes through here before it reaches any sink.

Three jobs, done in one walk over a span's free-form data (attributes — which carry input,
output and metadata —, events, error message):

* **Secrets.** A value under a sensitive key becomes ``[REDACTED]`` (which keys:
  :mod:`secret_keys`, plus configured words and patterns). In every string, secret-looking
  parts are replaced and the rest is kept (which formats: :mod:`secret_text`). A string
  holding a JSON object or array is walked as data and stays a string.
* **Limits.** A string over ``max_value_bytes`` (UTF-8) is cut with a marker; a container
  stops growing once its estimated JSON size passes the same limit; a span whose estimated
  size passes ``max_span_bytes`` loses its largest values first, and says so in
  ``attributes["span_trimmed"]``.
* **Plain JSON.** bytes, datetimes, sets, tuples, Decimal, UUID, enums, dataclasses,
  pydantic models, arbitrary objects, NaN/±infinity, non-string keys, cycles and deep
  nesting become JSON values every sink accepts (SQLite ``json_valid``, Postgres ``jsonb``,
  which refuses NUL characters, Opik's REST schema).

It runs per span on the flusher thread, so it is built for speed: precompiled regexes, one per
family of secrets, each run only where a cheap test says it could match (see
:mod:`secret_text`); nothing at all for strings too short to hold a secret; caches of key decisions
and of already-redacted short strings (values repeat across spans); no JSON encoding to
measure sizes (they are estimated during the walk). ``benchmarks/bench_redaction.py``
measures it.

Log lines get the same treatment (:mod:`log_redaction`). The names of those three modules are
also importable from here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

from .log_redaction import THIRD_PARTY_LOGGERS, RedactingFilter, install_log_redaction, redact_url
from .secret_keys import is_sensitive_key, key_phrases
from .secret_text import CARD_MIN, MIN_SECRET_LEN, REDACTED, card_int, redact_text

__all__ = [
    "MIN_SECRET_LEN",
    "REDACTED",
    "THIRD_PARTY_LOGGERS",
    "RedactingFilter",
    "Redactor",
    "install_log_redaction",
    "is_sensitive_key",
    "redact_text",
    "redact_url",
]

MAX_DEPTH = 32
#: Regex work on a huge string is bounded: it is cut to the limit plus this margin first, so
#: a secret straddling the final cut is still seen whole and replaced.
_SCAN_MARGIN = 1024
_CACHED_TEXT_LEN = 256
_CACHE_ENTRIES = 8192
#: First characters of a string that may hold a JSON object or array (see Redactor._json_text).
_JSON_OPENERS = frozenset("{[ \t\r\n")


# --- the walk ------------------------------------------------------------------------------


def _float(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")


class Redactor:
    """Applies the redaction policy; one instance per configuration, shared by every batch.

    ``enabled=False`` turns secret redaction off, never the JSON conversion or the limits:
    the sinks need those whatever the policy.
    """

    def __init__(
        self,
        extra_keys: Iterable[str] = (),
        extra_patterns: Iterable[str] = (),
        max_value_bytes: int = 32_768,
        max_span_bytes: int = 262_144,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.max_value_bytes = max_value_bytes
        self.max_span_bytes = max_span_bytes
        self._extra_phrases = key_phrases(extra_keys)
        self._extra_re = re.compile("|".join(f"(?:{p})" for p in extra_patterns)) if extra_patterns else None
        self._key_cache: dict[str, tuple[str, bool]] = {}
        # Values repeat across spans (model names, regions, statuses): redact each once.
        self._text_cache: dict[str, str] = {}

    # -- strings --------------------------------------------------------------------------

    def text(self, value: str) -> str:
        """A string made safe: NUL-free, valid UTF-8, secrets replaced, at most ``max_value_bytes``."""
        cacheable = len(value) <= _CACHED_TEXT_LEN
        if cacheable:
            found = self._text_cache.get(value)
            if found is not None:
                return found
        original = value
        if "\x00" in value:  # Postgres text and jsonb refuse NUL
            value = value.replace("\x00", "\ufffd")
        limit = self.max_value_bytes
        cut = len(value) > limit + _SCAN_MARGIN
        if cut:
            value = value[: limit + _SCAN_MARGIN]
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates: no sink can store them
                value = value.encode("utf-8", "replace").decode("utf-8")
        if self.enabled and len(value) >= MIN_SECRET_LEN:
            decoded = self._json_text(value) if not cut and value[0] in _JSON_OPENERS else None
            if decoded is not None:
                value = decoded
            else:
                value = redact_text(value)
                if self._extra_re is not None:
                    value = self._extra_re.sub(REDACTED, value)
        if cut or len(value) > limit // 4:
            value = self._cap(value, cut)
        if cacheable:
            cache = self._text_cache
            if len(cache) >= _CACHE_ENTRIES:
                cache.clear()
            cache[original] = value
        return value

    def _json_text(self, value: str) -> str | None:
        """A string holding a JSON object or array, redacted as data and kept a string.

        A tool result or a request body often arrives serialised: walked as data, its keys
        count ("password" as a key, whatever its value looks like) and a value with spaces is
        replaced whole, which the text patterns cannot promise. Unchanged JSON keeps its exact
        text; changed JSON is written back compactly. None: not JSON, the text patterns apply.
        Nesting (JSON in a string in JSON) is bounded by size: every level escapes the next.
        """
        end = value.rstrip()[-1:]
        if not end or end not in "}]" or value.lstrip()[:1] not in ("{", "["):
            return None
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            return None
        if type(parsed) is not dict and type(parsed) is not list:
            return None
        cleaned, _ = self._clean(parsed, 1, set())
        if cleaned == parsed:
            return value
        return json.dumps(cleaned, ensure_ascii=False, separators=(",", ":"))

    def _cap(self, value: str, already_cut: bool) -> str:
        data = value.encode("utf-8")
        limit = self.max_value_bytes
        if len(data) <= limit and not already_cut:
            return value
        kept = data[:limit].decode("utf-8", "ignore")
        return f"{kept}…[truncated: over {limit} bytes]"

    def _key(self, key: Any) -> tuple[str, bool]:
        """(the key as a JSON string, whether its value is a secret); cached: keys repeat."""
        is_str = type(key) is str
        if is_str:
            found = self._key_cache.get(key)
            if found is not None:
                return found
            text = key
        elif key is None:
            text = "null"
        elif isinstance(key, bool):
            text = "true" if key else "false"
        elif isinstance(key, float):
            text = str(_float(key))
        elif isinstance(key, (int, str)):
            text = str(key)
        else:
            text = self._repr(key)
        safe = self.text(text)
        sensitive = self.enabled and (safe != text or is_sensitive_key(text, self._extra_phrases))
        result = (safe, sensitive)
        if is_str:
            if len(self._key_cache) >= _CACHE_ENTRIES:
                self._key_cache.clear()
            self._key_cache[key] = result
        return result

    @staticmethod
    def _repr(value: Any) -> str:
        try:
            return repr(value)
        except Exception:  # a broken __repr__ must not cost the span
            return f"<{type(value).__name__}>"

    # -- values -----------------------------------------------------------------------------

    def clean(self, value: Any) -> Any:
        """``value`` as plain, redacted, size-limited JSON data (a new object; the input is not touched)."""
        return self._clean(value, 0, set())[0]

    def _clean(self, value: Any, depth: int, active: set[int]) -> tuple[Any, int]:
        kind = type(value)
        if kind is str:
            if len(value) < MIN_SECRET_LEN and "\x00" not in value:
                return value, len(value) + 2
            safe = self.text(value)
            return safe, (len(safe) if safe.isascii() else len(safe.encode("utf-8", "replace"))) + 2
        if value is None or kind is bool:
            return value, 5
        if kind is int:
            return (value if value < CARD_MIN or not self.enabled else card_int(value)), 12
        if kind is float:
            return _float(value), 12
        if kind is dict:
            return self._mapping(value, depth, active)
        if kind is list or kind is tuple:
            return self._sequence(value, depth, active)
        return self._other(value, depth, active)

    def _mapping(
        self,
        value: Mapping[Any, Any],
        depth: int,
        active: set[int],
        sizes: dict[str, int] | None = None,
    ) -> tuple[Any, int]:
        """A dict, cleaned. With ``sizes`` (the span's top level) each value's size is recorded
        there and nothing is cut here: the span-level limit decides what goes."""
        if depth >= MAX_DEPTH:
            return "[max depth exceeded]", 22
        ident = id(value)
        if ident in active:
            return "[circular reference]", 22
        if type(value) is dict:
            items: Any = value.items()
        else:
            try:
                items = list(value.items())
            except Exception:  # a Mapping whose items() raises
                return self._text_of(value)
        active.add(ident)
        out: dict[str, Any] = {}
        size = 2
        limit = self.max_value_bytes if sizes is None else None
        key_cache = self._key_cache
        text_cache = self._text_cache
        enabled = self.enabled
        count = len(items)
        # The common leaves (short or already-seen strings, ints, None) are handled inline:
        # a method call per leaf was most of the cost of a typical span.
        for index, (raw_key, item) in enumerate(items):
            found = key_cache.get(raw_key) if type(raw_key) is str else None
            key, sensitive = found if found is not None else self._key(raw_key)
            if key is not raw_key and key in out:  # 1 and "1" both became "1": keep both
                key = f"{key} ({type(raw_key).__name__})"
            kind = type(item)
            if sensitive and enabled and item is not None and kind is not bool and item != "":
                out[key] = REDACTED
                item_size = 12
            elif kind is str:
                if len(item) < MIN_SECRET_LEN and "\x00" not in item:
                    safe = item
                else:
                    safe = text_cache.get(item) or self.text(item)
                out[key] = safe
                item_size = len(safe) + 2
            elif kind is int or kind is bool or item is None:
                out[key] = item if item is None or item < CARD_MIN or not enabled else card_int(item)
                item_size = 8
            elif kind is dict:
                out[key], item_size = self._mapping(item, depth + 1, active)
            elif kind is list:
                out[key], item_size = self._sequence(item, depth + 1, active)
            else:
                out[key], item_size = self._clean(item, depth + 1, active)
            item_size += len(key) + 4
            size += item_size
            if sizes is not None:
                sizes[key] = item_size
            elif size > limit and index + 1 < count:  # type: ignore[operator]
                out["…"] = f"[truncated: {count - index - 1} more keys, over {limit} bytes]"
                size += 60
                break
        active.discard(ident)
        return out, size

    def _sequence(self, value: Iterable[Any], depth: int, active: set[int]) -> tuple[Any, int]:
        if depth >= MAX_DEPTH:
            return "[max depth exceeded]", 22
        ident = id(value)
        if ident in active:
            return "[circular reference]", 22
        active.add(ident)
        items = value if isinstance(value, (list, tuple)) else list(value)
        out: list[Any] = []
        size = 2
        limit = self.max_value_bytes
        count = len(items)
        text_cache = self._text_cache
        for index, item in enumerate(items):
            kind = type(item)
            if kind is int or kind is bool or item is None:
                cleaned = item if item is None or item < CARD_MIN or not self.enabled else card_int(item)
                item_size = 8
            elif kind is str:
                if len(item) < MIN_SECRET_LEN and "\x00" not in item:
                    cleaned = item
                else:
                    cleaned = text_cache.get(item) or self.text(item)
                item_size = len(cleaned) + 2
            elif kind is dict:
                cleaned, item_size = self._mapping(item, depth + 1, active)
            else:
                cleaned, item_size = self._clean(item, depth + 1, active)
            out.append(cleaned)
            size += item_size + 1
            if size > limit and index + 1 < count:
                out.append(f"[truncated: {count - index - 1} more items, over {limit} bytes]")
                size += 60
                break
        active.discard(ident)
        return out, size

    def _text_of(self, value: Any) -> tuple[str, int]:
        return self._clean(self._repr(value), 0, set())

    def _other(self, value: Any, depth: int, active: set[int]) -> tuple[Any, int]:
        """Everything that is not already JSON: convert to the closest JSON value."""
        if isinstance(value, str):
            return self._clean(str.__str__(value), depth, active)
        if isinstance(value, bool):
            return bool(value), 5
        if isinstance(value, Enum):
            return self._clean(value.value, depth, active)
        if isinstance(value, int):
            return int(value), 12
        if isinstance(value, float):
            return _float(float(value)), 12
        if isinstance(value, (bytes, bytearray, memoryview)):
            raw = bytes(value)
            try:
                return self._clean(raw.decode("utf-8"), depth, active)
            except UnicodeDecodeError:
                return f"<{len(raw)} bytes of binary data>", 40
        if isinstance(value, (datetime, date, time)):
            return value.isoformat(), 34
        if isinstance(value, timedelta):
            return value.total_seconds(), 12
        if isinstance(value, Decimal):
            if value.is_nan():
                return "NaN", 5
            if value.is_infinite():
                return ("Infinity" if value > 0 else "-Infinity"), 10
            number = float(value)
            # Beyond float range: the exact digits as text rather than a made-up infinity.
            return (number, 12) if math.isfinite(number) else (str(value), len(str(value)) + 2)
        if isinstance(value, UUID):
            return str(value), 38
        if isinstance(value, Mapping):
            return self._mapping(value, depth, active)
        if isinstance(value, (set, frozenset)):
            try:
                ordered: list[Any] = sorted(value)  # one order in every process: replays compare equal
            except TypeError:
                ordered = list(value)
            return self._sequence(ordered, depth, active)
        if isinstance(value, (list, tuple)) or type(value).__name__ == "deque":
            return self._sequence(list(value), depth, active)
        if isinstance(value, BaseException):
            return self._clean(f"{type(value).__name__}: {value}", depth, active)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = {f.name: getattr(value, f.name, None) for f in dataclasses.fields(value)}
            return self._mapping(fields, depth, active)
        dump = getattr(value, "model_dump", None)  # pydantic models
        if callable(dump) and not isinstance(value, type):
            try:
                dumped = dump()
            except Exception:
                dumped = None
            if isinstance(dumped, dict):
                return self._mapping(dumped, depth, active)
        return self._text_of(value)

    # -- spans ------------------------------------------------------------------------------

    def redact_span(self, span: Any) -> Any:
        """Redact, convert and limit one ``ObservabilitySpan`` in place (it is ours: just built)."""
        fields = span.__dict__
        active: set[int] = set()
        attributes, attribute_sizes = self._top_level(fields.get("attributes") or {}, active)
        events, events_size = self._sequence(fields.get("events") or [], 0, active)
        if type(events) is not list:
            events = [{"name": "events", "attributes": {"value": events}}]
        message = fields.get("error_message")
        message_size = 0
        if message is not None:
            message = self.text(message if type(message) is str else self._repr(message))
            message_size = len(message)
        for name in ("error_type", "operation_type", "llm_model", "thread_id", "user_id"):
            value = fields.get(name)
            if type(value) is str and len(value) >= MIN_SECRET_LEN:
                fields[name] = self.text(value)
        tags = fields.get("tags")
        if tags:
            fields["tags"] = [self.text(tag) if len(tag) >= MIN_SECRET_LEN else tag for tag in tags]
        total = sum(attribute_sizes.values()) + events_size + message_size + 512
        if total > self.max_span_bytes:
            events, message = self._trim(attributes, attribute_sizes, events, events_size, message, total)
        fields["attributes"] = attributes
        fields["events"] = events
        fields["error_message"] = message
        return span

    def _top_level(self, attributes: Any, active: set[int]) -> tuple[dict[str, Any], dict[str, int]]:
        """The attributes dict, cleaned, with each top-level value's size (the trimming unit)."""
        sizes: dict[str, int] = {}
        if type(attributes) is not dict and not isinstance(attributes, Mapping):  # skip the ABC check for dicts
            attributes = {"attributes": attributes}
        out, _ = self._mapping(attributes, 0, active, sizes)
        if type(out) is not dict:  # a broken mapping came back as text
            out = {"attributes": out}
            sizes = {"attributes": len(str(out["attributes"]))}
        return out, sizes

    def _trim(
        self,
        attributes: dict[str, Any],
        sizes: dict[str, int],
        events: list[Any],
        events_size: int,
        message: str | None,
        total: int,
    ) -> tuple[list[Any], str | None]:
        """Replace the largest values until the span fits, and record what went."""
        candidates = [(size, "attributes." + key) for key, size in sizes.items()]
        candidates.append((events_size, "events"))
        if message:
            candidates.append((len(message), "error_message"))
        candidates.sort(reverse=True)
        trimmed: list[str] = []
        original = total
        for size, name in candidates:
            if total <= self.max_span_bytes:
                break
            marker = f"[trimmed: about {size} bytes, span over {self.max_span_bytes} bytes]"
            if name == "events":
                events = [{"name": "events_trimmed", "attributes": {"note": marker, "count": len(events)}}]
            elif name == "error_message":
                message = message[:1024] + "…" + marker if message else message
            else:
                attributes[name.removeprefix("attributes.")] = marker
            total -= size - len(marker)
            trimmed.append(name)
        attributes["span_trimmed"] = {
            "original_bytes": original,
            "limit_bytes": self.max_span_bytes,
            "trimmed": trimmed,
        }
        return events, message
