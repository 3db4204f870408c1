"""Opik delivery throughput and the caller's cost while Opik is healthy or hanging, in one run.

    python benchmarks/bench_opik.py [--spans 20000] [--sdk-spans 5000] [--cost-spans 20000]

Everything is sent to the test suite's local Opik receiver, started here in a separate process
(so it does not share our GIL). It un-gzips and parses every body and counts every id; it does
not validate each body with the ``opik`` SDK's pydantic models unless ``--validate`` is given:
that costs the receiver ~110 µs per span on this machine, a full core at ~9k spans/s, so with it
the figure measures pydantic on the shared two cores rather than either client (the test suite
validates every body it receives). Both clients face the same receiver in the same run:

1. spans/s delivered to the receiver end to end by the connector: agents' ``span()`` → collector →
   compiled graph (validation, SQLite store) → the Opik delivery (``OpikSink``) → receiver; and the
   Opik sink alone (validated rows handed to ``OpikSink.send``, two batches at a time → receiver);
2. the same figure for the ``opik`` SDK's own path, ``client.trace(...)`` + ``trace.span(...)`` with
   its background queue, against the same receiver, in the same run. Target: ours ≥ 10×;
3. the caller-side cost of ``async with obs.span(...)`` (three attributes) while Opik answers, and
   while every Opik request hangs for 10 s. Target: p99 within 2×. After the hang, every span is
   checked to have reached the receiver exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine_info import machine  # noqa: E402

os.environ.setdefault("OPIK_SENTRY_ENABLE", "false")
os.environ.setdefault("OPIK_ANALYTICS_ENABLE", "false")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("OPIK_CHECK_TLS_CERTIFICATE", "false")


class Receiver:
    """The suite's receiver in its own process, driven over HTTP."""

    def __init__(self, validate: bool = True) -> None:
        args = [sys.executable, "-m", "tests.fixtures.opik_receiver", "--port", "0"]
        if not validate:
            args.append("--no-validate")
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        self.root = self.url.rsplit("/api", 1)[0]

    def _call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.root + path, data=data, method="GET" if body is None else "POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        return self._call("/__stats")

    def control(self, **command: Any) -> dict[str, Any]:
        return self._call("/__control", command)

    def wait_for_spans(self, count: int, timeout: float) -> float | None:
        """Seconds until the receiver holds ``count`` spans (None on timeout)."""
        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            if self.stats()["spans"] >= count:
                return time.perf_counter() - start
            time.sleep(0.02)
        return None

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def build_connector(url: str | None, db: Path, batch_size: int) -> tuple[Any, Any, Any]:
    """An agent wired as ``ConnectorContext.from_config`` wires it (``build_deliveries``); Opik when ``url``."""
    from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
    from src.agents.ml_foundation.observability_connector.config import (
        ObservabilitySettings,
        build_deliveries,
        load_registry,
    )
    from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext
    from src.mlops import OpikConfig
    from src.mlops.opik_sink import OpikSink
    from src.repositories.observability_span import ObservabilitySpanRepository
    from src.repositories.sqlite import SQLiteSpanRepository

    registry = load_registry()
    sink = None
    if url is not None:
        sink = OpikSink(OpikConfig(url=url, project_name="bench-ours"), tier_names=registry.tier_names)
    settings = ObservabilitySettings(
        batching={
            "max_batch_size": batch_size,
            "max_batch_wait_s": 0.2,
            "max_queue_size": 1_000_000,
            "spool_path": str(db.with_suffix(".spool.db")),
        }
    )
    store = ObservabilitySpanRepository(SQLiteSpanRepository(db))
    built = build_deliveries(store, settings, registry, opik=sink)
    context = ConnectorContext(
        store=store, settings=settings, registry=registry,
        store_delivery=built.store, opik_delivery=built.opik, opik=built.connector,
    )  # fmt: skip
    return ObservabilityConnectorAgent(context=context), built.connector, store


async def produce(obs: Any, spans: int) -> None:
    """Traces of 10 spans: a root, 8 children and an LLM call, a little input and output each."""
    for index in range(spans // 10):
        async with obs.span("route_request", "orchestrator") as root:
            root.set_input({"request": index})
            for step in range(8):
                async with obs.span(f"step_{step}", "gap_analyzer") as span:
                    span.set_attribute("segment", "NE")
                    span.set_output({"rows": step})
            obs.record_llm_call("gap_analyzer", "gpt-4o", 812, 95, duration_ms=3, provider="openai")
        if index % 50 == 49:
            await asyncio.sleep(0)  # let the event loop breathe, as an agent would


async def warm_up(receiver: Receiver, tmp: Path) -> None:
    """Imports (the graph, LangGraph, the opik client) and first connections happen here, untimed."""
    obs, _opik, _store = build_connector(receiver.url, tmp / "warm.db", 100)
    base = receiver.stats()["spans"]
    await produce(obs, 200)
    await obs.flush(60)
    await asyncio.to_thread(receiver.wait_for_spans, base + 200, 60)
    await obs.aclose()


async def store_only(spans: int, batch_size: int, tmp: Path) -> dict[str, float]:
    """The same pipeline without Opik: the bound the store write puts on the end-to-end figure."""
    obs, _opik, _store = build_connector(None, tmp / f"store-{batch_size}.db", batch_size)
    started = time.perf_counter()
    await produce(obs, spans)
    assert await obs.flush(300)
    total = time.perf_counter() - started
    await obs.aclose()
    return {"spans_per_s": spans / total, "seconds": total}


async def ours_end_to_end(receiver: Receiver, spans: int, batch_size: int, tmp: Path) -> dict[str, float]:
    obs, _opik, _store = build_connector(receiver.url, tmp / f"e2e-{batch_size}.db", batch_size)
    base = receiver.stats()["spans"]
    started = time.perf_counter()
    await produce(obs, spans)
    produced = time.perf_counter() - started
    waited = await asyncio.to_thread(receiver.wait_for_spans, base + spans, 300)
    total = time.perf_counter() - started
    await obs.aclose()
    if waited is None:
        raise SystemExit(f"ours: not every span reached the receiver: {receiver.stats()}")
    return {"spans_per_s": spans / total, "seconds": total, "produce_s": produced}


async def sink_alone(receiver: Receiver, spans: int) -> dict[str, float]:
    from src.agents.ml_foundation.observability_connector.config import load_registry
    from src.agents.ml_foundation.observability_connector.models import ObservabilityEvent
    from src.mlops import OpikConfig
    from src.mlops.opik_sink import OpikSink

    registry = load_registry()
    now = datetime.now(UTC)
    rows = []
    for index in range(spans):
        trace = f"{index // 10:08d}"
        event = ObservabilityEvent.model_validate(
            {
                "span_id": f"s{index}",
                "trace_id": f"bench-sink-{trace}",
                "parent_span_id": None if index % 10 == 0 else f"s{index - index % 10}",
                "agent_name": "gap_analyzer",
                "operation": "step",
                "started_at": now + timedelta(microseconds=index),
                "duration_ms": 1.0,
                "status": "ok",
                "attributes": {"segment": "NE"},
                "output_data": {"rows": index},
            }
        )
        rows.append(event.to_span(registry.tier_of(event.agent_name)))
    sink = OpikSink(OpikConfig(url=receiver.url, project_name="bench-sink"), tier_names=registry.tier_names)
    slots = asyncio.Semaphore(2)  # as the delivery layer runs it: two batches in flight

    async def send(batch: list[Any]) -> None:
        async with slots:
            result = await sink.send(batch)
        assert not result.rejected, result.rejected[:3]

    base = receiver.stats()["spans"]
    started = time.perf_counter()
    await asyncio.gather(*(send(rows[start : start + 1000]) for start in range(0, spans, 1000)))
    waited = await asyncio.to_thread(receiver.wait_for_spans, base + spans, 60)
    total = time.perf_counter() - started
    await sink.aclose()
    if waited is None:
        raise SystemExit(f"sink: not every span reached the receiver: {receiver.stats()}")
    return {"spans_per_s": spans / total, "seconds": total}


def sdk_path(receiver: Receiver, spans: int) -> dict[str, float]:
    """The SDK as its docs show it: a trace, ``trace.span(...)`` per span, its background queue."""
    os.environ["OPIK_URL_OVERRIDE"] = receiver.url
    os.environ["OPIK_WORKSPACE"] = "default"
    import opik

    logging.getLogger("opik").setLevel(logging.ERROR)  # its per-trace advice would flood the output
    client = opik.Opik(project_name="bench-sdk", host=receiver.url, workspace="default")
    base = receiver.stats()["spans"]
    costs: list[int] = []
    clock = time.perf_counter_ns
    started = time.perf_counter()
    for index in range(spans // 10):
        begin = datetime.now(UTC)
        trace = client.trace(
            name="route_request", input={"request": index}, start_time=begin, end_time=begin + timedelta(milliseconds=5)
        )
        for step in range(10):
            t0 = clock()
            trace.span(
                name=f"step_{step}",
                input={"segment": "NE"},
                output={"rows": step},
                start_time=begin,
                end_time=datetime.now(UTC),
            )
            costs.append(clock() - t0)
    produced = time.perf_counter() - started
    client.flush(timeout=300)
    waited = receiver.wait_for_spans(base + spans, 300)
    total = time.perf_counter() - started
    client.end()
    if waited is None:
        print(f"  SDK: only {receiver.stats()['spans'] - base} of {spans} spans reached the receiver")
    costs.sort()
    return {
        "spans_per_s": spans / total,
        "seconds": total,
        "produce_s": produced,
        "p50_us": costs[len(costs) // 2] / 1e3,
        "p99_us": costs[int(len(costs) * 0.99)] / 1e3,
    }


async def span_cost(obs: Any, spans: int) -> dict[str, float]:
    costs: list[int] = []
    clock = time.perf_counter_ns
    for index in range(spans):
        t0 = clock()
        async with obs.span("execute", "gap_analyzer") as span:
            span.set_attribute("segment", "NE")
            span.set_attribute("rows", index)
            span.set_attribute("model", "gpt-4o")
        costs.append(clock() - t0)
        if index % 100 == 99:
            await asyncio.sleep(0)  # an agent awaits between operations; the flusher gets the GIL here too
    costs.sort()
    return {
        "p50_us": costs[len(costs) // 2] / 1e3,
        "p99_us": costs[int(len(costs) * 0.99)] / 1e3,
        "p999_us": costs[int(len(costs) * 0.999)] / 1e3,
        "mean_us": statistics.fmean(costs) / 1e3,
    }


def _median_of(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


async def healthy_vs_hanging(receiver: Receiver, spans: int, tmp: Path, rounds: int = 3) -> dict[str, Any]:
    """Alternating rounds (healthy, hanging, …) so a burst of other load on the machine hits both alike."""
    obs, opik, _store = build_connector(receiver.url, tmp / "cost.db", 100)
    base = receiver.stats()
    await span_cost(obs, 2_000)  # warm up
    healthy: list[dict[str, float]] = []
    hanging: list[dict[str, float]] = []
    healthy_flush: list[float] = []
    hang_flush: list[float] = []
    status: dict[str, Any] = {}
    for round_no in range(rounds):
        await obs.flush(60)
        await opik.wait_until_sent(120)
        healthy.append(await span_cost(obs, spans))
        started = time.perf_counter()
        await obs.flush(60)
        healthy_flush.append(time.perf_counter() - started)
        await opik.wait_until_sent(120)

        receiver.control(mode="hang", hang_s=10.0)  # every Opik request is now held for 10 s
        hang_started = time.perf_counter()
        await produce(obs, 100)  # the first batch of the outage: the sender is stuck on it from here on
        await obs.flush(60)
        hanging.append(await span_cost(obs, spans))
        started = time.perf_counter()
        assert await obs.flush(60), "the store write waited for Opik"
        hang_flush.append(time.perf_counter() - started)
        status = opik.get_status()
        if round_no == rounds - 1:  # the last hang runs its full 10 s
            await asyncio.sleep(max(0.0, 10.0 - (time.perf_counter() - hang_started)))
        receiver.control(mode="ok")
    total = 2_000 + rounds * (2 * spans + 100)
    delivered = await opik.wait_until_sent(120)
    stats = receiver.stats()
    await obs.aclose()
    return {
        "healthy": _median_of(healthy),
        "hanging": _median_of(hanging),
        "rounds": rounds,
        "store_flush_s": statistics.median(hang_flush),
        "healthy_flush_s": statistics.median(healthy_flush),
        "breaker_during_hang": status["state"],
        "backlog_during_hang": status["backlog_spans"],
        "delivered_after": delivered,
        "expected": total,
        "received": stats["spans"] - base["spans"],
        "writes": stats["span_writes"] - base["span_writes"],
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=20_000, help="spans for our end-to-end and sink figures")
    parser.add_argument("--sdk-spans", type=int, default=5_000, help="spans through the opik SDK")
    parser.add_argument("--cost-spans", type=int, default=10_000, help="spans per caller-cost round (3 of each)")
    parser.add_argument(
        "--validate", action="store_true", help="receiver validates every body with opik.rest_api.types (~110 µs/span)"
    )
    args = parser.parse_args()

    print(machine())
    print("receiver: tests/fixtures/opik_receiver.py in its own process, every body validated with opik.rest_api.types"
          if args.validate else "receiver: tests/fixtures/opik_receiver.py in its own process, bodies parsed and "
          "counted, not pydantic-validated (--validate)")  # fmt: skip
    receiver = Receiver(validate=args.validate)
    try:
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir)
            await warm_up(receiver, tmp)
            print(f"\n1. delivered to the receiver, end to end ({args.spans:,} spans, traces of 10)")
            e2e = await ours_end_to_end(receiver, args.spans, 100, tmp)
            print(f"   ours, agents → graph + SQLite → Opik, batch 100:   {e2e['spans_per_s']:>9,.0f} spans/s "
                  f"({e2e['seconds']:.2f} s)")  # fmt: skip
            e2e_1k = await ours_end_to_end(receiver, args.spans, 1000, tmp)
            print(f"   ours, same, batch 1000:                           {e2e_1k['spans_per_s']:>9,.0f} spans/s "
                  f"({e2e_1k['seconds']:.2f} s)")  # fmt: skip
            bound = await store_only(args.spans, 100, tmp)
            print(f"   (bound: same pipeline, store only, no Opik, batch 100: {bound['spans_per_s']:>9,.0f} spans/s)")
            sink = await sink_alone(receiver, args.spans)
            print(f"   ours, Opik sink alone (validated rows → receiver): {sink['spans_per_s']:>9,.0f} spans/s "
                  f"({sink['seconds']:.2f} s)")  # fmt: skip
            sdk = await asyncio.to_thread(sdk_path, receiver, args.sdk_spans)
            print(f"   opik SDK, trace.span(...) + background queue:      {sdk['spans_per_s']:>9,.0f} spans/s "
                  f"({sdk['seconds']:.2f} s for {args.sdk_spans:,}; caller p50 {sdk['p50_us']:.0f} µs, "
                  f"p99 {sdk['p99_us']:.0f} µs per trace.span)")  # fmt: skip
            best = max(e2e["spans_per_s"], e2e_1k["spans_per_s"])
            print(f"   ratio ours end to end / SDK: {best / sdk['spans_per_s']:.1f}×  (batch 100: "
                  f"{e2e['spans_per_s'] / sdk['spans_per_s']:.1f}×); sink alone / SDK: "
                  f"{sink['spans_per_s'] / sdk['spans_per_s']:.1f}×  (target ≥ 10×)")  # fmt: skip

            print(
                f"\n2. caller-side `async with obs.span(...)` + 3 attributes: 3 healthy and 3 hanging rounds of "
                f"{args.cost_spans:,} spans, alternating; medians of the rounds"
            )
            cost = await healthy_vs_hanging(receiver, args.cost_spans, tmp)
            h, g = cost["healthy"], cost["hanging"]
            print(f"   Opik healthy:          p50 {h['p50_us']:6.2f} µs   p99 {h['p99_us']:6.2f} µs   "
                  f"p99.9 {h['p999_us']:7.1f} µs   mean {h['mean_us']:6.2f} µs")  # fmt: skip
            print(f"   Opik hanging (10 s):   p50 {g['p50_us']:6.2f} µs   p99 {g['p99_us']:6.2f} µs   "
                  f"p99.9 {g['p999_us']:7.1f} µs   mean {g['mean_us']:6.2f} µs")  # fmt: skip
            print(f"   p99 hanging / healthy: {g['p99_us'] / h['p99_us']:.2f}×  (target ≤ 2×)")
            print(f"   flushing those spans through graph + store: {cost['healthy_flush_s'] * 1000:.0f} ms healthy, "
                  f"{cost['store_flush_s'] * 1000:.0f} ms hanging (circuit {cost['breaker_during_hang']}, "
                  f"{cost['backlog_during_hang']:,} spans waiting for Opik)")  # fmt: skip
            print(f"   after it: every span delivered: {cost['delivered_after']}; "
                  f"{cost['received']:,} at the receiver for {cost['expected']:,} produced, "
                  f"{cost['writes'] - cost['received']} written twice")  # fmt: skip
    finally:
        receiver.close()


if __name__ == "__main__":
    asyncio.run(main())
