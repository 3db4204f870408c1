"""Our ids → Opik ids: UUID version 7, deterministic, the same in every process and replay.

Opik rejects trace and span ids that are not UUIDv7, and a batch sent twice must not create
two of anything, so every id is a pure function of our ids (never of the clock at send time,
and never the SDK's own generator, which drifts into the future under bursts).

* A trace id we generated is already a UUIDv7 in 32 hex digits (see ``trace_context``): it is
  used as is, so Opik, the store and a W3C ``traceparent`` all show the same value.
* A foreign trace id (a caller's ``"trace_456"``, another system's W3C id) has no start time
  that every process agrees on, so its UUID comes from a keyed hash of the id alone. The
  timestamp bits come from the hash too, kept within 1970–2004: a hash-made timestamp in the
  future would pin the trace to the top of Opik's newest-first lists for ever.
* A span id maps to the *trace's* UUIDv7 timestamp plus a hash of ``(trace_id, span_id)`` in
  the other 74 bits. Why the trace's time and not the span's own start: a child is usually sent
  before its parent finishes (and may be sent by another process), and it must name its
  parent's Opik id knowing only the parent's span id. With the trace's timestamp every process
  can compute any span's id from ``(trace_id, span_id)``; the id's time still orders traces in
  Opik by when they started, and each span keeps its exact start and end in its own fields.
"""

from __future__ import annotations

import uuid
from functools import lru_cache
from hashlib import blake2b

__all__ = ["is_uuid7", "opik_span_id", "opik_trace_id", "uuid7_timestamp_ms"]

_TRACE_KEY = b"obs-connector/opik/trace-id/v1"
_SPAN_KEY = b"obs-connector/opik/span-id/v1"
_HEX = frozenset("0123456789abcdef")
_PAST_ONLY_MS = (1 << 40) - 1  # ≈ 34.8 years after 1970: a hash-made time is never in the future
_MASK_74 = (1 << 74) - 1
_MASK_62 = (1 << 62) - 1
# Keyed hashers, copied for each id: constructing one with a key hashes a whole key block first,
# which was a third of an id's cost. A copy of a finished state is the same hash, computed once.
_SPAN_HASHER = blake2b(digest_size=10, key=_SPAN_KEY)


def _layout(ms: int, rand74: int) -> str:
    """RFC 9562 UUIDv7: 48-bit ms | version 7 | 12 bits | variant 0b10 | 62 bits."""
    value = (ms & 0xFFFFFFFFFFFF) << 80 | 0x7 << 76 | (rand74 >> 62) << 64 | 0b10 << 62 | (rand74 & ((1 << 62) - 1))
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _as_uuid7_hex(value: str) -> str | None:
    """The 32 hex digits when ``value`` already is a UUIDv7 (with or without dashes), else None."""
    text = value.lower().replace("-", "") if len(value) == 36 else value.lower()
    if len(text) != 32 or not _HEX.issuperset(text):
        return None
    if text[12] != "7" or text[16] not in "89ab":
        return None
    return text


def is_uuid7(value: object) -> bool:
    return isinstance(value, str) and _as_uuid7_hex(value) is not None


@lru_cache(maxsize=65_536)
def opik_trace_id(trace_id: str) -> str:
    """Opik's id for one of our trace ids."""
    native = _as_uuid7_hex(trace_id)
    if native is not None:
        return f"{native[:8]}-{native[8:12]}-{native[12:16]}-{native[16:20]}-{native[20:]}"
    digest = int.from_bytes(blake2b(trace_id.encode(), digest_size=16, key=_TRACE_KEY).digest(), "big")
    return _layout((digest >> 74) & _PAST_ONLY_MS, digest & _MASK_74)


def uuid7_timestamp_ms(value: str) -> int:
    return uuid.UUID(value).int >> 80


@lru_cache(maxsize=65_536)
def _trace_ms(trace_id: str) -> int:
    return int(opik_trace_id(trace_id).replace("-", "")[:12], 16)


@lru_cache(maxsize=65_536)
def _span_id_prefix(trace_id: str) -> str:
    """The first 13 digits every span id of a trace shares: its 48-bit time and the version."""
    h = f"{_trace_ms(trace_id):012x}"
    return f"{h[:8]}-{h[8:12]}-7"


@lru_cache(maxsize=16_384)  # a parent's id is asked for by each of its children, usually in the same batch
def opik_span_id(trace_id: str, span_id: str) -> str:
    """Opik's id for span ``span_id`` of trace ``trace_id`` (computable by any process).

    The same digits as ``_layout(_trace_ms(trace_id), hash74)``, written from the trace's cached
    prefix: 12 bits of the hash, then the variant with the other 62.
    """
    hasher = _SPAN_HASHER.copy()
    hasher.update(f"{trace_id}\x00{span_id}".encode())
    rand = int.from_bytes(hasher.digest(), "big") & _MASK_74
    tail = f"{0b10 << 62 | (rand & _MASK_62):016x}"
    return f"{_span_id_prefix(trace_id)}{rand >> 62:03x}-{tail[:4]}-{tail[4:]}"
