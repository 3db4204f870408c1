"""Metrics under live traffic: producers writing spans while dashboards ask every 200 ms.

    python benchmarks/bench_live_metrics.py [--store sqlite|postgres] [--preload 200000] [--days 31]
                                            [--rate 2000] [--interval 0.2] [--seconds 30]
                                            [--windows 1h,24h] [--db PATH | --dsn DSN] [--reuse]
                                            [--max-staleness 0,2] [--redis-url URL] [--full-hour]

The store is preloaded like ``bench_metrics.py`` (same generator and loaders, rollups built),
then for ``--seconds`` seconds:

* producers write ``--rate`` spans/s of a dedicated agent (``live_producer``) through the real
  write path (``validate_spans`` → ``write_batch``: store write, rollups in the same
  transaction, cache invalidation), one batch every 100 ms, on a thread of their own with its
  own event loop, as the connector's flusher does (so they contend with the dashboards for
  the GIL, the store and the cache, but never run on the dashboards' loop);
* one dashboard per window asks ``compute_metrics`` (the metrics node's question, with the
  production in-process cache, or Redis with ``--redis-url``) every ``--interval`` seconds,
  accepting answers up to ``max_staleness_s`` old.

``--full-hour`` first adds ``--rate`` × 3,600 spans of the registry's agents spread over the hour before
the run, written with the store's own rollup maintenance (SQLite: ``apply_rows`` in the insert's
transaction; Postgres: ``COPY`` with the rollup triggers on), so the run sees what a dashboard sees
after a whole hour of that traffic: a 1h window full of it, its open hour's minute sketches full, and
a minute of it at the window's raw edge.

``--max-staleness 0,2`` runs the whole thing once per bound, one after the other on the same
store with a fresh cache each (0 = strict, today's behaviour; the live span ids differ per run).

Printed per window: answers, latency p50 / p99 / max, cache hit rate, and freshness — for each
answer, whether it counted every live span whose batch had committed before the question
started, and the oldest such span it missed (target: nothing stored ≤ 5 s ago is missing, and
answer p99 ≤ 50 ms). With a bound the "fresh" share falls by design; what must hold is the
oldest missed span (≤ the bound plus one refresh). The run is bounded by ``--seconds`` per bound.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_metrics import _CLEANUPS, _INSERT, LOADED_COLUMNS, LOADERS, _row_chunks  # noqa: E402
from machine_info import machine  # noqa: E402

from src.agents.ml_foundation.observability_connector.cache import MetricsCache  # noqa: E402
from src.agents.ml_foundation.observability_connector.config import (  # noqa: E402
    CacheSettings,
    ObservabilitySettings,
    load_registry,
)
from src.agents.ml_foundation.observability_connector.nodes import validate_spans, write_batch  # noqa: E402
from src.agents.ml_foundation.observability_connector.nodes.metrics_aggregator import compute_metrics  # noqa: E402
from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext  # noqa: E402

LIVE_AGENT = "live_producer"
HOUR_S = 3600
TICK_S = 0.1


async def produce(ctx: ConnectorContext, rate: int, until: float, commits: list[tuple[float, int]]) -> None:
    """``rate`` spans/s in batches every 100 ms; ``commits`` gets (commit time, spans so far)."""
    runtime = SimpleNamespace(context=ctx)
    run = secrets.token_hex(4)  # ids of this run's own: a second run must not write duplicates
    per_tick = max(1, round(rate * TICK_S))
    total = 0
    n = 0
    next_tick = time.monotonic()
    while time.monotonic() < until:
        now = datetime.now(UTC).isoformat()
        events = []
        for _ in range(per_tick):
            n += 1
            events.append(
                {
                    "span_id": f"{run}{n:08x}",
                    "trace_id": f"{run}{n // 10:024x}",
                    "agent_name": LIVE_AGENT,
                    "operation": "execute",
                    "started_at": now,
                    "duration_ms": 5.0 + (n % 500),
                    "status": "error" if n % 50 == 0 else "ok",
                    "input_tokens": n % 300,
                    "output_tokens": n % 70,
                }
            )
        state = await validate_spans({"events_to_log": events}, runtime)
        state = await write_batch(state, runtime)
        if not state.get("db_writes_successful"):
            raise RuntimeError(f"live write failed: {state.get('error')}")
        total += int(state["db_write_count"])
        commits.append((time.monotonic(), total))
        next_tick += TICK_S
        await asyncio.sleep(max(0.0, next_tick - time.monotonic()))


def add_full_hour(args: argparse.Namespace, store: Any, registry: Any) -> None:
    """Append the hour of traffic (``--full-hour``) through each store's own rollup maintenance."""
    n = args.rate * HOUR_S
    t0 = time.perf_counter()
    now = datetime.now(UTC)
    if args.store == "sqlite":
        import sqlite3

        from src.repositories.sqlite_rollups import apply_rows, max_rowid

        conn = sqlite3.connect(args.db, isolation_level=None)
        for rows in _row_chunks(n, registry, now, 1_000, HOUR_S / 86_400):
            conn.execute("BEGIN IMMEDIATE")
            first = max_rowid(conn)
            conn.executemany(_INSERT, rows)
            apply_rows(conn, first)
            conn.execute("COMMIT")
        conn.close()
    else:
        import psycopg

        with psycopg.connect(store.store._dsn, autocommit=True) as conn:
            for rows in _row_chunks(n, registry, now, 1_000, HOUR_S / 86_400):
                with (
                    conn.cursor() as cur,
                    cur.copy(f"COPY ml_observability_spans ({', '.join(LOADED_COLUMNS)}) FROM STDIN") as copy,
                ):
                    for row in rows:
                        copy.write_row(row)
            conn.execute("VACUUM ANALYZE ml_observability_spans")
    print(f"  added {n:,} spans over the last hour ({args.rate:,}/s) in {time.perf_counter() - t0:.1f} s")


async def dashboard(
    ctx: ConnectorContext,
    window: str,
    interval: float,
    until: float,
    commits: list[tuple[float, int]],
    staleness: float,
    base: int,
) -> dict[str, Any]:
    latencies: list[float] = []
    hits = 0
    fresh = 0
    worst_missing_age = 0.0
    answers = 0
    ages: list[float] = []
    while time.monotonic() < until:
        asked = time.monotonic()
        committed = commits[-1][1] if commits else 0
        fields, from_cache, age = await compute_metrics(ctx, window, max_staleness_s=staleness)
        latencies.append(time.monotonic() - asked)
        ages.append(age)
        answers += 1
        hits += from_cache
        # Live spans of earlier runs (other bounds) in the same store are not this run's.
        seen = fields["latency_by_agent"].get(LIVE_AGENT, {}).get("count", 0) - base
        if seen >= committed:
            fresh += 1
        else:
            # The oldest committed batch the answer missed: how long before the question it landed.
            missing = next(t for t, total in commits if total > seen)
            worst_missing_age = max(worst_missing_age, asked - missing)
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - asked)))
    ordered = sorted(latencies)
    return {
        "answers": answers,
        "p50_s": statistics.median(ordered),
        "p99_s": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "max_s": ordered[-1],
        "hit_rate": hits / answers,
        "fresh": fresh / answers,
        "worst_missing_age_s": worst_missing_age,
        "max_age_s": max(ages),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=sorted(LOADERS), default="sqlite")
    parser.add_argument("--preload", type=int, default=200_000, help="spans stored before the run")
    parser.add_argument("--days", type=int, default=31)
    parser.add_argument("--rate", type=int, default=2000, help="live spans per second")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between a dashboard's questions")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--windows", default="1h,24h")
    parser.add_argument("--db", default=str(Path(tempfile.gettempdir()) / "obs-bench-live" / "spans.db"))
    parser.add_argument("--dsn", default=None)
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--max-staleness", default="0", help="bounds to run, seconds, comma-separated (0: strict)")
    parser.add_argument("--redis-url", default=None, help="cache in this Redis (near-cache on) instead of memory")
    parser.add_argument("--full-hour", action="store_true", help="first add an hour of --rate spans/s (module doc)")
    args = parser.parse_args()
    args.spans = args.preload
    windows = [w.strip() for w in args.windows.split(",") if w.strip()]
    bounds = [float(b) for b in args.max_staleness.split(",") if b.strip()]

    print(f"machine: {machine()}")
    registry = load_registry()
    store = await LOADERS[args.store](args, registry)
    if args.full_hour:
        await asyncio.to_thread(add_full_hour, args, store, registry)
    try:
        for bound in bounds:
            await run_once(args, store, registry, windows, bound)
    finally:
        await store.close()
        for cleanup in reversed(_CLEANUPS):
            cleanup()


async def run_once(args: argparse.Namespace, store: Any, registry: Any, windows: list[str], bound: float) -> None:
    cache_settings = (
        CacheSettings(backend="redis", redis_url=args.redis_url, key_prefix=f"bench:{secrets.token_hex(4)}")
        if args.redis_url
        else CacheSettings(backend="memory")
    )
    settings = ObservabilitySettings(cache=cache_settings.model_dump())
    cache = MetricsCache(settings.cache)
    ctx = ConnectorContext(store=store, settings=settings, registry=registry, cache=cache)
    commits: list[tuple[float, int]] = []
    try:
        bases = []
        for window in windows:  # warm the connections once, outside the measured run
            # With the bound: a dashboard's first answer ever is cold; the run measures the steady state.
            fields, _, _ = await compute_metrics(ctx, window, max_staleness_s=bound)
            bases.append(fields["latency_by_agent"].get(LIVE_AGENT, {}).get("count", 0))
        until = time.monotonic() + args.seconds
        results = await asyncio.gather(
            asyncio.to_thread(asyncio.run, produce(ctx, args.rate, until, commits)),
            *(
                dashboard(ctx, w, args.interval, until, commits, bound, base)
                for w, base in zip(windows, bases, strict=True)
            ),
        )
        status = cache.get_status()
    finally:
        await cache.aclose()
    written = commits[-1][1] if commits else 0
    print(
        f"\n{args.store}: {args.preload:,} spans preloaded over {args.days} days"
        f"{f' + {args.rate * HOUR_S:,} over the last hour' if args.full_hour else ''}; "
        f"{written:,} live spans in {args.seconds:.0f} s ({written / args.seconds:,.0f}/s, target {args.rate:,}/s); "
        f"a question every {args.interval * 1000:.0f} ms per window; cache {cache.backend}, "
        f"max_staleness_s={bound:g} ({status['refreshes']} refreshes, {status['refresh_errors']} failed)"
    )
    header = ("window", "answers", "p50", "p99", "max", "cache hits", "fresh", "oldest missed", "oldest answer")
    print("{:>6} {:>8} {:>9} {:>9} {:>9} {:>11} {:>7} {:>14} {:>14}".format(*header))
    for window, r in zip(windows, results[1:], strict=True):
        print(
            f"{window:>6} {r['answers']:>8} {r['p50_s'] * 1e3:>7.1f}ms {r['p99_s'] * 1e3:>7.1f}ms "
            f"{r['max_s'] * 1e3:>7.1f}ms {r['hit_rate']:>10.0%} {r['fresh']:>7.0%} {r['worst_missing_age_s']:>12.2f} s"
            f" {r['max_age_s']:>12.2f} s"
        )
    worst_p99 = max(r["p99_s"] for r in results[1:])
    stale = max(r["worst_missing_age_s"] for r in results[1:])
    print(f"target p99 <= 50 ms: {'met' if worst_p99 <= 0.05 else 'NOT met'} (worst {worst_p99 * 1e3:.1f} ms)")
    print(
        f"target spans stored <= 5 s ago included: {'met' if stale <= 5 else 'NOT met'} (oldest missed {stale:.2f} s)"
    )


if __name__ == "__main__":
    asyncio.run(main())
