"""The host codebase's metrics-cache API (``get_metrics``, ``set_metrics``, ``get_or_compute``,
``invalidate``, ``clear``) as real operations of our cache, in memory.

The same operations across processes on a real Redis are in
``tests/integration/test_metrics_cache_redis.py``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from src.agents.ml_foundation.observability_connector.cache import MetricsCache
from src.agents.ml_foundation.observability_connector.config import CacheSettings
from src.agents.ml_foundation.observability_connector.nodes.metrics_aggregator import compute_metrics
from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext

WINDOWS = ("30m", "1h", "24h", "7d")


async def test_set_then_get_by_window_and_agent() -> None:
    cache = MetricsCache()
    assert await cache.get_metrics("1h", "orchestrator") is None
    assert await cache.set_metrics("1h", "orchestrator", {"p50": 100, "by": {"a": [1, 2]}}) is True

    got = await cache.get_metrics("1h", "orchestrator")
    assert got == {"p50": 100, "by": {"a": [1, 2]}}
    got["by"]["a"].append(3)  # a caller mutating its answer does not change the cached one
    assert await cache.get_metrics("1h", "orchestrator") == {"p50": 100, "by": {"a": [1, 2]}}
    assert await cache.get_metrics("1h") is None  # the agent is part of the key; None is "all agents"
    assert await cache.get_metrics("24h", "orchestrator") is None
    assert await cache.set_metrics("1d", None, {"all": True})
    assert await cache.get_metrics("24h") == {"all": True}  # "1d" and "24h" are one question

    status = cache.get_status()
    assert (status["hits"], status["misses"], status["stores"]) == (3, 3, 2)


async def test_ttl_per_window_and_per_call() -> None:
    cache = MetricsCache(CacheSettings(ttl_short_s=0.15, ttl_day_s=30, ttl_long_s=60))
    assert [cache.get_ttl(w) for w in WINDOWS] == [0.15, 0.15, 30, 60]
    assert cache.get_status()["ttl_s"] == {"up_to_1h": 0.15, "up_to_24h": 30, "longer": 60}

    await cache.set_metrics("1h", "a", {"v": 1})  # the window's TTL
    await cache.set_metrics("7d", "a", {"v": 2}, ttl=0.15)  # shorter than the window's, on request
    await cache.set_metrics("7d", "b", {"v": 3})
    assert await cache.set_metrics("24h", "a", {"v": 4}, ttl=0) is False  # TTL 0: not cached
    await asyncio.sleep(0.3)  # the TTLs under test must pass: the memory backend's timer takes no clock
    assert await cache.get_metrics("1h", "a") is None
    assert await cache.get_metrics("7d", "a") is None
    assert await cache.get_metrics("7d", "b") == {"v": 3}
    assert await cache.get_metrics("24h", "a") is None


async def test_get_or_compute_computes_once() -> None:
    cache = MetricsCache()
    calls: list[str] = []

    async def compute() -> dict[str, Any]:
        calls.append("async")
        return {"n": len(calls)}

    assert await cache.get_or_compute("24h", "explainer", compute) == {"n": 1}
    assert await cache.get_or_compute("24h", "explainer", compute) == {"n": 1}
    assert await cache.get_or_compute("24h", "explainer", lambda: {"sync": True}) == {"n": 1}
    assert await cache.get_or_compute("7d", "explainer", lambda: {"sync": True}) == {"sync": True}
    assert calls == ["async"]


async def test_an_answer_computed_while_spans_land_in_its_window_is_returned_not_cached() -> None:
    cache = MetricsCache()

    async def compute_while_a_writer_commits() -> dict[str, Any]:
        await cache.ainvalidate_since(time.time())  # spans stored now fall in every window
        return {"stale": "maybe"}

    assert await cache.get_or_compute("1h", None, compute_while_a_writer_commits) == {"stale": "maybe"}
    assert await cache.get_metrics("1h") is None
    assert cache.get_status()["stale_discarded"] == 1


async def test_invalidate_drops_that_window_and_longer_ones_for_every_agent() -> None:
    cache = MetricsCache()
    for window in WINDOWS:
        for agent in ("explainer", "gap_analyzer", None):
            await cache.set_metrics(window, agent, {"w": window})

    dropped = await cache.invalidate(agent="explainer", window="24h")

    assert dropped == 6  # 24h and 7d, each for three agents: the cache does not index by agent
    for window in WINDOWS:
        kept = window in ("30m", "1h")
        for agent in ("explainer", "gap_analyzer", None):
            assert (await cache.get_metrics(window, agent) is not None) is kept, (window, agent)
    assert await cache.invalidate() == 6  # every window
    assert cache.get_status()["entries"] == 0


async def test_clear_drops_the_metrics_nodes_answers_too(connector_context: ConnectorContext) -> None:
    cache = connector_context.cache
    _value, from_cache, _age = await compute_metrics(connector_context, "1h")
    assert not from_cache
    assert (await compute_metrics(connector_context, "1h"))[1]  # the node's answer is cached...
    assert await cache.get_metrics("1h") is None  # ...and never handed out as a host answer
    await cache.set_metrics("1h", None, {"host": 1})

    assert await cache.clear() == 2

    assert not (await compute_metrics(connector_context, "1h"))[1]
    assert await cache.get_metrics("1h") is None


@pytest.mark.parametrize("call", ["get_metrics", "set_metrics", "invalidate", "get_ttl"])
async def test_an_unknown_window_is_a_clear_error(call: str) -> None:
    cache = MetricsCache()
    with pytest.raises(ValueError, match=r"time window 'last week' is not understood; use .*'24h'"):
        if call == "get_metrics":
            await cache.get_metrics("last week")
        elif call == "set_metrics":
            await cache.set_metrics("last week", None, {})
        elif call == "invalidate":
            await cache.invalidate(window="last week")
        else:
            cache.get_ttl("last week")


async def test_expired_answers_are_not_counted_as_invalidated() -> None:
    cache = MetricsCache(CacheSettings(ttl_short_s=0.1))
    await cache.set_metrics("1h", None, {"old": True})
    await cache.set_metrics("24h", None, {"live": True})
    await asyncio.sleep(0.2)  # the 0.1 s TTL must pass: the memory backend's timer takes no clock
    assert await cache.clear() == 1
