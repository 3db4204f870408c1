"""The OTLP collector (``obs-connector serve``): OpenTelemetry's own exporter, raw protobuf and JSON in,
rows in the store out — each span once, bad input refused with its reason and nothing else lost."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from src.repositories.observability_span import ObservabilitySpanRepository
from src.repositories.sqlite import SQLiteSpanRepository
from tests.fixtures.otlp_collector import collector_settings, running_collector

REPO = Path(__file__).resolve().parents[2]


def stored(data: Path) -> list[Any]:
    """Every row of the store, read through the repository (trace by trace: the test spans are old)."""
    with sqlite3.connect(data / "spans.db") as db:
        traces = [t for (t,) in db.execute("SELECT DISTINCT trace_id FROM ml_observability_spans")]

    async def read() -> list[Any]:
        repo = ObservabilitySpanRepository(SQLiteSpanRepository(data / "spans.db", read_only=True))
        try:
            return [row for trace in traces for row in await repo.get_spans_by_trace_id(trace)]
        finally:
            await repo.close()

    return asyncio.run(read())


def proto_request(spans: list[dict[str, Any]], service: str = "billing") -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource = request.resource_spans.add()
    kv = resource.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", service
    scope = resource.scope_spans.add()
    for fields in spans:
        span = scope.spans.add()
        span.trace_id = bytes.fromhex(fields["trace"])
        span.span_id = bytes.fromhex(fields["span"])
        if fields.get("parent"):
            span.parent_span_id = bytes.fromhex(fields["parent"])
        span.name = fields.get("name", "work")
        span.start_time_unix_nano = fields.get("start", 1_700_000_000_000_000_000)
        span.end_time_unix_nano = fields.get("end", 1_700_000_000_250_000_000)
        for key, value in fields.get("attrs", {}).items():
            attr = span.attributes.add()
            attr.key = key
            if isinstance(value, int):
                attr.value.int_value = value
            else:
                attr.value.string_value = value
    return request


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_sdk_exporter_spans_stored_once_with_genai_columns(tmp_path: Path) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import Status, StatusCode

    with running_collector(collector_settings(tmp_path)) as collector:
        provider = TracerProvider(resource=Resource.create({"service.name": "checkout"}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=collector.traces_url)))
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("invoke_agent planner") as root:
            root.set_attributes({"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "planner",
                                 "gen_ai.conversation.id": "thread-42"})  # fmt: skip
            with tracer.start_as_current_span("chat gpt-4o") as chat:
                chat.set_attributes({
                    "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06",
                    "gen_ai.usage.input_tokens": 120, "gen_ai.usage.output_tokens": 30,
                    "gen_ai.usage.cache_read.input_tokens": 100, "gen_ai.agent.name": "planner",
                })  # fmt: skip
            with tracer.start_as_current_span("execute_tool search") as tool:
                tool.set_attributes({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"})
                tool.set_status(Status(StatusCode.ERROR, "search backend timed out"))
        assert provider.force_flush(10_000)
        provider.shutdown()
        trace_id = f"{root.get_span_context().trace_id:032x}"
    rows = stored(tmp_path)
    assert len(rows) == 3 and len({r.span_id for r in rows}) == 3
    by_name = {r.operation_name: r for r in rows}
    root_row, chat_row, tool_row = (
        by_name["invoke_agent planner"],
        by_name["chat gpt-4o"],
        by_name["execute_tool search"],
    )
    assert {r.trace_id for r in rows} == {trace_id}
    assert root_row.parent_span_id is None
    assert chat_row.parent_span_id == tool_row.parent_span_id == root_row.span_id
    assert root_row.agent_name == chat_row.agent_name == "planner"
    assert tool_row.agent_name == "checkout"  # no gen_ai.agent.name: the service is the agent
    assert root_row.attributes["thread_id"] == "thread-42"
    assert (chat_row.llm_model, chat_row.input_tokens, chat_row.output_tokens) == ("gpt-4o-2024-08-06", 120, 30)
    assert chat_row.total_tokens == 150
    assert chat_row.attributes["gen_ai.usage.cache_read.input_tokens"] == 100
    assert (tool_row.status, tool_row.error_message) == ("error", "search backend timed out")
    assert collector.stats is not None and collector.stats.spans_logged == 3


def test_raw_protobuf_resent_is_stored_once_and_partial_rejection_names_the_span(tmp_path: Path) -> None:
    good = [
        {"trace": TRACE, "span": "00f067aa0ba902b7", "name": "root", "attrs": {"obs.agent.tier": 2}},
        {"trace": TRACE, "span": "00f067aa0ba902b8", "parent": "00f067aa0ba902b7", "name": "child",
         "attrs": {"gen_ai.request.model": "claude", "gen_ai.usage.input_tokens": 5}},
    ]  # fmt: skip
    backwards = {
        "trace": TRACE,
        "span": "00f067aa0ba902b9",
        "start": 1_700_000_001_000_000_000,
        "end": 1_700_000_000_000_000_000,
    }
    body = proto_request([*good, backwards]).SerializeToString()
    headers = {"Content-Type": "application/x-protobuf"}
    with running_collector(collector_settings(tmp_path)) as collector:
        answers = [httpx.post(collector.traces_url, content=body, headers=headers) for _ in range(2)]
    for answer in answers:  # a client's retry of the same request: the same answer, no second row
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("application/x-protobuf")
        response = ExportTraceServiceResponse.FromString(answer.content)
        assert response.partial_success.rejected_spans == 1
        assert "completed_at" in response.partial_success.error_message
    rows = stored(tmp_path)
    assert sorted(r.span_id for r in rows) == ["00f067aa0ba902b7", "00f067aa0ba902b8"]
    child = next(r for r in rows if r.span_id.endswith("b8"))
    assert (child.llm_model, child.input_tokens, child.agent_name) == ("claude", 5, "billing")
    assert next(r for r in rows if r.span_id.endswith("b7")).agent_tier == 2


def test_json_mapping_hex_ids_enum_ints_camel_case(tmp_path: Path) -> None:
    payload = {
        "resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "js-worker"}}]},
            "scopeSpans": [{"scope": {"name": "manual"}, "spans": [
                {"traceId": TRACE, "spanId": "1111111111111111", "name": "chat", "kind": 3,
                 "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000500000000",
                 "status": {"code": 2, "message": "rate limited"},
                 "attributes": [{"key": "gen_ai.usage.output_tokens", "value": {"intValue": "7"}},
                                {"key": "gen_ai.response.model", "value": {"stringValue": "mistral"}}],
                 "events": [{"name": "retry", "timeUnixNano": "1700000000100000000",
                             "attributes": [{"key": "attempt", "value": {"intValue": "2"}}]}]},
                {"traceId": TRACE, "spanId": "not-hex!", "name": "broken"},
                {"traceId": TRACE, "spanId": "2222222222222222", "parentSpanId": "1111111111111111", "name": "tool"},
            ]}],
        }]
    }  # fmt: skip
    with running_collector(collector_settings(tmp_path)) as collector:
        answer = httpx.post(
            collector.traces_url, content=json.dumps(payload), headers={"Content-Type": "application/json"}
        )
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/json")
    partial = answer.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "1" or partial["rejectedSpans"] == 1
    assert "spanId 'not-hex!' is not hex" in partial["errorMessage"]
    rows = {r.span_id: r for r in stored(tmp_path)}
    assert set(rows) == {"1111111111111111", "2222222222222222"}
    chat = rows["1111111111111111"]
    assert (chat.status, chat.error_message, chat.llm_model, chat.output_tokens) == (
        "error",
        "rate limited",
        "mistral",
        7,
    )
    assert chat.duration_ms == pytest.approx(500.0)
    assert chat.events[0]["name"] == "retry" and chat.events[0]["attributes"] == {"attempt": 2}
    assert rows["2222222222222222"].parent_span_id == "1111111111111111"
    assert chat.agent_name == "js-worker"


def test_refusals_have_reasons_and_cost_nothing_else(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = proto_request([{"trace": TRACE, "span": "00f067aa0ba902b7"}]).SerializeToString()
    pb = {"Content-Type": "application/x-protobuf"}
    with running_collector(collector_settings(tmp_path), token="s3cret-token", max_body_bytes=4096) as collector:
        url = collector.traces_url
        auth = {**pb, "Authorization": "Bearer s3cret-token"}
        no_token = httpx.post(url, content=good, headers=pb)
        wrong_token = httpx.post(url, content=good, headers={**pb, "Authorization": "Bearer nope"})
        garbage = httpx.post(url, content=b"\xff\xff\xff not protobuf", headers=auth)
        bad_json = httpx.post(url, content=b"{not json", headers={**auth, "Content-Type": "application/json"})
        wrong_type = httpx.post(url, content=good, headers={**auth, "Content-Type": "text/plain"})
        too_big = httpx.post(url, content=b"\0" * 10_000, headers=auth)
        accepted = httpx.post(url, content=good, headers=auth)
    assert no_token.status_code == wrong_token.status_code == 401
    assert garbage.status_code == 400 and "not an OTLP ExportTraceServiceRequest in protobuf" in garbage.text
    assert bad_json.status_code == 400 and "not JSON" in bad_json.json()["message"]
    assert wrong_type.status_code == 415 and "application/x-protobuf" in wrong_type.text
    assert too_big.status_code == 413
    assert accepted.status_code == 200
    assert [r.span_id for r in stored(tmp_path)] == ["00f067aa0ba902b7"]


def test_sigterm_stops_accepting_finishes_in_flight_and_loses_nothing(tmp_path: Path) -> None:
    """The real command: every request answered 200 before SIGTERM took effect is in the store."""
    env = {**os.environ, "OBS_STORE__SQLITE_PATH": str(tmp_path / "spans.db"), "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "src.agents.ml_foundation.observability_connector.cli", "serve", "--port", "0"],
        cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        url = line.split("collector on ", 1)[1].split("/v1/traces", 1)[0] + "/v1/traces"
        acked: list[int] = []
        errors: list[str] = []

        def client(worker: int) -> None:
            with httpx.Client(timeout=30) as http:
                for batch in range(200):
                    spans = [
                        {"trace": f"{worker + 1:08x}{batch:024x}", "span": f"{worker + 1:04x}{batch:06x}{i:06x}"}
                        for i in range(50)
                    ]
                    try:
                        answer = http.post(url, content=proto_request(spans).SerializeToString(),
                                           headers={"Content-Type": "application/x-protobuf"})  # fmt: skip
                    except httpx.TransportError as exc:  # the server stopped listening: the client keeps these
                        errors.append(type(exc).__name__)
                        return
                    if answer.status_code == 200:
                        refused = ExportTraceServiceResponse.FromString(answer.content).partial_success.rejected_spans
                        acked.append(len(spans) - refused)

        threads = [threading.Thread(target=client, args=(w,)) for w in range(2)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while sum(acked) < 500 and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        for thread in threads:
            thread.join(30)
    finally:
        if process.poll() is None:
            process.kill()
    assert sum(acked) >= 500
    assert len(stored(tmp_path)) >= sum(acked)  # every acknowledged span, and nothing twice (ids are unique)


def test_gzip_bodies_are_accepted_and_bounded_once_inflated(tmp_path: Path) -> None:
    import gzip

    good = gzip.compress(proto_request([{"trace": TRACE, "span": "00f067aa0ba902b7"}]).SerializeToString())
    bomb = gzip.compress(b"\0" * 2_000_000)  # ~2 KB on the wire, 2 MB inflated
    headers = {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}
    with running_collector(collector_settings(tmp_path), max_body_bytes=100_000) as collector:
        accepted = httpx.post(collector.traces_url, content=good, headers=headers)
        refused = httpx.post(collector.traces_url, content=bomb, headers=headers)
    assert accepted.status_code == 200 and refused.status_code == 413
    assert [r.span_id for r in stored(tmp_path)] == ["00f067aa0ba902b7"]
