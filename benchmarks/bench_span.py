"""Caller-side cost of a span, and the graph's cost per span, in one run.

    python benchmarks/bench_span.py [--spans 50000] [--repeats 5]

Compares, per span on the caller's path (async code, three attributes set on the span):
  * a bare context manager + deque with ids and a ContextVar parent (the floor);
  * ours: ``async with obs.span(...)`` with the background flusher writing to SQLite;
  * OpenTelemetry's SDK: ``start_as_current_span`` with a BatchSpanProcessor and a no-op
    exporter (its cheapest real configuration).
Then the compiled graph's cost per span at batch 100 and 1,000 (validation + SQLite write),
and with a no-op store (the graph and validation alone), for event payloads (the orchestrator's
path) and for in-process ``Span`` objects (the agents' path). Target: ours ≤ 0.2× OpenTelemetry.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import deque
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from pathlib import Path
from random import getrandbits
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine_info import machine  # noqa: E402

# --- the floor: bare context manager with ids + ContextVar parent -------------------------

_bare_parent: ContextVar[Any] = ContextVar("bare_parent", default=None)


class _BareSpan:
    __slots__ = ("attrs", "end", "parent", "span_id", "start", "trace_id")

    def set_attribute(self, k: str, v: Any) -> None:
        self.attrs[k] = v


class _BareScope:
    __slots__ = ("_q", "_span", "_token")

    def __init__(self, q: deque[Any]) -> None:
        self._q = q

    async def __aenter__(self) -> _BareSpan:
        parent = _bare_parent.get()
        span = _BareSpan()
        span.trace_id = parent.trace_id if parent else f"{getrandbits(128):032x}"
        span.span_id = f"{getrandbits(64):016x}"
        span.parent = parent.span_id if parent else None
        span.attrs = {}
        span.start = time.time_ns()
        self._span = span
        self._token = _bare_parent.set(span)
        return span

    async def __aexit__(self, *exc: object) -> None:
        self._span.end = time.time_ns()
        _bare_parent.reset(self._token)
        self._q.append(self._span)


async def bench_bare(n: int) -> float:
    q: deque[Any] = deque()
    t0 = time.perf_counter_ns()
    for i in range(n):
        async with _BareScope(q) as s:
            s.set_attribute("a", i)
            s.set_attribute("b", "x")
            s.set_attribute("c", 1.5)
        if len(q) > 10_000:
            q.clear()
    return (time.perf_counter_ns() - t0) / n / 1000


async def bench_ours(obs: Any, n: int, delivery: list[float] | None = None) -> float:
    span = obs.span
    t0 = time.perf_counter_ns()
    for i in range(n):
        async with span("execute", "gap_analyzer") as s:
            s.set_attribute("a", i)
            s.set_attribute("b", "x")
            s.set_attribute("c", 1.5)
    t1 = time.perf_counter_ns()
    await obs.flush()
    if delivery is not None:
        delivery.append(n / ((time.perf_counter_ns() - t0) / 1e9))
    return (t1 - t0) / n / 1000


def make_otel() -> Any:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class NoopExporter(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(NoopExporter()))
    return provider


async def bench_otel(tracer: Any, n: int) -> float:
    start = tracer.start_as_current_span
    t0 = time.perf_counter_ns()
    for i in range(n):
        with start("execute") as s:
            s.set_attribute("a", i)
            s.set_attribute("b", "x")
            s.set_attribute("c", 1.5)
    return (time.perf_counter_ns() - t0) / n / 1000


def make_events(n: int) -> list[dict[str, Any]]:
    from src.agents.ml_foundation.observability_connector.trace_context import new_span_id, new_trace_id

    now = datetime.now(UTC)
    trace = new_trace_id()
    return [
        {
            "span_id": new_span_id(),
            "trace_id": trace,
            "agent_name": "gap_analyzer",
            "operation": "execute",
            "started_at": now - timedelta(milliseconds=i),
            "duration_ms": 12.5,
            "status": "completed",
            "metadata": {"a": i, "b": "x", "c": 1.5},
        }
        for i in range(n)
    ]


def make_records(n: int) -> list[Any]:
    """The same spans as the agents' own path hands them over: finished ``Span`` objects."""
    from src.agents.ml_foundation.observability_connector.spans import Span
    from src.agents.ml_foundation.observability_connector.trace_context import new_span_id, new_trace_id

    now = time.time_ns()
    trace = new_trace_id()
    records = []
    for i in range(n):
        record = Span(new_span_id(), trace, None, "execute", "gap_analyzer", start_ns=now - i * 1_000_000)
        record.set_attributes({"a": i, "b": "x", "c": 1.5})
        records.append(record.finish(now - i * 1_000_000 + 12_500_000))
    return records


class _NoopStore:
    async def insert_spans_batch(self, spans: Any) -> Any:
        from src.repositories.base import BatchInsertResult

        return BatchInsertResult(inserted=len(spans))

    def describe(self) -> str:
        return "noop"

    async def close(self) -> None:
        pass


async def bench_graph(ctx: Any, batch: int, rounds: int, records: bool = False) -> float:
    from src.agents.ml_foundation.observability_connector.graph import graph

    samples = []
    for _ in range(rounds):
        events = make_records(batch) if records else make_events(batch)
        t0 = time.perf_counter_ns()
        state = await graph.ainvoke({"events_to_log": events, "skip_metrics": True}, context=ctx)
        samples.append((time.perf_counter_ns() - t0) / batch / 1000)
        assert state["events_logged"] == batch, state.get("emission_errors")
    return statistics.median(samples)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
    from src.agents.ml_foundation.observability_connector.config import ObservabilitySettings
    from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext
    from src.repositories.observability_span import ObservabilitySpanRepository
    from src.repositories.sqlite import SQLiteSpanRepository

    print(f"machine: {machine()}")
    print(f"spans per repeat: {args.spans}, repeats: {args.repeats} (median reported)\n")
    tmp = Path(tempfile.mkdtemp(prefix="obs-bench-"))
    # The buffer holds a whole burst: this measures the caller's cost, not overflow handling.
    settings = ObservabilitySettings(batching={"max_queue_size": args.spans + 10_000})
    store = ObservabilitySpanRepository(SQLiteSpanRepository(tmp / "bench.db"))
    ctx = ConnectorContext(store=store, settings=settings)
    obs = ObservabilityConnectorAgent(context=ctx)
    provider = make_otel()
    tracer = provider.get_tracer("bench")

    results: dict[str, list[float]] = {"bare": [], "ours": [], "otel": []}
    delivered_rate: list[float] = []
    await bench_ours(obs, 2000)  # warm-up: imports, graph compile, first store write
    await bench_otel(tracer, 2000)
    for _ in range(args.repeats):
        results["bare"].append(await bench_bare(args.spans))
        results["ours"].append(await bench_ours(obs, args.spans, delivered_rate))
        results["otel"].append(await bench_otel(tracer, args.spans))
        provider.force_flush()
    med = {k: statistics.median(v) for k, v in results.items()}
    print("caller-side cost per span (async, 3 attributes)")
    print(f"  bare context manager + deque : {med['bare']:7.2f} µs")
    print(f"  observability_connector      : {med['ours']:7.2f} µs")
    print(f"  OpenTelemetry SDK (Batch)    : {med['otel']:7.2f} µs")
    print(f"  ours / OpenTelemetry         : {med['ours'] / med['otel']:7.3f}×  (target ≤ 0.2×)")
    stored = await store.count_spans()
    produced = 2000 + args.spans * args.repeats
    print(f"  spans stored / produced      : {stored} / {produced}")
    print(f"  burst to committed rows      : {statistics.median(delivered_rate):,.0f} spans/s (SQLite)\n")
    await obs.aclose()
    provider.shutdown()

    print("graph cost per span (validation + write), median of rounds")
    store2 = ObservabilitySpanRepository(SQLiteSpanRepository(tmp / "graph.db"))
    ctx2 = ConnectorContext(store=store2, settings=settings)
    noop_ctx = ConnectorContext(store=_NoopStore(), settings=settings)
    for batch, rounds in ((100, 50), (1000, 10)):
        with_store = await bench_graph(ctx2, batch, rounds)
        graph_only = await bench_graph(noop_ctx, batch, rounds)
        print(f"  batch {batch:5d}: {with_store:6.2f} µs/span with SQLite, {graph_only:6.2f} µs/span graph alone")
    print("the same, with in-process Spans (the agents' own path: rows built without an event dict)")
    for batch, rounds in ((100, 50), (1000, 10)):
        with_store = await bench_graph(ctx2, batch, rounds, records=True)
        graph_only = await bench_graph(noop_ctx, batch, rounds, records=True)
        print(f"  batch {batch:5d}: {with_store:6.2f} µs/span with SQLite, {graph_only:6.2f} µs/span graph alone")
    await store2.close()


if __name__ == "__main__":
    asyncio.run(main())
