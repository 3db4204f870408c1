"""The HTML report's reads beyond the metrics answer: a latency histogram per tier, statuses over
time, the slowest and the failed traces, and the traces of one LangGraph thread.

Why a module of its own: the metrics path (``get_latency_stats`` / ``get_quality_metrics``) is
the contract every backend fulfils and another change reworks it; these reads only serve the
report, so they live beside it rather than widening :class:`SpanStore`. Every one is bounded —
the window's lower bound on the indexed ``start_time``, a ``LIMIT`` where rows come back, a fixed
number of groups where they are counted — so a store of a million spans answers in the time the
window's rows take to scan once, never more.

SQLite and Postgres answer in SQL, run through the backend's own executor (``_run`` /
``_fetchall``: its worker threads or pool, its error mapping), so the report opens nothing of
its own. Any other store (Supabase REST) has no SQL entry point here:
the same figures are computed from at most :data:`SAMPLE_LIMIT` spans read through the public
``get_spans_by_time_window``, and :attr:`ReportReads.sampled` says so, for the page to say it too.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from src.agents.ml_foundation.observability_connector.models import ObservabilitySpan
from src.repositories.base import TABLE, SpanStore, parse_window
from src.repositories.observability_span import ObservabilitySpanRepository
from src.repositories.postgres import _SELECT_COLS as PG_COLUMNS
from src.repositories.postgres import PostgresSpanRepository
from src.repositories.postgres_rows import row_to_span as pg_row_to_span
from src.repositories.row_values import utc_text
from src.repositories.sqlite import SQLiteSpanRepository
from src.repositories.sqlite_rows import row_to_span as sqlite_row_to_span
from src.repositories.sqlite_schema import COLS as SQLITE_COLUMNS

__all__ = [
    "EDGES_MS",
    "SAMPLE_LIMIT",
    "THREAD_ATTRIBUTE",
    "TIME_BUCKETS",
    "ReportFilter",
    "ReportReads",
    "read_report",
    "thread_trace_ids",
    "trace_spans",
]

#: Upper edges (ms) of the latency histogram's buckets; the last bucket is everything above.
EDGES_MS: Final[tuple[float, ...]] = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000)
#: Columns of the "statuses over time" chart.
TIME_BUCKETS: Final = 48
#: Spans read through the public API on a store without SQL here (Supabase REST).
SAMPLE_LIMIT: Final = 5_000
#: The callback handler's attribute for LangGraph's thread id (the ``thread_id`` column holds it too).
THREAD_ATTRIBUTE: Final = "langgraph.thread_id"
#: Rows fetched to find the N slowest / latest failed *distinct* traces.
_CANDIDATES: Final = 200


@dataclass(frozen=True)
class ReportFilter:
    """The question: a window (since ``since``), optionally one agent and/or a set of traces."""

    window: str
    since: datetime
    agent_name: str | None = None
    trace_ids: tuple[str, ...] | None = None


@dataclass
class ReportReads:
    """What the report draws besides the metrics tables."""

    #: ``{tier: [count per bucket]}``, ``len(EDGES_MS) + 1`` buckets each.
    histogram: dict[int, list[int]] = field(default_factory=dict)
    #: Width of one time bucket in seconds; bucket ``i`` starts at ``since + i * width``.
    bucket_s: float = 0.0
    #: ``[(ok, error, timeout)]`` per time bucket (``started`` counts as ok, as in the metrics).
    over_time: list[tuple[int, int, int]] = field(default_factory=list)
    slowest: list[tuple[str, float]] = field(default_factory=list)  # (trace_id, ms), slowest first
    failed: list[str] = field(default_factory=list)  # trace ids, latest failure first
    sampled: bool = False


def _backend(store: SpanStore) -> SpanStore:
    return store.store if isinstance(store, ObservabilitySpanRepository) else store


def _bucket_of(ms: float) -> int:
    return bisect.bisect_left(EDGES_MS, ms)  # the first edge >= ms, as _bucket_sql's CASE


def _search_sql(column: str, edges: Sequence[str], op: str, lo: int = 0, hi: int | None = None) -> str:
    """The number of ``edges`` that ``column`` is past, as a balanced tree of CASEs.

    ``edges`` ascend; bucket ``i`` holds the values with ``column op edges[i]`` false for every
    edge below ``i``: log2(n) comparisons per row instead of n, and exact (no arithmetic on the
    value), so a span on a bucket's edge lands where the Python reference puts it.
    """
    hi = len(edges) if hi is None else hi
    if lo == hi:
        return str(lo)
    mid = (lo + hi + 1) // 2
    below = _search_sql(column, edges, op, lo, mid - 1)
    above = _search_sql(column, edges, op, mid, hi)
    return f"(CASE WHEN {column} {op} {edges[mid - 1]} THEN {below} ELSE {above} END)"


def _bucket_sql(column: str) -> str:
    """The histogram bucket of ``column`` (a bucket holds values up to and including its edge)."""
    return _search_sql(column, [repr(float(e)) for e in EDGES_MS], "<=")


def _distinct(rows: Sequence[Sequence[Any]], limit: int) -> list[tuple[str, Any]]:
    seen: dict[str, Any] = {}
    for trace_id, value in rows:
        if trace_id not in seen:
            seen[str(trace_id)] = value
            if len(seen) == limit:
                break
    return list(seen.items())


async def read_report(store: SpanStore, question: ReportFilter, top: int = 5) -> ReportReads:
    """The report's histogram, timeline and trace picks for ``question`` (see the module notes)."""
    backend = _backend(store)
    bucket_s = max(parse_window(question.window).total_seconds() / TIME_BUCKETS, 1.0)
    if isinstance(backend, SQLiteSpanRepository):
        return await _sqlite_reads(backend, question, bucket_s, top)
    if isinstance(backend, PostgresSpanRepository):
        return await _postgres_reads(backend, question, bucket_s, top)
    return await _sampled_reads(store, question, bucket_s, top)


async def thread_trace_ids(
    store: SpanStore, window: str, since: datetime, thread_id: str, limit: int = 100
) -> list[str]:
    """Traces of one LangGraph thread that started in the window, oldest first, at most ``limit``.

    Read from the ``thread_id`` column through its partial index (thread_id, start_time); the
    row builder fills it from the callback handler's ``langgraph.thread_id`` attribute, and
    ``migrate`` moved that attribute into it for rows stored before the column existed.
    """
    backend = _backend(store)
    if isinstance(backend, SQLiteSpanRepository):
        sql = (
            f"SELECT trace_id, MIN(start_time) AS t FROM {TABLE} WHERE thread_id = ? AND start_time >= ? "
            "GROUP BY trace_id ORDER BY t LIMIT ?"
        )
        rows = await backend._run(lambda conn: conn.execute(sql, (thread_id, utc_text(since), limit)).fetchall())
        return [str(r[0]) for r in rows]
    if isinstance(backend, PostgresSpanRepository):
        sql = (
            f"SELECT trace_id, MIN(start_time) AS t FROM {TABLE} WHERE thread_id = %s AND start_time >= %s "
            "GROUP BY trace_id ORDER BY t LIMIT %s"
        )
        rows = await backend._fetchall(sql, [thread_id, since, limit], "reading a thread")
        return [str(r[0]) for r in rows]
    spans = await store.get_conversation_spans(window, thread_id=thread_id, limit=SAMPLE_LIMIT)
    return list(dict.fromkeys(span.trace_id for span in spans))[:limit]


async def trace_spans(store: SpanStore, trace_id: str, limit: int) -> tuple[list[ObservabilitySpan], int]:
    """The first ``limit`` spans of one trace (oldest first) and how many it has in all.

    ``get_spans_by_trace_id`` has no limit, and a runaway trace can hold any number of spans;
    the page draws a few hundred, so only those are read (the count comes from the index).
    """
    backend = _backend(store)
    if isinstance(backend, SQLiteSpanRepository):
        rows_sql = f"SELECT {SQLITE_COLUMNS} FROM {TABLE} WHERE trace_id = ? ORDER BY start_time, rowid LIMIT ?"
        count_sql = f"SELECT COUNT(*) FROM {TABLE} WHERE trace_id = ?"

        def read(conn: Any) -> tuple[list[Any], int]:
            return conn.execute(rows_sql, (trace_id, limit)).fetchall(), conn.execute(
                count_sql, (trace_id,)
            ).fetchone()[0]

        rows, total = await backend._run(read)
        return [sqlite_row_to_span(row) for row in rows], int(total)
    if isinstance(backend, PostgresSpanRepository):
        rows = await backend._fetchall(
            f"SELECT {PG_COLUMNS}, count(*) OVER () FROM {TABLE} WHERE trace_id = %s ORDER BY start_time, id LIMIT %s",
            [trace_id, limit],
            "reading a trace",
        )
        return [pg_row_to_span(row[:-1]) for row in rows], int(rows[0][-1]) if rows else 0
    spans = await store.get_spans_by_trace_id(trace_id)
    return spans[:limit], len(spans)


def _where(question: ReportFilter, mark: str, since: Any) -> tuple[str, list[Any]]:
    clauses = [f"start_time >= {mark}"]
    params: list[Any] = [since]
    if question.agent_name is not None:
        clauses.append(f"agent_name = {mark}")
        params.append(question.agent_name)
    if question.trace_ids is not None:
        ids = question.trace_ids or ("",)  # an empty thread matches nothing
        clauses.append(f"trace_id IN ({', '.join([mark] * len(ids))})")
        params.extend(ids)
    return " AND ".join(clauses), params


def _statements(where: str, mark: str, bucket_expr: str, top_limit: str) -> dict[str, str]:
    return {
        "histogram": (
            f"SELECT agent_tier, {_bucket_sql('duration_ms')} AS b, COUNT(*) FROM {TABLE} "
            f"WHERE {where} AND duration_ms IS NOT NULL GROUP BY agent_tier, b"
        ),
        "over_time": (
            f"SELECT {bucket_expr} AS b, "
            "SUM(CASE WHEN status = 'error' THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN status = 'timeout' THEN 1 ELSE 0 END), COUNT(*) "
            f"FROM {TABLE} WHERE {where} GROUP BY b"
        ),
        "slowest": (
            f"SELECT trace_id, duration_ms FROM {TABLE} WHERE {where} AND duration_ms IS NOT NULL "
            f"ORDER BY duration_ms DESC LIMIT {top_limit}"
        ),
        "failed": (
            f"SELECT trace_id, start_time FROM {TABLE} WHERE {where} AND status IN ('error', 'timeout') "
            f"ORDER BY start_time DESC LIMIT {top_limit}"
        ),
    }


def _assemble(rows: dict[str, list[Any]], bucket_s: float, top: int, *, sampled: bool = False) -> ReportReads:
    reads = ReportReads(bucket_s=bucket_s, sampled=sampled)
    for tier, bucket, count in rows["histogram"]:
        reads.histogram.setdefault(int(tier), [0] * (len(EDGES_MS) + 1))[int(bucket)] += int(count)
    reads.histogram = dict(sorted(reads.histogram.items()))
    timeline = [[0, 0, 0] for _ in range(TIME_BUCKETS)]
    for bucket, errors, timeouts, total in rows["over_time"]:
        # The last instant of the window can land one past the end (now moved on): fold it in.
        i = min(max(int(bucket), 0), TIME_BUCKETS - 1)
        timeline[i][0] += int(total) - int(errors) - int(timeouts)
        timeline[i][1] += int(errors)
        timeline[i][2] += int(timeouts)
    reads.over_time = [(a, b, c) for a, b, c in timeline]
    reads.slowest = [(t, float(ms)) for t, ms in _distinct(rows["slowest"], top)]
    reads.failed = [t for t, _ in _distinct(rows["failed"], top)]
    return reads


async def _sqlite_reads(store: SQLiteSpanRepository, question: ReportFilter, bucket_s: float, top: int) -> ReportReads:
    since = utc_text(question.since)
    where, params = _where(question, "?", since)
    # Bucket starts as stored text (fixed-width UTC sorts like time): compared, never parsed.
    starts = [f"'{utc_text(question.since + timedelta(seconds=bucket_s * i))}'" for i in range(1, TIME_BUCKETS)]
    statements = _statements(where, "?", _search_sql("start_time", starts, "<"), str(_CANDIDATES))

    def one(sql: str) -> Any:
        return lambda conn: conn.execute(sql, params).fetchall()

    # Each statement on its own worker: they scan the same window and the store has the threads.
    results = await asyncio.gather(*(store._run(one(sql)) for sql in statements.values()))
    return _assemble(dict(zip(statements, results, strict=True)), bucket_s, top)


async def _postgres_reads(
    store: PostgresSpanRepository, question: ReportFilter, bucket_s: float, top: int
) -> ReportReads:
    where, params = _where(question, "%s", question.since)
    bucket = f"floor(extract(epoch FROM (start_time - %s::timestamptz)) / {bucket_s!r})::int"
    statements = _statements(where, "%s", bucket, str(_CANDIDATES))

    async def one(name: str, sql: str) -> list[Any]:
        extra = [question.since] if name == "over_time" else []
        return await store._fetchall(sql, [*extra, *params], "reading the report")

    results = await asyncio.gather(*(one(name, sql) for name, sql in statements.items()))
    return _assemble(dict(zip(statements, results, strict=True)), bucket_s, top)


async def _sampled_reads(store: SpanStore, question: ReportFilter, bucket_s: float, top: int) -> ReportReads:
    spans: list[ObservabilitySpan] = []
    for trace_id in question.trace_ids if question.trace_ids is not None else (None,):
        spans += await store.get_spans_by_time_window(
            question.window, agent_name=question.agent_name, trace_id=trace_id, limit=SAMPLE_LIMIT
        )
        if len(spans) >= SAMPLE_LIMIT:
            break
    spans = spans[:SAMPLE_LIMIT]
    histogram: dict[tuple[int, int], int] = {}
    over_time: dict[int, list[int]] = {}
    for span in spans:
        if span.duration_ms is not None:
            key = (span.agent_tier, _bucket_of(span.duration_ms))
            histogram[key] = histogram.get(key, 0) + 1
        i = int((span.start_time - question.since).total_seconds() // bucket_s)
        counts = over_time.setdefault(i, [0, 0, 0])
        counts[0] += span.status == "error"
        counts[1] += span.status == "timeout"
        counts[2] += 1
    timed = sorted((s for s in spans if s.duration_ms is not None), key=lambda s: -(s.duration_ms or 0.0))
    failed = sorted((s for s in spans if s.status in ("error", "timeout")), key=lambda s: s.start_time, reverse=True)
    rows: dict[str, list[Any]] = {
        "histogram": [(t, b, n) for (t, b), n in histogram.items()],
        "over_time": [(i, e, t, n) for i, (e, t, n) in over_time.items()],
        "slowest": [(s.trace_id, s.duration_ms) for s in timed],
        "failed": [(s.trace_id, s.start_time) for s in failed],
    }
    return _assemble(rows, bucket_s, top, sampled=len(spans) >= SAMPLE_LIMIT)
