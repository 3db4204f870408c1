"""Bounded load tests: every span produced is stored once and reaches Opik once, through
concurrency, big batches, an Opik outage and a Postgres outage (the suite's own server
stopped and started again mid-run).

Each test checks the same three things: rows in the store = spans produced, spans at the
Opik receiver = spans produced, no duplicates anywhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
from src.agents.ml_foundation.observability_connector.graph import graph
from src.mlops import opik_span_id
from src.repositories.observability_span import ObservabilitySpanRepository
from src.repositories.sqlite import SQLiteSpanRepository
from tests.fixtures.opik_receiver import OpikReceiver
from tests.fixtures.opik_rig import Rig, context_for, make_rig, rig_settings
from tests.fixtures.waiting import wait_until_async

__all__ = ["make_rig"]  # the fixture, used by name

#: The load tests' own pace: bigger queues, slower backoff, a quicker breaker than the rig's defaults.
LOAD: dict[str, Any] = {
    "request_timeout_s": 5.0,
    "breaker": {"recovery_timeout_s": 0.5},
    "batching": {
        "max_batch_wait_s": 0.1,
        "max_queue_size": 200_000,
        "retry_initial_s": 0.05,
        "retry_max_s": 0.5,
        "sink_timeout_s": 3.0,
        "shutdown_timeout_s": 2.0,
    },
}


def sqlite_store(tmp_path: Path) -> ObservabilitySpanRepository:
    return ObservabilitySpanRepository(SQLiteSpanRepository(tmp_path / "spans.db"))


async def settle(rig: Rig, produced: set[tuple[str, str]], timeout: float = 60) -> None:
    """Flush, then wait until the store's spool and Opik's backlog are empty."""
    assert await rig.obs.flush(timeout=timeout)
    delivery = rig.context.store_delivery
    await wait_until_async(lambda: not delivery.backlogged, timeout, "the store's spool to drain", interval=0.02)
    expected = {opik_span_id(t, s) for t, s in produced}
    await wait_until_async(
        lambda: expected <= set(rig.receiver.spans), timeout, "Opik to receive every span", interval=0.02
    )


async def assert_exactly_once(rig: Rig, produced: set[tuple[str, str]]) -> None:
    traces = {t for t, _ in produced}
    stored: list[Any] = []
    for trace_id in traces:
        stored.extend(await rig.store.get_spans_by_trace_id(trace_id))
    keys = [(s.trace_id, s.span_id) for s in stored]
    assert len(keys) == len(set(keys)), "a span was stored twice"
    assert set(keys) == produced, f"store has {len(set(keys))} of {len(produced)} spans"
    assert await rig.store.count_spans() == len(produced)
    assert set(rig.receiver.spans) == {opik_span_id(t, s) for t, s in produced}
    assert rig.receiver.duplicate_span_ids() == []


async def emit_trace(obs: ObservabilityConnectorAgent, width: int, produced: set[tuple[str, str]]) -> None:
    async with obs.span("route_request", "orchestrator") as root:
        produced.add((root.trace_id, root.span_id))
        for i in range(width):
            async with obs.span(f"step_{i}", "gap_analyzer") as child:
                await asyncio.sleep(0)
            produced.add((child.trace_id, child.span_id))


async def test_100_concurrent_emitters(make_rig: Callable[..., Rig], tmp_path: Path) -> None:
    rig = make_rig(sqlite_store(tmp_path), **LOAD)
    produced: set[tuple[str, str]] = set()
    await asyncio.gather(*(emit_trace(rig.obs, 9, produced) for _ in range(100)))
    assert len(produced) == 1_000
    await settle(rig, produced)
    await assert_exactly_once(rig, produced)


async def test_1000_spans_in_one_batch(make_rig: Callable[..., Rig], tmp_path: Path) -> None:
    rig = make_rig(sqlite_store(tmp_path), **LOAD)
    t0 = datetime.now(UTC) - timedelta(minutes=1)
    trace_id = "0" * 16 + "1" * 16
    events = [
        {
            "span_id": f"{i + 1:016x}",
            "trace_id": trace_id,
            "parent_span_id": None if i == 0 else f"{1:016x}",
            "agent_name": "causal_impact",
            "operation": "estimate",
            "started_at": (t0 + timedelta(milliseconds=i)).isoformat(),
            "duration_ms": 5.0,
            "status": "completed",
        }
        for i in range(1_000)
    ]
    state = await graph.ainvoke({"events_to_log": events}, context=rig.context)
    assert state["events_logged"] == 1_000 and state["db_write_count"] == 1_000
    produced = {(trace_id, e["span_id"]) for e in events}
    await settle(rig, produced)
    await assert_exactly_once(rig, produced)


async def test_opik_outage_and_recovery(make_rig: Callable[..., Rig], tmp_path: Path) -> None:
    rig = make_rig(sqlite_store(tmp_path), **LOAD)
    produced: set[tuple[str, str]] = set()
    for _ in range(20):
        await emit_trace(rig.obs, 9, produced)
    await rig.obs.flush(timeout=30)
    rig.receiver.mode = "error"
    for _ in range(100):
        await emit_trace(rig.obs, 9, produced)
    await rig.obs.flush(timeout=30)
    assert await rig.store.count_spans() == len(produced)  # the store never waited for Opik
    rig.receiver.mode = "ok"
    for _ in range(20):
        await emit_trace(rig.obs, 9, produced)
    await settle(rig, produced)
    await assert_exactly_once(rig, produced)


async def test_a_long_opik_outage_waits_on_disk_and_loses_nothing(make_rig: Callable[..., Rig], tmp_path: Path) -> None:
    """Refused connections while 3,000 spans arrive: they wait in the spool, not in memory."""
    rig = make_rig(sqlite_store(tmp_path), **LOAD)
    produced: set[tuple[str, str]] = set()
    rig.receiver.refuse()
    for _ in range(300):
        await emit_trace(rig.obs, 9, produced)
    await rig.obs.flush(timeout=30)
    opik = rig.context.opik_delivery
    await wait_until_async(lambda: opik.in_flight == 0, 10, "Opik's sends in flight to settle")
    assert opik.spool.backlog("opik")[1] == len(produced), "every span waits on disk for Opik"
    rig.receiver.resume()
    await settle(rig, produced, timeout=60)
    assert await rig.opik.wait_until_sent(30)
    await assert_exactly_once(rig, produced)


async def test_postgres_outage_and_recovery(make_rig: Callable[..., Rig], outage_postgres: Any) -> None:
    """The suite's own throwaway server is stopped mid-run and started again."""
    from src.repositories.postgres import PostgresSpanRepository

    cluster, dsn = outage_postgres
    store = ObservabilitySpanRepository(PostgresSpanRepository(dsn, connect_timeout_s=1.0, pool_timeout_s=2.0))
    rig = make_rig(store, **LOAD)
    produced: set[tuple[str, str]] = set()
    for _ in range(30):
        await emit_trace(rig.obs, 9, produced)
    await rig.obs.flush(timeout=30)
    assert await store.count_spans() == 300

    cluster.pause()
    for _ in range(150):
        await emit_trace(rig.obs, 9, produced)
    await rig.obs.flush(timeout=60)
    status = rig.obs.get_status()
    assert status["spool"]["spans"] > 0, status  # waiting on disk, not in memory, not lost
    cluster.resume()

    for _ in range(30):
        await emit_trace(rig.obs, 9, produced)
    await settle(rig, produced, timeout=90)
    await assert_exactly_once(rig, produced)


async def test_opik_spans_left_on_disk_by_a_closed_process_are_sent_by_the_next(
    opik_receiver: OpikReceiver, tmp_path: Path
) -> None:
    """A process closes while Opik is down; the next process with the same spool delivers them."""
    from src.agents.ml_foundation.observability_connector.spool import Spool

    store = sqlite_store(tmp_path)
    settings = rig_settings(
        opik_receiver.url, tmp_path / "spool.db", breaker=LOAD["breaker"], batching=LOAD["batching"],
        request_timeout_s=LOAD["request_timeout_s"],
    )  # fmt: skip
    obs = ObservabilityConnectorAgent(context=context_for(store, settings))
    produced: set[tuple[str, str]] = set()
    opik_receiver.refuse()
    for _ in range(50):
        await emit_trace(obs, 9, produced)
    await obs.flush(timeout=30)
    await obs.aclose()
    assert Spool(tmp_path / "spool.db").stats().pending_by_sink.get("opik", 0) > 0

    opik_receiver.resume()
    second = context_for(store, settings)
    try:
        expected = {opik_span_id(t, s) for t, s in produced}
        second.opik_delivery.ensure_replaying()  # what the agent's flusher does as it starts
        # Batches waiting on disk are not "sent": wait_until_sent returns only once they are.
        assert await second.opik.wait_until_sent(30)
        assert expected <= set(opik_receiver.spans)
        assert opik_receiver.duplicate_span_ids() == []
    finally:
        for delivery in second.deliveries:
            await delivery.aclose()
        await store.close()
