"""The metrics cache on a real ``redis-server`` (started by the suite on a free loopback port).

Hit, miss, expiry, invalidation on insert (precise: only windows the new spans fall in),
sharing and invalidation across real processes, the write/compute race, and outages: a stopped
Redis (answers stay correct, one log line, then the cache is used again once it is back) and a
paused one (an invalidation that could not be delivered is replayed, not lost).
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
    await asyncio.sleep(0.05)
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
    await asyncio.sleep(0.6)
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
    await writer.cache.ainvalidate(time.time() - 7200)  # before the window: harmless
    assert await reader.cache.aput(key, 1, 3600, generation=generation, window_start=window_start) is not None
    generation = await reader.cache.generation()
    await writer.cache.ainvalidate(time.time())  # inside the window, after the reader's snapshot
    assert await reader.cache.aput(key, 2, 3600, generation=generation, window_start=window_start) is None
    assert reader.cache.get_status()["stale_discarded"] == 1


async def test_an_unreadable_entry_is_a_miss(
    redis_server: RedisServer, redis_prefix: str, make_context: MakeContext
) -> None:
    ctx = make_context(redis_server.url, redis_prefix)
    key = ("metrics", ctx.store.describe(), 3600, None, None)
    await write_events(ctx, [_event("s1")])
    await compute_metrics(ctx, "1h")
    backend = ctx.cache._backend
    from src.agents.ml_foundation.observability_connector.cache import _key_text

    redis_server.command("SET", backend.entry_key(_key_text(key)), "{not json")  # type: ignore[union-attr]
    value, from_cache, _ = await compute_metrics(ctx, "1h")
    assert not from_cache and value["total_spans_analyzed"] == 1


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
        await asyncio.sleep(0.12)  # past redis_retry_s: every round really tries Redis again
    status = ctx.cache.get_status()["redis"]
    assert status["available"] is False and status["errors"] >= 3 and status["last_error"]
    failures = [r for r in caplog.records if "failed during" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in failures]  # rate-limited: one line, not one per call

    private_redis_server.start()
    await asyncio.sleep(0.12)
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
