"""Secrets and size limits: every span passes through here before it reaches any sink.

Three jobs, done in one walk over a span's free-form data (attributes — which carry input,
output and metadata —, events, error message):

* **Secrets.** A value under a sensitive key (``password``, ``api_key``, ``Authorization``,
  ``OPENAI_API_KEY``, ``x-api-key``, ``db_password`` ... plus configured words) becomes
  ``[REDACTED]``. In every string, secret-looking substrings (provider API keys, bearer
  tokens, JWTs, AWS keys, PEM private keys, passwords in connection strings and in
  ``password=...`` text) are replaced and the rest of the string is kept, so a stack trace
  or a prompt stays readable.
* **Limits.** A string over ``max_value_bytes`` (UTF-8) is cut with a marker; a container
  stops growing once its estimated JSON size passes the same limit; a span whose estimated
  size passes ``max_span_bytes`` loses its largest values first, and says so in
  ``attributes["span_trimmed"]``.
* **Plain JSON.** bytes, datetimes, sets, tuples, Decimal, UUID, enums, dataclasses,
  pydantic models, arbitrary objects, NaN/±infinity, non-string keys, cycles and deep
  nesting become JSON values every sink accepts (SQLite ``json_valid``, Postgres ``jsonb``,
  which refuses NUL characters, Opik's REST schema).

It runs per span on the flusher thread, so it is built for speed: precompiled regexes, one per
family of secrets, each run only when a substring test says it could match (see below);
nothing at all for strings too short to hold a secret; caches of key decisions and of
already-redacted short strings (values repeat across spans); no JSON encoding to measure
sizes (they are estimated during the walk). ``benchmarks/bench_redaction.py`` measures it.

Log lines get the same treatment: :func:`install_log_redaction` scrubs every record logged
by the connector's packages, so an error that echoes a bad value never prints a secret.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

__all__ = [
    "REDACTED",
    "Redactor",
    "install_log_redaction",
    "is_sensitive_key",
    "redact_text",
]

REDACTED = "[REDACTED]"
#: Nothing shorter can hold any of the secret patterns below ("pwd=abcd" is 8).
MIN_SECRET_LEN = 8
MAX_DEPTH = 32
#: Regex work on a huge string is bounded: it is cut to the limit plus this margin first, so
#: a secret straddling the final cut is still seen whole and replaced.
_SCAN_MARGIN = 1024
_CACHED_TEXT_LEN = 256
_CACHE_ENTRIES = 8192

# --- sensitive keys ------------------------------------------------------------------------

#: Words that make a key sensitive wherever they appear in it ("db_password", "x-auth-token").
_SENSITIVE_WORDS = (
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "secret",
    "secrets",
    "token",
    "apikey",
    "authorization",
    "auth",
    "cookie",
    "cookies",
    "credential",
    "credentials",
    "privatekey",
    "accesskey",
    "secretkey",
    "jwt",
    "bearer",
)
#: Word sequences that are sensitive only together ("api_key", but not "api" or "key").
_SENSITIVE_PHRASES = (
    ("api", "key"),
    ("private", "key"),
    ("access", "key"),
    ("secret", "key"),
    ("client", "secret"),
    ("set", "cookie"),
    ("signing", "key"),
    ("encryption", "key"),
    ("session", "key"),
)
#: "token_count", "auth_type", "secret_name": a last word that describes the secret rather
#: than holding it. Only for single-word triggers; plural "tokens" never triggers at all.
_DESCRIPTOR_WORDS = frozenset(
    {
        "count",
        "counts",
        "usage",
        "limit",
        "limits",
        "type",
        "types",
        "budget",
        "estimate",
        "id",
        "ids",
        "index",
        "len",
        "length",
        "num",
        "number",
        "max",
        "min",
        "total",
        "used",
        "cost",
        "price",
        "rate",
        "method",
        "mode",
        "provider",
        "scheme",
        "url",
        "uri",
        "endpoint",
        "enabled",
        "required",
        "present",
        "expires",
        "expiry",
        "expiration",
        "ttl",
        "name",
        "names",
        "field",
        "fields",
        "policy",
        "version",
    }
)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NON_ALNUM = re.compile(r"[^A-Za-z0-9]+")


def _key_words(key: str) -> list[str]:
    return [w for w in _NON_ALNUM.split(_CAMEL.sub("_", key).lower()) if w]


def _phrases(extra: Iterable[str]) -> tuple[tuple[str, ...], ...]:
    found = [tuple(_key_words(k)) for k in extra]
    return tuple(p for p in found if p)


def is_sensitive_key(key: str, extra: Iterable[tuple[str, ...]] = ()) -> bool:
    """Whether values under ``key`` are secrets (case- and separator-insensitive, camelCase aware)."""
    words = _key_words(key)
    if not words:
        return False
    joined = "_" + "_".join(words) + "_"
    for phrase in (*_SENSITIVE_PHRASES, *extra):
        if "_" + "_".join(phrase) + "_" in joined:
            return True
    triggers = [w for w in words if w in _SENSITIVE_WORDS_SET]
    if not triggers:
        return False
    # "auth_type", "token_count": a descriptor after the trigger names a property, not the value.
    return not (words[-1] in _DESCRIPTOR_WORDS and words[-1] not in triggers)


_SENSITIVE_WORDS_SET = frozenset(_SENSITIVE_WORDS)

# --- secret-looking text -------------------------------------------------------------------
# One regex per family of secrets, each run only when a cheap substring test says the family
# can be present: Python's regex engine tries every alternative at every position, so a single
# combined pattern cost ~8 µs on a 15-character model name and ~140 µs on a 500-character
# prompt, while a few ``in`` tests cost well under a microsecond. Every alternative has exactly
# one capturing group, the secret itself: ``match.lastindex`` says what to replace, and the
# text around it (a "Bearer " prefix, the user of a connection string, the key in
# "password=...") is kept.
_NOT_AFTER_WORD = r"(?<![A-Za-z0-9])"
_TOK = r"[A-Za-z0-9_\-]"

#: "password=...", "api_key: ...", '"secret": "..."', "aws_secret_access_key = ...", cookies.
_KV_RE = re.compile(
    r"(?i:(?<![a-z0-9])(?:set-)?cookie[\"']?\s{0,3}[:=]\s{0,3}[\"']?)(?!\[REDACTED\])([^\r\n\"']+)"
    r"|(?i:(?:password|passwd|pwd|passphrase|secret|token(?!s)|api[_\-]?key|access[_\-]?key|private[_\-]?key"
    r"|authorization|credentials?)[a-z0-9_\-]{0,24}[\"']?\s{0,3}[:=]\s{0,3}[\"']?(?:bearer\s+|basic\s+)?)"
    r"(?!\[REDACTED\])([^\s\"',;&})\]]+)"
)
#: The password of a URL: postgresql://user:PASSWORD@host (up to the authority's last '@').
_URL_RE = re.compile(r"://[^\s:/@]*:([^\s/@][^\s/]*)@")
#: PEM private key blocks, to the END line or to the end of a truncated string.
_PEM_RE = re.compile(r"(-----BEGIN[A-Z ]{0,30}PRIVATE KEY-----(?s:.*?)(?:-----END[A-Z ]{0,30}PRIVATE KEY-----|\Z))")
#: JSON Web Tokens: header.payload.signature, the header always starts with '{"' = "eyJ".
_JWT_RE = re.compile(rf"(?<![A-Za-z0-9_\-])(eyJ{_TOK}{{6,}}\.{_TOK}{{6,}}\.{_TOK}{{6,}})")
#: Bearer tokens; Basic credentials (base64 holding a digit, '=' or an inner capital: not prose).
_SCHEME_RE = re.compile(
    r"(?i:bearer)\s+(?!\[REDACTED\])([A-Za-z0-9\-._~+/]{8,}=*)"
    r"|Basic\s+((?=[A-Za-z0-9+/]*(?:[0-9=]|[a-z][A-Z]))[A-Za-z0-9+/]{8,}={0,2})"
)
#: OpenAI / Anthropic / DeepSeek "sk-..." keys (a digit is required, or "sk-learn-..." would go).
_SK_RE = re.compile(rf"{_NOT_AFTER_WORD}(sk-(?=[A-Za-z_\-]*[0-9]){_TOK}{{16,}})")
#: Stripe, GitHub, Hugging Face and npm tokens: all have an underscore after a fixed prefix.
_UNDERSCORE_RE = re.compile(
    rf"{_NOT_AFTER_WORD}((?:sk|rk)_(?:live|test)_[A-Za-z0-9]{{16,}}|whsec_[A-Za-z0-9]{{16,}}"
    r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}|hf_[A-Za-z0-9]{30,}|npm_[A-Za-z0-9]{30,})"
)
#: GitLab and Slack tokens.
_DASH_RE = re.compile(rf"{_NOT_AFTER_WORD}(glpat-{_TOK}{{20,}}|xox[abposr]-[A-Za-z0-9\-]{{10,}})")
#: AWS access key ids (long-term AKIA, temporary ASIA) and Google API keys.
_AWS_RE = re.compile(rf"{_NOT_AFTER_WORD}((?:AKIA|ASIA)[A-Z0-9]{{16}}(?![A-Za-z0-9])|AIza[0-9A-Za-z_\-]{{35}})")


def _replace(match: re.Match[str]) -> str:
    whole_start, whole_end = match.span()
    start, end = match.span(match.lastindex or 0)
    text = match.string
    return text[whole_start:start] + REDACTED + text[end:whole_end]


def redact_text(text: str) -> str:
    """``text`` with every secret-looking part replaced by ``[REDACTED]`` (the rest kept)."""
    if len(text) < MIN_SECRET_LEN:
        return text
    # Key/value first: "password=sk-..." is then one redaction, not two.
    if ":" in text or "=" in text:
        low = text.lower()
        if (
            "pass" in low
            or "pwd" in low
            or "secret" in low
            or "token" in low
            or "key" in low
            or "auth" in low
            or "credential" in low
            or "cookie" in low
        ):
            text = _KV_RE.sub(_replace, text)
        if "://" in text:
            text = _URL_RE.sub(_replace, text)
    if "-----BEGIN" in text:
        text = _PEM_RE.sub(_replace, text)
    if "eyJ" in text:
        text = _JWT_RE.sub(_replace, text)
    if "earer" in text or "EARER" in text or "Basic" in text:
        text = _SCHEME_RE.sub(_replace, text)
    if "sk-" in text:
        text = _SK_RE.sub(_replace, text)
    if "_" in text:
        text = _UNDERSCORE_RE.sub(_replace, text)
    if "glpat-" in text or "xox" in text:
        text = _DASH_RE.sub(_replace, text)
    if "AKIA" in text or "ASIA" in text or "AIza" in text:
        text = _AWS_RE.sub(_replace, text)
    return text


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
        self._extra_phrases = _phrases(extra_keys)
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
            return value, 12
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
                out[key] = item
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
                cleaned, item_size = item, 8
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
        for name in ("error_type", "operation_type", "llm_model"):
            value = fields.get(name)
            if type(value) is str and len(value) >= MIN_SECRET_LEN:
                fields[name] = self.text(value)
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


# --- log lines -----------------------------------------------------------------------------

_LOG_PREFIXES = ("src.agents.ml_foundation.observability_connector", "src.mlops", "src.repositories")
_installed = False


def install_log_redaction(prefixes: Iterable[str] = _LOG_PREFIXES) -> None:
    """Scrub secrets from every log record of the connector's packages (idempotent).

    A record factory rather than a handler filter: handlers belong to the application, and a
    filter on a logger does not see its children's records. Records of other libraries are
    left alone, and a record without a secret is left exactly as it was.
    """
    global _installed
    if _installed:
        return
    _installed = True
    names = tuple(prefixes)
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        name = record.name  # None from logging.makeLogRecord()
        if isinstance(name, str) and name.startswith(names):
            _scrub(record)
        return record

    logging.setLogRecordFactory(factory)


def _scrub(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a bad format string is logging's problem to report, not ours
        return
    safe = redact_text(message)
    if safe != message:
        record.msg, record.args = safe, None
    if record.exc_info and not record.exc_text:
        text = logging.Formatter().formatException(record.exc_info)
        record.exc_text = redact_text(text)
