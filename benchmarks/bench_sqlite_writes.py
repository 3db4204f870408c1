"""SQLite store write throughput (``insert_spans_batch``), for before/after comparisons of the write path.

    python benchmarks/bench_sqlite_writes.py [--rows 100000] [--repeat 3] [--src DIR]

Writes ``--rows`` fresh spans (20 agents, durations, tokens, start times over the last hour)
into an empty store file in batches of 100 and 1,000 (start times over the last ``--spread-s``
seconds: an hour, like bench_store.py, or a few seconds, like live traffic), through the repository (one transaction
per batch: the rows, and since issue 16 their rollups), and prints rows/s, median of
``--repeat`` runs with the two batch sizes interleaved. ``--src`` imports the package from
another checkout (e.g. a worktree of main) so both sides run this same script.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--spread-s", type=float, default=3600.0, help="start times over the last N seconds (5: live traffic)"
    )
    parser.add_argument("--src", default=str(HERE.parent), help="checkout whose src/ is measured")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, args.src)
    from machine_info import machine

    from src.agents.ml_foundation.observability_connector.models import ObservabilitySpan, row_id_for
    from src.repositories.sqlite import SQLiteSpanRepository

    def spans(n: int, seed: int) -> list[ObservabilitySpan]:
        rng = random.Random(seed)
        now = datetime.now(UTC)
        out = []
        for i in range(n):
            trace, span = f"{rng.getrandbits(128):032x}", f"{i:016x}"
            out.append(
                ObservabilitySpan(
                    id=row_id_for(trace, span),
                    span_id=span,
                    trace_id=trace,
                    operation_name="execute",
                    agent_name=f"agent_{rng.randrange(20)}",
                    agent_tier=rng.randrange(6),
                    start_time=now - timedelta(seconds=rng.uniform(0, args.spread_s)),
                    duration_ms=round(rng.lognormvariate(5.5, 1.3), 3),
                    status="error" if rng.random() < 0.05 else "ok",
                    input_tokens=rng.randrange(4000),
                    output_tokens=rng.randrange(800),
                    attributes={"fallback_used": rng.random() < 0.04},
                )
            )
        return out

    async def run(batch: int, rows: list[ObservabilitySpan]) -> float:
        folder = Path(tempfile.mkdtemp(prefix="obs-bench-sqlite-writes-"))
        repo = SQLiteSpanRepository(folder / "spans.db")
        await repo.open()
        t0 = time.perf_counter()
        for i in range(0, len(rows), batch):
            await repo.insert_spans_batch(rows[i : i + batch])
        seconds = time.perf_counter() - t0
        assert await repo.count_spans() == len(rows)
        await repo.close()
        return len(rows) / seconds

    print(f"machine: {machine()}")
    print(f"measuring {args.src}; start times over the last {args.spread_s:g} s")
    results: dict[int, list[float]] = {100: [], 1000: []}
    for rep in range(args.repeat):
        rows = spans(args.rows, rep)
        for batch in (100, 1000) if rep % 2 == 0 else (1000, 100):
            results[batch].append(asyncio.run(run(batch, rows)))
    for batch, rates in results.items():
        runs = ", ".join(f"{r:,.0f}" for r in rates)
        print(f"  batch {batch:>5,}: {statistics.median(rates):>9,.0f} rows/s (runs: {runs})")


if __name__ == "__main__":
    main()
