"""Embedded SQLite span store: the default backend, so a fresh machine works with nothing running.

Design notes (why it looks like this):

* **One connection per thread, on a small private thread pool.** ``sqlite3`` connections must not
  be shared between threads, and the repository is used from several event loops at once (the
  flusher thread has its own loop; CLI / tests read from another). Every call hops onto the
  repository's own executor, whose worker threads each own one connection; that keeps the
  caller's loop free, bounds the number of connections, and does not depend on whichever loop
  happens to be calling.
* **Split by job**: :mod:`sqlite_connect` opens the file (WAL, pragmas, errors),
  :mod:`sqlite_schema` holds the table's DDL and upgrade, :mod:`sqlite_rows` converts spans to
  rows and back, :mod:`sqlite_queries` holds the metrics SQL; this module runs them on its
  threads.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from src.agents.ml_foundation.observability_connector.background import share_gil, share_gil_on_this_thread
from src.agents.ml_foundation.observability_connector.feedback import (
    FEEDBACK_TABLE,
    Feedback,
    FeedbackByAgent,
    feedback_by_agent,
)
from src.agents.ml_foundation.observability_connector.lifecycle import keep_inherited, watch_after_fork
from src.agents.ml_foundation.observability_connector.models import (
    LatencyStats,
    ObservabilitySpan,
    QualityMetrics,
    error_rate,
)
from src.agents.ml_foundation.observability_connector.paths import absolute as _absolute
from src.agents.ml_foundation.observability_connector.rollups import RollupGroup
from src.repositories import sqlite_feedback
from src.repositories.base import (
    COLUMNS,
    CONVERSATION_LIMIT,
    TABLE,
    TTFT_SAMPLE_LIMIT,
    BatchInsertResult,
    GroupBy,
    MetricRow,
    ProgressCallback,
    SpanStore,
    check_conversation_filter,
    check_group_by,
    check_limit,
    conversation_where,
    hours_start,
    metric_row_of,
    metric_row_select,
    status_counts,
    window_start,
)
from src.repositories.row_values import span_label, utc_text
from src.repositories.sqlite_connect import SQLiteConnector, StoreCorruptError, StoreNotFoundError
from src.repositories.sqlite_cost import reprice_batch
from src.repositories.sqlite_queries import FALLBACK_SQL, GROUP_KEYS, filters, stats_sql
from src.repositories.sqlite_rollups import (
    ROLLUPS,
    SKETCH,
    apply_rows,
    delete_with_rollups,
    max_rowid,
    read_groups,
    rebuild_day,
    verify,
)
from src.repositories.sqlite_rows import reason, row_to_span, span_to_row
from src.repositories.sqlite_schema import COLS, INSERT, ROW_ERRORS, SCHEMA_VERSION

if TYPE_CHECKING:
    from src.agents.ml_foundation.observability_connector.pricing import Pricer

__all__ = ["COLUMNS", "SCHEMA_VERSION", "TABLE", "SQLiteSpanRepository", "StoreCorruptError", "StoreNotFoundError"]

# Imported from here by tests and benchmarks/bench_metrics.py under their earlier names.
_INSERT = INSERT
_span_to_row = span_to_row

T = TypeVar("T")
Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]


class SQLiteSpanRepository(SpanStore):
    """``ml_observability_spans`` in one SQLite file.

    Safe to share between threads and event loops: all database work runs on the repository's
    own worker threads, one connection each. ``close()`` is safe to call twice, and the
    repository reopens lazily if used again afterwards.
    """

    backend = "sqlite"

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout_s: float = 30.0,
        synchronous: Synchronous = "NORMAL",
        max_workers: int = 4,
        read_only: bool = False,
    ) -> None:
        """``synchronous`` trades durability for speed; the default suits the embedded store.

        With WAL, ``"NORMAL"`` never corrupts the file and loses nothing when the *process*
        crashes; only an OS crash or power cut can roll back commits made since the last
        checkpoint. ``"FULL"`` closes that gap with an fsync per batch, at a large cost in insert
        throughput — the right choice where this file is the system of record.

        ``read_only`` (the CLI's read commands): SQLite's ``mode=ro``; no directory, file or schema
        is created or changed, and a missing file is a :class:`StoreNotFoundError`. SQLite may
        still add the ``-wal``/``-shm`` companions of an existing WAL database to read it.
        """
        if str(path) == ":memory:" or str(path).startswith("file:"):
            raise ValueError(
                "SQLiteSpanRepository needs a file path: every worker thread opens its own connection, "
                "and ':memory:' would give each one a separate empty database"
            )
        sync = synchronous.upper()
        if sync not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, got {synchronous!r}")
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        self._path = _absolute(Path(path))
        self._read_only = read_only
        self._connector = SQLiteConnector(
            self._path, read_only=read_only, busy_timeout_s=busy_timeout_s, synchronous=sync
        )
        self._max_workers = max_workers
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._connections: dict[int, sqlite3.Connection] = {}
        self._local = threading.local()
        self._generation = 0
        watch_after_fork(self)

    def _after_fork_in_child(self) -> None:
        """In a forked child the executor's threads do not exist and the connections are the
        parent's (SQLite forbids using them across a fork): open new ones on first use, never
        closing the inherited ones (see lifecycle.keep_inherited)."""
        keep_inherited((self._executor, list(self._connections.values())))
        self._lock = threading.Lock()
        self._executor = None
        self._connections = {}
        self._local = threading.local()
        self._generation += 1

    @property
    def path(self) -> Path:
        return self._path

    @property
    def read_only(self) -> bool:
        return self._read_only

    def describe(self) -> str:
        return f"sqlite:{self._path}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self._path)!r})"

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Create the file, schema and indexes now rather than on the first real operation."""
        await self._run(lambda _conn: None)

    async def close(self) -> None:
        """Let in-flight operations finish, then close every connection (idempotent)."""
        with self._lock:
            executor, self._executor = self._executor, None
            connections = list(self._connections.values())
            self._connections.clear()
            self._generation += 1
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True)
        for conn in connections:
            conn.close()

    def _get_executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self._max_workers,
                    thread_name_prefix=f"sqlite-spans-{self._path.name}",
                    initializer=share_gil_on_this_thread,  # its row loops give the GIL back (background.py)
                )
            return self._executor

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._get_executor(), self._call, fn)
        except RuntimeError:
            # close() shut the executor down between our lookup and submit: reopen lazily.
            future = loop.run_in_executor(self._get_executor(), self._call, fn)
        return await future

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return fn(self._connection())

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, created (and the schema ensured) on first use."""
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is not None and local.generation == self._generation:
            return conn
        conn = self._connector.connect()
        with self._lock:
            self._connections[threading.get_ident()] = conn
            local.conn = conn
            local.generation = self._generation
        return conn

    # ------------------------------------------------------------------ writes

    async def insert_span(self, span: ObservabilitySpan) -> bool:
        """A bad row raises ValueError with the store's reason; a duplicate returns False."""
        result = await self.insert_spans_batch([span])
        if result.errors:
            span_id, reason = result.errors[0]
            raise ValueError(f"span {span_id!r} was not stored: {reason}")
        return result.inserted == 1

    async def insert_spans_batch(self, spans: Sequence[ObservabilitySpan]) -> BatchInsertResult:
        """One transaction for the whole batch; row by row only when that fails.

        Rows that cannot even be converted are reported without touching the database. Errors
        that are not about one row (locked database, disk full) propagate so the caller can
        retry or spool the batch.
        """
        if not spans:
            return BatchInsertResult()
        return await self._run(partial(self._insert_batch_sync, spans=list(spans)))

    def _insert_batch_sync(self, conn: sqlite3.Connection, spans: list[ObservabilitySpan]) -> BatchInsertResult:
        result = BatchInsertResult()
        rows: list[tuple[Any, ...]] = []
        labels: list[str] = []
        for span in spans:
            share_gil()
            try:
                row = span_to_row(span)
            except Exception as exc:
                result.failed += 1
                result.errors.append((span_label(span), reason(exc)))
            else:
                rows.append(row)
                labels.append(span_label(span))
        if not rows:
            return result

        conn.execute("BEGIN IMMEDIATE")
        try:
            last_rowid = max_rowid(conn)
            before = conn.total_changes
            conn.executemany(INSERT, rows)
            inserted = conn.total_changes - before
            if inserted:
                apply_rows(conn, last_rowid)  # only the rows this batch added (module doc of sqlite_rollups)
            conn.execute("COMMIT")
        except ROW_ERRORS:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        else:
            result.inserted += inserted
            result.duplicates += len(rows) - inserted
            return result

        # Row by row, still one transaction: a constraint failure in SQLite undoes only its own
        # statement, so the good rows commit together.
        conn.execute("BEGIN IMMEDIATE")
        try:
            last_rowid = max_rowid(conn)
            for label, row in zip(labels, rows, strict=True):
                before = conn.total_changes
                try:
                    conn.execute(INSERT, row)
                except ROW_ERRORS as exc:
                    if not conn.in_transaction:  # never expected: the error undid more than its row
                        raise sqlite3.OperationalError(f"transaction aborted by span {label!r}: {exc}") from exc
                    result.failed += 1
                    result.errors.append((label, reason(exc)))
                    continue
                if conn.total_changes - before:
                    result.inserted += 1
                else:
                    result.duplicates += 1
            if result.inserted:
                apply_rows(conn, last_rowid)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    async def delete_old_spans(
        self, days: int, batch_size: int = 10_000, progress: ProgressCallback | None = None
    ) -> int:
        """Short transactions so the flusher keeps writing during a large cleanup.

        ``progress`` runs on the caller's thread (a CLI progress bar is not thread-safe).
        """
        if days < 0:
            raise ValueError(f"days must be zero or positive, got {days}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        cutoff = utc_text(datetime.now(UTC) - timedelta(days=days))
        total = 0
        while True:
            deleted = await self._run(partial(self._delete_batch_sync, cutoff=cutoff, batch_size=batch_size))
            if deleted == 0:
                break
            total += deleted
            if progress is not None:
                progress(total)
            if deleted < batch_size:
                break
        return total

    @staticmethod
    def _delete_batch_sync(conn: sqlite3.Connection, *, cutoff: str, batch_size: int) -> int:
        conn.execute("BEGIN IMMEDIATE")
        try:
            deleted = delete_with_rollups(
                conn,
                f"SELECT rowid FROM {TABLE} WHERE start_time < ? ORDER BY start_time LIMIT ?",
                (cutoff, batch_size),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return deleted

    # ------------------------------------------------------------------ reads

    async def get_spans_by_time_window(
        self,
        window: str,
        agent_name: str | None = None,
        trace_id: str | None = None,
        limit: int = 1000,
    ) -> list[ObservabilitySpan]:
        if limit < 0:
            raise ValueError(f"limit must be zero or positive, got {limit}")
        where, params = filters(window, agent_name, trace_id)
        sql = f"SELECT {COLS} FROM {TABLE} WHERE {where} ORDER BY start_time, rowid LIMIT ?"
        rows = await self._run(partial(self._fetchall, sql, [*params, limit]))
        return [row_to_span(row) for row in rows]

    async def get_spans_by_trace_id(self, trace_id: str) -> list[ObservabilitySpan]:
        sql = f"SELECT {COLS} FROM {TABLE} WHERE trace_id = ? ORDER BY start_time, rowid"
        rows = await self._run(partial(self._fetchall, sql, [trace_id]))
        return [row_to_span(row) for row in rows]

    async def get_spans_by_agent(self, agent_name: str, hours: float = 24, limit: int = 500) -> list[ObservabilitySpan]:
        since = utc_text(hours_start(hours))
        check_limit(limit)
        sql = (
            f"SELECT {COLS} FROM {TABLE} WHERE agent_name = ? AND start_time >= ? "
            "ORDER BY start_time DESC, rowid DESC LIMIT ?"
        )
        rows = await self._run(partial(self._fetchall, sql, [agent_name, since, limit]))
        return [row_to_span(row) for row in rows]

    async def get_conversation_spans(
        self,
        window: str | None = None,
        *,
        thread_id: str | None = None,
        user_id: str | None = None,
        agent_name: str | None = None,
        limit: int = CONVERSATION_LIMIT,
    ) -> list[ObservabilitySpan]:
        check_conversation_filter(thread_id, user_id)
        check_limit(limit)
        where, params = conversation_where(window, agent_name, thread_id, user_id, mark="?", since=utc_text)
        sql = f"SELECT {COLS} FROM {TABLE} WHERE {where} ORDER BY start_time, rowid LIMIT ?"
        rows = await self._run(partial(self._fetchall, sql, [*params, limit]))
        return [row_to_span(row) for row in rows]

    async def get_conversation_metric_rows(
        self,
        window: str | None = None,
        *,
        thread_id: str | None = None,
        user_id: str | None = None,
        agent_name: str | None = None,
        trace_id: str | None = None,
        limit: int = CONVERSATION_LIMIT,
    ) -> list[MetricRow]:
        check_conversation_filter(thread_id, user_id)
        check_limit(limit)
        where, params = conversation_where(window, agent_name, thread_id, user_id, trace_id, mark="?", since=utc_text)
        sql = f"SELECT {metric_row_select(FALLBACK_SQL)} FROM {TABLE} WHERE {where} ORDER BY start_time, rowid LIMIT ?"
        rows = await self._run(partial(self._fetchall, sql, [*params, limit]))
        return [metric_row_of(row) for row in rows]

    async def get_ttft_samples(
        self,
        window: str,
        agent_name: str | None = None,
        thread_id: str | None = None,
        user_id: str | None = None,
        limit: int = TTFT_SAMPLE_LIMIT,
    ) -> list[tuple[str, str | None, float]]:
        check_limit(limit)
        where, params = conversation_where(window, agent_name, thread_id, user_id, mark="?", since=utc_text)
        sql = (
            f"SELECT agent_name, llm_model, ttft_ms FROM {TABLE} WHERE {where} AND ttft_ms IS NOT NULL "
            "ORDER BY start_time DESC LIMIT ?"
        )
        # SQLite hands back (str, str | None, float) already: no conversion per row
        return await self._run(partial(self._fetchall, sql, [*params, limit]))

    async def count_spans(self) -> int:
        rows = await self._run(partial(self._fetchall, f"SELECT COUNT(*) FROM {TABLE}", []))
        return int(rows[0][0])

    async def get_status_distribution(
        self, window: str, agent_name: str | None = None, trace_id: str | None = None
    ) -> dict[str, int]:
        """Always every stored status, zeros included, so callers can index without ``.get``."""
        where, params = filters(window, agent_name, trace_id)
        sql = f"SELECT status, COUNT(*) FROM {TABLE} WHERE {where} GROUP BY status"
        rows = await self._run(partial(self._fetchall, sql, params))
        return status_counts(rows)

    async def price_unpriced(
        self,
        pricer: Pricer,
        since: datetime | None = None,
        batch_size: int = 1_000,
        progress: ProgressCallback | None = None,
    ) -> tuple[int, int]:
        """Batches of ``batch_size`` rows in rowid order, one short write transaction each, so the
        flusher keeps writing meanwhile (``sqlite_cost``)."""
        from src.agents.ml_foundation.observability_connector.span_cost import call_cost

        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        price = partial(call_cost, pricer)
        since_text = utc_text(since) if since is not None else ""
        after, examined, priced = 0, 0, 0
        while True:  # ends: every batch starts past the last rowid the previous one read
            n, p, last = await self._run(
                partial(reprice_batch, since=since_text, after_rowid=after, limit=batch_size, price=price)
            )
            examined, priced = examined + n, priced + p
            if progress is not None:
                progress(priced)
            if last is None:
                return examined, priced
            after = last

    async def raw_cost_groups(
        self, window: str, agent_name: str | None = None, trace_id: str | None = None
    ) -> list[RollupGroup]:
        """Cost summed per (agent, tier) in SQL over the window's LLM rows (a trace filter's path)."""
        where, params = filters(window, agent_name, trace_id)
        sql = (
            f"SELECT agent_name, agent_tier, COALESCE(SUM(cost_usd), 0.0), SUM(cost_usd IS NULL) FROM {TABLE} "
            f"WHERE {where} AND llm_model IS NOT NULL GROUP BY agent_name, agent_tier"
        )
        rows = await self._run(partial(self._fetchall, sql, params))
        return [
            RollupGroup(agent, int(tier), cost_sum=float(cost), n_unpriced=int(unpriced))
            for agent, tier, cost, unpriced in rows
        ]

    async def get_latency_stats(
        self,
        window: str,
        agent_name: str | None = None,
        trace_id: str | None = None,
        group_by: GroupBy = "agent",
    ) -> list[LatencyStats]:
        """One entry per group present in the window (none when the window is empty).

        Keys: the agent name, ``str(tier)`` (ordered numerically), or ``"all"``. ``count`` covers
        every status; latency figures only the spans with a duration; ``error_rate`` is errors
        over ``count`` (:func:`~src.agents.ml_foundation.observability_connector.models.error_rate`).
        """
        check_group_by(group_by)
        key_expr, order_by = GROUP_KEYS[group_by]
        where, params = filters(window, agent_name, trace_id)
        rows = await self._run(partial(self._fetchall, stats_sql(key_expr, where, order_by), params))
        stats = []
        for k, n_all, _ok, n_error, _timeout, _started, tok_in, tok_out, tok_total, avg_d, p50, p95, p99, _fb in rows:
            stats.append(
                LatencyStats(
                    key=str(k),
                    count=n_all,
                    avg_ms=avg_d,
                    p50_ms=p50,
                    p95_ms=p95,
                    p99_ms=p99,
                    error_count=n_error,
                    error_rate=error_rate(n_error, n_all),
                    input_tokens=tok_in,
                    output_tokens=tok_out,
                    total_tokens=tok_total,
                )
            )
        return stats

    async def get_quality_metrics(
        self, window: str, agent_name: str | None = None, trace_id: str | None = None
    ) -> QualityMetrics:
        """Counts per status and percentiles in one statement; the rates come from ``from_counts``.

        A fallback is a span whose ``attributes.fallback_used`` is truthy in Python's sense (true,
        a non-zero number, a non-empty string/array/object).
        """
        where, params = filters(window, agent_name, trace_id)
        sql = stats_sql("'all'", where, "t.k", with_fallback=True)
        rows = await self._run(partial(self._fetchall, sql, params))
        if rows:
            _k, total, n_ok, n_error, n_timeout, n_started, _ti, _to, _tt, avg_d, p50, p95, p99, n_fallback = rows[0]
        else:
            total = n_ok = n_error = n_timeout = n_started = n_fallback = 0
            avg_d = p50 = p95 = p99 = None
        return QualityMetrics.from_counts(
            window,
            total=total,
            ok=n_ok,
            error=n_error,
            timeout=n_timeout,
            started=n_started,
            fallback=n_fallback,
            p50=p50,
            p95=p95,
            p99=p99,
            avg=avg_d,
        )

    # ------------------------------------------------------------------ rollups

    async def rollup_groups(self, window: str, agent_name: str | None = None) -> list[RollupGroup] | None:
        """The window's (agent, tier) groups from the rollups; None on a file opened read-only
        that predates them, or their cost figures (its raw rows answer instead)."""
        since = window_start(window)
        try:
            return await self._run(lambda conn: read_groups(conn, since, agent_name))
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc) or (self._read_only and "no such column" in str(exc)):
                return None
            raise

    async def rebuild_rollups(self, since: datetime | None = None, progress: ProgressCallback | None = None) -> int:
        """One short write transaction per UTC day, oldest first, so writers keep going meanwhile."""
        span = await self._run(partial(self._fetchall, f"SELECT MIN(start_time), MAX(start_time) FROM {TABLE}", []))
        if span[0][0] is None:
            await self._run(partial(self._drop_outside, low="", high=""))
            return 0
        oldest, last = datetime.fromisoformat(span[0][0]), datetime.fromisoformat(span[0][1])
        start = max(since, oldest) if since is not None else oldest
        day = start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        if since is None:
            # Buckets outside the days that have raw rows can only be stale: drop them.
            await self._run(partial(self._drop_outside, low=utc_text(day)[:10], high=span[0][1][:10]))
        days = 0
        while day <= last:
            await self._run(partial(rebuild_day, day=day))
            day += timedelta(days=1)
            days += 1
            if progress is not None:
                progress(days)
        return days

    @staticmethod
    def _drop_outside(conn: sqlite3.Connection, *, low: str, high: str) -> None:
        """Drop every bucket before day ``low`` or after day ``high`` (all of them when both are empty)."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table in (ROLLUPS, SKETCH):
                if low or high:
                    conn.execute(f"DELETE FROM {table} WHERE bucket < ? OR substr(bucket, 1, 10) > ?", (low, high))
                else:
                    conn.execute(f"DELETE FROM {table}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    async def verify_rollups(self, since: datetime | None = None) -> list[str]:
        problems: list[str] = []
        start = (since or datetime(1970, 1, 1, tzinfo=UTC)).astimezone(UTC)
        start = start.replace(hour=0, minute=0, second=0, microsecond=0)
        await self._run(lambda conn: verify(conn, start, problems.append))
        return problems

    # ------------------------------------------------------------------ feedback

    async def insert_feedback_batch(self, items: Sequence[Feedback]) -> BatchInsertResult:
        """One transaction; a CHECK failure fails the batch (its rows were validated: a bug, not a row)."""
        if not items:
            return BatchInsertResult()
        batch = list(items)
        inserted = await self._run(lambda conn: sqlite_feedback.insert(conn, batch))
        return BatchInsertResult(inserted=inserted, duplicates=len(batch) - inserted)

    async def get_feedback_by_agent(
        self, window: str, agent_name: str | None = None, trace_id: str | None = None
    ) -> FeedbackByAgent:
        since = utc_text(window_start(window))
        params = [since, trace_id, trace_id, agent_name, agent_name]
        try:
            rows = await self._run(partial(self._fetchall, sqlite_feedback.BY_AGENT_SQL, params))
        except sqlite3.OperationalError as exc:
            if self._read_only and "no such table" in str(exc):  # a file written before feedback existed
                return {}
            raise
        return feedback_by_agent(rows)

    async def get_feedback(self, trace_id: str) -> list[Feedback]:
        cols = sqlite_feedback.COLUMNS
        sql = f"SELECT {', '.join(cols)} FROM {FEEDBACK_TABLE} WHERE trace_id = ? ORDER BY created_at, rowid"
        rows = await self._run(partial(self._fetchall, sql, [trace_id]))
        return [Feedback.model_validate(dict(zip(cols, row, strict=True))) for row in rows]

    async def find_trace_of_span(self, span_id: str) -> str | None:
        rows = await self._run(partial(self._fetchall, sqlite_feedback.SPAN_TRACE_SQL, [span_id]))
        return str(rows[0][0]) if rows else None

    async def delete_old_feedback(self, days: int) -> int:
        if days < 0:
            raise ValueError(f"days must be zero or positive, got {days}")
        cutoff = utc_text(datetime.now(UTC) - timedelta(days=days))
        return await self._run(lambda conn: sqlite_feedback.delete_before(conn, cutoff))

    @staticmethod
    def _fetchall(sql: str, params: Sequence[Any], conn: sqlite3.Connection) -> list[Any]:
        # Reads run in autocommit mode: each statement sees one consistent WAL snapshot.
        return conn.execute(sql, params).fetchall()
