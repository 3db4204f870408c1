"""Opik emission end to end: agents → collector → graph → the Opik delivery → a real HTTP receiver.

The receiver (``tests/fixtures/opik_receiver.py``) is a real server on 127.0.0.1 that validates
every body with the ``opik`` SDK's own models and answers like Opik (400 for a non-UUIDv7 id);
it is switched to 500s, refused connections and 10 s hangs. Timeouts, backoff and the breaker's
recovery are shortened so the outage tests take seconds, with the same code paths as production:
``OpikSink`` behind a ``SinkDelivery`` (breaker, spool, replay) built by ``build_deliveries``.
"""

from __future__ import annotations

import asyncio
import io
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from rich.console import Console

from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
from src.agents.ml_foundation.observability_connector.config import (
    build_deliveries,
)
from src.agents.ml_foundation.observability_connector.demo import run_demo
from src.agents.ml_foundation.observability_connector.graph import graph
from src.mlops import CircuitState, OpikConfig, opik_span_id, opik_trace_id
from src.mlops.opik_sink import OpikSink
from tests.fixtures.opik_receiver import OpikReceiver
from tests.fixtures.opik_rig import FAST_OPIK, REGISTRY, Rig, make_rig
from tests.fixtures.waiting import wait_until_async

__all__ = ["make_rig"]  # the fixture, used by name

#: Tests where Opik hangs give up on a request this soon, so that they take seconds.
HANG_TIMEOUT_S = 0.3


def make_trace(obs: ObservabilityConnectorAgent, spans: int = 10, poison: bool = False) -> str:
    """One trace: a root and ``spans - 1`` children (one an LLM call); returns its trace id."""
    with obs.span("route_request", "orchestrator") as root:
        for index in range(spans - 2):
            name = "poison" if poison and index == 0 else f"step_{index}"
            with obs.span(name, "gap_analyzer"):
                pass
        obs.record_llm_call("gap_analyzer", "gpt-4o", 100, 20, duration_ms=3, provider="openai")
    return root.trace_id


async def stored_spans(rig: Rig, trace_ids: list[str]) -> list[Any]:
    out: list[Any] = []
    for trace_id in trace_ids:
        out.extend(await rig.store.get_spans_by_trace_id(trace_id))
    return out


async def assert_exactly_once(rig: Rig, trace_ids: list[str]) -> None:
    """Count at the receiver = count in the store, the same ids, none written twice."""
    stored = await stored_spans(rig, trace_ids)
    expected = {opik_span_id(s.trace_id, s.span_id) for s in stored}
    assert len(expected) == len(stored)
    assert set(rig.receiver.spans) == expected
    assert rig.receiver.duplicate_span_ids() == []
    assert sum(rig.receiver.span_writes.values()) == len(stored)
    assert set(rig.receiver.traces) == {opik_trace_id(t) for t in trace_ids}


# --------------------------------------------------------------------------- the happy path


@pytest.mark.parametrize("encode_once", [True, False], ids=["encoded-once", "generated-create_spans"])
async def test_a_trace_arrives_as_the_right_tree_with_model_and_usage(
    make_rig: Callable[..., Rig], encode_once: bool
) -> None:
    """Both send paths — bodies encoded once, or the generated ``create_spans`` — produce the same tree."""
    rig = make_rig(encode_once=encode_once)
    obs = rig.obs
    async with obs.span("route_request", "orchestrator") as root:
        root.set_input({"question": "why did NE drop?"})
        async with obs.span("execute", "gap_analyzer") as execute:
            llm = obs.record_llm_call("gap_analyzer", "claude-sonnet-4", 812, 95, duration_ms=40, provider="anthropic")
        with pytest.raises(RuntimeError):
            async with obs.span("estimate_effect", "causal_impact") as failing:
                raise RuntimeError("solver diverged")
        root.set_output({"gaps": 3})
    assert await rig.opik.flush(5)

    received = rig.receiver.spans
    tid = root.trace_id
    assert set(received) == {opik_span_id(tid, s.span_id) for s in (root, execute, llm, failing)}
    by_name = {body["name"]: body for body in received.values()}
    assert "parent_span_id" not in by_name["route_request"]
    assert by_name["execute"]["parent_span_id"] == opik_span_id(tid, root.span_id)
    assert by_name["estimate_effect"]["parent_span_id"] == opik_span_id(tid, root.span_id)
    llm_body = by_name["llm_call"]
    assert llm_body["parent_span_id"] == opik_span_id(tid, execute.span_id)
    assert (llm_body["type"], llm_body["model"], llm_body["provider"]) == ("llm", "claude-sonnet-4", "anthropic")
    assert llm_body["usage"] == {"prompt_tokens": 812, "completion_tokens": 95, "total_tokens": 907}
    assert by_name["estimate_effect"]["error_info"]["exception_type"] == "RuntimeError"
    assert by_name["estimate_effect"]["error_info"]["message"] == "solver diverged"
    assert all(body["trace_id"] == opik_trace_id(tid) == tid_as_uuid(tid) for body in received.values())

    trace = rig.receiver.traces[opik_trace_id(tid)]
    assert trace["name"] == "route_request"
    assert trace["project_name"] == "e2i-causal-analytics"
    assert trace["input"] == {"question": "why did NE drop?"} and trace["output"] == {"gaps": 3}
    assert {"agent:orchestrator", "agent:gap_analyzer", "agent:causal_impact"} <= set(trace["tags"])
    assert {"tier:1-coordination", "tier:2-causal_analytics"} <= set(trace["tags"])
    assert trace["metadata"]["span_count"] == 4 and trace["metadata"]["error_count"] == 1
    assert all(r.gzipped for r in rig.receiver.batch_posts("spans"))
    status = obs.get_status()["opik"]
    assert status["state"] == "closed" and status["spans_sent"] == 4 and status["backlog_spans"] == 0
    assert trace["metadata"]["span_count"] == 4, "each span counted once in its trace record"


def tid_as_uuid(trace_id: str) -> str:
    return f"{trace_id[:8]}-{trace_id[8:12]}-{trace_id[12:16]}-{trace_id[16:20]}-{trace_id[20:]}"


async def test_demo_traces_reach_opik_as_closed_trees(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    console = Console(file=io.StringIO(), width=200)
    result = await run_demo(4, 11, console, context=rig.context, time_scale=0.1, show_progress=False)
    assert result.spans_stored == result.spans_produced
    assert result.opik is not None and result.opik["spans_sent"] == result.spans_stored
    assert result.conversation is not None  # its two turns are traces of their own
    trace_ids = result.trace_ids + [turn["trace_id"] for turn in result.conversation["turns"]]
    await assert_exactly_once(rig, trace_ids)
    received = rig.receiver.spans
    for body in received.values():
        parent = body.get("parent_span_id")
        assert parent is None or parent in received, f"{body['name']} points at a span Opik never got"
    stored = {opik_span_id(s.trace_id, s.span_id): s for s in await stored_spans(rig, trace_ids)}
    llm = [s for s in stored.values() if s.llm_model]
    assert llm
    for key, span in stored.items():
        body = received[key]
        if span.llm_model:
            assert body["type"] == "llm" and body["model"] == span.llm_model and body["provider"]
            if span.total_tokens is not None:  # a failed call reports no usage
                assert body["usage"]["prompt_tokens"] == span.input_tokens
                assert body["usage"]["completion_tokens"] == span.output_tokens
                assert body["usage"]["total_tokens"] == span.total_tokens
            else:
                assert span.status == "error" and "usage" not in body
        if span.status == "error":
            assert body["error_info"]["exception_type"] == span.error_type
    roots = [t for t in rig.receiver.traces.values() if t["name"] == "route_request"]
    assert len(roots) == len(result.trace_ids)
    assert "and Opik" in console.file.getvalue() and "Opik:" in console.file.getvalue()


async def test_the_orchestrator_path_reports_opik_in_the_state(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    events = [
        {"span_id": "span_123", "trace_id": "trace_456", "agent_name": "gap_analyzer", "operation": "execute",
         "started_at": "2026-11-26T10:00:00Z", "duration_ms": 812.5, "status": "completed",
         "model_used": "claude-sonnet-4", "input_tokens": 812, "output_tokens": 95},
        {"span_id": "span_124", "trace_id": "trace_456", "parent_span_id": "span_123", "agent_name": "gap_analyzer",
         "operation": "fetch", "started_at": "2026-11-26T10:00:00.1Z", "duration_ms": 5, "status": "failed",
         "error": "timeout", "error_type": "TimeoutError"},
    ]  # fmt: skip
    state = await graph.ainvoke({"events_to_log": events}, context=rig.context)
    assert state["db_writes_successful"] is True and state["events_logged"] == 2
    assert state["opik_spans_sent"] == 2 and state["opik_error"] is None
    child = rig.receiver.spans[opik_span_id("trace_456", "span_124")]
    assert child["parent_span_id"] == opik_span_id("trace_456", "span_123")
    assert child["trace_id"] == opik_trace_id("trace_456")
    # Re-sending the same batch creates nothing new in Opik: the same ids again.
    await graph.ainvoke({"events_to_log": events}, context=rig.context)
    assert len(rig.receiver.spans) == 2 and len(rig.receiver.traces) == 1


async def test_convenience_api_and_feedback(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    opik = rig.opik
    async with opik.trace_agent("orchestrator", "route_request", metadata={"request_id": "r-1"}) as root:
        async with opik.trace_llm_call("gap_analyzer", "gpt-4o", "openai", input_data={"prompt": "p"}) as llm:
            llm.set_llm(input_tokens=10, output_tokens=5)
            llm.set_output({"text": "t"})
        opik.log_metric("rows_scanned", 10_000)
    async with opik.trace_agent("explainer", "explain", trace_id="trace_456", parent_span_id="span_123") as joined:
        pass
    await opik.log_feedback(root.trace_id, "helpfulness", 0.9, reason="clear answer")
    assert await opik.flush(5)

    spans = rig.receiver.spans
    llm_body = spans[opik_span_id(root.trace_id, llm.span_id)]
    assert llm_body["parent_span_id"] == opik_span_id(root.trace_id, root.span_id)
    assert llm_body["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    assert llm_body["input"] == {"prompt": "p"} and llm_body["output"] == {"text": "t"}
    root_body = spans[opik_span_id(root.trace_id, root.span_id)]
    assert root_body["metadata"]["request_id"] == "r-1"
    assert root_body["metadata"]["events"][0]["name"] == "metric.rows_scanned"
    joined_body = spans[opik_span_id("trace_456", joined.span_id)]
    assert joined_body["parent_span_id"] == opik_span_id("trace_456", "span_123")
    assert rig.receiver.feedback == [
        {"id": opik_trace_id(root.trace_id), "project_name": "e2i-causal-analytics", "name": "helpfulness",
         "value": 0.9, "reason": "clear answer", "source": "sdk"}
    ]  # fmt: skip
    assert opik.get_status()["feedback_sent"] == 1


# --------------------------------------------------------------------------- outages


def start_outage(receiver: OpikReceiver, kind: str) -> None:
    if kind == "http_500":
        receiver.mode = "error"
    elif kind == "refused":
        receiver.refuse()
    else:
        receiver.hang(10.0)


def end_outage(receiver: OpikReceiver, kind: str) -> None:
    if kind == "refused":
        receiver.resume()
    else:
        receiver.recover()


@pytest.mark.parametrize("outage", ["http_500", "refused", "hang_10s"])
async def test_outage_opens_the_breaker_keeps_every_span_and_recovers_exactly_once(
    make_rig: Callable[..., Rig], outage: str
) -> None:
    rig = make_rig(request_timeout_s=HANG_TIMEOUT_S)
    receiver, opik, obs, delivery = rig.receiver, rig.opik, rig.obs, rig.delivery
    start_outage(receiver, outage)
    trace_ids: list[str] = []
    for _ in range(8):
        trace_ids.append(make_trace(obs, 10))
        started = time.perf_counter()
        assert await obs.flush(5)
        # The store write never waits for Opik: the agents' flusher hands Opik its batch and goes on.
        assert time.perf_counter() - started < 1.0
    await wait_until_async(lambda: delivery.breaker.state is CircuitState.OPEN, 10)
    breaker = delivery.breaker.get_status()
    assert breaker["failures"] == 5 and breaker["times_opened"] == 1
    if outage == "http_500":
        assert len(receiver.batch_posts("spans", 500)) == 5
    await wait_until_async(lambda: delivery.in_flight == 0, 5)
    requests_before = len(receiver.requests)
    await asyncio.sleep(0.3)  # a stretch of the open breaker's recovery time: nothing may be sent in it
    assert len(receiver.requests) == requests_before, "no Opik call while the circuit is open"
    assert delivery.breaker.get_status()["failures"] == 5

    assert len(await stored_spans(rig, trace_ids)) == 80, "the store keeps every span during the outage"
    status = obs.get_status()["opik"]
    assert status["backlog_spans"] == 80 and status["spans_sent"] == 0 and status["state"] == "open"
    assert obs.get_status()["batches_failed"] == 0

    end_outage(receiver, outage)
    assert await opik.wait_until_sent(10)
    assert delivery.breaker.state is CircuitState.CLOSED
    await assert_exactly_once(rig, trace_ids)
    assert opik.get_status()["spans_sent"] == 80


async def test_span_cost_is_unchanged_while_opik_hangs(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(request_timeout_s=HANG_TIMEOUT_S)
    obs = rig.obs

    def measure(n: int = 5_000) -> tuple[float, float]:
        costs = []
        clock = time.perf_counter_ns
        for _ in range(n):
            t0 = clock()
            with obs.span("op", "gap_analyzer"):
                pass
            costs.append(clock() - t0)
        costs.sort()
        return statistics.median(costs) / 1e3, costs[int(n * 0.99)] / 1e3

    def best_of_three() -> tuple[float, float]:
        # A blocking path shows in every run; a noisy neighbour on a shared CI machine in one.
        runs = [measure() for _ in range(3)]
        return min(p50 for p50, _ in runs), min(p99 for _, p99 in runs)

    measure(1_000)  # warm up
    healthy = best_of_three()
    assert await rig.opik.flush(30)
    rig.receiver.hang(10.0)
    make_trace(obs)
    assert await obs.flush(5)
    hanging = best_of_three()
    assert await obs.flush(30)
    p50_ok, p99_ok = healthy
    p50_hang, p99_hang = hanging
    # Generous bounds against a shared CI machine's noise; a blocking path would cost milliseconds.
    assert p50_hang < 2 * p50_ok + 2, (healthy, hanging)
    assert p99_hang < 3 * p99_ok + 20, (healthy, hanging)
    rig.receiver.recover()


async def test_graph_invocation_does_not_wait_for_a_hanging_opik(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(request_timeout_s=HANG_TIMEOUT_S)
    rig.receiver.hang(10.0)
    now = datetime.now(UTC).isoformat()
    for batch in range(3):
        events = [
            {"span_id": f"s{batch}-{i}", "trace_id": f"trace-{batch}", "agent_name": "drift_monitor",
             "operation": "check", "started_at": now, "duration_ms": 1.0, "status": "ok"}
            for i in range(20)
        ]  # fmt: skip
        started = time.perf_counter()
        state = await graph.ainvoke({"events_to_log": events}, context=rig.context)
        elapsed = time.perf_counter() - started
        assert elapsed < FAST_OPIK["wait_s"] + 0.5
        assert state["db_writes_successful"] is True and state["db_write_count"] == 20
        assert state["opik_spans_sent"] == 0 and state["opik_spans_queued"] == 20
        assert not state.get("error")
    rig.receiver.recover()
    assert await rig.opik.wait_until_sent(10)
    assert len(rig.receiver.spans) == 60 and rig.receiver.duplicate_span_ids() == []


async def test_a_rejected_batch_is_recorded_not_retried_and_holds_nothing_up(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    receiver = rig.receiver
    receiver.reject_when(
        lambda kind, item: kind == "spans" and item.get("name") == "poison", "spans[0].name: rejected by the test"
    )
    trace_ids = []
    for poison in (False, True, False):  # each batch on its own: a joined request is the next test's case
        trace_ids.append(make_trace(rig.obs, poison=poison))
        assert await rig.obs.flush(5)
        assert await rig.opik.wait_until_sent(5)
    first, _poisoned, last = trace_ids

    assert len(receiver.batch_posts("spans", 400)) == 1, "a rejected batch is never retried"
    assert len(receiver.batch_posts("spans", 204)) == 2
    status = rig.opik.get_status()
    assert status["spans_rejected"] == 10 and status["backlog_spans"] == 0
    assert "HTTP 400" in status["rejections"][0]["reason"]
    assert "rejected by the test" in status["rejections"][0]["reason"]
    assert status["state"] == "closed" and status["circuit_breaker"]["failures"] == 0
    dead = [d for d in rig.delivery.spool.dead_letters() if d[0] == "opik"]
    assert len(dead) == 10 and all("HTTP 400" in reason for _, _, reason in dead), "kept with Opik's reason"
    delivered = {body["metadata"]["obs_trace_id"] for body in receiver.spans.values()}
    assert delivered == {first, last}
    assert len(await stored_spans(rig, trace_ids)) == 30, "the store keeps the rejected batch"

    # The orchestrator's path reports it in the state; the store write still succeeds.
    event = {"span_id": "p1", "trace_id": "trace_poison", "agent_name": "gap_analyzer", "operation": "poison",
             "started_at": datetime.now(UTC).isoformat(), "duration_ms": 1.0, "status": "ok"}  # fmt: skip
    state = await graph.ainvoke({"events_to_log": [event]}, context=rig.context)
    assert state["db_writes_successful"] is True and state["db_write_count"] == 1
    assert "rejected by opik: HTTP 400" in (state["opik_error"] or "")
    assert state["opik_spans_sent"] == 0 and state["opik_spans_queued"] == 0
    assert len(receiver.batch_posts("spans", 400)) == 2


async def test_a_non_uuid7_id_is_rejected_by_the_receiver_as_by_opik(opik_receiver: OpikReceiver) -> None:
    """The receiver is as strict as the real server: the guard our id mapping exists for."""
    import httpx

    body = {"spans": [{"id": "span_123", "trace_id": opik_trace_id("t"), "start_time": "2026-11-26T10:00:00Z"}]}
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{opik_receiver.url}/v1/private/spans/batch", json=body)
    assert response.status_code == 400
    assert "version 7" in response.json()["errors"][0]


async def test_closing_while_opik_is_down_keeps_the_batch_in_the_spool_for_the_next_start(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(breaker={"recovery_timeout_s": 30})
    rig.receiver.mode = "error"
    trace_id = make_trace(rig.obs)
    assert await rig.obs.flush(5)
    await wait_until_async(lambda: rig.delivery.in_flight == 0, 5)
    started = time.perf_counter()
    await rig.obs.aclose()
    assert time.perf_counter() - started < 1.0, "closing does not wait for Opik"
    assert rig.delivery.spool.backlog("opik") == (1, 10)

    # The next process (a new delivery on the same spool) sends it once Opik answers.
    rig.receiver.recover()
    settings = rig.context.settings
    sink = OpikSink(OpikConfig.from_settings(settings, {}), tier_names=REGISTRY.tier_names)
    again = build_deliveries(rig.store, settings, REGISTRY, opik=sink).opik
    assert again is not None and again.backlogged
    assert await again.drain()
    await again.aclose()
    await assert_exactly_once(rig, [trace_id])


async def test_one_slow_answer_does_not_hold_the_other_request_slot(make_rig: Callable[..., Rig]) -> None:
    """While one batch waits for a slow answer, the other slot keeps sending the batches behind it."""
    rig = make_rig(max_items_per_request=100, request_timeout_s=5.0)
    receiver = rig.receiver
    receiver.slow_span_batches = [1.5]  # the first spans request is answered 1.5 s late, the rest at once
    traces = [make_trace(rig.obs) for _ in range(60)]  # 600 spans: six requests of 100
    assert await rig.obs.flush(10)
    await wait_until_async(lambda: len(receiver.spans) >= 500, 1.2)  # the five others, while the first waits
    assert receiver.active_span_batches == 1 and receiver.max_active_span_batches == 2
    assert await rig.opik.wait_until_sent(10)
    await assert_exactly_once(rig, traces)


async def test_a_slow_server_gets_two_requests_at_once_and_every_span_exactly_once(
    make_rig: Callable[..., Rig],
) -> None:
    """A distant server (every batch answered 0.2 s later): while healthy, two batches overlap,
    never more than ``max_requests_in_flight``; after an outage the spool is replayed one batch at a time."""
    rig = make_rig(max_items_per_request=100, request_timeout_s=5.0)
    receiver = rig.receiver
    receiver.delay_s = 0.2
    traces = [make_trace(rig.obs) for _ in range(60)]  # 600 spans: six requests of 100
    assert await rig.obs.flush(10)
    assert await rig.opik.wait_until_sent(20)
    assert receiver.max_active_span_batches == 2
    await assert_exactly_once(rig, traces)

    receiver.mode = "error"
    receiver.max_active_span_batches = 0
    failing = [make_trace(rig.obs) for _ in range(30)]
    assert await rig.obs.flush(10)
    await wait_until_async(lambda: rig.delivery.stats.batches_failed >= 3 and rig.delivery.in_flight == 0, 10)
    receiver.max_active_span_batches = 0  # from here on only replays of the spool's head, one batch at a time
    await wait_until_async(lambda: rig.delivery.stats.batches_failed >= 5, 10)
    assert receiver.max_active_span_batches <= 2, "one batch (a flush of 300 spans is 3 requests, 2 at once)"
    receiver.recover()
    assert await rig.opik.wait_until_sent(20)
    assert rig.delivery.breaker.state is CircuitState.CLOSED
    await assert_exactly_once(rig, traces + failing)


async def test_max_requests_in_flight_bounds_the_sink_not_each_batch(opik_receiver: OpikReceiver) -> None:
    """Two big batches sent at once (a flusher bite under a backlog, plus a detached send) still
    put at most ``max_requests_in_flight`` requests before the server."""
    from tests.fixtures.span_rows import make_span

    config = OpikConfig(
        url=opik_receiver.url, max_items_per_request=50, max_requests_in_flight=2, request_timeout_s=5.0
    )
    sink = OpikSink(config, tier_names=REGISTRY.tier_names)
    opik_receiver.delay_s = 0.05
    batches = [[make_span(trace_id=f"{n:032x}") for _ in range(200)] for n in (1, 2)]  # 4 requests each
    try:
        results = await asyncio.gather(*(sink.send(batch) for batch in batches))
    finally:
        await sink.aclose()
    assert [r.delivered for r in results] == [200, 200]
    assert len(opik_receiver.spans) == 400
    assert opik_receiver.max_active_span_batches == 2  # per batch it would have been 4
