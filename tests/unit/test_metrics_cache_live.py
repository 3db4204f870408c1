"""Bounded staleness (``max_staleness_s``) in the in-process cache: served stale-while-revalidate.

The same behaviour against a real Redis (and its near-cache) is in
``tests/integration/test_metrics_cache_live_redis.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from src.agents.ml_foundation.observability_connector import cache as cache_module
from src.agents.ml_foundation.observability_connector.cache import MetricsCache
from src.agents.ml_foundation.observability_connector.config import (
    CacheSettings,
    ObservabilitySettings,
    load_registry,
)
from src.agents.ml_foundation.observability_connector.nodes.metrics_aggregator import (
    aggregate_metrics,
    compute_metrics,
    metrics_from_store,
)
from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext
from src.repositories.observability_span import ObservabilitySpanRepository
from src.repositories.sqlite import SQLiteSpanRepository
from tests.fixtures.counting_store import CountingStore
from tests.fixtures.metrics_reference import write_events

CACHE_LOGGER = "src.agents.ml_foundation.observability_connector.cache_live"


def _event(span_id: str, age_s: float = 1.0) -> dict[str, Any]:
    return {
        "span_id": span_id,
        "trace_id": "t-live",
        "agent_name": "explainer",
        "operation": "op",
        "started_at": (datetime.now(UTC) - timedelta(seconds=age_s)).isoformat(),
        "duration_ms": 10.0,
        "status": "ok",
    }


@pytest.fixture
async def ctx(tmp_path: Path) -> Any:
    store = CountingStore(ObservabilitySpanRepository(SQLiteSpanRepository(tmp_path / "live.db")))
    settings = ObservabilitySettings()
    context = ConnectorContext(store=store, settings=settings, registry=load_registry(), cache=MetricsCache())
    yield context
    await context.cache.aclose()
    await store.close()


async def test_a_strict_read_after_a_write_includes_it_even_beside_a_stale_entry(ctx: ConnectorContext) -> None:
    await write_events(ctx, [_event("a1")])
    bounded, _, _ = await compute_metrics(ctx, "1h", max_staleness_s=60)
    assert bounded["total_spans_analyzed"] == 1
    await write_events(ctx, [_event("a2")])
    strict, from_cache, age = await compute_metrics(ctx, "1h")  # default: cache.live_staleness_s = 0
    assert (strict["total_spans_analyzed"], from_cache, age) == (2, False, 0.0)
    zero, from_cache, _ = await compute_metrics(ctx, "1h", max_staleness_s=0)
    assert (zero["total_spans_analyzed"], from_cache) == (2, True)  # the strict entry, still valid


async def test_within_the_bound_the_answer_comes_from_the_cache_without_a_store_query(ctx: ConnectorContext) -> None:
    store: Any = ctx.store
    await write_events(ctx, [_event("b1")])
    first, from_cache, _ = await compute_metrics(ctx, "1h", max_staleness_s=60)
    assert (first["total_spans_analyzed"], from_cache, store.reads) == (1, False, 1)
    await write_events(ctx, [_event("b2")])  # drops the strict entry, not the bounded one
    for _ in range(5):
        again, from_cache, age = await compute_metrics(ctx, "1h", max_staleness_s=60)
        assert (again, from_cache) == (first, True) and 0 <= age <= 60
    assert store.reads == 1 and ctx.cache.get_status()["refreshes"] == 1
    assert (await compute_metrics(ctx, "1h"))[0]["total_spans_analyzed"] == 2  # strict still sees it


async def test_past_the_bound_many_concurrent_readers_cause_exactly_one_refresh(ctx: ConnectorContext) -> None:
    store: Any = ctx.store
    await write_events(ctx, [_event("c1")])
    await compute_metrics(ctx, "1h", max_staleness_s=60)
    await write_events(ctx, [_event("c2"), _event("c3")])
    await asyncio.sleep(0.02)
    answers = await asyncio.gather(*(compute_metrics(ctx, "1h", max_staleness_s=0.01) for _ in range(20)))
    assert store.reads == 2  # the first answer, then one refresh for all twenty
    assert {a[0]["total_spans_analyzed"] for a in answers} == {3}
    assert not any(from_cache for _, from_cache, _ in answers)
    assert ctx.cache.get_status()["refreshes"] == 2
    # The refreshed entry now serves readers with a looser bound.
    again, from_cache, _ = await compute_metrics(ctx, "1h", max_staleness_s=60)
    assert (again["total_spans_analyzed"], from_cache, store.reads) == (3, True, 2)


async def test_a_reader_whose_fetch_returns_after_a_refresh_finished_takes_that_refresh(
    ctx: ConnectorContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Staleness counts from the question: a snapshot taken after it is fresh enough, however long
    the reader's own fetch took (a slow Redis round trip under load made CI flaky: the late reader
    saw the new entry as already "old" and read the store again)."""
    store: Any = ctx.store
    await write_events(ctx, [_event("l0")])
    await compute_metrics(ctx, "1h", max_staleness_s=60)
    await write_events(ctx, [_event("l1")])
    await asyncio.sleep(0.03)
    backend: Any = ctx.cache._backend
    fetch = backend.get
    calls = 0

    async def second_fetch_is_slow(key: str, ttl: float) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:  # the second reader asked at once but its fetch returns 0.2 s later
            await asyncio.sleep(0.2)
        return await fetch(key, ttl)

    monkeypatch.setattr(backend, "get", second_fetch_is_slow)
    first, late = await asyncio.gather(*(compute_metrics(ctx, "1h", max_staleness_s=0.01) for _ in range(2)))
    await ctx.cache.wait_for_refreshes()
    assert (first[0]["total_spans_analyzed"], first[1]) == (2, False)
    assert (late[0]["total_spans_analyzed"], late[1], store.reads) == (2, True, 2)


async def test_an_ageing_entry_is_refreshed_in_the_background_once(
    ctx: ConnectorContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    store: Any = ctx.store
    monkeypatch.setattr(cache_module, "REFRESH_AT", 0.0)  # every hit counts as "old enough to refresh"
    await write_events(ctx, [_event("d1")])
    await compute_metrics(ctx, "1h", max_staleness_s=60)
    await write_events(ctx, [_event("d2")])
    served = await asyncio.gather(*(compute_metrics(ctx, "1h", max_staleness_s=60) for _ in range(10)))
    assert all(from_cache and fields["total_spans_analyzed"] == 1 for fields, from_cache, _ in served)
    await ctx.cache.wait_for_refreshes()
    assert store.reads == 2  # ten hits, one background refresh
    fresh, from_cache, _ = await compute_metrics(ctx, "1h", max_staleness_s=60)
    assert (fresh["total_spans_analyzed"], from_cache) == (2, True)


async def test_a_failing_store_during_a_refresh_never_reaches_the_reader(
    ctx: ConnectorContext, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store: Any = ctx.store
    monkeypatch.setattr(cache_module, "REFRESH_AT", 0.0)
    await write_events(ctx, [_event("e1")])
    first, _, _ = await compute_metrics(ctx, "1h", max_staleness_s=60)
    store.fail = True
    with caplog.at_level(logging.WARNING, logger=CACHE_LOGGER):
        for _ in range(3):
            served, from_cache, _ = await compute_metrics(ctx, "1h", max_staleness_s=60)
            assert (served, from_cache) == (first, True)
            await ctx.cache.wait_for_refreshes()
    status = ctx.cache.get_status()
    assert status["refresh_errors"] == 3 and store.reads == 4
    assert [r.getMessage() for r in caplog.records if "refreshing a cached answer failed" in r.getMessage()]
    # The graph node, too, answers from the cache while its refresh fails.
    state = await aggregate_metrics({"time_window": "1h", "max_staleness_s": 60}, _runtime(ctx))
    assert state["quality_metrics_computed"] and state["metrics_from_cache"] and "error" not in state
    assert 0 <= state["metrics_age_s"] <= 60
    await ctx.cache.wait_for_refreshes()
    # A reader past its bound has no answer to fall back on: it gets the store's error (the node
    # turns it into error / error_type, as for a strict question).
    state = await aggregate_metrics({"time_window": "1h", "max_staleness_s": 0.0001}, _runtime(ctx))
    assert state["quality_metrics_computed"] is False and state["error_type"] == "metrics_aggregation_error"


async def test_answers_are_never_older_than_the_bound_plus_one_refresh(ctx: ConnectorContext) -> None:
    """Writes and bounded reads interleaved: every answer counts every span committed before
    (answer time − its age), and its age is at most the bound plus the longest refresh."""
    bound = 0.05
    commits: list[tuple[float, int]] = []
    refresh_s: list[float] = []

    async def timed() -> dict[str, Any]:
        started = time.time()
        try:
            return await metrics_from_store(ctx, "1h")
        finally:
            refresh_s.append(time.time() - started)

    key = ("freshness-test",)
    for i in range(25):
        await write_events(ctx, [_event(f"f{i}")])
        commits.append((time.time(), i + 1))
        asked = time.time()
        answers = await asyncio.gather(*(ctx.cache.aget_within(key, 3600, bound, timed) for _ in range(3)))
        answered = time.time()
        for fields, from_cache, age in answers:
            snapshot = answered - age
            committed = max((n for t, n in commits if t <= snapshot), default=0)
            assert fields["total_spans_analyzed"] >= committed
            assert age <= bound + max(refresh_s) + (answered - commits[-1][0]) or from_cache
            if from_cache:  # at most the bound when asked; it ages while the answer is fetched
                assert age <= bound + (answered - asked)
        await asyncio.sleep(0.01)
    await ctx.cache.wait_for_refreshes()


async def test_the_bound_is_validated_and_the_setting_is_the_default(tmp_path: Path) -> None:
    store = ObservabilitySpanRepository(SQLiteSpanRepository(tmp_path / "s.db"))
    cache = MetricsCache(CacheSettings(live_staleness_s=30))
    ctx = ConnectorContext(store=store, settings=ObservabilitySettings(), registry=load_registry(), cache=cache)
    try:
        await write_events(ctx, [_event("g1")])
        await compute_metrics(ctx, "1h")
        await write_events(ctx, [_event("g2")])
        stale, from_cache, _ = await compute_metrics(ctx, "1h")  # the setting applies: a dashboard deployment
        assert (stale["total_spans_analyzed"], from_cache) == (1, True)
        strict, from_cache, _ = await compute_metrics(ctx, "1h", max_staleness_s=0)  # the caller's choice wins
        assert (strict["total_spans_analyzed"], from_cache) == (2, False)
        for bad in (-1, 3601, "5", True):
            state = await aggregate_metrics({"time_window": "1h", "max_staleness_s": bad}, _runtime(ctx))
            assert state["quality_metrics_computed"] is False and "max_staleness_s" in state["error"]
    finally:
        await cache.aclose()
        await store.close()
    with pytest.raises(ValueError):
        CacheSettings(live_staleness_s=-1)


def _runtime(ctx: ConnectorContext) -> Any:
    from langgraph.runtime import Runtime

    return Runtime(context=ctx)


async def test_the_graph_takes_the_bound_and_reports_the_age(ctx: ConnectorContext) -> None:
    from src.agents.ml_foundation.observability_connector.graph import graph

    await write_events(ctx, [_event("h1")])
    first = await graph.ainvoke({"time_window": "1h", "max_staleness_s": 60}, context=ctx)
    await write_events(ctx, [_event("h2")])
    second = await graph.ainvoke({"time_window": "1h", "max_staleness_s": 60}, context=ctx)
    assert (first["total_spans_analyzed"], second["total_spans_analyzed"]) == (1, 1)
    assert second["metrics_from_cache"] is True and 0 <= second["metrics_age_s"] <= 60
    strict = await graph.ainvoke({"time_window": "1h"}, context=ctx)
    assert strict["total_spans_analyzed"] == 2 and "metrics_age_s" not in strict


async def test_the_agent_passes_the_bound_through(ctx: ConnectorContext) -> None:
    from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent

    agent = ObservabilityConnectorAgent(context=ctx)
    try:
        await write_events(ctx, [_event("i1")])
        first = await agent.get_quality_metrics({"time_window": "1h", "max_staleness_s": 60})
        await write_events(ctx, [_event("i2")])
        stale = await agent.get_quality_metrics({"time_window": "1h", "max_staleness_s": 60})
        strict = await agent.get_quality_metrics({"time_window": "1h"})
        assert (first["total_spans_analyzed"], stale["total_spans_analyzed"]) == (1, 1)
        assert strict["total_spans_analyzed"] == 2 and strict["quality_metrics_computed"]
    finally:
        await agent.aclose()
