"""Bounded staleness (``max_staleness_s``) on a real ``redis-server``: the same entries and rules
as in memory (``tests/unit/test_metrics_cache_live.py``), shared across processes through Redis
and the near-cache, with strict reads still seeing every write."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from src.agents.ml_foundation.observability_connector import cache as cache_module
from src.agents.ml_foundation.observability_connector.config import CacheSettings, ObservabilitySettings
from src.agents.ml_foundation.observability_connector.nodes.metrics_aggregator import compute_metrics
from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext
from tests.fixtures.counting_store import CountingStore
from tests.fixtures.metrics_reference import write_events
from tests.fixtures.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
MakeContext = Callable[..., ConnectorContext]


def _event(span_id: str, age_s: float = 2.0) -> dict[str, Any]:
    return {
        "span_id": span_id,
        "trace_id": "trace-live",
        "agent_name": "gap_analyzer",
        "operation": "execute",
        "started_at": (datetime.now(UTC) - timedelta(seconds=age_s)).isoformat(),
        "duration_ms": 25.0,
        "status": "ok",
    }


@pytest.fixture
async def make_context(tmp_path: Path) -> AsyncIterator[MakeContext]:
    """Contexts on one SQLite file, each with its own cache (as separate processes have) and a
    store that counts its metrics reads."""
    made: list[ConnectorContext] = []

    def make(url: str, prefix: str, **cache: Any) -> ConnectorContext:
        values = {"backend": "redis", "redis_url": url, "key_prefix": prefix, "redis_timeout_s": 0.3, **cache}
        settings = ObservabilitySettings(
            store={"sqlite_path": str(tmp_path / "shared.db")}, cache=CacheSettings(**values).model_dump()
        )
        ctx = ConnectorContext.from_config(settings)
        ctx = dataclasses.replace(ctx, store=CountingStore(ctx.store))
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        await ctx.cache.aclose()
        await ctx.store.close()


async def test_a_bounded_answer_is_shared_and_a_strict_read_still_sees_the_write(
    redis_server: RedisServer, redis_prefix: str, make_context: MakeContext, tmp_path: Path
) -> None:
    a = make_context(redis_server.url, redis_prefix)
    b = make_context(redis_server.url, redis_prefix)
    reads_a: Any = a.store
    reads_b: Any = b.store
    await write_events(a, [_event(f"s{i}") for i in range(3)])
    first, from_cache, _ = await compute_metrics(a, "1h", max_staleness_s=60)
    assert (first["total_spans_analyzed"], from_cache, reads_a.reads) == (3, False, 1)

    await write_events(a, [_event("s3")])  # invalidates the strict entries, everywhere
    served, from_cache, age = await compute_metrics(b, "1h", max_staleness_s=60)
    assert (served, from_cache, reads_b.reads) == (first, True, 0) and 0 <= age <= 60
    strict, from_cache, _ = await compute_metrics(b, "1h")
    assert (strict["total_spans_analyzed"], from_cache, reads_b.reads) == (4, False, 1)

    # Another process: the CLI with --max-staleness takes the shared answer; without it, the write.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OBS_", "REDIS_"))}
    env.update(
        OBS_STORE__SQLITE_PATH=str(tmp_path / "shared.db"),
        OBS_CACHE__BACKEND="redis",
        OBS_CACHE__REDIS_URL=redis_server.url,
        OBS_CACHE__KEY_PREFIX=redis_prefix,
        PYTHONPATH=str(ROOT),
    )
    module = "src.agents.ml_foundation.observability_connector.cli"
    for extra, expected in ((["--max-staleness", "60"], (True, 3)), ([], (True, 4))):
        cli = subprocess.run(
            [sys.executable, "-m", module, "metrics", "--json", "-w", "1h", *extra],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        payload = json.loads(cli.stdout)
        assert (payload["metrics_from_cache"], payload["total_spans_analyzed"]) == expected


async def test_past_the_bound_concurrent_readers_share_one_refresh(
    redis_server: RedisServer, redis_prefix: str, make_context: MakeContext
) -> None:
    ctx = make_context(redis_server.url, redis_prefix)
    store: Any = ctx.store
    await write_events(ctx, [_event("c0")])
    await compute_metrics(ctx, "1h", max_staleness_s=60)
    await write_events(ctx, [_event("c1"), _event("c2")])
    await asyncio.sleep(0.02)
    answers = await asyncio.gather(*(compute_metrics(ctx, "1h", max_staleness_s=0.01) for _ in range(20)))
    assert store.reads == 2 and {a[0]["total_spans_analyzed"] for a in answers} == {3}
    other = make_context(redis_server.url, redis_prefix)  # the refreshed entry reached Redis
    again, from_cache, _ = await compute_metrics(other, "1h", max_staleness_s=60)
    assert (again["total_spans_analyzed"], from_cache) == (3, True)


async def test_a_failing_refresh_is_counted_not_raised(
    redis_server: RedisServer,
    redis_prefix: str,
    make_context: MakeContext,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(cache_module, "REFRESH_AT", 0.0)
    ctx = make_context(redis_server.url, redis_prefix)
    store: Any = ctx.store
    await write_events(ctx, [_event("f0")])
    first, _, _ = await compute_metrics(ctx, "1h", max_staleness_s=60)
    store.fail = True
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            served, from_cache, _ = await compute_metrics(ctx, "1h", max_staleness_s=60)
            assert (served, from_cache) == (first, True)
            await ctx.cache.wait_for_refreshes()
    assert ctx.cache.get_status()["refresh_errors"] == 2
    assert any("refreshing a cached answer failed" in r.getMessage() for r in caplog.records)


async def test_nothing_listening_still_answers_within_the_bound(redis_prefix: str, make_context: MakeContext) -> None:
    ctx = make_context(f"redis://127.0.0.1:{free_port()}/0", redis_prefix, redis_retry_s=0.1)
    await write_events(ctx, [_event("n0")])
    for count in (1, 2):
        if count == 2:
            await write_events(ctx, [_event("n1")])
        fields, from_cache, _ = await compute_metrics(ctx, "1h", max_staleness_s=60)
        assert (fields["total_spans_analyzed"], from_cache) == (count, False)  # computed: nothing to cache in
