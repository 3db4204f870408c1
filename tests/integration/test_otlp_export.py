"""The OTLP/HTTP export sink behind a ``SinkDelivery``, against a real local OTLP receiver.

What a collector receives (ids, tree, GenAI attributes, status, events, headers, gzip), and what
the delivery layer does with each kind of answer: 5xx / 429 / refused connection spooled and
replayed (after ``Retry-After``), 413 split, other 4xx dead-lettered with the server's reason.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from src.agents.ml_foundation.observability_connector.config import ObservabilitySettings
from src.agents.ml_foundation.observability_connector.delivery import RetryPolicy, SinkDelivery
from src.agents.ml_foundation.observability_connector.spool import Spool
from src.agents.ml_foundation.observability_connector.wiring import build_deliveries
from src.mlops.otlp_encode import span_id_bytes, trace_id_bytes
from src.mlops.otlp_settings import OtlpConfig
from src.mlops.otlp_sink import OtlpSink
from tests.fixtures.otlp_receiver import OtlpReceiver
from tests.fixtures.span_rows import make_span

WAIT_S = 15.0
Make = Callable[..., tuple[SinkDelivery, OtlpSink]]


@pytest.fixture
async def make_delivery(otlp_receiver: OtlpReceiver, tmp_path: Path) -> AsyncIterator[Make]:
    made: list[SinkDelivery] = []

    def make(**config: object) -> tuple[SinkDelivery, OtlpSink]:
        sink = OtlpSink(OtlpConfig(endpoint=otlp_receiver.url, timeout_s=5.0, **config))  # type: ignore[arg-type]
        delivery = SinkDelivery(sink, Spool(tmp_path / f"spool-{len(made)}.db"), RetryPolicy(0.01, 0.02, 10.0))
        made.append(delivery)
        return delivery, sink

    yield make
    for delivery in made:
        await delivery.aclose()
        delivery.spool.close()


def attrs(span: Span) -> dict[str, object]:
    out: dict[str, object] = {}
    for kv in span.attributes:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = (
            getattr(kv.value, kind)
            if kind != "array_value"
            else [getattr(v, str(v.WhichOneof("value"))) for v in kv.value.array_value.values]
        )
    return out


async def test_a_trace_arrives_as_otlp_with_its_tree_and_genai_attributes(
    make_delivery: Make, otlp_receiver: OtlpReceiver
) -> None:
    delivery, _ = make_delivery(headers={"x-api-key": "k-123"})
    start = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    root = make_span(
        agent="orchestrator",
        operation_name="route_request",
        start=start,
        attributes={
            "langgraph.thread_id": "t-9",
            "tags": ["a", "b"],
            "sizes": [1, 2],
            "mixed": [1, "a"],
            "nested": {"k": 1},
        },
    )
    chat = make_span(
        trace_id=root.trace_id,
        parent_span_id=root.span_id,
        agent="gap_analyzer",
        operation_name="llm.gpt-4o",
        llm_model="gpt-4o",
        input_tokens=70,
        output_tokens=30,
        total_tokens=100,
        start=start,
        attributes={
            "llm.provider": "openai",
            "llm.response_model": "gpt-4o-2024-08-06",
            "llm.usage.input_token_details.cache_read": 40,
            "input": {"q": "why"},
        },
        events=[
            {"name": "retry", "timestamp": (start + timedelta(milliseconds=3)).isoformat(), "attributes": {"n": 2}}
        ],
    )
    tool = make_span(
        trace_id=root.trace_id,
        parent_span_id=chat.span_id,
        operation_name="tool.search",
        status="error",
        error_type="TimeoutError",
        error_message="backend slow",
        attributes={"tool.name": "search", "langchain.run_type": "tool"},
    )
    outcome = await delivery.deliver([root, chat, tool])
    assert outcome.delivered == 3 and outcome.rejected == 0, outcome
    (received,) = otlp_receiver.requests
    assert received.headers["x-api-key"] == "k-123" and received.headers["content-encoding"] == "gzip"
    assert received.headers["content-type"] == "application/x-protobuf"
    by_name = {s.name: s for s in received.spans}
    r, c, t = by_name["route_request"], by_name["llm.gpt-4o"], by_name["tool.search"]
    assert r.trace_id.hex() == c.trace_id.hex() == t.trace_id.hex() == root.trace_id
    assert (r.span_id.hex(), r.parent_span_id) == (root.span_id, b"")
    assert c.parent_span_id.hex() == root.span_id and t.parent_span_id.hex() == chat.span_id
    assert r.start_time_unix_nano == 1767323045678901000
    assert attrs(r)["gen_ai.operation.name"] == "invoke_agent" and attrs(r)["gen_ai.agent.name"] == "orchestrator"
    assert attrs(r)["gen_ai.conversation.id"] == "t-9" and attrs(r)["tags"] == ["a", "b"]
    assert attrs(r)["sizes"] == [1, 2] and attrs(r)["mixed"] in ('[1,"a"]', '[1, "a"]')
    assert attrs(r)["nested"] == '{"k":1}' or attrs(r)["nested"] == '{"k": 1}'
    assert attrs(r)["obs.agent.tier"] == 1 and attrs(r)["obs.status"] == "ok"
    chat_attrs = attrs(c)
    assert {
        k: chat_attrs[k]
        for k in (
            "gen_ai.operation.name",
            "gen_ai.provider.name",
            "gen_ai.request.model",
            "gen_ai.response.model",
            "gen_ai.usage.input_tokens",
            "gen_ai.usage.output_tokens",
            "gen_ai.usage.cache_read.input_tokens",
            "gen_ai.agent.name",
        )
    } == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": "gpt-4o-2024-08-06",
        "gen_ai.usage.input_tokens": 70,
        "gen_ai.usage.output_tokens": 30,
        "gen_ai.usage.cache_read.input_tokens": 40,
        "gen_ai.agent.name": "gap_analyzer",
    }
    assert c.kind == Span.SpanKind.SPAN_KIND_CLIENT and "llm.provider" not in chat_attrs
    assert c.events[0].name == "retry" and c.events[0].time_unix_nano == 1767323045681901000
    assert attrs(t)["gen_ai.operation.name"] == "execute_tool" and attrs(t)["gen_ai.tool.name"] == "search"
    assert t.status.code == Status.StatusCode.STATUS_CODE_ERROR and t.status.message == "backend slow"
    assert attrs(t)["error.type"] == "TimeoutError"


async def test_foreign_ids_map_to_the_same_w3c_ids_every_time_and_travel_along(
    make_delivery: Make, otlp_receiver: OtlpReceiver
) -> None:
    delivery, _ = make_delivery()
    parent = make_span(trace_id="trace_456", span_id="span-a")
    child = make_span(trace_id="trace_456", span_id="span-b", parent_span_id="span-a")
    await delivery.deliver([parent, child])
    spans = {attrs(s)["obs.span_id"]: s for s in otlp_receiver.accepted_spans()}
    assert spans["span-b"].parent_span_id == spans["span-a"].span_id == span_id_bytes("trace_456", "span-a")
    assert spans["span-a"].trace_id == trace_id_bytes("trace_456") and len(spans["span-a"].trace_id) == 16
    assert attrs(spans["span-b"])["obs.trace_id"] == "trace_456"
    assert attrs(spans["span-b"])["obs.parent_span_id"] == "span-a"


async def test_server_trouble_is_spooled_and_replayed_after_retry_after_exactly_once(
    make_delivery: Make, otlp_receiver: OtlpReceiver
) -> None:
    delivery, _ = make_delivery()
    delivery.start()
    otlp_receiver.answer_next(503, retry_after="1")
    spans = [make_span() for _ in range(20)]
    began = time.monotonic()
    outcome = await delivery.deliver(spans)
    assert outcome.spooled == 20 and "HTTP 503" in (delivery.stats.last_error or "")
    assert await delivery.wait_idle(WAIT_S)
    assert time.monotonic() - began >= 0.95, "the replay waited for Retry-After"
    ids = [s.span_id.hex() for s in otlp_receiver.accepted_spans()]
    assert sorted(ids) == sorted(s.span_id for s in spans)  # each once
    assert [r.status for r in otlp_receiver.requests] == [503, 200]


@pytest.mark.parametrize("status", [408, 429, 500, 502])
async def test_transient_statuses_are_retried(make_delivery: Make, otlp_receiver: OtlpReceiver, status: int) -> None:
    delivery, _ = make_delivery()
    delivery.start()
    otlp_receiver.answer_next(status)
    spans = [make_span() for _ in range(3)]
    outcome = await delivery.deliver(spans)
    assert outcome.spooled == 3
    assert await delivery.wait_idle(WAIT_S)
    assert len(otlp_receiver.accepted_spans()) == 3 and delivery.spool.dead_letters() == []


async def test_a_refused_connection_is_transient(tmp_path: Path) -> None:
    sink = OtlpSink(OtlpConfig(endpoint="http://127.0.0.1:9/v1/traces", timeout_s=2.0))
    delivery = SinkDelivery(sink, Spool(tmp_path / "spool.db"), RetryPolicy(0.01, 0.02, 5.0), replay_task=False)
    try:
        outcome = await delivery.deliver([make_span()])
        assert outcome.spooled == 1 and "ConnectError" in (outcome.error or "")
        assert delivery.backlogged
    finally:
        await delivery.aclose()
        delivery.spool.close()


async def test_a_4xx_is_final_and_dead_lettered_with_the_reason(
    make_delivery: Make, otlp_receiver: OtlpReceiver
) -> None:
    delivery, sink = make_delivery()
    otlp_receiver.answer_next(400)
    spans = [make_span() for _ in range(2)]
    outcome = await delivery.deliver(spans)
    assert outcome.rejected == 2 and outcome.spooled == 0
    dead = delivery.spool.dead_letters()
    assert {d[1] for d in dead} == {s.span_id for s in spans} and {d[0] for d in dead} == {"otlp"}
    assert all("HTTP 400: refused with 400 by the test receiver" in d[2] for d in dead)
    assert sink.stats.requests_rejected == 1 and not delivery.backlogged


async def test_413_splits_until_the_request_fits(make_delivery: Make, otlp_receiver: OtlpReceiver) -> None:
    delivery, sink = make_delivery(max_spans_per_request=1000)
    otlp_receiver.limit_spans(10)
    spans = [make_span() for _ in range(40)]
    outcome = await delivery.deliver(spans)
    assert outcome.delivered == 40 and outcome.rejected == 0
    assert sorted(s.span_id.hex() for s in otlp_receiver.accepted_spans()) == sorted(s.span_id for s in spans)
    assert sink.stats.requests_split == 3  # 40 → 20 + 20 → 10 × 4


async def test_partial_success_is_counted_not_retried(
    make_delivery: Make, otlp_receiver: OtlpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    delivery, sink = make_delivery(compression="none")
    otlp_receiver.partial(1)
    with caplog.at_level(logging.WARNING):
        outcome = await delivery.deliver([make_span(), make_span()])
    assert outcome.delivered == 2 and len(otlp_receiver.requests) == 1
    assert "content-encoding" not in otlp_receiver.requests[0].headers
    assert sink.stats.spans_partially_rejected == 1 and "dropped by the test receiver" in caplog.text


async def test_header_values_never_reach_repr_status_or_logs(
    make_delivery: Make, otlp_receiver: OtlpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    delivery, sink = make_delivery(headers={"authorization": "Bearer sk-live-abcdef"})
    otlp_receiver.answer_next(401)
    with caplog.at_level(logging.DEBUG):
        await delivery.deliver([make_span()])
    shown = repr(sink) + repr(sink.config) + str(sink.get_status()) + str(delivery.status()) + caplog.text
    assert "sk-live-abcdef" not in shown
    assert otlp_receiver.requests[0].headers["authorization"] == "Bearer sk-live-abcdef"


def test_settings_and_standard_env_vars() -> None:
    settings = ObservabilitySettings(otlp={"endpoint": "http://127.0.0.1:1/v1/traces", "headers": {"A": "1"}})
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318/",
        "OTEL_EXPORTER_OTLP_HEADERS": "api-key=abc%3D%3D,b=2,typo-without-value",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "b=3",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
    }
    config = OtlpConfig.from_settings(settings, env)
    assert config.endpoint == "http://127.0.0.1:4318/v1/traces"  # the base URL gets the signal's path
    assert dict(config.headers) == {"a": "1", "api-key": "abc==", "b": "3"} and config.timeout_s == 2.5
    traces_env = {**env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:6006/v1/traces"}
    assert OtlpConfig.from_settings(settings, traces_env).endpoint == "http://127.0.0.1:6006/v1/traces"
    assert OtlpConfig.from_settings(settings, {}).endpoint == "http://127.0.0.1:1/v1/traces"
    assert "abc" not in repr(config)


async def test_wiring_adds_the_export_when_an_endpoint_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, otlp_receiver: OtlpReceiver
) -> None:
    settings = ObservabilitySettings(batching={"spool_path": str(tmp_path / "spool.db")})
    assert build_deliveries(object(), settings, opik=None).otlp is None  # auto, and no endpoint anywhere
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", otlp_receiver.url)
    deliveries = build_deliveries(object(), settings, opik=None)
    assert deliveries.otlp is not None and deliveries.otlp.wait_s == 1.0  # detached, like Opik
    assert deliveries.otlp.sink.config.endpoint == otlp_receiver.url
    off = ObservabilitySettings(batching={"spool_path": str(tmp_path / "spool.db")}, otlp={"enabled": False})
    assert build_deliveries(object(), off, opik=None).otlp is None
    for delivery in (deliveries.store, deliveries.otlp):
        assert delivery is not None
        await delivery.aclose()
    deliveries.otlp.spool.close()


async def test_the_collector_never_exports_to_itself(tmp_path: Path) -> None:
    from src.agents.ml_foundation.observability_connector.otlp_server import _no_export_to
    from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext

    for endpoint, kept in (("http://localhost:4318/v1/traces", False), ("http://127.0.0.1:6006/v1/traces", True)):
        sink = OtlpSink(OtlpConfig(endpoint=endpoint))
        delivery = SinkDelivery(sink, Spool(tmp_path / "spool.db"))
        context = ConnectorContext(otlp_delivery=delivery)
        _no_export_to(context, 4318)
        assert (context.otlp_delivery is delivery) is kept
        delivery.spool.close()


def test_demo_otlp_option_exports_every_stored_span(tmp_path: Path, otlp_receiver: OtlpReceiver) -> None:
    from typer.testing import CliRunner

    from src.agents.ml_foundation.observability_connector.cli import app

    runner = CliRunner()
    store = str(tmp_path / "spans.db")
    bad = runner.invoke(app, ["--store", store, "demo", "-n", "1", "--otlp", "ftp://127.0.0.1/x"])
    assert bad.exit_code == 2 and "--otlp" in bad.output
    result = runner.invoke(app, ["--store", store, "demo", "-n", "2", "--otlp", otlp_receiver.url])
    assert result.exit_code == 0, result.output
    assert "span(s) exported to" in result.output
    with sqlite3.connect(store) as db:
        stored = {row[0] for row in db.execute("SELECT span_id FROM ml_observability_spans")}
    assert sorted(s.span_id.hex() for s in otlp_receiver.accepted_spans()) == sorted(stored)


async def test_get_status_shows_the_export_delivery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, otlp_receiver: OtlpReceiver
) -> None:
    from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
    from src.agents.ml_foundation.observability_connector.wiring import build_context
    from tests.fixtures.waiting import wait_until_async

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", otlp_receiver.url)
    settings = ObservabilitySettings(
        store={"sqlite_path": str(tmp_path / "spans.db")}, batching={"spool_path": str(tmp_path / "spool.db")}
    )
    agent = ObservabilityConnectorAgent(context=build_context(settings))
    try:
        assert ObservabilityConnectorAgent().get_status()["otlp"] is None  # nothing built yet: nothing to show
        for n in range(3):
            with agent.span(f"op-{n}", "data_preparer"):
                pass
        assert await agent.flush(timeout=10)
        await wait_until_async(lambda: len(otlp_receiver.accepted_spans()) == 3, timeout=WAIT_S)
        await wait_until_async(lambda: agent.get_status()["otlp"]["spans_sent"] == 3, timeout=WAIT_S)
        status = agent.get_status()["otlp"]
        assert status["sink"] == "otlp" and status["state"] == "closed" and status["backlog_spans"] == 0
    finally:
        await agent.aclose()
