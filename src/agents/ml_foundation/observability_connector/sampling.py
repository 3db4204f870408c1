"""Trace-consistent sampling: every process makes the same keep/drop decision for one trace.

Like OpenTelemetry's TraceIdRatioBased, the decision is a pure function of the trace id, so
the spans of one trace are kept or dropped together wherever they are produced. W3C ids use
their lower 56 bits (random in both UUIDv7 and W3C ids); other ids (``"trace_456"``) are hashed.
"""

from __future__ import annotations

from hashlib import blake2b

_BOUND = 1 << 56
_HEX = frozenset("0123456789abcdef")


def _trace_bits(trace_id: str) -> int:
    if len(trace_id) == 32 and _HEX.issuperset(trace_id):
        return int(trace_id[18:], 16)
    return int.from_bytes(blake2b(trace_id.encode(), digest_size=7).digest(), "big")


def trace_sampled(trace_id: str, rate: float) -> bool:
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    return _trace_bits(trace_id) < int(rate * _BOUND)
