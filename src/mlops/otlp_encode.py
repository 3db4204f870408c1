"""Span rows → one OTLP ``ExportTraceServiceRequest`` (the generated classes of ``opentelemetry-proto``).

Ids: a W3C id (32 / 16 hex digits, as the connector makes them) is sent as is, so the trace in a
UI is the trace in the store. A caller's own id (``"trace_456"``) has no W3C form; its bytes are a
keyed hash of the id (the same in every process and every replay, so a resent span is the same
span) and the original goes along under ``obs.trace_id`` / ``obs.span_id``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from hashlib import blake2b
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans, Span, Status

from src.agents.ml_foundation.observability_connector.json_codec import json_text

from . import otlp_genai as genai

__all__ = ["SCOPE_NAME", "encode_spans", "span_id_bytes", "trace_id_bytes"]

SCOPE_NAME = "observability_connector"
_TRACE_KEY = b"obs-connector/otlp/trace-id/v1"
_SPAN_KEY = b"obs-connector/otlp/span-id/v1"
_HEX = frozenset("0123456789abcdef")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)
_KIND_CLIENT = Span.SpanKind.SPAN_KIND_CLIENT
_KIND_INTERNAL = Span.SpanKind.SPAN_KIND_INTERNAL


def _native(value: str, digits: int) -> bytes | None:
    text = value.lower()
    if len(text) == 36 and digits == 32:
        text = text.replace("-", "")
    if len(text) != digits or not _HEX.issuperset(text) or not text.strip("0"):
        return None
    return bytes.fromhex(text)


@lru_cache(maxsize=65_536)
def trace_id_bytes(trace_id: str) -> bytes:
    """The 16 bytes OTLP carries for one of our trace ids."""
    native = _native(trace_id, 32)
    if native is not None:
        return native
    digest = blake2b(trace_id.encode(), digest_size=16, key=_TRACE_KEY).digest()
    return digest if digest.strip(b"\0") else b"\0" * 15 + b"\1"


@lru_cache(maxsize=65_536)
def span_id_bytes(trace_id: str, span_id: str) -> bytes:
    """The 8 bytes for span ``span_id`` of trace ``trace_id`` (a parent maps the same way)."""
    native = _native(span_id, 16)
    if native is not None:
        return native
    digest = blake2b(f"{trace_id}\x00{span_id}".encode(), digest_size=8, key=_SPAN_KEY).digest()
    return digest if digest.strip(b"\0") else b"\0" * 7 + b"\1"


def _ns(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return ((value - _EPOCH) // _MICRO) * 1000


def _homogeneous(values: list[Any] | tuple[Any, ...]) -> bool:
    """A non-empty list of one scalar type (OTLP arrays hold one type; ints must fit 64 bits)."""
    if not values:
        return False
    kind = values[0].__class__
    if kind not in (str, bool, int, float) or any(v.__class__ is not kind for v in values):
        return False
    return kind is not int or all(-(2**63) <= v < 2**63 for v in values)


def _set_value(target: AnyValue, value: Any) -> None:
    """One attribute value, typed: scalars as themselves, lists of one scalar type as arrays,
    anything else (objects, mixed lists) as its JSON text."""
    kind = value.__class__
    if kind is str:
        target.string_value = value
    elif kind is bool:
        target.bool_value = value
    elif kind is int and -(2**63) <= value < 2**63:
        target.int_value = value
    elif kind is float:
        target.double_value = value
    elif kind in (list, tuple) and _homogeneous(value):
        for item in value:
            _set_value(target.array_value.values.add(), item)
    else:
        target.string_value = json_text(value, "null")


def _put(attributes: Any, values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        if value is None:
            continue
        kv = attributes.add()
        kv.key = str(key)
        _set_value(kv.value, value)


def _event_time(event: Mapping[str, Any], fallback: int) -> int:
    stamp = event.get("timestamp")
    try:
        if isinstance(stamp, datetime):
            return _ns(stamp)
        if isinstance(stamp, str):
            return _ns(datetime.fromisoformat(stamp))
    except (ValueError, OverflowError):
        pass
    return fallback


def add_span(scope: ScopeSpans, row: Any) -> None:
    """Append one row to ``scope`` as an OTLP span; raises on a row that cannot be expressed."""
    trace_id = row.trace_id
    span = scope.spans.add()
    span.trace_id = trace_id_bytes(trace_id)
    span.span_id = span_id_bytes(trace_id, row.span_id)
    parent = row.parent_span_id
    if parent:
        span.parent_span_id = span_id_bytes(trace_id, parent)
    span.name = row.operation_type
    attributes = genai.row_attributes(row)
    span.kind = _KIND_CLIENT if attributes[genai.OPERATION_NAME] == "chat" else _KIND_INTERNAL
    start = _ns(row.started_at)
    span.start_time_unix_nano = start
    end = row.end_time
    span.end_time_unix_nano = _ns(end) if end is not None else start
    if _native(trace_id, 32) is None:
        attributes[genai.OBS_TRACE_ID] = trace_id
    if _native(row.span_id, 16) is None:
        attributes[genai.OBS_SPAN_ID] = row.span_id
    if parent and _native(parent, 16) is None:
        attributes[genai.OBS_PARENT_SPAN_ID] = parent
    _put(span.attributes, attributes)
    status = row.status
    if status == "ok":
        span.status.code = Status.StatusCode.STATUS_CODE_OK
    elif status in ("error", "timeout"):
        span.status.code = Status.StatusCode.STATUS_CODE_ERROR
        span.status.message = row.error_message or row.error_type or status
    for event in row.events or ():
        if not isinstance(event, Mapping):
            continue
        out = span.events.add()
        out.name = str(event.get("name") or "event")
        out.time_unix_nano = _event_time(event, start)
        extra = event.get("attributes")
        if isinstance(extra, Mapping):
            _put(out.attributes, extra)


def new_request(service_name: str, version: str = "") -> tuple[ExportTraceServiceRequest, ScopeSpans]:
    """An empty request with one resource (``service.name``) and our instrumentation scope."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    kv: KeyValue = resource_spans.resource.attributes.add()
    kv.key = "service.name"
    kv.value.string_value = service_name
    scope = resource_spans.scope_spans.add()
    scope.scope.name = SCOPE_NAME
    if version:
        scope.scope.version = version
    return request, scope


def encode_spans(rows: Sequence[Any], service_name: str) -> tuple[bytes, list[str], list[tuple[str, str]]]:
    """The serialized request for ``rows``, the span ids it carries, and the rows it could not carry
    (``(span_id, reason)``: one odd row must not cost the others their delivery)."""
    request, scope = new_request(service_name)
    ids: list[str] = []
    refused: list[tuple[str, str]] = []
    for row in rows:
        try:
            add_span(scope, row)
        except Exception as exc:
            del scope.spans[-1:]  # the half-built span, if it was added
            refused.append((str(row.span_id), f"not convertible to an OTLP span: {exc!r}"[:500]))
            continue
        ids.append(str(row.span_id))
    return request.SerializeToString(), ids, refused
