"""The in-process metrics cache: hits, misses, expiry, precise invalidation, the write/compute race.

The same behaviour against a real Redis is in ``tests/integration/test_metrics_cache_redis.py``.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from src.agents.ml_foundation.observability_connector.cache import MetricsCache, newest_start
from src.agents.ml_foundation.observability_connector.config import CacheSettings, load_registry
from src.agents.ml_foundation.observability_connector.nodes.metrics_aggregator import compute_metrics
from src.agents.ml_foundation.observability_connector.redaction import redact_url
from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext
from src.repositories.observability_span import ObservabilitySpanRepository
from tests.fixtures.metrics_reference import write_events

HOUR = 3600.0
DAY = 86_400.0


async def _put(cache: MetricsCache, key: tuple[Any, ...], value: Any, window_s: float) -> Any:
    generation = await cache.generation()
    return await cache.aput(key, value, window_s, generation=generation, window_start=time.time() - window_s)


def _event(span_id: str, age_s: float, agent: str = "explainer") -> dict[str, Any]:
    return {
        "span_id": span_id,
        "trace_id": "t-1",
        "agent_name": agent,
        "operation": "op",
        "started_at": (datetime.now(UTC) - timedelta(seconds=age_s)).isoformat(),
        "duration_ms": 10.0,
        "status": "ok",
    }


def test_ttl_grows_with_the_window() -> None:
    cache = MetricsCache()
    assert cache.backend == "memory"
    assert [cache.ttl_for(s) for s in (1800, HOUR, 6 * HOUR, DAY, 7 * DAY)] == [60, 60, 300, 300, 600]
    custom = MetricsCache(CacheSettings(ttl_short_s=1, ttl_day_s=2, ttl_long_s=3))
    assert [custom.ttl_for(s) for s in (HOUR, DAY, 7 * DAY)] == [1, 2, 3]


async def test_miss_then_hit_and_status() -> None:
    cache = MetricsCache()
    key = ("metrics", "store", 3600, None, None)
    assert await cache.aget(key, HOUR) is None
    stored = await _put(cache, key, {"p95": 1.5, "by": {"a": [1, 2]}}, HOUR)
    assert stored is not None
    hit = await cache.aget(key, HOUR)
    assert hit is not None and hit.value == {"p95": 1.5, "by": {"a": [1, 2]}}
    assert 0 <= hit.age_s < 5
    assert await cache.aget(("metrics", "store", 3600, "explainer", None), HOUR) is None  # filters are part of the key
    status = cache.get_status()
    assert status["backend"] == "memory"
    assert (status["hits"], status["misses"], status["stores"], status["entries"]) == (1, 2, 1, 1)
    assert status["hit_rate"] == pytest.approx(1 / 3)


async def test_a_hit_is_a_copy_callers_may_mutate() -> None:
    cache = MetricsCache()
    key = ("k",)
    await _put(cache, key, {"by_agent": {"a": 1}}, HOUR)
    first = await cache.aget(key, HOUR)
    assert first is not None
    first.value["by_agent"]["a"] = 999
    second = await cache.aget(key, HOUR)
    assert second is not None and second.value == {"by_agent": {"a": 1}}


async def test_entries_expire_after_their_window_ttl() -> None:
    cache = MetricsCache(CacheSettings(ttl_short_s=0.15, ttl_day_s=10))
    await _put(cache, ("short",), 1, HOUR)
    await _put(cache, ("day",), 2, DAY)
    await asyncio.sleep(0.25)  # the TTL under test must pass: MemoryBackend's timer (time.monotonic) takes no clock
    assert await cache.aget(("short",), HOUR) is None
    assert (await cache.aget(("day",), DAY)) is not None


async def test_zero_ttl_disables_caching_for_that_window() -> None:
    cache = MetricsCache(CacheSettings(ttl_short_s=0))
    assert await _put(cache, ("k",), 1, HOUR) is None
    assert await cache.aget(("k",), HOUR) is None


async def test_invalidation_drops_only_windows_reaching_back_to_the_new_spans() -> None:
    cache = MetricsCache()
    for name, seconds in (("30m", 1800), ("1h", HOUR), ("24h", DAY), ("7d", 7 * DAY)):
        await _put(cache, (name,), name, seconds)
    await cache.ainvalidate_since([datetime.now(UTC) - timedelta(hours=3), datetime.now(UTC) - timedelta(days=2)])
    kept = [
        name for name, s in (("30m", 1800), ("1h", HOUR), ("24h", DAY), ("7d", 7 * DAY)) if await cache.aget((name,), s)
    ]
    assert kept == ["30m", "1h"]  # the newest new span is 3 h old: inside 24h and 7d only
    await cache.ainvalidate_since(time.time() - 10)
    assert await cache.aget(("30m",), 1800) is None
    await _put(cache, ("30m",), "again", 1800)
    await cache.ainvalidate_since([])  # nothing new stored: nothing changes
    assert await cache.aget(("30m",), 1800) is not None
    await cache.ainvalidate_since(None)  # "anything may have changed"
    assert await cache.aget(("30m",), 1800) is None
    assert cache.get_status()["entries_invalidated"] == 5


async def test_an_answer_computed_across_a_write_into_its_window_is_not_stored() -> None:
    cache = MetricsCache()
    key = ("1h",)
    generation = await cache.generation()
    window_start = time.time() - HOUR
    await cache.ainvalidate_since(time.time())  # a writer commits while the reader is reading the store
    assert await cache.aput(key, "stale", HOUR, generation=generation, window_start=window_start) is None
    assert cache.get_status()["stale_discarded"] == 1
    # ...but a write entirely before the window does not cost the answer.
    generation = await cache.generation()
    window_start = time.time() - HOUR
    await cache.ainvalidate_since(time.time() - 2 * HOUR)
    assert await cache.aput(key, "fine", HOUR, generation=generation, window_start=window_start) is not None


async def test_sync_invalidate_since_works_without_a_loop() -> None:
    cache = MetricsCache()
    await _put(cache, ("k",), 1, HOUR)
    cache.invalidate_since()
    assert await cache.aget(("k",), HOUR) is None


async def test_lru_bound() -> None:
    cache = MetricsCache(CacheSettings(max_entries=3))
    for i in range(5):
        await _put(cache, (i,), i, HOUR)
    assert cache.get_status()["entries"] == 3
    assert await cache.aget((0,), HOUR) is None and await cache.aget((4,), HOUR) is not None


def test_newest_start_forms() -> None:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    assert newest_start(None) == float("inf")
    assert newest_start([]) is None
    assert newest_start(t) == t.timestamp()
    assert newest_start(iter([t, t + timedelta(seconds=5), t - timedelta(days=1)])) == t.timestamp() + 5
    assert newest_start(12.5) == 12.5
    # Mixed forms (epoch seconds with datetimes, naive with aware) are compared as instants.
    assert newest_start([t, t.timestamp() + 7, t - timedelta(hours=1)]) == t.timestamp() + 7
    naive = datetime(2026, 1, 1, 0, 0, 3)  # local time, as datetime.timestamp() reads it
    assert newest_start([t, naive]) == max(t.timestamp(), naive.timestamp())
    later_zone = datetime(2026, 1, 1, 1, 0, 1, tzinfo=timezone(timedelta(hours=1)))  # 00:00:01 UTC
    assert newest_start([later_zone, t]) == t.timestamp() + 1


def test_redis_url_password_is_never_shown() -> None:
    assert redact_url("redis://:s3cret@cache.internal:6380/2") == "redis://:***@cache.internal:6380/2"
    assert redact_url("rediss://app:s3cret@cache/0") == "rediss://app:***@cache/0"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


async def test_metrics_node_uses_the_cache_and_writes_invalidate_it(
    store: ObservabilitySpanRepository, settings: Any
) -> None:
    ctx = ConnectorContext(store=store, settings=settings, registry=load_registry())
    await write_events(ctx, [_event(f"a{i}", 60) for i in range(3)])
    first, from_cache, _ = await compute_metrics(ctx, "1h")
    assert (first["total_spans_analyzed"], from_cache) == (3, False)
    again, from_cache, age = await compute_metrics(ctx, "1h")
    assert (again, from_cache) == (first, True) and age >= 0
    day, _, _ = await compute_metrics(ctx, "24h")

    await write_events(ctx, [_event("old", 3 * HOUR)])  # outside 1h, inside 24h
    _, from_cache, _ = await compute_metrics(ctx, "1h")
    assert from_cache
    day_after, from_cache, _ = await compute_metrics(ctx, "24h")
    assert not from_cache and day_after["total_spans_analyzed"] == day["total_spans_analyzed"] + 1

    await write_events(ctx, [_event("new", 1)])
    now, from_cache, _ = await compute_metrics(ctx, "1h")
    assert not from_cache and now["total_spans_analyzed"] == 4
    # A re-sent batch stores nothing, so it invalidates nothing.
    await write_events(ctx, [_event("new", 1)])
    assert (await compute_metrics(ctx, "1h"))[1] is True


def test_near_cache_refuses_answers_that_raced_an_invalidation_or_a_lost_subscription() -> None:
    """The Redis near-cache's bookkeeping, without Redis (the subscriber thread is not started)."""
    from src.agents.ml_foundation.observability_connector.cache_near import NearCache

    near = NearCache("redis://127.0.0.1:1/0", "ch", max_entries=8, timeout_s=0.1, retry_s=0.1)
    far = time.time() + 60
    assert near.token() is None and not near.offer(0, "k", b"1", 0.0, far)  # not subscribed: keeps nothing
    near.drop_all(live=True)  # what the subscriber does on the server's SUBSCRIBE confirmation

    token = near.token()  # taken before a Redis GET...
    near.invalidate(time.time())  # ...an invalidation is heard while the reply is in flight...
    assert not near.offer(token, "k", b"stale", time.time() - HOUR, far)  # ...so the reply is not kept
    assert near.lookup("k") is None

    token = near.token()
    assert near.offer(token, "1h", b"a", time.time() - HOUR, far)
    assert near.offer(near.token(), "24h", b"b", time.time() - DAY, far)
    assert not near.offer(near.token(), "late", b"c", 0.0, time.time() - 1)  # already past its TTL
    near.invalidate(time.time() - 3 * HOUR)  # precise, as in Redis: only the 24h answer reaches back
    assert (near.lookup("1h"), near.lookup("24h")) == (b"a", None)

    token = near.token()
    near.drop_all(live=False)  # the subscription is lost: nothing local is served or kept
    assert near.lookup("1h") is None and not near.offer(token, "1h", b"a", 0.0, far)
    near.drop_all(live=True)  # resubscribed: starts empty
    assert near.lookup("1h") is None and near.status()["entries"] == 0
