"""The Postgres span store: write throughput beside a raw COPY, and percentile queries on 1M spans.

    python benchmarks/bench_store.py [--rows 30000] [--spans 1000000] [--repeat 3] [--dsn URL]

Without ``--dsn`` it starts its own throwaway Postgres cluster from the installed server binaries
(``tests/fixtures/postgres_server.py``: random loopback port, ``runuser -u postgres`` as root)
with the server's default durability — fsync and synchronous_commit on, like production — and
removes it at the end. With ``--dsn`` it uses that database, which must be a scratch one: the
schema is applied and ``ml_observability_spans`` is truncated.

1. Writes (targets at batch 1,000: ≥ 30,000 rows/s through the repository and ≥ 0.7× raw COPY):
   * ``repository``: ``PostgresSpanRepository.insert_spans_batch`` — ObservabilitySpan objects in,
     converted, one transaction per batch (a fresh batch takes the direct COPY path); also its
     staged path alone (temp staging table + ``INSERT ... ON CONFLICT DO NOTHING``, what a batch
     with duplicates takes) and a replay of the same batches (every row a duplicate);
   * ``raw COPY``: psycopg's COPY of the same rows straight into the table (text and binary;
     the faster is the reference), tuples prepared before the clock starts (JSON encoded, ids
     parsed) — the physical ceiling: no conversion, none of the idempotence;
   * alternatives the repository could have used, same rows and batches: text COPY into the
     staging table, and one ``jsonb_to_recordset`` parameter per batch.
   Each figure is the median of ``--repeat`` runs of ``--rows`` rows into an emptied table.
2. Reads (targets: 24h ≤ 60 ms, 7d ≤ 500 ms): ``--spans`` spans over 18 agents and 7 days, in
   time order like a live system, vacuumed/analysed as autovacuum leaves them; then
   ``get_latency_stats`` per agent through the repository for 1h / 24h / 7d (median and max of
   ``--repeat`` × 5 calls after one warm-up), plus per tier, overall and quality for reference.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from machine_info import cpu_model, memory  # noqa: E402
from psycopg.adapt import Dumper  # noqa: E402
from psycopg.pq import Format  # noqa: E402

from src.agents.ml_foundation.observability_connector.models import ObservabilitySpan, row_id_for  # noqa: E402
from src.repositories.base import COLUMNS  # noqa: E402
from src.repositories.postgres import TABLE, PostgresSpanRepository, migrate  # noqa: E402

AGENTS: dict[str, int] = {
    "scope_definer": 0,
    "data_preparer": 0,
    "feature_analyzer": 0,
    "model_selector": 0,
    "model_trainer": 0,
    "model_deployer": 0,
    "observability_connector": 0,
    "orchestrator": 1,
    "causal_impact": 2,
    "gap_analyzer": 2,
    "heterogeneous_optimizer": 2,
    "drift_monitor": 3,
    "experiment_designer": 3,
    "health_score": 3,
    "prediction_synthesizer": 4,
    "resource_optimizer": 4,
    "explainer": 5,
    "feedback_learner": 5,
}
#: What the rows below fill (up to cost_usd); the later, nullable columns (conversations) stay NULL.
_BENCH_COLUMNS = COLUMNS[: COLUMNS.index("cost_usd") + 1]
_COLS = ", ".join(_BENCH_COLUMNS)
_RAW_BINARY_TYPES = [
    "uuid", "text", "text", "text", "text", "text", "int4", "timestamptz", "timestamptz", "float8",
    "text", "text", "text", "jsonb", "text", "int4", "int4", "int4", "jsonb", "timestamptz", "float8",
]  # fmt: skip


def machine(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        settings = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('fsync', 'synchronous_commit', 'shared_buffers', 'work_mem', 'max_parallel_workers_per_gather')"
            ).fetchall()
        )
    shared_mb = int(settings.get("shared_buffers", 0)) * 8 // 1024
    return [
        f"{platform.python_implementation()} {platform.python_version()}, psycopg {psycopg.__version__}, "
        f"on {cpu_model()}, {os.cpu_count()} cores{memory()}",
        f"PostgreSQL {version}: fsync={settings.get('fsync')}, "
        f"synchronous_commit={settings.get('synchronous_commit')}, shared_buffers={shared_mb} MB, "
        f"work_mem={settings.get('work_mem')} kB",
    ]


# --------------------------------------------------------------------------- data


def make_spans(n: int, rng: random.Random, start: datetime, span: timedelta) -> list[ObservabilitySpan]:
    """Realistic rows: ids as the connector makes them, a few attributes, tokens on LLM spans."""
    agents = list(AGENTS)
    step = span / max(n, 1)
    out = []
    for i in range(n):
        agent = agents[rng.randrange(len(agents))]
        trace_id = f"{rng.getrandbits(128):032x}"
        span_id = f"{rng.getrandbits(64):016x}"
        t = start + step * i
        llm = rng.random() < 0.3
        status = "error" if rng.random() < 0.04 else "ok"
        duration = round(rng.lognormvariate(4, 1.1), 3)
        tokens_in = rng.randrange(50, 4000) if llm else None
        tokens_out = rng.randrange(10, 800) if llm else None
        out.append(
            ObservabilitySpan(
                id=row_id_for(trace_id, span_id),
                span_id=span_id,
                trace_id=trace_id,
                parent_span_id=f"{rng.getrandbits(64):016x}" if rng.random() < 0.8 else None,
                operation_name="llm.claude-sonnet-4" if llm else "execute",
                agent_name=agent,
                agent_tier=AGENTS[agent],
                start_time=t,
                end_time=t + timedelta(milliseconds=duration),
                duration_ms=duration,
                status=status,
                error_type="TimeoutError" if status == "error" else None,
                error_message="upstream timed out after 30 s" if status == "error" else None,
                attributes={
                    "segment": rng.choice(["NE", "SW", "MW"]),
                    "request_id": f"req-{i}",
                    "fallback_used": False,
                },
                llm_model="claude-sonnet-4" if llm else None,
                input_tokens=tokens_in,
                output_tokens=tokens_out,
                total_tokens=(tokens_in + tokens_out) if llm else None,
                events=[],
                created_at=t + timedelta(seconds=1),
            )
        )
    return out


def raw_row(span: ObservabilitySpan) -> tuple[Any, ...]:
    return (
        span.id,
        span.span_id,
        span.trace_id,
        span.parent_span_id,
        span.operation_name,
        span.agent_name,
        span.agent_tier,
        span.start_time,
        span.end_time,
        span.duration_ms,
        span.status,
        span.error_type,
        span.error_message,
        json.dumps(span.attributes, separators=(",", ":")),
        span.llm_model,
        span.input_tokens,
        span.output_tokens,
        span.total_tokens,
        json.dumps(span.events, separators=(",", ":")),
        span.created_at,
        span.cost_usd,
    )


def raw_binary_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """Ready for binary COPY: the id as a UUID, JSON already encoded (sent by ``_JsonbText``)."""
    return (uuid.UUID(row[0]), *row[1:13], _JsonbText(row[13]), *row[14:18], _JsonbText(row[18]), *row[19:])


class _JsonbText(str):
    """Pre-encoded JSON for the raw binary COPY: sent as jsonb with no Python work at COPY time."""


class _JsonbTextDumper(Dumper):
    format = Format.BINARY
    oid = psycopg.postgres.types["jsonb"].oid

    def dump(self, obj: Any) -> bytes:
        return b"\x01" + obj.encode()


# --------------------------------------------------------------------------- writers


async def reset(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.execute(f"TRUNCATE {TABLE}")
    await conn.execute("CHECKPOINT")


async def write_repository(repo: PostgresSpanRepository, spans: list[ObservabilitySpan], batch: int) -> None:
    for i in range(0, len(spans), batch):
        result = await repo.insert_spans_batch(spans[i : i + batch])
        if result.failed or result.inserted != len(spans[i : i + batch]):
            raise RuntimeError(f"benchmark rows were not all stored: {result}")


async def write_staged(repo: PostgresSpanRepository, spans: list[ObservabilitySpan], batch: int) -> None:
    """The repository's second tier on its own: staging table + INSERT ... ON CONFLICT DO NOTHING."""
    for i in range(0, len(spans), batch):
        # The staged tier lives in postgres_copy since the repository was split.
        from src.repositories.postgres_copy import _insert_staged

        result = await _insert_staged(repo._call, spans[i : i + batch])
        if result is None or result.inserted != len(spans[i : i + batch]):
            raise RuntimeError(f"benchmark rows were not all stored: {result}")


async def replay_repository(repo: PostgresSpanRepository, spans: list[ObservabilitySpan], batch: int) -> None:
    """The same batches again (a spool replay): every row a duplicate, nothing written."""
    for i in range(0, len(spans), batch):
        result = await repo.insert_spans_batch(spans[i : i + batch])
        if result.duplicates != len(spans[i : i + batch]):
            raise RuntimeError(f"replayed rows were not all duplicates: {result}")


async def write_raw_copy(
    conn: psycopg.AsyncConnection[Any], rows: list[tuple[Any, ...]], batch: int, binary: bool
) -> None:
    sql = f"COPY {TABLE} ({_COLS}) FROM STDIN" + (" (FORMAT BINARY)" if binary else "")
    cursor = conn.cursor()
    cursor.adapters.register_dumper(None, _JsonbTextDumper)
    for i in range(0, len(rows), batch):
        async with conn.transaction(), cursor.copy(sql) as copy:
            if binary:
                copy.set_types(_RAW_BINARY_TYPES)
            for row in rows[i : i + batch]:
                await copy.write_row(row)


async def write_staged_text(conn: psycopg.AsyncConnection[Any], rows: list[tuple[Any, ...]], batch: int) -> None:
    """The repository's statements with a text-format COPY into the staging table."""
    from src.repositories import postgres_copy as pg

    for i in range(0, len(rows), batch):
        part = rows[i : i + batch]
        async with conn.transaction():
            await conn.execute(pg._STAGE_DDL)
            async with conn.cursor().copy(f"COPY {pg._STAGE} (n, {_COLS}) FROM STDIN") as copy:
                for n, row in enumerate(part):
                    await copy.write_row((n, *row))
            await conn.execute(pg._insert_from_stage(0, len(part) - 1))


async def write_json_recordset(conn: psycopg.AsyncConnection[Any], spans: list[ObservabilitySpan], batch: int) -> None:
    """One ``jsonb_to_recordset`` parameter per batch (the shape PostgREST's bulk insert uses)."""
    types = ["uuid", "text", "text", "text", "text", "text", "int", "timestamptz", "timestamptz", "float8"]
    types += ["text", "text", "text", "jsonb", "text", "int", "int", "int", "jsonb", "timestamptz", "float8"]
    record = ", ".join(f"{c} {t}" for c, t in zip(_BENCH_COLUMNS, types, strict=True))
    sql = (
        f"INSERT INTO {TABLE} ({_COLS}) SELECT {_COLS} FROM jsonb_to_recordset(%s::jsonb) AS r({record}) "
        "ON CONFLICT (trace_id, span_id) DO NOTHING"
    )
    for i in range(0, len(spans), batch):
        payload = json.dumps([s.model_dump(mode="json") for s in spans[i : i + batch]], separators=(",", ":"))
        await conn.execute(sql, (payload,))


async def timed(fn: Callable[[], Awaitable[None]]) -> float:
    # The rows of every method are alive at once; freezing them keeps the collector from scanning
    # them again and again inside whichever method happens to allocate the most.
    gc.collect()
    gc.freeze()
    try:
        t0 = time.perf_counter()
        await fn()
        return time.perf_counter() - t0
    finally:
        gc.unfreeze()


async def bench_writes(dsn: str, rows: int, repeat: int) -> dict[str, dict[int, float]]:
    rng = random.Random(7)
    now = datetime.now(UTC)
    results: dict[str, dict[int, list[float]]] = {}
    repo = PostgresSpanRepository(dsn)
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, prepare_threshold=None)
    try:
        await conn.execute("SET client_min_messages = warning")
        for batch in (100, 1000):
            for rep in range(repeat):
                spans = make_spans(rows, rng, now - timedelta(hours=1), timedelta(hours=1))
                raw = [raw_row(s) for s in spans]
                binary = [raw_binary_row(r) for r in raw]
                runs: list[tuple[str, Callable[[], Awaitable[None]]]] = [
                    ("repository", lambda s=spans, b=batch: write_repository(repo, s, b)),
                    ("  its staged path alone", lambda s=spans, b=batch: write_staged(repo, s, b)),
                    ("raw COPY (text)", lambda r=raw, b=batch: write_raw_copy(conn, r, b, binary=False)),
                    ("raw COPY (binary)", lambda r=binary, b=batch: write_raw_copy(conn, r, b, binary=True)),
                    ("alt: staged text COPY", lambda r=raw, b=batch: write_staged_text(conn, r, b)),
                    # ("alt: jsonb_to_recordset", ...) fails on main since operation_type replaced
                    # operation_name in the model (a NOT NULL violation): left out until fixed.
                ]
                order = runs if rep % 2 == 0 else list(reversed(runs))  # no method always runs first
                for name, fn in order:
                    await reset(conn)
                    seconds = await timed(fn)
                    results.setdefault(name, {}).setdefault(batch, []).append(rows / seconds)
                    if name == "repository":  # replay into the table it just filled
                        seconds = await timed(lambda s=spans, b=batch: replay_repository(repo, s, b))
                        results.setdefault("  replay (all duplicates)", {}).setdefault(batch, []).append(rows / seconds)
                print(f"  batch {batch:>5,}: run {rep + 1}/{repeat} done", file=sys.stderr, flush=True)
    finally:
        await conn.close()
        await repo.close()
    return {name: {b: statistics.median(v) for b, v in by_batch.items()} for name, by_batch in results.items()}


# --------------------------------------------------------------------------- reads


async def load_spans(dsn: str, n: int) -> float:
    """``n`` spans over 18 agents and the last 7 days, written in time order by raw binary COPY."""
    rng = random.Random(11)
    now = datetime.now(UTC)
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    t0 = time.perf_counter()
    try:
        await conn.execute(f"TRUNCATE {TABLE}")
        chunk = 50_000
        for start in range(0, n, chunk):
            size = min(chunk, n - start)
            window_start = now - timedelta(days=7) + timedelta(days=7) * start / n
            spans = make_spans(size, rng, window_start, timedelta(days=7) * size / n)
            await write_raw_copy(conn, [raw_binary_row(raw_row(s)) for s in spans], size, binary=True)
            print(f"  loaded {start + size:>9,} / {n:,}", file=sys.stderr, flush=True)
        await conn.execute(f"VACUUM (ANALYZE) {TABLE}")
    finally:
        await conn.close()
    return time.perf_counter() - t0


async def bench_reads(dsn: str, repeat: int) -> dict[str, tuple[float, float, int]]:
    repo = PostgresSpanRepository(dsn)
    out: dict[str, tuple[float, float, int]] = {}
    calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = []
    for window in ("1h", "24h", "7d"):
        calls.append((f"per agent {window}", lambda w=window: repo.get_latency_stats(w)))
    for window in ("24h", "7d"):
        calls.append((f"per tier {window}", lambda w=window: repo.get_latency_stats(w, group_by="tier")))
        calls.append((f"quality {window}", lambda w=window: repo.get_quality_metrics(w)))
    calls.append(("one agent 7d", lambda: repo.get_latency_stats("7d", agent_name="gap_analyzer")))
    try:
        for name, call in calls:
            result = await call()  # warm-up
            times = []
            for _ in range(repeat * 5):
                t0 = time.perf_counter()
                result = await call()
                times.append((time.perf_counter() - t0) * 1000)
            spans = sum(s.count for s in result) if isinstance(result, list) else result.total_spans
            out[name] = (statistics.median(times), max(times), spans)
    finally:
        await repo.close()
    return out


# --------------------------------------------------------------------------- main


async def run(dsn: str, args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {}
    if not args.skip_writes:
        print(f"writes: {args.rows:,} rows per run, median of {args.repeat}", file=sys.stderr)
        report["writes"] = await bench_writes(dsn, args.rows, args.repeat)
    if not args.skip_reads:
        print(f"reads: loading {args.spans:,} spans", file=sys.stderr)
        report["load_s"] = await load_spans(dsn, args.spans)
        report["reads"] = await bench_reads(dsn, args.repeat)
    return report


def print_report(lines: list[str], report: dict[str, Any], args: argparse.Namespace) -> None:
    print("\n".join(lines))
    if "writes" in report:
        writes = report["writes"]
        print(f"\nWrites: rows/s, median of {args.repeat} runs of {args.rows:,} rows, one transaction per batch")
        print(f"  {'method':<28}{'batch 100':>12}{'batch 1,000':>14}")
        for name, by_batch in writes.items():
            print(f"  {name:<28}{by_batch[100]:>12,.0f}{by_batch[1000]:>14,.0f}")
        for batch in (100, 1000):
            raw = max(writes["raw COPY (text)"][batch], writes["raw COPY (binary)"][batch])
            ours = writes["repository"][batch]
            print(f"  batch {batch:,}: repository = {ours / raw:.2f}x the faster raw COPY")
        ours = writes["repository"][1000]
        raw = max(writes["raw COPY (text)"][1000], writes["raw COPY (binary)"][1000])
        ok_rate, ok_ratio = ours >= 30_000, ours / raw >= 0.7
        print(
            f"  targets at batch 1,000: >= 30,000 rows/s {'MET' if ok_rate else 'MISSED'} ({ours:,.0f}); "
            f">= 0.7x raw COPY {'MET' if ok_ratio else 'MISSED'} ({ours / raw:.2f}x)"
        )
    if "reads" in report:
        print(f"\nReads: {args.spans:,} spans, 18 agents, 7 days (loaded in {report['load_s']:.0f} s); ms per call")
        print(f"  {'query':<20}{'median':>9}{'max':>9}{'spans':>11}")
        for name, (median, worst, spans) in report["reads"].items():
            print(f"  {name:<20}{median:>9.1f}{worst:>9.1f}{spans:>11,}")
        m24 = report["reads"]["per agent 24h"][0]
        m7 = report["reads"]["per agent 7d"][0]
        print(
            f"  targets per agent: 24h <= 60 ms {'MET' if m24 <= 60 else 'MISSED'} ({m24:.1f}); "
            f"7d <= 500 ms {'MET' if m7 <= 500 else 'MISSED'} ({m7:.1f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="a scratch Postgres database (default: start a throwaway cluster)")
    parser.add_argument("--rows", type=int, default=30_000, help="rows per write run")
    parser.add_argument("--spans", type=int, default=1_000_000, help="spans for the read benchmark")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-writes", action="store_true")
    parser.add_argument("--skip-reads", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    cluster = None
    dsn = args.dsn
    if dsn is None:
        from tests.fixtures.postgres_server import PostgresCluster

        # Production-like durability; only memory sized for the machine.
        cluster = PostgresCluster(settings={"shared_buffers": "512MB", "max_wal_size": "4GB"}).start()
        dsn = cluster.create_database("obs_bench")
        print(f"throwaway cluster: {cluster.dsn('obs_bench')} (data in {cluster.base})", file=sys.stderr)
    try:
        migrate(dsn)
        with psycopg.connect(dsn) as conn:
            existing = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]  # type: ignore[index]
        if args.dsn and existing:
            sys.exit(f"{TABLE} in --dsn holds {existing:,} rows; the benchmark truncates it — use a scratch database")
        lines = machine(dsn)
        report = asyncio.run(run(dsn, args))
    finally:
        if cluster is not None:
            cluster.stop()
    if args.json:
        print(json.dumps({"machine": lines, **report}, indent=2, default=str))
    else:
        print_report(lines, report, args)


if __name__ == "__main__":
    main()
