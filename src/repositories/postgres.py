"""Postgres span store (psycopg 3, async, pooled): any Postgres, or a Supabase connection string.

Design notes (why it looks like this):

* **The pool lives on a private background loop** (:mod:`src.repositories.postgres_pool`), so
  the repository is usable from any thread and event loop at once; it closes in the ``SINKS``
  stage at interpreter exit, after the flushers, and resets itself in a forked child.
* **Batch writes** (:mod:`src.repositories.postgres_copy`): an optimistic binary COPY straight
  into the table, a staged ``INSERT ... ON CONFLICT DO NOTHING`` for batches with duplicates,
  and a careful bisection that dead-letters only the bad rows. ``write_paths`` counts which
  path each batch took.
* **Metrics are the schema's SQL functions** (``obs_latency_stats``, ``obs_status_distribution``,
  ``obs_quality_counts``, ``obs_delete_old_spans`` in ``database/ml/mlops_tables.sql``): the same
  definitions the Supabase REST backend calls over RPC, so both Postgres backends give the same
  numbers, computed in the database (continuous percentiles, per-agent index-only scans).
* **Windows are computed from this process's clock**, like the SQLite backend: span timestamps
  come from the agents' clocks, so a window means "the last hour of what the agents recorded"
  even when the database server's clock is off.
* **No server-side prepared statements** (``prepare_threshold=None``): they break behind
  PgBouncer-style transaction poolers, and every statement here is either cheap to plan or a
  function call.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict

from src.agents.ml_foundation.observability_connector.feedback import (
    FEEDBACK_COLUMNS,
    FEEDBACK_TABLE,
    Feedback,
    FeedbackByAgent,
    feedback_by_agent,
)
from src.agents.ml_foundation.observability_connector.json_codec import json_bytes
from src.agents.ml_foundation.observability_connector.models import (
    LatencyStats,
    ObservabilitySpan,
    QualityMetrics,
    error_rate,
)
from src.agents.ml_foundation.observability_connector.rollups import RollupGroup, groups_from_rows
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
    StoreSchemaError,
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
from src.repositories.postgres_copy import write_batch
from src.repositories.postgres_errors import describe_dsn
from src.repositories.postgres_pool import PostgresPool
from src.repositories.postgres_rows import row_to_span
from src.repositories.postgres_schema import SCHEMA_PATH, MigrationReport, migrate
from src.repositories.rollup_check import compare_keyed

if TYPE_CHECKING:
    from src.agents.ml_foundation.observability_connector.pricing import Pricer


__all__ = [
    "COLUMNS",
    "SCHEMA_PATH",
    "TABLE",
    "MigrationReport",
    "PostgresSpanRepository",
    "describe_dsn",
    "migrate",
]

T = TypeVar("T")

_SELECT_COLS: Final = ", ".join("id::text AS id" if c == "id" else c for c in COLUMNS)


#: Python truthiness of attributes.fallback_used, as obs_quality_counts decides it in SQL.
_FALLBACK_SQL: Final = """CASE jsonb_typeof(attributes -> 'fallback_used')
    WHEN 'boolean' THEN (attributes -> 'fallback_used')::boolean
    WHEN 'number' THEN (attributes -> 'fallback_used')::numeric <> 0
    WHEN 'string' THEN (attributes ->> 'fallback_used') <> ''
    WHEN 'array' THEN jsonb_array_length(attributes -> 'fallback_used') > 0
    WHEN 'object' THEN (attributes -> 'fallback_used') <> '{}'::jsonb
    ELSE false END"""


# --------------------------------------------------------------------------- repository


class PostgresSpanRepository(SpanStore):
    """``ml_observability_spans`` in Postgres, written and read through a psycopg connection pool.

    Usable from any thread and event loop at once (see the module notes); ``close()`` is
    idempotent and the repository reopens lazily when used again. The schema is not created
    here: apply ``database/ml/mlops_tables.sql`` once with ``obs-connector migrate`` (DDL needs
    rights the writer should not have); a missing table surfaces as a ``StoreSchemaError`` naming
    that command.
    """

    backend = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 4,
        connect_timeout_s: float = 10.0,
        pool_timeout_s: float = 30.0,
        statement_timeout_ms: int | None = 60_000,
        application_name: str = "obs-connector",
    ) -> None:
        """``statement_timeout_ms`` bounds every statement so a stuck query fails (and is retried or
        spooled) instead of holding the flusher; None leaves the server's setting alone."""
        if not dsn:
            raise ValueError("PostgresSpanRepository needs a connection string (postgresql://...)")
        if min_size < 0 or max_size < max(1, min_size):
            raise ValueError(f"pool sizes must satisfy 0 <= min_size <= max_size >= 1, got {min_size}, {max_size}")
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError:
            # Not chained: the driver's message can quote the string, password included.
            raise ValueError(
                "the Postgres connection string cannot be parsed (not shown: it may hold a password)"
            ) from None
        self._dsn = dsn
        # Parsed once: every metrics question keys its cache entry by it, and libpq's parse of the
        # DSN cost more than the rest of a cache hit.
        self._description = describe_dsn(dsn)
        # Added to, never replacing, the DSN's own ``options`` (e.g. ``-c role=service_role``).
        dsn_options = params.get("options")
        # client_min_messages: the staging DDL's "already exists, skipping" NOTICE on every batch.
        ours = "-c client_min_messages=warning"
        if statement_timeout_ms:
            ours += f" -c statement_timeout={int(statement_timeout_ms)}"
        self._options = " ".join(str(o) for o in (dsn_options, ours) if o) or None
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "prepare_threshold": None,
            "application_name": application_name,
            "connect_timeout": max(1, round(connect_timeout_s)),
        }
        if self._options:
            kwargs["options"] = self._options
        self._pool = PostgresPool(
            dsn,
            kwargs,
            min_size=min_size,
            max_size=max_size,
            connect_timeout_s=connect_timeout_s,
            pool_timeout_s=pool_timeout_s,
            where=self.describe(),
        )
        #: Batches per write path ("direct", "staged", "careful"): how often the slow paths run.
        self.write_paths: Counter[str] = Counter()

    def describe(self) -> str:
        return self._description

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()!r})"

    # ------------------------------------------------------------------ lifecycle

    async def _call(self, op: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]], what: str) -> T:
        """Run ``op`` with a pooled connection (on the pool's loop), awaited from the caller's loop."""
        return await self._pool.call(op, what)

    async def open(self) -> None:
        """Connect now (fail fast on a wrong DSN or a missing schema) rather than on first use."""

        async def check(conn: psycopg.AsyncConnection[Any]) -> None:
            cur = await conn.execute("SELECT to_regclass(%s)", (f"public.{TABLE}",))
            row = await cur.fetchone()
            if row is None or row[0] is None:
                raise StoreSchemaError(
                    f"{self.describe()} has no table {TABLE}",
                    hint="apply database/ml/mlops_tables.sql with `obs-connector migrate`",
                )

        await self._call(check, "opening the span store")

    async def close(self) -> None:
        """Close the pool and stop its loop's thread (idempotent; the next call reopens both)."""
        await self._pool.close()

    def close_now(self) -> None:
        """:meth:`close` for code without an event loop."""
        self._pool.close_now()

    # ------------------------------------------------------------------ writes

    async def insert_span(self, span: ObservabilitySpan) -> bool:
        """A bad row raises ValueError with the database's reason; a duplicate returns False."""
        result = await self.insert_spans_batch([span])
        if result.errors:
            span_id, reason = result.errors[0]
            raise ValueError(f"span {span_id!r} was not stored: {reason}")
        return result.inserted == 1

    async def insert_spans_batch(self, spans: Sequence[ObservabilitySpan]) -> BatchInsertResult:
        """Idempotent batch write: a direct binary COPY, a staged insert when the batch holds
        duplicates, a careful bisection when it holds a bad row (see ``postgres_copy``). A
        connection, permission or schema failure raises ``StoreError`` (nothing committed)."""
        return await write_batch(self._call, list(spans), self.write_paths)

    async def delete_old_spans(
        self, days: int, batch_size: int = 10_000, progress: ProgressCallback | None = None
    ) -> int:
        """``obs_delete_old_spans`` until a short batch: one short transaction each, oldest first.

        ``progress`` runs on the caller's thread and loop (a CLI progress bar is not thread-safe).
        """
        if days < 0:
            raise ValueError(f"days must be zero or positive, got {days}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        cutoff = datetime.now(UTC) - timedelta(days=days)

        async def one_batch(conn: psycopg.AsyncConnection[Any]) -> int:
            cur = await conn.execute("SELECT public.obs_delete_old_spans(%s, %s)", (cutoff, batch_size))
            row = await cur.fetchone()
            return int(row[0]) if row else 0

        total = 0
        while True:
            deleted = await self._call(one_batch, "deleting old spans")
            if deleted == 0:
                break
            total += deleted
            if progress is not None:
                progress(total)
            if deleted < batch_size:
                break
        return total

    # ------------------------------------------------------------------ reads

    async def _fetchall(
        self, sql: str, params: Sequence[Any], what: str, binary: bool = False
    ) -> list[tuple[Any, ...]]:
        async def op(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cur = await conn.execute(sql, params, binary=binary)  # type: ignore[arg-type]
            return await cur.fetchall()

        return await self._call(op, what)

    async def get_spans_by_time_window(
        self,
        window: str,
        agent_name: str | None = None,
        trace_id: str | None = None,
        limit: int = 1000,
    ) -> list[ObservabilitySpan]:
        if limit < 0:
            raise ValueError(f"limit must be zero or positive, got {limit}")
        clauses = ["start_time >= %s"]
        params: list[Any] = [window_start(window)]
        if agent_name is not None:
            clauses.append("agent_name = %s")
            params.append(agent_name)
        if trace_id is not None:
            clauses.append("trace_id = %s")
            params.append(trace_id)
        sql = f"SELECT {_SELECT_COLS} FROM {TABLE} WHERE {' AND '.join(clauses)} ORDER BY start_time, id LIMIT %s"
        rows = await self._fetchall(sql, [*params, limit], "reading spans")
        return [row_to_span(row) for row in rows]

    async def get_spans_by_trace_id(self, trace_id: str) -> list[ObservabilitySpan]:
        sql = f"SELECT {_SELECT_COLS} FROM {TABLE} WHERE trace_id = %s ORDER BY start_time, id"
        rows = await self._fetchall(sql, [trace_id], "reading a trace")
        return [row_to_span(row) for row in rows]

    async def get_spans_by_agent(self, agent_name: str, hours: float = 24, limit: int = 500) -> list[ObservabilitySpan]:
        since = hours_start(hours)
        check_limit(limit)
        sql = (
            f"SELECT {_SELECT_COLS} FROM {TABLE} WHERE agent_name = %s AND start_time >= %s "
            "ORDER BY start_time DESC, id DESC LIMIT %s"
        )
        rows = await self._fetchall(sql, [agent_name, since, limit], "reading an agent's spans")
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
        where, params = conversation_where(window, agent_name, thread_id, user_id, mark="%s")
        sql = f"SELECT {_SELECT_COLS} FROM {TABLE} WHERE {where} ORDER BY start_time, id LIMIT %s"
        rows = await self._fetchall(sql, [*params, limit], "reading a conversation")
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
        where, params = conversation_where(window, agent_name, thread_id, user_id, trace_id, mark="%s")
        sql = f"SELECT {metric_row_select(_FALLBACK_SQL)} FROM {TABLE} WHERE {where} ORDER BY start_time, id LIMIT %s"
        rows = await self._fetchall(sql, [*params, limit], "reading a conversation's metrics")
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
        where, params = conversation_where(window, agent_name, thread_id, user_id, mark="%s")
        sql = (
            f"SELECT agent_name, llm_model, ttft_ms FROM {TABLE} WHERE {where} AND ttft_ms IS NOT NULL "
            "ORDER BY start_time DESC LIMIT %s"
        )
        rows = await self._fetchall(sql, [*params, limit], "reading times to first token")
        return [(str(agent), model, float(ttft)) for agent, model, ttft in rows]

    async def count_spans(self) -> int:
        rows = await self._fetchall(f"SELECT count(*) FROM {TABLE}", [], "counting spans")
        return int(rows[0][0])

    async def get_status_distribution(
        self, window: str, agent_name: str | None = None, trace_id: str | None = None
    ) -> dict[str, int]:
        """Always every stored status, zeros included, so callers can index without ``.get``."""
        rows = await self._fetchall(
            "SELECT status, n FROM public.obs_status_distribution(%s::timestamptz, %s::text, %s::text)",
            [window_start(window), agent_name, trace_id],
            "reading the status distribution",
        )
        return status_counts(rows)

    async def price_unpriced(
        self,
        pricer: Pricer,
        since: datetime | None = None,
        batch_size: int = 1_000,
        progress: ProgressCallback | None = None,
    ) -> tuple[int, int]:
        """Batches in (start_time, id) order; each batch's costs are one UPDATE, whose statement
        trigger moves the rollups by the difference (``obs_rollup_apply``)."""
        from src.agents.ml_foundation.observability_connector.span_cost import call_cost

        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        key: tuple[Any, str] = (since or datetime(1, 1, 1, tzinfo=UTC), "00000000-0000-0000-0000-000000000000")
        examined, priced = 0, 0
        while True:  # ends: every batch starts past the last key the previous one read
            rows = await self._fetchall(_UNPRICED, [since or "-infinity", *key, batch_size], "reading unpriced rows")
            costs: list[tuple[str, float]] = []
            for row_id, _start, model, n_in, n_out, attributes in rows:
                cost = call_cost(pricer, model, n_in, n_out, dict(attributes) if isinstance(attributes, dict) else {})
                if cost is not None:
                    costs.append((row_id, cost))
            if costs:
                await self._set_costs(costs)
            examined, priced = examined + len(rows), priced + len(costs)
            if progress is not None:
                progress(priced)
            if len(rows) < batch_size:
                return examined, priced
            key = (rows[-1][1], rows[-1][0])

    async def _set_costs(self, costs: list[tuple[str, float]]) -> None:
        async def op(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction():
                await conn.execute(_SET_COSTS, ([i for i, _ in costs], [c for _, c in costs]))

        await self._call(op, "setting the costs of stored rows")

    async def raw_cost_groups(
        self, window: str, agent_name: str | None = None, trace_id: str | None = None
    ) -> list[RollupGroup]:
        """Cost summed per (agent, tier) in SQL over the window's LLM rows (a trace filter's path)."""
        rows = await self._fetchall(
            f"SELECT agent_name, agent_tier, coalesce(sum(cost_usd), 0), count(*) FILTER (WHERE cost_usd IS NULL) "
            f"FROM {TABLE} WHERE start_time >= %s AND llm_model IS NOT NULL "
            "AND (%s::text IS NULL OR agent_name = %s) AND (%s::text IS NULL OR trace_id = %s) "
            "GROUP BY agent_name, agent_tier",
            [window_start(window), agent_name, agent_name, trace_id, trace_id],
            "reading the window's cost",
        )
        return [
            RollupGroup(str(agent), int(tier), cost_sum=float(cost), n_unpriced=int(unpriced))
            for agent, tier, cost, unpriced in rows
        ]

    async def get_latency_stats(
        self,
        window: str,
        agent_name: str | None = None,
        trace_id: str | None = None,
        group_by: GroupBy = "agent",
    ) -> list[LatencyStats]:
        """One entry per group present in the window; keys and semantics as the SQLite backend's.

        ``error_rate`` is derived here from the counts (the one definition every backend shares);
        the function's own column serves the view.
        """
        check_group_by(group_by)
        rows = await self._fetchall(
            "SELECT key, count, avg_ms, p50_ms, p95_ms, p99_ms, error_count, "
            "input_tokens, output_tokens, total_tokens "
            "FROM public.obs_latency_stats(%s::timestamptz, %s::text, %s::text, %s::text)",
            [window_start(window), agent_name, trace_id, group_by],
            "reading latency statistics",
        )
        return [
            LatencyStats(
                key=str(key),
                count=int(count),
                avg_ms=avg_ms,
                p50_ms=p50,
                p95_ms=p95,
                p99_ms=p99,
                error_count=int(errors),
                error_rate=error_rate(int(errors), int(count)),
                input_tokens=int(tok_in),
                output_tokens=int(tok_out),
                total_tokens=int(tok_total),
            )
            for key, count, avg_ms, p50, p95, p99, errors, tok_in, tok_out, tok_total in rows
        ]

    # ------------------------------------------------------------------ rollups

    async def rollup_groups(self, window: str, agent_name: str | None = None) -> list[RollupGroup] | None:
        """``obs_rollup_metrics`` (the triggers keep its tables with every write)."""
        rows = await self._fetchall(
            "SELECT * FROM public.obs_rollup_metrics(%s::timestamptz, %s::text)",
            (window_start(window), agent_name),
            "reading the metrics rollups",
            binary=True,  # the sketch blobs as bytes: in text they travel hex-encoded, twice the size
        )
        return groups_from_rows(rows)

    async def rebuild_rollups(self, since: datetime | None = None, progress: ProgressCallback | None = None) -> int:
        """``obs_rollup_rebuild`` one UTC day per transaction, oldest first (each blocks writers
        for that day's aggregation only); buckets outside the days with raw rows are dropped."""
        span = await self._fetchall(
            f"SELECT min(start_time), max(start_time) FROM {TABLE}", (), "finding the span range"
        )
        oldest, last = span[0]
        if oldest is None:
            await self._execute_all(
                [
                    "DELETE FROM public.ml_span_rollups",
                    "DELETE FROM public.ml_span_rollup_sketch",
                    "DELETE FROM public.ml_span_rollup_prefix",
                    "UPDATE public.ml_span_rollup_state SET sealed_to = NULL",
                ]
            )
            return 0
        start = max(since, oldest) if since is not None else oldest
        day = start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        if since is None:
            end = last.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
            await self._execute_all(
                [
                    f"DELETE FROM public.{table} WHERE bucket < '{day.isoformat()}' OR bucket >= '{end.isoformat()}'"
                    for table in ("ml_span_rollups", "ml_span_rollup_sketch")
                ]
            )
        days = 0
        while day <= last:
            nxt = day + timedelta(days=1)
            await self._execute_all([f"SELECT public.obs_rollup_rebuild('{day.isoformat()}', '{nxt.isoformat()}')"])
            day = nxt
            days += 1
            if progress is not None:
                progress(days)
        # Each day's rebuild dropped what was sealed; build the hour / day rows and the prefixes
        # once, from the minutes, instead of leaving that to the first metrics question.
        await self._execute_all(["SELECT public.obs_rollup_seal()"])
        return days

    async def _execute_all(self, statements: Sequence[str]) -> None:
        async def op(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction():
                for statement in statements:
                    await conn.execute(statement)  # type: ignore[arg-type]  # built here from datetimes

        await self._call(op, "rebuilding the metrics rollups")

    async def verify_rollups(self, since: datetime | None = None) -> list[str]:
        """Every level, summed per UTC day, against the raw rows from ``since`` (one snapshot):
        minutes against every row, hour and day rows against the rows before the frontier they
        were sealed to, and each day's prefix difference (``prefix(day end) - prefix(day start)``)
        against that day's raw sketch."""
        start = (since or datetime(1970, 1, 1, tzinfo=UTC)).astimezone(UTC)
        start = start.replace(hour=0, minute=0, second=0, microsecond=0)

        async def op(conn: psycopg.AsyncConnection[Any]) -> list[str]:
            problems: list[str] = []
            async with conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                state = await (await conn.execute("SELECT sealed_to FROM public.ml_span_rollup_state")).fetchone()
                sealed = state[0] if state and state[0] is not None else None
                ends = {0: None, 1: sealed, 2: None if sealed is None else _day_of(sealed)}
                for level in (0, 1, 2):
                    if level and sealed is None:
                        continue
                    end = ends[level] or datetime.max.replace(tzinfo=UTC)  # level 0: every row
                    raw = await (await conn.execute(_VERIFY_RAW, (start, end))).fetchall()
                    rolled = await (await conn.execute(_VERIFY_ROLLED, (level, start))).fetchall()
                    compare_keyed(f"level {level} totals", raw, rolled, 3, problems.append)
                raw_sketch = await (
                    await conn.execute(_VERIFY_RAW_SKETCH, (start, datetime.max.replace(tzinfo=UTC)))
                ).fetchall()
                rolled_sketch = await (await conn.execute(_VERIFY_ROLLED_SKETCH, {"since": start})).fetchall()
                compare_keyed("level 0 sketch", raw_sketch, rolled_sketch, 4, problems.append)
                if sealed is not None:
                    raw_sketch = await (await conn.execute(_VERIFY_RAW_SKETCH, (start, sealed))).fetchall()
                    prefixes = await (await conn.execute(_VERIFY_PREFIX, {"since": start, "sealed": sealed})).fetchall()
                    compare_keyed("prefix sketch", raw_sketch, prefixes, 4, problems.append)
            return problems

        return await self._call(op, "verifying the metrics rollups")

    async def get_quality_metrics(
        self, window: str, agent_name: str | None = None, trace_id: str | None = None
    ) -> QualityMetrics:
        """Counts and percentiles from ``obs_quality_counts``; the rates come from ``from_counts``."""
        rows = await self._fetchall(
            "SELECT total, ok_count, error_count, timeout_count, started_count, fallback_count, "
            "p50_ms, p95_ms, p99_ms, avg_ms "
            "FROM public.obs_quality_counts(%s::timestamptz, %s::text, %s::text)",
            [window_start(window), agent_name, trace_id],
            "reading quality metrics",
        )
        total, n_ok, n_error, n_timeout, n_started, n_fallback, p50, p95, p99, avg_d = rows[0]
        return QualityMetrics.from_counts(
            window,
            total=int(total),
            ok=int(n_ok),
            error=int(n_error),
            timeout=int(n_timeout),
            started=int(n_started),
            fallback=int(n_fallback),
            p50=p50,
            p95=p95,
            p99=p99,
            avg=avg_d,
        )

    # ------------------------------------------------------------------ feedback

    async def insert_feedback_batch(self, items: Sequence[Feedback]) -> BatchInsertResult:
        """``obs_insert_feedback``: one statement, one transaction; replayed ids are skipped."""
        if not items:
            return BatchInsertResult()
        payload = json_bytes([item.to_row() for item in items]).decode()

        async def op(conn: psycopg.AsyncConnection[Any]) -> int:
            cur = await conn.execute("SELECT public.obs_insert_feedback(%s::jsonb)", (payload,))
            row = await cur.fetchone()
            return int(row[0]) if row else 0

        inserted = await self._call(op, "storing feedback")
        return BatchInsertResult(inserted=inserted, duplicates=len(items) - inserted)

    async def get_feedback_by_agent(
        self, window: str, agent_name: str | None = None, trace_id: str | None = None
    ) -> FeedbackByAgent:
        rows = await self._fetchall(
            "SELECT agent_name, name, avg_value, n "
            "FROM public.obs_feedback_by_agent(%s::timestamptz, %s::text, %s::text)",
            [window_start(window), agent_name, trace_id],
            "reading feedback per agent",
        )
        return feedback_by_agent(rows)

    async def get_feedback(self, trace_id: str) -> list[Feedback]:
        cols = ", ".join(FEEDBACK_COLUMNS)
        rows = await self._fetchall(
            f"SELECT {cols} FROM public.{FEEDBACK_TABLE} WHERE trace_id = %s ORDER BY created_at, feedback_id",
            [trace_id],
            "reading a trace's feedback",
        )
        return [Feedback.model_validate(dict(zip(FEEDBACK_COLUMNS, row, strict=True))) for row in rows]

    async def delete_old_feedback(self, days: int) -> int:
        if days < 0:
            raise ValueError(f"days must be zero or positive, got {days}")
        cutoff = datetime.now(UTC) - timedelta(days=days)
        rows = await self._fetchall("SELECT public.obs_delete_old_feedback(%s)", [cutoff], "deleting old feedback")
        return int(rows[0][0]) if rows else 0

    async def find_trace_of_span(self, span_id: str) -> str | None:
        rows = await self._fetchall(
            f"SELECT trace_id FROM public.{TABLE} WHERE span_id = %s ORDER BY start_time DESC LIMIT 1",
            [span_id],
            "looking a span up by id",
        )
        return str(rows[0][0]) if rows else None


# ``price_unpriced``: keyset pages of LLM rows without a cost, then their costs in one statement.
_UNPRICED: Final = f"""
SELECT id::text, start_time, llm_model, input_tokens, output_tokens, attributes FROM {TABLE}
WHERE start_time >= %s AND llm_model IS NOT NULL AND cost_usd IS NULL AND (start_time, id) > (%s, %s::uuid)
ORDER BY start_time, id LIMIT %s"""
_SET_COSTS: Final = f"""
UPDATE {TABLE} AS s SET cost_usd = v.cost
FROM unnest(%s::uuid[], %s::float8[]) AS v (id, cost)
WHERE s.id = v.id AND s.cost_usd IS NULL"""

# The raw rows and each rollup level summed per UTC day and (agent, tier): ``verify_rollups``.
_DAY = "date_trunc('day', start_time, 'UTC')"
_VERIFY_RAW: Final = f"""
SELECT {_DAY}, agent_name, agent_tier, count(*), count(*) FILTER (WHERE status = 'ok'),
       count(*) FILTER (WHERE status = 'error'), count(*) FILTER (WHERE status = 'timeout'),
       count(*) FILTER (WHERE status = 'started'),
       count(*) FILTER (WHERE CASE jsonb_typeof(attributes -> 'fallback_used')
                       WHEN 'boolean' THEN (attributes -> 'fallback_used')::boolean
                       WHEN 'number'  THEN (attributes -> 'fallback_used')::numeric <> 0
                       WHEN 'string'  THEN (attributes ->> 'fallback_used') <> ''
                       WHEN 'array'   THEN jsonb_array_length(attributes -> 'fallback_used') > 0
                       WHEN 'object'  THEN (attributes -> 'fallback_used') <> '{{}}'::jsonb
                       ELSE false END),
       coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0), coalesce(sum(total_tokens), 0),
       count(duration_ms), coalesce(sum(duration_ms), 0), coalesce(sum(cost_usd), 0),
       count(*) FILTER (WHERE llm_model IS NOT NULL AND cost_usd IS NULL)
FROM {TABLE} WHERE start_time >= %s AND start_time < %s GROUP BY 1, 2, 3"""
_VERIFY_RAW_SKETCH: Final = f"""
SELECT {_DAY}, agent_name, agent_tier,
       CASE WHEN duration_ms <= 0 THEN -1000000 ELSE ceil(ln(duration_ms) / 0.020000666706669435)::integer END,
       count(*)
FROM {TABLE} WHERE start_time >= %s AND start_time < %s AND duration_ms IS NOT NULL GROUP BY 1, 2, 3, 4"""
_VERIFY_ROLLED: Final = """
SELECT date_trunc('day', bucket, 'UTC'), agent_name, agent_tier, sum(n_all), sum(n_ok), sum(n_error),
       sum(n_timeout), sum(n_started), sum(n_fallback), sum(tok_in), sum(tok_out), sum(tok_total),
       sum(dur_n), sum(dur_sum), sum(cost_sum), sum(n_unpriced)
FROM public.ml_span_rollups WHERE level = %s AND bucket >= %s GROUP BY 1, 2, 3"""
_VERIFY_ROLLED_SKETCH: Final = """
SELECT date_trunc('day', k.bucket, 'UTC'), k.agent_name, k.agent_tier, u.i, sum(u.n)
FROM public.ml_span_rollup_sketch k, unnest(k.idxs, k.ns) AS u (i, n)
WHERE k.level = 0 AND k.bucket >= %(since)s GROUP BY 1, 2, 3, 4 HAVING sum(u.n) <> 0
UNION ALL
SELECT date_trunc('day', bucket, 'UTC'), agent_name, agent_tier, -1000000, sum(zeros)
FROM public.ml_span_rollup_sketch WHERE level = 0 AND bucket >= %(since)s
GROUP BY 1, 2, 3 HAVING sum(zeros) <> 0"""
# Per UTC day before the frontier and (agent, tier): prefix(min(day end, frontier)) - prefix(day
# start), each the stored boundary or else the agent's '-infinity' row.
_VERIFY_PREFIX: Final = f"""
WITH days AS (
    SELECT g AS lo, least(g + interval '1 day', %(sealed)s::timestamptz) AS hi
    FROM generate_series(
        date_trunc('day', greatest(%(since)s::timestamptz, (SELECT min(start_time) FROM {TABLE})), 'UTC'),
        %(sealed)s::timestamptz - interval '1 microsecond', interval '1 day') AS g
), agents AS (
    SELECT DISTINCT agent_name, agent_tier FROM public.ml_span_rollup_prefix
), pv AS (
    SELECT a.agent_name, a.agent_tier, d.lo, w.sgn, q.idxs, q.ns, q.zeros
    FROM agents a CROSS JOIN days d CROSS JOIN (VALUES (1), (-1)) AS w (sgn)
    CROSS JOIN LATERAL (
        SELECT q.idxs, q.ns, q.zeros FROM public.ml_span_rollup_prefix q
        WHERE q.agent_name = a.agent_name AND q.agent_tier = a.agent_tier
          AND (q.boundary = CASE WHEN w.sgn = 1 THEN d.hi ELSE d.lo END OR q.boundary = '-infinity')
        ORDER BY q.boundary DESC LIMIT 1) AS q
)
SELECT pv.lo, pv.agent_name, pv.agent_tier, u.i, sum(pv.sgn * u.n)
FROM pv, unnest(pv.idxs, pv.ns) AS u (i, n) GROUP BY 1, 2, 3, 4 HAVING sum(pv.sgn * u.n) <> 0
UNION ALL
SELECT lo, agent_name, agent_tier, -1000000, sum(sgn * zeros) FROM pv GROUP BY 1, 2, 3 HAVING sum(sgn * zeros) <> 0"""


def _day_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
