"""``obs-connector report --html`` on 1,000,000 spans: how long reading and drawing the page takes.

    python benchmarks/bench_report.py [--spans 1000000] [--windows 1h,24h,7d] [--db PATH] [--reuse]
                                      [--runs 3]

The store is SQLite, loaded like ``bench_metrics.py`` does (the same rows: 1,000,000 spans spread
evenly over 8 days, 18 registered agents and two unknown ones, errors, tokens; so 24h holds ~12.5 %
and 7d ~87 %). Each run builds a fresh context (a cold metrics cache, as the first report of the
day finds it) and times, per window:

* ``metrics``: ``compute_metrics``, the metrics path's answer the tables show (the same call as
  ``obs-connector metrics``);
* ``reads``: the report's own bounded reads (histogram, statuses over time, slowest and failed
  trace picks; ``report_queries.read_report``);
* ``page``: the whole command's work — ``gather_report`` (both of the above plus the shown
  traces) and ``render_report`` — and the page's size.

Target: the page within 5 s at 1,000,000 spans. Figures are the median of ``--runs``.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_metrics import load_sqlite  # noqa: E402
from machine_info import machine  # noqa: E402

from src.agents.ml_foundation.observability_connector.cache import MetricsCache  # noqa: E402
from src.agents.ml_foundation.observability_connector.config import (  # noqa: E402
    ObservabilitySettings,
    load_registry,
)
from src.agents.ml_foundation.observability_connector.nodes.metrics_aggregator import compute_metrics  # noqa: E402
from src.agents.ml_foundation.observability_connector.report_data import gather_report  # noqa: E402
from src.agents.ml_foundation.observability_connector.report_html import render_report  # noqa: E402
from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext  # noqa: E402
from src.repositories.base import parse_window, window_start  # noqa: E402
from src.repositories.report_queries import ReportFilter, read_report  # noqa: E402


async def _once(store: Any, registry: Any, window: str) -> dict[str, float]:
    settings = ObservabilitySettings()

    def context() -> ConnectorContext:
        return ConnectorContext(store=store, settings=settings, registry=registry, cache=MetricsCache(settings.cache))

    t0 = time.perf_counter()
    fields, from_cache, _ = await compute_metrics(context(), window)
    t1 = time.perf_counter()
    assert not from_cache
    await read_report(store, ReportFilter(window, window_start(window)))
    t2 = time.perf_counter()
    data = await gather_report(context(), window)
    page = render_report(data)
    t3 = time.perf_counter()
    return {
        "metrics": t1 - t0,
        "reads": t2 - t1,
        "page": t3 - t2,
        "kb": len(page.encode()) / 1024,
        "spans": float(fields["total_spans_analyzed"]),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--windows", default="1h,24h,7d")
    parser.add_argument("--db", default=str(Path(tempfile.gettempdir()) / "obs-bench-metrics" / "spans.db"))
    parser.add_argument("--reuse", action="store_true", help="reuse --db when it holds --spans rows")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    windows = [w.strip() for w in args.windows.split(",") if w.strip()]
    for w in windows:
        parse_window(w)

    print(f"machine: {machine()}")
    print(f"sqlite {sqlite3.sqlite_version}; {args.spans:,} spans over 8 days; median of {args.runs} cold runs")
    registry = load_registry()
    store = await load_sqlite(Path(args.db), args.spans, registry, args.reuse, days=8)
    try:
        print(f"{'window':>7} {'spans in it':>12} {'metrics':>9} {'reads':>8} {'page':>8} {'size':>8}")
        for window in windows:
            runs = [await _once(store, registry, window) for _ in range(args.runs)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(
                f"{window:>7} {int(med['spans']):>12,} {med['metrics']:>8.2f}s {med['reads']:>7.2f}s "
                f"{med['page']:>7.2f}s {med['kb']:>6.0f}KB"
            )
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main())
