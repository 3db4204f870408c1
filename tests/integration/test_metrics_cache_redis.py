"""The metrics cache on a real ``redis-server`` (started by the suite on a free loopback port).

Hit, miss, expiry, invalidation on insert (precise: only windows the new spans fall in),
sharing and invalidation across real processes, the write/compute race, and outages: a stopped
Redis (answers stay correct, one log line, then the cache is used again once it is back) and a
paused one (an invalidation that could not be delivered is replayed, not lost). Then the
per-process near-cache in front of Redis: a hit makes no Redis call (INFO commandstats), another
process's write still reaches it at once (pub/sub), and a killed or gapped subscription never
leaves a stale answer behind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from src.agents.ml_foundation.observability_connector.cache import MetricsCache
from src.agents.ml_foundation.observability_connector.cli import app
from src.agents.ml_foundation.observability_connector.config import (
    CacheSettings,
    ObservabilitySettings,
    load_registry,
)
from src.agents.ml_foundation.observability_connector.nodes.metrics_aggregator import compute_metrics
from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext
from src.repositories.observability_span import ObservabilitySpanRepository
from src.repositories.sqlite import SQLiteSpanRepository
from tests.fixtures.metrics_reference import write_events
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.waiting import wait_until_async

CACHE_LOGGER = "src.agents.ml_foundation.observability_connector.cache"
REGISTRY = load_registry()
ROOT = Path(__file__).resolve().parents[2]

MakeContext = Callable[..., ConnectorContext]


def _event(span_id: str, age_s: float = 5.0, agent: str = "gap_analyzer") -> dict[str, Any]:
    return {
        "span_id": span_id,
        "trace_id": "trace-r",
        "agent_name": agent,
        "operation": "execute",
        "started_at": (datetime.now(UTC) - timedelta(seconds=age_s)).isoformat(),
        "duration_ms": 25.0,
        "status": "ok",
    }


def _cache_settings(url: str, prefix: str, **overrides: Any) -> CacheSettings:
    values: dict[str, Any] = {
        "backend": "redis",
        "redis_url": url,
        "key_prefix": prefix,
        "redis_timeout_s": 0.3,
        "redis_retry_s": 0.1,
        **overrides,
    }
    return CacheSettings(**values)


@pytest.fixture
async def make_context(tmp_path: Path) -> AsyncIterator[MakeContext]:
    """Contexts on one SQLite file, each with its own cache instance (as separate processes have)."""
    made: list[ConnectorContext] = []

    def make(url: str, prefix: str, **cache: Any) -> ConnectorContext:
        settings = ObservabilitySettings(cache=_cache_settings(url, prefix, **cache).model_dump())
        store = ObservabilitySpanRepository(SQLiteSpanRepository(tmp_path / "shared.db"))
        ctx = ConnectorContext(store=store, settings=settings, registry=REGISTRY, cache=MetricsCache(settings.cache))
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        await ctx.cache.aclose()
        await ctx.store.close()


async def test_miss_hit_and_status(redis_server: RedisServer, redis_prefix: str, make_context: MakeContext) -> None:
    ctx = make_context(redis_server.url, redis_prefix)
    assert ctx.cache.backend == "redis"
    await write_events(ctx, [_event(f"s{i}") for i in range(5)])
    first, from_cache, _ = await compute_metrics(ctx, "1h")
    assert (first["total_spans_analyzed"], from_cache) == (5, False)
    await asyncio.sleep(0.05)  # the age under test: the entry's clock (time.time, kept in Redis) cannot be injected
    second, from_cache, age = await compute_metrics(ctx, "1h")
    assert from_cache and second == first and 0.04 <= age < 5
    status = ctx.cache.get_status()
    assert status["backend"] == "redis" and status["where"] == redis_server.url
    assert (status["hits"], status["misses"], status["hit_rate"]) == (1, 1, 0.5)
    assert status["redis"]["available"] is True and status["redis"]["errors"] == 0


async def test_entries_expire_after_the_window_ttl(
    redis_server: RedisServer, redis_prefix: str, make_context: MakeContext
) -> None:
    ctx = make_context(redis_server.url, redis_prefix, ttl_short_s=0.5, ttl_day_s=30)
    await write_events(ctx, [_event("s1")])
    await compute_metrics(ctx, "1h")
    await compute_metrics(ctx, "24h")
    assert (await compute_metrics(ctx, "1h"))[1] is True
    await asyncio.sleep(0.6)  # the TTL under test, kept by Redis itself: no clock to inject
    assert (await compute_metrics(ctx, "1h"))[1] is False  # expired in Redis (PX)
    assert (await compute_metrics(ctx, "24h"))[1] is True


async def test_insert_invalidates_only_the_windows_it_falls_in(
    redis_server: RedisServer, redis_prefix: str, make_context: MakeContext
) -> None:
    reader = make_context(redis_server.url, redis_prefix)
    writer = make_context(redis_server.url, redis_prefix)  # another "process": its own cache object
    await write_events(writer, [_event("s1")])
    for window in ("1h", "24h", "7d"):
        await compute_metrics(reader, window)
    await write_events(writer, [_event("old", age_s=3 * 3600)])  # a backfilled span from 3 h ago
    assert (await compute_metrics(reader, "1h"))[1] is True
    day, from_cache, _ = await compute_metrics(reader, "24h")
    assert not from_cache and day["total_spans_analyzed"] == 2
    assert (await compute_metrics(reader, "7d"))[1] is False
    await write_events(writer, [_event("new", age_s=0)])
    hour, from_cache, _ = await compute_metrics(reader, "1h")
    assert not from_cache and hour["total_spans_analyzed"] == 2
    assert writer.cache.get_status()["entries_invalidated"] == 2 + 3  # (24h, 7d), then all three again


async def test_an_answer_racing_a_write_into_its_window_is_not_stored(
    redis_server: RedisServer, redis_prefix: str, make_context: MakeContext
) -> None:
    reader = make_context(redis_server.url, redis_prefix)
    writer = make_context(redis_server.url, redis_prefix)
    key = ("race", 3600)
    generation = await reader.cache.generation()
    window_start = time.time() - 3600
    await writer.cache.ainvalidate_since(time.time() - 7200)  # before the window: harmless
    assert await reader.cache.aput(key, 1, 3600, generation=generation, window_start=window_start) is not None
    generation = await reader.cache.generation()
    await writer.cache.ainvalidate_since(time.time())  # inside the window, after the reader's snapshot
    assert await reader.cache.aput(key, 2, 3600, generation=generation, window_start=window_start) is None
    assert reader.cache.get_status()["stale_discarded"] == 1


async def test_an_unreadable_entry_is_a_miss(
    redis_server: RedisServer, redis_prefix: str, make_context: MakeContext
) -> None:
    ctx = make_context(redis_server.url, redis_prefix)
    key = ("metrics", ctx.store.describe(), 3600, None, None)
    await write_events(ctx, [_event("s1")])
    backend = ctx.cache._backend
    from src.agents.ml_foundation.observability_connector.cache_entries import key_text

    # Written (say) by an incompatible version before this process asked; never kept locally either.
    redis_server.command("SET", backend.entry_key(key_text(key)), "{not json")  # type: ignore[union-attr]
    value, from_cache, _ = await compute_metrics(ctx, "1h")
    assert not from_cache and value["total_spans_analyzed"] == 1
    assert (await compute_metrics(ctx, "1h"))[1] is True  # our answer replaced it


def _subprocess_env(url: str, prefix: str, db: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OBS_", "REDIS_"))}
    env.update(
        OBS_STORE__SQLITE_PATH=str(db),
        OBS_CACHE__BACKEND="redis",
        OBS_CACHE__REDIS_URL=url,
        OBS_CACHE__KEY_PREFIX=prefix,
        LANGGRAPH_CLI_NO_ANALYTICS="1",
        PYTHONPATH=str(ROOT),
    )
    return env


_WRITER = """
import asyncio, json, sys
from src.agents.ml_foundation.observability_connector.graph import graph
from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext

async def main() -> None:
    ctx = ConnectorContext.from_config()
    state = await graph.ainvoke({"events_to_log": json.loads(sys.argv[1])}, context=ctx)
    print(json.dumps({"written": state["db_write_count"], "cache": ctx.cache.get_status()}))
    await ctx.cache.aclose()
    await ctx.store.close()

asyncio.run(main())
"""


async def test_two_processes_share_answers_and_invalidations(
    redis_server: RedisServer, redis_prefix: str, tmp_path: Path
) -> None:
    """This process caches; another reads it through the CLI; a third writes; we recompute."""
    db = tmp_path / "two.db"
    env = _subprocess_env(redis_server.url, redis_prefix, db)
    settings = ObservabilitySettings(
        store={"sqlite_path": str(db)}, cache=_cache_settings(redis_server.url, redis_prefix).model_dump()
    )
    ctx = ConnectorContext.from_config(settings)
    try:
        await write_events(ctx, [_event(f"s{i}") for i in range(4)])
        mine, from_cache, _ = await compute_metrics(ctx, "1h")
        assert (mine["total_spans_analyzed"], from_cache) == (4, False)

        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "src.agents.ml_foundation.observability_connector.cli",
                "metrics",
                "--json",
                "-w",
                "1h",
            ],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        theirs = json.loads(cli.stdout)
        assert theirs["metrics_from_cache"] is True and theirs["cache_backend"] == "redis"
        assert 0 <= theirs["cache_age_s"] < 30
        assert theirs["total_spans_analyzed"] == 4 and theirs["latency_by_agent"] == mine["latency_by_agent"]

        events = [_event(f"w{i}", agent="explainer") for i in range(3)]
        writer = subprocess.run(
            [sys.executable, "-c", _WRITER, json.dumps(events)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert writer.returncode == 0, writer.stderr
        report = json.loads(writer.stdout.strip().splitlines()[-1])
        assert report["written"] == 3 and report["cache"]["entries_invalidated"] >= 1

        after, from_cache, _ = await compute_metrics(ctx, "1h")
        assert not from_cache
        assert after["total_spans_analyzed"] == 7 and after["latency_by_agent"]["explainer"]["count"] == 3
        assert (await compute_metrics(ctx, "1h"))[1] is True
    finally:
        await ctx.cache.aclose()
        await ctx.store.close()


def test_cli_says_where_the_answer_came_from(
    redis_server: RedisServer, redis_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "cli.db"
    for key, value in _subprocess_env(redis_server.url, redis_prefix, db).items():
        if key.startswith("OBS_"):
            monkeypatch.setenv(key, value)

    async def seed() -> None:
        ctx = ConnectorContext.from_config()
        await write_events(ctx, [_event("c1")])
        await ctx.cache.aclose()
        await ctx.store.close()

    asyncio.run(seed())
    runner = CliRunner()
    first = runner.invoke(app, ["metrics", "-w", "1h"])
    assert first.exit_code == 0, first.output
    assert "computed now, redis cache" in first.stdout
    second = runner.invoke(app, ["metrics", "-w", "1h"])
    assert second.exit_code == 0, second.output
    assert "cached answer (redis)" in second.stdout and " s old" in second.stdout
    status = runner.invoke(app, ["status"])
    assert redis_server.url in status.stdout


async def test_redis_stopped_mid_test_then_restarted(
    private_redis_server: RedisServer,
    redis_prefix: str,
    make_context: MakeContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=CACHE_LOGGER)
    ctx = make_context(private_redis_server.url, redis_prefix)
    await write_events(ctx, [_event("s1"), _event("s2")])
    await compute_metrics(ctx, "1h")
    assert (await compute_metrics(ctx, "1h"))[1] is True

    private_redis_server.stop()
    for expected in (2, 3, 4):  # answers stay correct and fresh while Redis is gone
        if expected > 2:
            await write_events(ctx, [_event(f"down{expected}")])  # its invalidation cannot be delivered
        value, from_cache, _ = await compute_metrics(ctx, "1h")
        assert (value["total_spans_analyzed"], from_cache) == (expected, False)
        # past redis_retry_s (a monotonic back-off, no clock to inject): every round really tries Redis again
        await asyncio.sleep(0.12)
    status = ctx.cache.get_status()["redis"]
    assert status["available"] is False and status["errors"] >= 3 and status["last_error"]
    failures = [r for r in caplog.records if "failed during" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in failures]  # rate-limited: one line, not one per call

    private_redis_server.start()
    await asyncio.sleep(0.12)  # the last failure's back-off (redis_retry_s) runs out: the next call tries Redis
    value, from_cache, _ = await compute_metrics(ctx, "1h")
    assert (value["total_spans_analyzed"], from_cache) == (4, False)
    value, from_cache, _ = await compute_metrics(ctx, "1h")
    assert (value["total_spans_analyzed"], from_cache) == (4, True)  # the cache is used again
    status = ctx.cache.get_status()["redis"]
    assert status["available"] is True and status["invalidation_pending"] is False
    assert any("reachable again" in r.getMessage() for r in caplog.records)


async def test_an_invalidation_lost_in_a_blip_is_replayed(
    private_redis_server: RedisServer, redis_prefix: str, make_context: MakeContext
) -> None:
    """Redis keeps its data but stops answering for a moment (CLIENT PAUSE): the writer's
    invalidation times out, is kept, and is delivered with its next Redis call."""
    reader = make_context(private_redis_server.url, redis_prefix)
    writer = make_context(private_redis_server.url, redis_prefix, redis_timeout_s=0.15)
    await write_events(writer, [_event("s1")])
    await compute_metrics(reader, "24h")
    paused_until = time.monotonic() + 1.0
    private_redis_server.command("CLIENT", "PAUSE", "1000", "ALL")
    await write_events(writer, [_event("during-pause")])  # stored; never raises
    assert writer.cache.get_status()["redis"]["invalidation_pending"] is True
    # The blip under test is a server-side timer (CLIENT PAUSE) plus the writer's own back-off:
    # nothing to wait on but their end.
    await asyncio.sleep(max(0.0, paused_until - time.monotonic()) + 0.15)
    await writer.cache.aget(("anything",), 3600)  # the writer's next call delivers it
    assert writer.cache.get_status()["redis"]["invalidation_pending"] is False
    value, from_cache, _ = await compute_metrics(reader, "24h")
    assert (value["total_spans_analyzed"], from_cache) == (2, False)


async def test_nothing_listening_costs_no_exception(redis_prefix: str, make_context: MakeContext) -> None:
    from tests.fixtures.redis_server import free_port

    ctx = make_context(f"redis://127.0.0.1:{free_port()}/0", redis_prefix)
    await write_events(ctx, [_event("s1")])
    value, from_cache, _ = await compute_metrics(ctx, "1h")
    assert (value["total_spans_analyzed"], from_cache) == (1, False)


# --------------------------------------------------------------------------- the near-cache


def _near(ctx: ConnectorContext) -> dict[str, Any]:
    return ctx.cache.get_status()["redis"]["near_cache"]


def _redis_commands(server: RedisServer) -> int:
    """Commands the server has executed, from INFO commandstats (minus INFO and heartbeat PINGs)."""
    total = 0
    for line in server.command("INFO", "commandstats").decode().splitlines():
        if line.startswith("cmdstat_") and not line.startswith(("cmdstat_info:", "cmdstat_ping:")):
            total += int(line.split("calls=", 1)[1].split(",", 1)[0])
    return total


async def _warm(ctx: ConnectorContext, window: str = "1h") -> dict[str, Any]:
    """Ask until the answer sits in this process's near-cache (its subscriber starts on first use)."""
    value, _, _ = await compute_metrics(ctx, window)
    await wait_until_async(lambda: _near(ctx)["live"])
    await compute_metrics(ctx, window)  # a Redis hit (or our own store) fills the near-cache
    hits = _near(ctx)["hits"]
    again, from_cache, _ = await compute_metrics(ctx, window)
    assert from_cache and again == value and _near(ctx)["hits"] == hits + 1
    return value


async def test_a_near_cache_hit_makes_no_redis_call(
    private_redis_server: RedisServer, redis_prefix: str, make_context: MakeContext
) -> None:
    ctx = make_context(private_redis_server.url, redis_prefix)
    await write_events(ctx, [_event(f"s{i}") for i in range(3)])
    first = await _warm(ctx)
    assert first["total_spans_analyzed"] == 3

    before, hits = _redis_commands(private_redis_server), _near(ctx)["hits"]
    took = []
    for _ in range(200):
        t0 = time.perf_counter()
        value, from_cache, age = await compute_metrics(ctx, "1h")
        took.append(time.perf_counter() - t0)
        assert (value, from_cache) == (first, True) and age >= 0
    assert _redis_commands(private_redis_server) == before  # not one GET, EVALSHA, anything
    assert _near(ctx)["hits"] == hits + 200
    assert sorted(took)[100] < 0.002  # tens of µs in practice; loose for a loaded CI machine
    value["total_spans_analyzed"] = -1  # a hit is still the caller's own copy
    assert (await compute_metrics(ctx, "1h"))[0] == first

    # Without the near-cache every hit is a round trip.
    plain = make_context(private_redis_server.url, redis_prefix)
    plain.cache._backend.near_enabled = False  # type: ignore[union-attr]
    assert (await compute_metrics(plain, "1h"))[:2] == (first, True)  # connects (CLIENT SETINFO...)
    before = _redis_commands(private_redis_server)
    assert (await compute_metrics(plain, "1h"))[:2] == (first, True)
    assert _redis_commands(private_redis_server) == before + 1  # the GET


async def test_another_process_s_write_reaches_the_near_cache_at_once(
    redis_server: RedisServer, redis_prefix: str, tmp_path: Path
) -> None:
    db = tmp_path / "near.db"
    settings = ObservabilitySettings(
        store={"sqlite_path": str(db)}, cache=_cache_settings(redis_server.url, redis_prefix).model_dump()
    )
    ctx = ConnectorContext.from_config(settings)
    try:
        await write_events(ctx, [_event(f"s{i}") for i in range(4)])
        assert (await _warm(ctx))["total_spans_analyzed"] == 4

        events = [_event(f"w{i}", agent="explainer") for i in range(3)]
        writer = subprocess.run(
            [sys.executable, "-c", _WRITER, json.dumps(events)],
            env=_subprocess_env(redis_server.url, redis_prefix, db),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert writer.returncode == 0, writer.stderr
        # No sleep, no retry: the very next question is answered from the store.
        after, from_cache, _ = await compute_metrics(ctx, "1h")
        assert (after["total_spans_analyzed"], from_cache) == (7, False)
        assert after["latency_by_agent"]["explainer"]["count"] == 3
        assert _near(ctx)["live"] and _near(ctx)["losses"] == 0  # by the message, not by a lost connection
        await _warm(ctx)  # and it is used again
    finally:
        await ctx.cache.aclose()
        await ctx.store.close()


def _foreign_invalidation(server: RedisServer, ctx: ConnectorContext, newest: str) -> None:
    """What another process's ``ainvalidate_since`` sends: the same script, the same keys."""
    from src.agents.ml_foundation.observability_connector.cache_entries import INVALIDATION_LOG
    from src.agents.ml_foundation.observability_connector.cache_redis import INVALIDATE_LUA

    backend: Any = ctx.cache._backend
    keys = (backend._gen_key, backend._log_key, backend._idx_key)
    reply = server.command("EVAL", INVALIDATE_LUA, "3", *keys, newest, str(INVALIDATION_LOG), backend._channel)
    assert reply.startswith(b"*2"), reply


async def test_a_dropped_pubsub_connection_never_serves_a_stale_answer(
    private_redis_server: RedisServer, redis_prefix: str, make_context: MakeContext, tmp_path: Path
) -> None:
    # The reader resubscribes only after redis_retry_s: long enough to write while it is deaf.
    reader = make_context(private_redis_server.url, redis_prefix, redis_retry_s=1.5)
    # "Another process": same database, and its invalidations reach Redis only (see _foreign_invalidation).
    settings = ObservabilitySettings()
    writer = ConnectorContext(
        store=ObservabilitySpanRepository(SQLiteSpanRepository(tmp_path / "shared.db")),
        settings=settings,
        registry=REGISTRY,
        cache=MetricsCache(),
    )
    try:
        await write_events(writer, [_event("s1"), _event("s2")])
        assert (await _warm(reader))["total_spans_analyzed"] == 2

        killed = private_redis_server.command("CLIENT", "KILL", "TYPE", "pubsub")
        assert killed.startswith(b":") and int(killed[1:].strip()) >= 1
        await wait_until_async(lambda: not _near(reader)["live"], 2)
        assert _near(reader)["entries"] == 0 and _near(reader)["losses"] == 1

        await write_events(writer, [_event("while-deaf")])
        _foreign_invalidation(private_redis_server, reader, repr(time.time()))  # published to nobody
        value, from_cache, _ = await compute_metrics(reader, "1h")
        assert (value["total_spans_analyzed"], from_cache) == (3, False)
        assert (await compute_metrics(reader, "1h"))[:2] == (value, True)  # plain Redis meanwhile
        assert _near(reader)["entries"] == 0  # nothing kept while unsubscribed

        await wait_until_async(lambda: _near(reader)["live"], 5)  # resubscribed: the near-cache is back
        assert (await _warm(reader))["total_spans_analyzed"] == 3
    finally:
        await writer.store.close()


async def test_a_gap_in_the_generations_drops_the_near_cache(
    redis_server: RedisServer, redis_prefix: str, make_context: MakeContext
) -> None:
    """A message this subscriber never saw (e.g. published by a writer while the gap was in
    flight) is detected by the next generation it hears: everything local is dropped."""
    ctx = make_context(redis_server.url, redis_prefix)
    await write_events(ctx, [_event("s1")])
    await _warm(ctx, "1h")
    backend: Any = ctx.cache._backend
    gen = int(redis_server.command("GET", backend._gen_key).split(b"\r\n")[1])
    _foreign_invalidation(redis_server, ctx, "0")  # gen + 1, 1970: touches no window
    await wait_until_async(lambda: backend._near._last_gen == gen + 1)
    assert _near(ctx)["entries"] == 1
    redis_server.command("PUBLISH", backend._channel, f"{gen + 5} 0")  # gen + 2 .. + 4 never heard
    await wait_until_async(lambda: _near(ctx)["entries"] == 0)
    assert (await compute_metrics(ctx, "1h"))[1] is True  # from Redis: the entry there is fine


# --------------------------------------------------------------------------- the host codebase's API


async def test_host_api_is_shared_across_processes_and_honours_its_ttl(
    redis_server: RedisServer, redis_prefix: str, make_context: MakeContext
) -> None:
    """``set_metrics`` in one process, ``get_metrics`` in another; ``invalidate``/``clear`` reach
    both, near-caches included; a TTL given at store time is obeyed by the other process's near-cache."""
    writer = make_context(redis_server.url, redis_prefix).cache
    reader = make_context(redis_server.url, redis_prefix).cache
    assert await writer.set_metrics("1h", "orchestrator", {"p95": 12.5})
    assert await writer.set_metrics("7d", None, {"short": True}, ttl=0.4)  # far below the 7d window's 600 s
    assert await reader.get_metrics("1h", "orchestrator") == {"p95": 12.5}
    await wait_until_async(lambda: reader.get_status()["redis"]["near_cache"]["live"])
    for window, agent in (("1h", "orchestrator"), ("7d", None)):
        assert await reader.get_metrics(window, agent) is not None  # now in the reader's near-cache too
        assert await reader.get_metrics(window, agent) is not None
    assert reader.get_status()["redis"]["near_cache"]["hits"] >= 2

    await asyncio.sleep(0.6)  # the 0.4 s TTL under test must pass (the near-cache's timer is time.monotonic)
    assert await reader.get_metrics("7d") is None  # expired locally as in Redis, not after 600 s
    assert await reader.get_metrics("1h", "orchestrator") == {"p95": 12.5}

    assert await writer.invalidate(agent="orchestrator", window="1h") == 1
    await wait_until_async(lambda: reader.get_status()["redis"]["near_cache"]["entries"] == 0)
    assert await reader.get_metrics("1h", "orchestrator") is None

    assert await reader.get_or_compute("24h", "explainer", lambda: {"n": 1}) == {"n": 1}
    assert await writer.get_or_compute("24h", "explainer", lambda: {"n": 2}) == {"n": 1}
    assert await writer.clear() == 1
    assert await reader.get_or_compute("24h", "explainer", lambda: {"n": 3}) == {"n": 3}
