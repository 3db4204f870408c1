"""Sustained end-to-end throughput: ``span()`` → committed rows in Postgres, Opik taking the same spans.

    python benchmarks/bench_e2e.py [--spans 100000] [--batch 1000] [--dsn URL]

The production wiring, in one process: agents' ``async with obs.span(...)`` → collector →
compiled graph (context, validation/redaction, batch) → the store through its on-disk spool
(``SinkDelivery``) into Postgres via ``PostgresSpanRepository`` (binary COPY) and, beside it, the
Opik sink → the test suite's Opik receiver in its own process (bodies un-gzipped, parsed and
counted; ``--validate`` adds pydantic validation of every body with the ``opik`` SDK's models,
~110 µs per span in the receiver — a full core at ~9k spans/s on these two shared cores). The
clock runs from the first ``span()`` until the last row is committed (counted with
``SELECT count(*)`` of the round's rows on a separate connection) and the receiver holds every span.

Without ``--dsn`` a throwaway Postgres cluster is started from the installed server binaries
(fsync on, as the suite's fixture does) and removed at the end; with ``--dsn`` the database must be
a scratch one (the table is emptied first). Also printed: the caller-side cost of each span
during the run (``async with obs.span(...)`` + 2 attributes, timed around the block) and the
machine. Target (issue 5): ≥ 20,000 spans/s on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_opik import Receiver, machine  # noqa: E402  (sets the opik environment first)


def build_settings(tmp: Path, batch: int) -> Any:
    """The product's defaults, but a queue deep enough for the whole burst and the spool in ``tmp``."""
    from src.agents.ml_foundation.observability_connector.config import ObservabilitySettings

    return ObservabilitySettings(
        batching={
            "max_batch_size": batch,
            "max_batch_wait_s": 0.2,
            "max_queue_size": 1_000_000,
            "spool_path": str(tmp / "spool.db"),
        }
    )


def build(dsn: str, url: str, tmp: Path, batch: int) -> tuple[Any, Any, Any]:
    """An agent wired as ``ConnectorContext.from_config`` wires it (``build_deliveries``), Postgres and Opik."""
    from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
    from src.agents.ml_foundation.observability_connector.config import build_deliveries, load_registry
    from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext
    from src.mlops import OpikConfig
    from src.mlops.opik_sink import OpikSink
    from src.repositories.observability_span import ObservabilitySpanRepository
    from src.repositories.postgres import PostgresSpanRepository

    registry = load_registry()
    settings = build_settings(tmp, batch)
    store = ObservabilitySpanRepository(PostgresSpanRepository(dsn))
    sink = OpikSink(OpikConfig(url=url, project_name="bench-e2e"), tier_names=registry.tier_names)
    built = build_deliveries(store, settings, registry, opik=sink)
    context = ConnectorContext(
        store=store, settings=settings, registry=registry,
        store_delivery=built.store, opik_delivery=built.opik, opik=built.connector,
    )  # fmt: skip
    return ObservabilityConnectorAgent(context=context), built.connector, store


async def produce(obs: Any, spans: int, costs: list[int]) -> None:
    """Traces of 10 spans (a root and 9 children), each timed on the caller's side."""
    clock = time.perf_counter_ns
    for index in range(spans // 10):
        t0 = clock()
        async with obs.span("route_request", "orchestrator") as root:
            root.set_input({"request": index})
            t1 = clock()
            for step in range(9):
                c0 = clock()
                async with obs.span(f"step_{step}", "gap_analyzer") as span:
                    span.set_attribute("segment", "NE")
                    span.set_output({"rows": step})
                costs.append(clock() - c0)
            t2 = clock()
        costs.append((clock() - t0) - (t2 - t1))  # the root's own enter/exit, without its children
        if index % 50 == 49:
            await asyncio.sleep(0)  # let the event loop breathe, as an agent would


def count_rows(dsn: str) -> int:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM ml_observability_spans").fetchone()
        return int(row[0]) if row else 0


async def wait_for(
    dsn: str,
    receiver: Receiver,
    sent: tuple[Callable[[], int], Callable[[], int]],
    produced: int,
    since: datetime,
    spans: int,
    timeout: float,
) -> tuple[float | None, float | None]:
    """Seconds (from now) until the store holds the round's ``produced`` rows and the receiver ``spans`` spans.

    The connector's own counters (bumped after COMMIT returns / after the receiver's 2xx) say
    when to look; the table and the receiver then confirm. Polling ``count(*)`` every few
    milliseconds instead would spend a good part of a core scanning the growing table, on the
    same two cores the benchmark measures. The confirmation counts only this round's rows
    (``start_time >= since``, an index range): a ``count(*)`` of the whole table grew with every
    round and was charged to the round it confirmed (~3 % by the fifth).
    """
    import psycopg

    start = time.perf_counter()
    stored = received = None
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while time.perf_counter() - start < timeout and (stored is None or received is None):
            if stored is None and sent[0]() >= produced:
                cur = await conn.execute("SELECT count(*) FROM ml_observability_spans WHERE start_time >= %s", (since,))
                row = await cur.fetchone()
                if row and row[0] >= produced:
                    stored = time.perf_counter() - start
            if (
                received is None
                and sent[1]() >= produced
                and (await asyncio.to_thread(receiver.stats))["spans"] >= spans
            ):
                received = time.perf_counter() - start
            await asyncio.sleep(0.005)
    return stored, received


async def run(dsn: str, args: argparse.Namespace) -> None:
    import psycopg

    receiver = Receiver(validate=args.validate)
    try:
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir)
            # Warm-up, untimed: imports, the graph, first connections.
            (tmp / "warm").mkdir()
            obs, opik, store = build(dsn, receiver.url, tmp / "warm", args.batch)
            await produce(obs, 2_000, [])
            await obs.flush(120)
            await opik.wait_until_sent(120)
            await obs.aclose()
            await store.close()
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("TRUNCATE ml_observability_spans")

            results = []
            for round_no in range(args.rounds):
                work = tmp / f"round{round_no}"
                work.mkdir()
                obs, _opik, store = build(dsn, receiver.url, work, args.batch)
                base_rows = await asyncio.to_thread(count_rows, dsn)
                base_spans = receiver.stats()["spans"]
                costs: list[int] = []
                since = datetime.now(UTC)  # every span of the round starts after this
                started = time.perf_counter()
                await produce(obs, args.spans, costs)
                produced = time.perf_counter() - started
                counters = (
                    functools.partial(getattr, obs.context.store_delivery.stats, "spans_sent"),
                    functools.partial(getattr, obs.context.opik_delivery.stats, "spans_sent"),
                )
                stored, received = await wait_for(
                    dsn, receiver, counters, args.spans, since, base_spans + args.spans, args.timeout
                )
                elapsed = time.perf_counter() - started
                await obs.aclose()
                await store.close()
                if stored is None or received is None:
                    raise SystemExit(
                        f"round {round_no}: not everything arrived within {args.timeout} s "
                        f"(rows {await asyncio.to_thread(count_rows, dsn) - base_rows}, "
                        f"receiver {receiver.stats()['spans'] - base_spans} of {args.spans})"
                    )
                costs.sort()
                results.append(
                    {
                        "both": args.spans / (produced + max(stored, received)),
                        "store": args.spans / (produced + stored),
                        "opik": args.spans / (produced + received),
                        "produce_s": produced,
                        "p50": costs[len(costs) // 2] / 1e3,
                        "p99": costs[int(len(costs) * 0.99)] / 1e3,
                        "mean": statistics.fmean(costs) / 1e3,
                        "elapsed": elapsed,
                    }
                )
                r = results[-1]
                print(
                    f"  round {round_no + 1}: {r['both']:>8,.0f} spans/s into Postgres and Opik "
                    f"(store {r['store']:,.0f}/s, Opik {r['opik']:,.0f}/s; produced in {r['produce_s']:.2f} s); "
                    f"caller p50 {r['p50']:.2f} µs, p99 {r['p99']:.2f} µs, mean {r['mean']:.2f} µs"
                )
            stats = receiver.stats()
            rows = await asyncio.to_thread(count_rows, dsn)
            med = {key: statistics.median(r[key] for r in results) for key in results[0]}
            print(
                f"\nmedian of {args.rounds} rounds of {args.spans:,} spans (traces of 10, batch {args.batch}):\n"
                f"  span() → committed rows in Postgres + Opik receiver: {med['both']:>9,.0f} spans/s  "
                f"(target ≥ 20,000)\n"
                f"  committed rows only:                                {med['store']:>9,.0f} spans/s\n"
                f"  caller-side span() cost during the run: p50 {med['p50']:.2f} µs, p99 {med['p99']:.2f} µs, "
                f"mean {med['mean']:.2f} µs\n"
                f"  garbage collector thresholds during the run: {gc.get_threshold()} "
                f"(batching.gc_young_threshold={build_settings(Path('.'), args.batch).batching.gc_young_threshold})\n"
                f"  rows in the table: {rows:,} for {args.rounds * args.spans:,} produced; receiver holds "
                f"{stats['spans']:,} spans ({stats['span_writes'] - stats['spans']} written twice, incl. warm-up)"
            )
    finally:
        receiver.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000, help="batching.max_batch_size (drains go up to 1,000)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--dsn", help="a scratch Postgres database (default: start a throwaway cluster)")
    parser.add_argument(
        "--validate", action="store_true", help="receiver validates every body with opik.rest_api.types (~110 µs/span)"
    )
    args = parser.parse_args()

    from src.repositories.postgres import migrate

    cluster = None
    dsn = args.dsn
    if dsn is None:
        from tests.fixtures.postgres_server import PostgresCluster

        cluster = PostgresCluster().start()
        dsn = cluster.create_database("obs_e2e")
        print(f"throwaway cluster: {cluster.dsn('obs_e2e')} (fsync on)", file=sys.stderr)
    try:
        migrate(dsn)
        print(machine())
        validation = (
            "every body validated with opik.rest_api.types"
            if args.validate
            else "bodies parsed and counted, not pydantic-validated (--validate)"
        )
        print(f"Opik receiver: tests/fixtures/opik_receiver.py in its own process, {validation}")
        asyncio.run(run(dsn, args))
    finally:
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    main()
