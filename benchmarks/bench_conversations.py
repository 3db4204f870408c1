"""What conversations cost the metrics path: TTFT percentiles on every answer, thread-filtered answers.

    python benchmarks/bench_conversations.py [--spans 300000] [--days 7] [--threads 1000] [--runs 5]

On the embedded SQLite store (bulk-loaded like ``bench_metrics.py``, then a third of the spans,
the LLM calls, given a time to first token and every span a thread of ``--threads`` and a user),
prints, median of ``--runs`` cold questions (a new in-memory cache each):

* ``compute_metrics`` for 24h and 7d, no filter: rollups plus the TTFT read (``get_ttft_samples``:
  the newest TTFT_SAMPLE_LIMIT rows of the window through the partial index), the same question
  without the TTFT read, and the TTFT read alone, so its share of the answer shows;
* ``compute_metrics`` filtered by one thread (7d, the raw-row path) and by one user;
* ``get_conversation_spans(None, thread_id=...)``: what ``obs-connector trace --thread`` reads.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_metrics import load_sqlite  # noqa: E402
from machine_info import machine  # noqa: E402

from src.agents.ml_foundation.observability_connector.cache import MetricsCache  # noqa: E402
from src.agents.ml_foundation.observability_connector.config import (  # noqa: E402
    ObservabilitySettings,
    load_registry,
)
from src.agents.ml_foundation.observability_connector.nodes.metrics_aggregator import compute_metrics  # noqa: E402
from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext  # noqa: E402
from src.repositories.observability_span import ObservabilitySpanRepository  # noqa: E402


def add_conversations(path: Path, threads: int) -> tuple[int, int]:
    """Every span gets a thread and a user (a tenth as many users as threads); LLM calls a TTFT.
    Returns (spans with a TTFT, spans of thread 0)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.execute(
        "UPDATE ml_observability_spans SET thread_id = 'thr-' || (rowid % ?), user_id = 'user-' || (rowid % ?), "
        "ttft_ms = CASE WHEN llm_model IS NOT NULL THEN 20 + (rowid % 997) * 0.5 END",
        (threads, max(1, threads // 10)),
    )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    with_ttft = conn.execute("SELECT count(*) FROM ml_observability_spans WHERE ttft_ms IS NOT NULL").fetchone()[0]
    one = conn.execute("SELECT count(*) FROM ml_observability_spans WHERE thread_id = 'thr-0'").fetchone()[0]
    conn.close()
    return int(with_ttft), int(one)


async def median_s(fn: Callable[[], Awaitable[Any]], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


async def paired_medians(
    first: Callable[[], Awaitable[Any]], second: Callable[[], Awaitable[Any]], runs: int
) -> tuple[float, float]:
    times: tuple[list[float], list[float]] = ([], [])
    for run in range(runs):
        order = ((0, first), (1, second)) if run % 2 == 0 else ((1, second), (0, first))
        for index, fn in order:
            t0 = time.perf_counter()
            await fn()
            times[index].append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=300_000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    registry = load_registry()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spans.db"
        store: ObservabilitySpanRepository = await load_sqlite(path, args.spans, registry, False, args.days)
        await store.close()
        with_ttft, one_thread = add_conversations(path, args.threads)
        print(f"  {args.spans:,} spans over {args.days} days, {with_ttft:,} with a TTFT, {args.threads:,} threads")
        store = ObservabilitySpanRepository(await _open(path))
        settings = ObservabilitySettings()

        def cold(window: str, **filters: Any) -> Callable[[], Awaitable[Any]]:
            async def ask() -> Any:
                ctx = ConnectorContext(
                    store=store, settings=settings, registry=registry, cache=MetricsCache(settings.cache)
                )
                return await compute_metrics(ctx, window, **filters)

            return ask

        def cold_without_ttft(window: str) -> Callable[[], Awaitable[Any]]:
            async def ask() -> Any:
                ctx = ConnectorContext(
                    store=NoTtft(store), settings=settings, registry=registry, cache=MetricsCache(settings.cache)
                )
                return await compute_metrics(ctx, window)

            return ask

        rows: list[tuple[str, float]] = []
        for window in ("24h", "7d"):
            # alternated run by run, so neither question profits from the other's warm pages
            with_ttft, without = await paired_medians(cold(window), cold_without_ttft(window), args.runs)
            rows.append((f"metrics {window}, no filter (rollups + TTFT)", with_ttft))
            rows.append((f"  the same without the TTFT read, {window}", without))

            async def ttft(window: str = window) -> Any:
                return await store.get_ttft_samples(window)

            rows.append((f"  of which the TTFT read, {window}", await median_s(ttft, args.runs)))
        rows.append(
            (
                f"metrics 7d, one thread ({one_thread:,} spans, raw rows)",
                await median_s(cold("7d", thread_id="thr-0"), args.runs),
            )
        )
        rows.append(
            ("metrics 7d, one user (raw rows, capped)", await median_s(cold("7d", user_id="user-0"), args.runs))
        )

        async def thread_read() -> Any:
            return await store.get_conversation_spans(None, thread_id="thr-0")

        rows.append(("trace --thread's read (one thread, all time)", await median_s(thread_read, args.runs)))
        await store.close()
    for label, seconds in rows:
        print(f"  {label:<52} {seconds * 1000:8.1f} ms")


class NoTtft(ObservabilitySpanRepository):
    """The store as before issue 19 for the metrics node: no TTFT read (the keys come back empty)."""

    async def get_ttft_samples(self, *args: Any, **kwargs: Any) -> list[tuple[str, str | None, float]]:
        raise NotImplementedError


async def _open(path: Path) -> Any:
    from src.repositories.sqlite import SQLiteSpanRepository

    return SQLiteSpanRepository(path)


if __name__ == "__main__":
    asyncio.run(main())
