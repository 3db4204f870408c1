"""W3C Trace Context: ids, ``traceparent`` / ``tracestate`` headers, and the current span.

Ids come from ``random.getrandbits`` rather than ``os.urandom`` (what ``uuid4`` reads):
the syscall releases the GIL, and on a busy process the caller then queues behind other
threads for it, which the caller then pays on every span. Trace ids are UUIDv7
laid out as 32 hex digits, so the same value is a valid W3C trace id and a valid Opik id.

Parsing follows the W3C Trace Context Recommendation, section by section:
``traceparent`` version 00 is exactly 55 characters; a higher version is parsed leniently
(anything after the flags, introduced by ``-``, is ignored); ``ff`` is never valid; ids are
lowercase hex and never all zero. ``tracestate`` follows the Recommendation as amended in
June 2026 (see :func:`parse_tracestate` for the key rule and for duplicated keys); an invalid
``tracestate`` is dropped on its own, an invalid ``traceparent`` means "start a new trace".
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, MutableMapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from random import getrandbits
from typing import Any, Protocol

__all__ = [
    "ObservabilityContext",
    "ParentLike",
    "TraceContext",
    "attach",
    "current_parent",
    "extract",
    "format_traceparent",
    "format_tracestate",
    "inject",
    "new_span_id",
    "new_trace_id",
    "parse_traceparent",
    "parse_tracestate",
    "reset_current",
    "set_current",
    "span_parent_id",
]

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
BAGGAGE = "baggage"
MAX_TRACESTATE_MEMBERS = 32

_HEX32_ZERO = "0" * 32
_HEX16_ZERO = "0" * 16
_LOWER_HEX = frozenset("0123456789abcdef")

# key = ( lcalpha / DIGIT ) 0*255 ( keychar )
# keychar = lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@"
# One rule since the June 2026 amendment: it replaced the simple-key / multi-tenant-key
# (``tenant@system``) pair, so "@" is an ordinary keychar (see parse_tracestate).
# Always ``fullmatch``: with ``match`` + ``$`` a key or value ending in a line feed passed
# (``$`` matches before a final newline), and we would have re-sent it in a header.
_KEY_RE = re.compile(r"[a-z0-9][a-z0-9_\-*/@]{0,255}")
# value: 0*255(chr) nblk-chr; chr = %x20 / nblk-chr; nblk-chr = %x21-2B / %x2D-3C / %x3E-7E
_VALUE_RE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")


def new_trace_id() -> str:
    """A UUIDv7 as 32 lowercase hex digits: time-ordered, W3C-valid, Opik-valid."""
    ms = time.time_ns() // 1_000_000
    rand = getrandbits(74)
    value = (
        (ms & 0xFFFFFFFFFFFF) << 80
        | 0x7 << 76
        | (rand >> 62) << 64  # 12 bits rand_a
        | 0b10 << 62  # RFC 9562 variant
        | (rand & ((1 << 62) - 1))
    )
    return f"{value:032x}"


def new_span_id() -> str:
    """16 lowercase hex digits, never all zero.

    Zero (one chance in 2**64) maps to 1; forcing the low bit instead would make every id
    odd and throw away half of the id space.
    """
    return f"{getrandbits(64) or 1:016x}"


def _is_lower_hex(text: str, length: int) -> bool:
    return len(text) == length and _LOWER_HEX.issuperset(text)


def _is_w3c_id(text: object, length: int) -> bool:
    return isinstance(text, str) and _is_lower_hex(text, length) and text.count("0") != length


@dataclass(frozen=True, slots=True)
class TraceContext:
    """The propagated part of a span: who the parent is and whether the trace is sampled."""

    trace_id: str
    span_id: str
    sampled: bool = True
    tracestate: tuple[tuple[str, str], ...] = ()
    baggage: Mapping[str, str] = field(default_factory=dict)
    parent_span_id: str | None = None
    remote: bool = False

    @property
    def traceparent(self) -> str:
        return format_traceparent(self.trace_id, self.span_id, self.sampled)

    @classmethod
    def new_root(cls, sampled: bool = True) -> TraceContext:
        return cls(trace_id=new_trace_id(), span_id=new_span_id(), sampled=sampled)

    @property
    def conversation(self) -> Any:
        """The ``conversation.Conversation`` spans under this context inherit: from the baggage
        (``thread_id``, ``user_id``) a remote caller or a parent context carried; None without."""
        return _baggage_conversation(self.baggage)

    def child(self) -> TraceContext:
        return TraceContext(
            trace_id=self.trace_id,
            span_id=new_span_id(),
            sampled=self.sampled,
            tracestate=self.tracestate,
            baggage=self.baggage,
            parent_span_id=self.span_id,
        )


@dataclass(frozen=True, slots=True)
class ObservabilityContext(TraceContext):
    """A request's trace context that is not itself a recorded span.

    Spans opened with it join its trace as children of its *parent* (a remote caller's span,
    or nothing for a new trace), so no span ever points at a parent that was never stored.
    """

    request_id: str | None = None
    experiment_id: str | None = None
    user_id: str | None = None
    thread_id: str | None = None
    tags: tuple[str, ...] = ()

    @property
    def conversation(self) -> Any:
        """This request's thread, user and tags (the baggage's where not set here)."""
        from .conversation import make_conversation, merge

        own = make_conversation(self.thread_id, self.user_id, self.tags or None)
        return merge(_baggage_conversation(self.baggage), own)


def _baggage_conversation(baggage: Mapping[str, str] | None) -> Any:
    if not baggage or ("thread_id" not in baggage and "user_id" not in baggage):
        return None
    from .conversation import make_conversation

    return make_conversation(baggage.get("thread_id"), baggage.get("user_id"))


def span_parent_id(parent: ParentLike) -> str | None:
    """The id a new span under ``parent`` should name as its parent."""
    if isinstance(parent, ObservabilityContext):
        return parent.parent_span_id
    return parent.span_id


class ParentLike(Protocol):
    """Anything that can parent a span: a :class:`TraceContext` or an open span."""

    @property
    def trace_id(self) -> str: ...

    @property
    def span_id(self) -> str: ...

    @property
    def sampled(self) -> bool: ...


# --- traceparent -------------------------------------------------------------------------


def parse_traceparent(value: str | None) -> tuple[str, str, int] | None:
    """Return ``(trace_id, parent_id, flags)`` or ``None`` when the header is invalid."""
    if not value or not isinstance(value, str):
        return None
    header = value.strip(" \t")
    if len(header) < 55:
        return None
    version = header[:2]
    if not _is_lower_hex(version, 2) or version == "ff":
        return None
    if version == "00" and len(header) != 55:
        return None
    if len(header) > 55 and header[55] != "-":
        return None
    if header[2] != "-" or header[35] != "-" or header[52] != "-":
        return None
    trace_id, parent_id, flags = header[3:35], header[36:52], header[53:55]
    if not (_is_lower_hex(trace_id, 32) and _is_lower_hex(parent_id, 16) and _is_lower_hex(flags, 2)):
        return None
    if trace_id == _HEX32_ZERO or parent_id == _HEX16_ZERO:
        return None
    return trace_id, parent_id, int(flags, 16)


def format_traceparent(trace_id: str, span_id: str, sampled: bool = True) -> str:
    if not _is_lower_hex(trace_id, 32) or trace_id == _HEX32_ZERO:
        raise ValueError(f"trace_id {trace_id!r} is not 32 lowercase hex digits (not all zero)")
    if not _is_lower_hex(span_id, 16) or span_id == _HEX16_ZERO:
        raise ValueError(f"span_id {span_id!r} is not 16 lowercase hex digits (not all zero)")
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


# --- tracestate --------------------------------------------------------------------------


def parse_tracestate(values: str | list[str] | tuple[str, ...] | None) -> tuple[tuple[str, str], ...] | None:
    """Parse one or several ``tracestate`` header values into ordered (key, value) pairs.

    Returns ``()`` for an absent/empty header and ``None`` when the header is invalid, in
    which case the caller drops it and keeps the ``traceparent``.

    The rules, from the Recommendation's ``tracestate`` section as amended in June 2026:

    * key: ``( lcalpha / DIGIT ) 0*255 ( keychar )`` with keychar ``lcalpha / DIGIT / "_"
      / "-" / "*" / "/" / "@"``, so 1 to 256 characters. The ABNF is taken literally: "@"
      may appear any number of times anywhere after the first character, also last. The
      amendment dropped the ``tenant@system`` rule (one "@", tenant up to 241 characters,
      system up to 14 starting with a letter); keeping those limits would drop, whole,
      headers that a conforming sender now writes. Tenant/system is a naming convention
      among vendors, nothing a receiver can check.
    * value: 1 to 256 printable ASCII characters except "," and "=", not ending in a space
      (unchanged).
    * at most 32 list members, counted as received (a repeated key counts each time), so
      a header is never accepted only because it repeats itself; empty and whitespace-only
      members are allowed and do not count.
    * a repeated key does not invalidate the header. Only one entry per key is allowed
      because an entry records the vendor's latest position, and vendors add or move their
      entry to the left; so the left-most occurrence is kept and later ones are dropped
      (as the W3C test harness's own tracestate reader does). Dropping the whole header
      would lose every other vendor's entry for one sender's mistake.

    Everything else stays strict: one member outside the grammar, or more than 32 members,
    invalidates the whole header.
    """
    if values is None:
        return ()
    if isinstance(values, str):
        joined = values
    elif isinstance(values, (list, tuple)) and all(isinstance(v, str) for v in values):
        joined = ",".join(values)  # several fields combine as one list (RFC 9110, 5.3)
    else:
        return None
    members: list[tuple[str, str]] = []
    seen: set[str] = set()
    received = 0
    for raw in joined.split(","):
        member = raw.strip(" \t")
        if not member:
            continue  # empty list members are allowed and ignored
        key, sep, val = member.partition("=")
        if not sep or not _KEY_RE.fullmatch(key) or not _VALUE_RE.fullmatch(val):
            return None
        received += 1
        if received > MAX_TRACESTATE_MEMBERS:
            return None
        if key in seen:
            continue  # a later (older) entry of a key already kept
        seen.add(key)
        members.append((key, val))
    return tuple(members)


def format_tracestate(members: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> str:
    """Serialise members, keeping only what :func:`parse_tracestate` would accept.

    A member that breaks the grammar would make the receiver drop the whole header, so it
    is left out. A repeated key is written once, left-most occurrence (the most recent
    one): the Recommendation allows one entry per key, and receivers still on the earlier
    rule (OpenTelemetry among them) drop a header that repeats one. Past 32 members the
    right-most ones go, as the Recommendation's truncation asks. Whatever
    :func:`parse_tracestate` returns comes back out unchanged, so a header we accepted is
    forwarded as we read it.
    """
    out: list[str] = []
    seen: set[str] = set()
    for key, val in members:
        if len(out) == MAX_TRACESTATE_MEMBERS:
            break
        if not (isinstance(key, str) and isinstance(val, str)) or key in seen:
            continue
        if not (_KEY_RE.fullmatch(key) and _VALUE_RE.fullmatch(val)):
            continue
        seen.add(key)
        out.append(f"{key}={val}")
    return ",".join(out)


# --- baggage (only what inject/extract need: key=value pairs, percent-encoded) -------------


def _parse_baggage(value: str | list[str] | tuple[str, ...] | None) -> dict[str, str]:
    from urllib.parse import unquote

    out: dict[str, str] = {}
    if isinstance(value, (list, tuple)):
        value = ",".join(v for v in value if isinstance(v, str))
    if not value or not isinstance(value, str):
        return out
    for item in value.split(","):
        pair = item.split(";", 1)[0].strip()
        key, sep, val = pair.partition("=")
        if sep and key.strip():
            out[unquote(key.strip())] = unquote(val.strip())
    return out


def _format_baggage(baggage: Mapping[str, str]) -> str:
    from urllib.parse import quote

    return ",".join(f"{quote(str(k), safe='')}={quote(str(v), safe='')}" for k, v in baggage.items())


# --- headers -----------------------------------------------------------------------------


def _header_values(headers: Mapping[str, Any], name: str) -> list[Any]:
    """Every value of header ``name`` (matched in any case), in order.

    Scanning ``items()`` rather than indexing is what makes the lookup case-insensitive on a
    plain dict and sees every field of a repeated header on multi-dicts (aiohttp, Starlette,
    ``email.message``), whose ``[]`` returns only the first one; a list value counts as
    several fields.
    """
    values: list[Any] = []
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name:
            if isinstance(value, (list, tuple)):
                values.extend(value)
            elif value is not None:
                values.append(value)
    return values


def extract(headers: Mapping[str, Any]) -> TraceContext | None:
    """Continue a trace from incoming headers; ``None`` means start a new trace."""
    parents = _header_values(headers, TRACEPARENT)
    # Several traceparent fields are ambiguous: the Recommendation's test suite restarts the trace.
    if len(parents) != 1 or not isinstance(parents[0], str):
        return None
    parsed = parse_traceparent(parents[0])
    if parsed is None:
        return None
    trace_id, span_id, flags = parsed
    states = _header_values(headers, TRACESTATE)
    state = parse_tracestate(states) if states else ()
    return TraceContext(
        trace_id=trace_id,
        span_id=span_id,
        sampled=bool(flags & 0x01),
        tracestate=state or (),
        baggage=_parse_baggage(_header_values(headers, BAGGAGE)),
        remote=True,
    )


def inject(headers: MutableMapping[str, str], context: ParentLike | None = None) -> MutableMapping[str, str]:
    """Write ``traceparent`` (and ``tracestate`` / ``baggage`` when present) for an outgoing call."""
    ctx = context if context is not None else current_parent()
    if ctx is None:
        return headers
    trace_id, span_id = ctx.trace_id, ctx.span_id
    if not (_is_w3c_id(trace_id, 32) and _is_w3c_id(span_id, 16)):
        # Caller-supplied ids such as "trace_456" (or all-zero ones) cannot travel as W3C
        # headers; raising here would break the agent's outgoing call instead.
        return headers
    headers[TRACEPARENT] = format_traceparent(trace_id, span_id, bool(getattr(ctx, "sampled", True)))
    state = getattr(ctx, "tracestate", ())
    formatted = format_tracestate(state) if state else ""
    if formatted:
        headers[TRACESTATE] = formatted
    baggage = getattr(ctx, "baggage", None)
    if baggage:
        headers[BAGGAGE] = _format_baggage(baggage)
    return headers


# --- the current span --------------------------------------------------------------------

_CURRENT: ContextVar[ParentLike | None] = ContextVar("observability_current_span", default=None)


def current_parent() -> ParentLike | None:
    """The innermost open span (or attached remote context) of this task or thread."""
    return _CURRENT.get()


def set_current(parent: ParentLike | None) -> Token[ParentLike | None]:
    return _CURRENT.set(parent)


def reset_current(token: Token[ParentLike | None]) -> None:
    try:
        _CURRENT.reset(token)
    except ValueError:
        # The token came from another context (a generator finalised elsewhere): clearing
        # is the safe choice, keeping a stale parent would mis-nest later spans.
        _CURRENT.set(None)


class attach:  # noqa: N801 - reads like a function at call sites
    """``with attach(extract(request.headers)):`` makes a remote parent current."""

    __slots__ = ("_ctx", "_token")

    def __init__(self, context: ParentLike | None) -> None:
        self._ctx = context
        self._token: Token[ParentLike | None] | None = None

    def __enter__(self) -> ParentLike | None:
        self._token = _CURRENT.set(self._ctx)
        return self._ctx

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            reset_current(self._token)
