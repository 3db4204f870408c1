"""OTLP/HTTP trace requests (protobuf or JSON) → the connector's span events, for the collector.

Decoding uses ``opentelemetry-proto``'s generated classes (``json_format`` for JSON, after the
OTLP JSON mapping's one departure from protobuf's: ids are hex, not base64). A payload that is not
a request at all is refused whole with :class:`OtlpPayloadError`; a span that cannot be read (an
id of the wrong length) is refused alone, with its reason, and the others go on. The GenAI
attributes become the row's columns (model, tokens, agent); every attribute is also kept in the
row's ``attributes``, and the conversation id under ``thread_id`` until the table has a column.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from src.agents.ml_foundation.observability_connector.conversation import label_or_none
from src.agents.ml_foundation.observability_connector.json_codec import json_bytes, loads

from . import otlp_genai as genai

__all__ = ["OtlpPayloadError", "Rejection", "decode_request", "encode_response", "to_events"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_STATUSES = frozenset({"ok", "error", "timeout", "started"})
#: Our own attributes that became columns (kept out of ``attributes``, where they would repeat).
_COLUMNS = frozenset({genai.OBS_AGENT_TIER, genai.OBS_STATUS, genai.OBS_TRACE_ID, genai.OBS_SPAN_ID,
                      genai.OBS_PARENT_SPAN_ID})  # fmt: skip
_ID_KEYS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")

Rejection = tuple[str, str]  # (span id as sent, reason)


class OtlpPayloadError(ValueError):
    """The body is not an OTLP trace export request; the message says why (for a 400 answer)."""


# --------------------------------------------------------------------------- requests


def decode_request(body: bytes, content_type: str) -> tuple[ExportTraceServiceRequest, list[Rejection]]:
    """The request, and the spans refused while reading it (JSON only: a span with unreadable ids)."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "application/x-protobuf":
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except DecodeError as exc:
            raise OtlpPayloadError(f"not an OTLP ExportTraceServiceRequest in protobuf: {exc}") from exc
        return request, []
    if kind == "application/json":
        return _from_json(body)
    raise OtlpPayloadError(
        f"content-type {kind or '(none)'!r} is not accepted; send application/x-protobuf or application/json"
    )


def _from_json(body: bytes) -> tuple[ExportTraceServiceRequest, list[Rejection]]:
    try:
        data = loads(body)
    except ValueError as exc:
        raise OtlpPayloadError(f"the body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise OtlpPayloadError(f"an OTLP JSON request is an object, got {type(data).__name__}")
    rejected: list[Rejection] = []
    for scope in _json_scopes(data):
        spans = scope.get("spans") if isinstance(scope, dict) else None
        if not isinstance(spans, list):
            continue
        kept = []
        for span in spans:
            reason = _hex_ids_to_base64(span)
            if reason is None:
                kept.append(span)
            else:
                raw = span.get("spanId", span.get("span_id")) if isinstance(span, dict) else None
                rejected.append((str(raw)[:64] if raw is not None else "?", reason))
        scope["spans"] = kept
    request = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(data, request, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise OtlpPayloadError(f"not an OTLP ExportTraceServiceRequest in JSON: {exc}"[:1000]) from exc
    return request, rejected


def _json_scopes(data: dict[str, Any]) -> Iterator[Any]:
    resources = data.get("resourceSpans", data.get("resource_spans"))
    if not isinstance(resources, list):
        return
    for resource in resources:
        if isinstance(resource, dict):
            scopes = resource.get("scopeSpans", resource.get("scope_spans"))
            if isinstance(scopes, list):
                yield from scopes


def _hex_ids_to_base64(span: Any) -> str | None:
    """OTLP JSON carries ids as hex; protobuf's JSON reader expects base64. None, or why not."""
    if not isinstance(span, dict):
        return f"a span is an object, got {type(span).__name__}"
    targets = [span, *(link for link in span.get("links") or () if isinstance(link, dict))]
    for target in targets:
        for key in _ID_KEYS:
            value = target.get(key)
            if value is None or value == "":
                continue
            if not isinstance(value, str):
                return f"{key} must be a hex string, got {type(value).__name__}"
            try:
                target[key] = base64.b64encode(bytes.fromhex(value)).decode()
            except ValueError:
                return f"{key} {value[:80]!r} is not hex"
    return None


def encode_response(rejected: int, message: str, content_type: str) -> tuple[bytes, str]:
    """The ``ExportTraceServiceResponse`` in the request's own encoding."""
    response = ExportTraceServiceResponse()
    if rejected or message:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = message
    if content_type.split(";", 1)[0].strip().lower() == "application/json":
        return json_bytes(json_format.MessageToDict(response)), "application/json"
    return response.SerializeToString(), "application/x-protobuf"


# --------------------------------------------------------------------------- spans → events


def value_of(value: AnyValue) -> Any:
    """An attribute value as plain Python (arrays as lists, key-value lists as dicts, bytes as hex)."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "array_value":
        return [value_of(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value_of(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return None


def _time(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def to_events(request: ExportTraceServiceRequest) -> tuple[list[dict[str, Any]], list[Rejection]]:
    """Every span of the request as an event payload (``events_to_log[]``), and the spans refused."""
    events: list[dict[str, Any]] = []
    rejected: list[Rejection] = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: value_of(kv.value) for kv in resource_spans.resource.attributes}
        service = resource.get("service.name")
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                try:
                    event = _event(span, service if isinstance(service, str) else None)
                except ValueError as exc:
                    rejected.append((span.span_id.hex() or "?", str(exc)))
                    continue
                events.append(event)
    return events, rejected


def _event(span: Span, service: str | None) -> dict[str, Any]:
    if len(span.trace_id) != 16 or not span.trace_id.strip(b"\0"):
        raise ValueError(f"trace_id must be 16 bytes, not all zero; got {len(span.trace_id)} byte(s)")
    if len(span.span_id) != 8 or not span.span_id.strip(b"\0"):
        raise ValueError(f"span_id must be 8 bytes, not all zero; got {len(span.span_id)} byte(s)")
    if span.parent_span_id and len(span.parent_span_id) != 8:
        raise ValueError(f"parent_span_id must be 8 bytes; got {len(span.parent_span_id)} byte(s)")
    attrs = {kv.key: value_of(kv.value) for kv in span.attributes}
    # Our own spans, collected again: their original ids (when they were not W3C ids) come back.
    trace_id = attrs.get(genai.OBS_TRACE_ID) or span.trace_id.hex()
    span_id = attrs.get(genai.OBS_SPAN_ID) or span.span_id.hex()
    parent = attrs.get(genai.OBS_PARENT_SPAN_ID) or (span.parent_span_id.hex() if span.parent_span_id else None)
    agent = attrs.get(genai.AGENT_NAME) or service or "unknown"
    status = attrs.get(genai.OBS_STATUS)
    if status not in _STATUSES:
        status = "error" if span.status.code == Status.StatusCode.STATUS_CODE_ERROR else "ok"
    model = attrs.get(genai.RESPONSE_MODEL) or attrs.get(genai.REQUEST_MODEL)
    input_tokens = _int(attrs.get(genai.INPUT_TOKENS, attrs.get("gen_ai.usage.prompt_tokens")))
    output_tokens = _int(attrs.get(genai.OUTPUT_TOKENS, attrs.get("gen_ai.usage.completion_tokens")))
    thread = attrs.get(genai.CONVERSATION_ID)
    kept = {k: v for k, v in attrs.items() if k not in _COLUMNS}
    if thread not in (None, ""):
        kept[genai.THREAD_ATTRIBUTE] = str(thread)
    if service and service != agent:
        kept["service.name"] = service
    event: dict[str, Any] = {
        "trace_id": str(trace_id),
        "span_id": str(span_id),
        "parent_span_id": str(parent) if parent else None,
        "operation": span.name or attrs.get(genai.OPERATION_NAME) or "unknown",
        "agent_name": str(agent),
        "started_at": _time(span.start_time_unix_nano),
        "status": status,
        "attributes": kept,
        "sampled": True,  # the sender already chose to keep this trace
    }
    if span.end_time_unix_nano and status != "started":
        event["completed_at"] = _time(span.end_time_unix_nano)
    if status in ("error", "timeout"):
        event["error"] = span.status.message or None
        error_type = attrs.get(genai.ERROR_TYPE)
        if isinstance(error_type, str) and error_type:
            event["error_type"] = error_type
    tier = _int(attrs.get(genai.OBS_AGENT_TIER))
    if tier is not None:
        event["agent_tier"] = tier
    if isinstance(model, str) and model:
        event["model_used"] = model
    if input_tokens is not None:
        event["input_tokens"] = input_tokens
    if output_tokens is not None:
        event["output_tokens"] = output_tokens
    cost = attrs.get(genai.COST_TOTAL)
    # The sender's own figure (ours, exported earlier, or its provider's bill) is kept as the
    # span's cost; one that is no price (negative, NaN, a string) stays a plain attribute, so
    # the span is priced from its tokens instead of being refused.
    if isinstance(cost, int | float) and not isinstance(cost, bool) and 0 <= cost < float("inf"):
        event["cost_usd"] = float(cost)
        kept.pop(genai.COST_TOTAL, None)
    # Conversations: the thread and user columns, when the values pass their rule (an odd one
    # stays an attribute only, rather than costing the span).
    for field, value in (("thread_id", thread), ("user_id", attrs.get(genai.USER_ID))):
        with contextlib.suppress(ValueError, TypeError):
            checked = label_or_none(value if not isinstance(value, float | bool) else None)
            if checked is not None:
                event[field] = checked
    if span.events:
        event["events"] = [
            {
                "name": e.name or "event",
                "timestamp": _time(e.time_unix_nano).isoformat(),
                "attributes": {kv.key: value_of(kv.value) for kv in e.attributes},
            }
            for e in span.events
        ]
    return event
