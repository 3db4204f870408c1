"""Rows → OTLP (export) → events (collector) → rows: the GenAI mapping both ways keeps every column."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from src.agents.ml_foundation.observability_connector.models import ObservabilityEvent
from src.mlops.otlp_decode import OtlpPayloadError, decode_request, to_events
from src.mlops.otlp_encode import encode_spans
from tests.fixtures.span_rows import make_span


def roundtrip(rows: list) -> list:
    body, ids, refused = encode_spans(rows, "svc")
    assert refused == [] and ids == [r.span_id for r in rows]
    request, unreadable = decode_request(body, "application/x-protobuf")
    events, rejected = to_events(request)
    assert unreadable == rejected == []
    return [ObservabilityEvent.model_validate(e).to_span(-1) for e in events]


def test_columns_survive_export_and_collection() -> None:
    start = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
    root = make_span(trace_id="trace_456", span_id="root-1", agent="orchestrator", start=start,
                     attributes={"langgraph.thread_id": "t-1", "intent": "why"})  # fmt: skip
    chat = make_span(
        trace_id="trace_456", span_id="chat-1", parent_span_id="root-1", agent="gap_analyzer", start=start,
        llm_model="gpt-4o", input_tokens=10, output_tokens=4, status="timeout", error_type="Timeout",
        error_message="slow", duration_ms=250.0, end_time=start + timedelta(milliseconds=250),
        events=[{"name": "retry", "timestamp": start.isoformat(), "attributes": {"n": 1}}],
    )  # fmt: skip
    back = {r.span_id: r for r in roundtrip([root, chat])}
    assert set(back) == {"root-1", "chat-1"}  # the original ids come back, not their hashes
    r, c = back["root-1"], back["chat-1"]
    assert (r.trace_id, r.parent_span_id, r.agent_name, r.agent_tier) == ("trace_456", None, "orchestrator", 1)
    assert r.attributes["thread_id"] == "t-1" and r.attributes["intent"] == "why"
    assert (c.parent_span_id, c.llm_model, c.input_tokens, c.output_tokens, c.total_tokens) == (
        "root-1",
        "gpt-4o",
        10,
        4,
        14,
    )
    assert (c.status, c.error_type, c.error_message) == ("timeout", "Timeout", "slow")
    assert c.started_at == start and c.duration_ms == pytest.approx(250.0)
    assert c.events == [{"name": "retry", "timestamp": start.isoformat(), "attributes": {"n": 1}}]
    assert c.attributes["gen_ai.operation.name"] == "chat" and "obs.status" not in c.attributes


def test_a_span_with_bad_ids_is_refused_alone() -> None:
    request = ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    good, short = spans.add(), spans.add()
    good.trace_id, good.span_id, good.name = b"\x01" * 16, b"\x02" * 8, "ok"
    short.trace_id, short.span_id = b"\x01" * 16, b"\x03" * 4
    events, rejected = to_events(request)
    assert [e["span_id"] for e in events] == ["0202020202020202"]
    assert rejected == [("03030303", "span_id must be 8 bytes, not all zero; got 4 byte(s)")]


@pytest.mark.parametrize(
    ("body", "kind", "reason"),
    [
        (b"[1, 2]", "application/json", "an OTLP JSON request is an object, got list"),
        (b'{"resourceSpans": "x"}', "application/json", "not an OTLP ExportTraceServiceRequest in JSON"),
        (b"\x0a\xff", "application/x-protobuf", "not an OTLP ExportTraceServiceRequest in protobuf"),
        (b"", "text/csv", "content-type 'text/csv' is not accepted"),
    ],
)
def test_payloads_that_are_no_request_say_why(body: bytes, kind: str, reason: str) -> None:
    with pytest.raises(OtlpPayloadError, match=reason.replace("(", r"\(")):
        decode_request(body, kind)
