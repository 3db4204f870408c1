"""Supabase REST span store: ``ml_observability_spans`` through PostgREST with the service key.

For deployments that can reach Supabase only over HTTPS (no direct Postgres connection). The
``supabase`` package's ``AsyncClient`` builds every request; this module decides what to send,
how to read the answer, and what to do when it goes wrong.

Design notes (why it looks like this):

* **Inserted vs duplicate counts without a body.** Writes are ``POST …?on_conflict=trace_id,span_id``
  with ``Prefer: return=minimal,count=exact,resolution=ignore-duplicates,missing=default``.
  PostgREST answers ``Content-Range: */N`` where N counts the rows its ``INSERT … ON CONFLICT DO
  NOTHING`` actually returned, i.e. inserted; duplicates are the rest. That costs no extra query
  and no response body (``return=representation`` with ids would also work, at the price of
  sending the ids back). ``missing=default`` (``default_to_null=False``) stops a key missing from
  one row becoming NULL for every row of a bulk insert.
* **One bad row never costs the batch.** PostgREST runs a request in one transaction, so one row
  that Postgres rejects (an out-of-range integer, a check constraint) fails the whole request
  with 400/409. The batch is then bisected until the bad rows stand alone and are reported with
  PostgREST's message; k bad rows cost about 2·k·log2(n) extra requests, a clean batch one.
  Errors that are the same for every row (missing column/table, permissions) are raised at once
  instead of bisecting into a thousand identical failures. NUL characters, which Postgres cannot
  store in text or jsonb, are replaced with U+FFFD before sending (as the direct Postgres backend
  does), so they never cost a span.
* **Reads paginate.** Supabase truncates every response at ``max-rows`` (1,000 by default)
  without saying so; reads ask for at most ``page_size`` rows at a time, ordered by
  ``(start_time, id)`` so pages are stable, and stop at a short page.
* **Metrics and retention are RPCs** to SQL functions in ``database/ml/mlops_tables.sql``:
  percentiles must be computed next to the data (never rows pulled into Python). A REST
  ``DELETE`` returns every deleted row unless told ``return=minimal``, and a limited delete is
  only fast ordered by ``start_time`` (ordered by the uuid key it walks the whole index);
  ``obs_delete_old_spans`` deletes one such batch per call in a short transaction and returns
  just the count.
* **Split by job**: :mod:`supabase_client` owns the HTTP clients and the retry layer (and keeps
  the service key secret), :mod:`supabase_errors` reads PostgREST's answers, :mod:`supabase_rows`
  converts spans to rows and back; this module decides what to send and how to read the results.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx
from postgrest.types import CountMethod, ReturnMethod
from supabase import AsyncClient

from src.agents.ml_foundation.observability_connector.feedback import (
    FEEDBACK_COLUMNS,
    FEEDBACK_TABLE,
    Feedback,
    FeedbackByAgent,
    feedback_by_agent,
)
from src.agents.ml_foundation.observability_connector.models import (
    LatencyStats,
    ObservabilitySpan,
    QualityMetrics,
    error_rate,
)

# The same sanitising as the embedded store, so an odd attribute value (NaN, a set, a cycle)
# reads back identically from every backend.
from src.agents.ml_foundation.observability_connector.rollups import RollupGroup, groups_from_rows
from src.repositories.base import (
    COLUMNS,
    CONVERSATION_LIMIT,
    TABLE,
    TTFT_SAMPLE_LIMIT,
    BatchInsertResult,
    GroupBy,
    ProgressCallback,
    SpanStore,
    StoreError,
    StoreRequestError,
    StoreUnavailableError,
    check_conversation_filter,
    check_group_by,
    check_limit,
    hours_start,
    status_counts,
    window_start,
)
from src.repositories.row_values import float_or_none, span_label, utc_text
from src.repositories.supabase_client import SupabaseClient
from src.repositories.supabase_errors import ENV_SERVICE_KEY, ENV_URL, STATEMENT_TIMEOUT, row_level
from src.repositories.supabase_rows import int_or_zero, row_to_span, span_to_row

__all__ = [
    "COLUMNS",
    "RPC_DELETE_OLD",
    "RPC_LATENCY_STATS",
    "RPC_QUALITY_COUNTS",
    "RPC_ROLLUP_METRICS",
    "RPC_STATUS_DISTRIBUTION",
    "TABLE",
    "SupabaseSpanRepository",
]

log = logging.getLogger(__name__)


ON_CONFLICT: Final = "trace_id,span_id"
#: ``id`` breaks ties so offset pagination never skips or repeats rows with equal start times.
ORDER_BY: Final[tuple[str, ...]] = ("start_time", "id")

RPC_LATENCY_STATS: Final = "obs_latency_stats"
RPC_STATUS_DISTRIBUTION: Final = "obs_status_distribution"
RPC_QUALITY_COUNTS: Final = "obs_quality_counts"
RPC_DELETE_OLD: Final = "obs_delete_old_spans"
RPC_ROLLUP_METRICS: Final = "obs_rollup_metrics"
RPC_INSERT_FEEDBACK: Final = "obs_insert_feedback"
RPC_FEEDBACK_BY_AGENT: Final = "obs_feedback_by_agent"
RPC_DELETE_OLD_FEEDBACK: Final = "obs_delete_old_feedback"
#: The columns of ``obs_rollup_metrics`` in order (``rollups.groups_from_rows`` reads them so).
_ROLLUP_COLUMNS: Final = (
    "agent_name", "agent_tier", "idx", "n", "n_all", "n_ok", "n_error", "n_timeout", "n_started",
    "n_fallback", "tok_in", "tok_out", "tok_total", "dur_n", "dur_sum", "idxs", "counts",
    "cost_sum", "n_unpriced",
)  # fmt: skip


class SupabaseSpanRepository(SupabaseClient, SpanStore):
    """``ml_observability_spans`` in a Supabase project, over its REST API (PostgREST).

    Safe to share between event loops and threads: each loop gets its own client on first use.
    """

    backend = "supabase"

    def __init__(
        self,
        url: str,
        service_key: str,
        *,
        schema: str = "public",
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        max_attempts: int = 4,
        retry_base_s: float = 0.25,
        retry_max_s: float = 8.0,
        max_rows_per_request: int = 500,
        page_size: int = 1000,
        max_connections: int = 10,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``transport`` replaces the network (tests, the PostgREST emulator); every loop's client shares it.

        ``page_size`` must not exceed the project's ``max-rows`` setting (1,000 on Supabase unless
        changed), or a truncated page would look like the last one. ``max_rows_per_request`` keeps
        request bodies well under gateway size limits for spans with large attributes.
        """
        super().__init__(
            url,
            service_key,
            schema=schema,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            max_attempts=max_attempts,
            retry_base_s=retry_base_s,
            retry_max_s=retry_max_s,
            max_connections=max_connections,
            transport=transport,
        )
        if max_rows_per_request < 1 or page_size < 1:
            raise ValueError("max_rows_per_request and page_size must be at least 1")
        self._max_rows = max_rows_per_request
        self._page_size = page_size
        self._warned_no_count = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> SupabaseSpanRepository:
        """Built from ``SUPABASE_URL`` and ``SUPABASE_SERVICE_KEY``: the key never lives in a config file."""
        env = os.environ if environ is None else environ
        missing = [name for name in (ENV_URL, ENV_SERVICE_KEY) if not (env.get(name) or "").strip()]
        if missing:
            raise ValueError(
                f"the supabase store needs {' and '.join(missing)} in the environment "
                f"({ENV_URL}=https://<project>.supabase.co, {ENV_SERVICE_KEY}=<service_role key>)"
            )
        return cls(env[ENV_URL], env[ENV_SERVICE_KEY], **options)

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Check now that the project answers, the key is accepted and the table exists."""
        await self._call("open", lambda c: c.table(TABLE).select("id").limit(0).execute())

    # ------------------------------------------------------------------ writes

    async def insert_span(self, span: ObservabilitySpan) -> bool:
        """A bad row raises ValueError with the store's reason; a duplicate returns False."""
        result = await self.insert_spans_batch([span])
        if result.errors:
            span_id, reason = result.errors[0]
            raise ValueError(f"span {span_id!r} was not stored: {reason}")
        return result.inserted == 1

    async def insert_spans_batch(self, spans: Sequence[ObservabilitySpan]) -> BatchInsertResult:
        """Idempotent upsert in requests of ``max_rows_per_request``; bad rows are isolated and reported.

        Failures that are not about a row (key rejected, store down after retries) are raised so
        the caller can spool the batch; re-sending it later stores nothing twice.
        """
        result = BatchInsertResult()
        rows: list[dict[str, Any]] = []
        labels: list[str] = []
        for span in spans:
            try:
                rows.append(span_to_row(span))
            except Exception as exc:
                result.failed += 1
                result.errors.append((span_label(span), f"not sendable: {type(exc).__name__}: {exc}"))
            else:
                labels.append(span_label(span))
        for start in range(0, len(rows), self._max_rows):
            end = start + self._max_rows
            result += await self._write(rows[start:end], labels[start:end])
        return result

    async def _write(self, rows: list[dict[str, Any]], labels: list[str]) -> BatchInsertResult:
        try:
            inserted = await self._upsert(rows)
        except StoreError as exc:
            if not row_level(exc):
                raise
            if len(rows) == 1:
                return BatchInsertResult(failed=1, errors=[(labels[0], exc.message)])
            mid = len(rows) // 2
            result = await self._write(rows[:mid], labels[:mid])
            result += await self._write(rows[mid:], labels[mid:])
            return result
        return BatchInsertResult(inserted=inserted, duplicates=len(rows) - inserted)

    async def _upsert(self, rows: list[dict[str, Any]]) -> int:
        response = await self._call(
            "insert",
            lambda c: (
                c.table(TABLE)
                .upsert(
                    rows,
                    on_conflict=ON_CONFLICT,
                    ignore_duplicates=True,
                    returning=ReturnMethod.minimal,
                    default_to_null=False,
                    count=CountMethod.exact,
                )
                .execute()
            ),
        )
        if response.count is None:
            # Something between us and PostgREST dropped Content-Range: the rows are stored (or were
            # already), but which were new is unknown; count them as inserted rather than fail.
            if not self._warned_no_count:
                self._warned_no_count = True
                log.warning("supabase insert answered without a row count; duplicates will be counted as inserted")
            return len(rows)
        return int(response.count)

    async def delete_old_spans(
        self, days: int, batch_size: int = 10_000, progress: ProgressCallback | None = None
    ) -> int:
        """One RPC per batch, so no request holds locks for long and progress can be shown.

        A batch that hits the role's statement timeout (Supabase limits API roles to seconds) is
        halved and tried again rather than failing the cleanup. A batch whose answer was lost is
        retried; the rows it had already deleted are then missing from the returned total, never
        deleted twice or left behind.
        """
        if days < 0:
            raise ValueError(f"days must be zero or positive, got {days}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        cutoff = utc_text(datetime.now(UTC) - timedelta(days=days))
        total = 0
        while True:
            params = {"p_cutoff": cutoff, "p_batch": batch_size}

            def delete_batch(c: AsyncClient, params: dict[str, Any] = params) -> Awaitable[Any]:
                return c.rpc(RPC_DELETE_OLD, params).execute()

            try:
                response = await self._call("delete_old_spans", delete_batch)
            except StoreUnavailableError as exc:
                if exc.code != STATEMENT_TIMEOUT or batch_size == 1:
                    raise
                batch_size = max(1, batch_size // 2)
                log.warning("retention batch timed out on the server; continuing with batches of %d", batch_size)
                continue
            deleted = _scalar_int(response.data)
            if deleted == 0:
                break
            total += deleted
            if progress is not None:
                progress(total)
            if deleted < batch_size:
                break
        return total

    # ------------------------------------------------------------------ reads

    async def _select(
        self, filters: Sequence[tuple[str, str, str]], limit: int | None, *, descending: bool = False
    ) -> list[ObservabilitySpan]:
        """Pages of at most ``page_size`` rows until ``limit`` rows or a short page (newest first if ``descending``)."""
        spans: list[ObservabilitySpan] = []
        while limit is None or len(spans) < limit:
            page = self._page_size if limit is None else min(self._page_size, limit - len(spans))
            offset = len(spans)

            def request(c: AsyncClient, page: int = page, offset: int = offset) -> Awaitable[Any]:
                # Named columns, not ``*``: a column added to the table later cannot break
                # ObservabilitySpan validation (it forbids extra fields).
                query = c.table(TABLE).select(*COLUMNS)
                for column, op, value in filters:
                    query = query.filter(column, op, value)
                for column in ORDER_BY:
                    query = query.order(column, desc=descending)
                query = query.limit(page)
                if offset:
                    query = query.offset(offset)
                return query.execute()

            response = await self._call("select", request)
            rows = response.data or []
            spans.extend(row_to_span(row) for row in rows)
            if len(rows) < page:
                break
        return spans

    async def get_spans_by_time_window(
        self,
        window: str,
        agent_name: str | None = None,
        trace_id: str | None = None,
        limit: int = 1000,
    ) -> list[ObservabilitySpan]:
        if limit < 0:
            raise ValueError(f"limit must be zero or positive, got {limit}")
        filters = [("start_time", "gte", utc_text(window_start(window)))]
        if agent_name is not None:
            filters.append(("agent_name", "eq", agent_name))
        if trace_id is not None:
            filters.append(("trace_id", "eq", trace_id))
        if limit == 0:
            return []
        return await self._select(filters, limit)

    async def get_spans_by_trace_id(self, trace_id: str) -> list[ObservabilitySpan]:
        return await self._select([("trace_id", "eq", trace_id)], None)

    async def get_spans_by_agent(self, agent_name: str, hours: float = 24, limit: int = 500) -> list[ObservabilitySpan]:
        filters = [("agent_name", "eq", agent_name), ("start_time", "gte", utc_text(hours_start(hours)))]
        check_limit(limit)
        if limit == 0:
            return []
        return await self._select(filters, limit, descending=True)

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
        filters = _conversation_filters(window, agent_name, thread_id, user_id)
        if limit == 0:
            return []
        return await self._select(filters, limit)

    async def get_ttft_samples(
        self,
        window: str,
        agent_name: str | None = None,
        thread_id: str | None = None,
        user_id: str | None = None,
        limit: int = TTFT_SAMPLE_LIMIT,
    ) -> list[tuple[str, str | None, float]]:
        """Three columns of the newest TTFT rows, in pages (``ttft_ms=not.is.null``, newest first)."""
        check_limit(limit)
        filters = [*_conversation_filters(window, agent_name, thread_id, user_id), ("ttft_ms", "not.is", "null")]
        samples: list[tuple[str, str | None, float]] = []
        while len(samples) < limit:
            page = min(self._page_size, limit - len(samples))
            offset = len(samples)

            def request(c: AsyncClient, page: int = page, offset: int = offset) -> Awaitable[Any]:
                query = c.table(TABLE).select("agent_name", "llm_model", "ttft_ms")
                for column, op, value in filters:
                    query = query.filter(column, op, value)
                for column in ORDER_BY:
                    query = query.order(column, desc=True)
                query = query.limit(page)
                if offset:
                    query = query.offset(offset)
                return query.execute()

            rows = (await self._call("select", request)).data or []
            samples.extend((str(r["agent_name"]), r.get("llm_model"), float(r["ttft_ms"])) for r in rows)
            if len(rows) < page:
                break
        return samples

    async def count_spans(self) -> int:
        response = await self._call(
            "count", lambda c: c.table(TABLE).select("id", count=CountMethod.exact, head=True).execute()
        )
        if response.count is None:
            raise StoreRequestError(f"count: {self.describe()} answered without a row count (Content-Range)")
        return int(response.count)

    # ------------------------------------------------------------------ metrics (SQL functions)

    def _rpc_filters(self, window: str, agent_name: str | None, trace_id: str | None) -> dict[str, Any]:
        return {"p_since": utc_text(window_start(window)), "p_agent": agent_name, "p_trace": trace_id}

    async def _rpc_rows(self, fn: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        response = await self._call(fn, lambda c: c.rpc(fn, params).execute())
        data = response.data
        if data is None:
            return []
        if isinstance(data, dict):
            return [data]
        if isinstance(data, list) and all(isinstance(row, dict) for row in data):
            return data
        raise StoreRequestError(f"{fn}: expected rows from the SQL function, got {type(data).__name__}")

    async def rollup_groups(self, window: str, agent_name: str | None = None) -> list[RollupGroup] | None:
        """One RPC, ``obs_rollup_metrics`` (the database's triggers keep the rollups): the same
        rows the Postgres backend reads, so both answer alike."""
        params = {"p_since": utc_text(window_start(window)), "p_agent": agent_name}
        rows = await self._rpc_rows(RPC_ROLLUP_METRICS, params)
        return groups_from_rows(tuple(row.get(c) for c in _ROLLUP_COLUMNS) for row in rows)

    async def get_latency_stats(
        self,
        window: str,
        agent_name: str | None = None,
        trace_id: str | None = None,
        group_by: GroupBy = "agent",
    ) -> list[LatencyStats]:
        """``error_rate`` is derived from the counts, like every backend (the RPC's own column is not read)."""
        check_group_by(group_by)
        params = {**self._rpc_filters(window, agent_name, trace_id), "p_group": group_by}
        rows = await self._rpc_rows(RPC_LATENCY_STATS, params)
        stats = []
        for row in rows:
            count, errors = int_or_zero(row.get("count")), int_or_zero(row.get("error_count"))
            stats.append(
                LatencyStats(
                    key=str(row["key"]),
                    count=count,
                    avg_ms=float_or_none(row.get("avg_ms")),
                    p50_ms=float_or_none(row.get("p50_ms")),
                    p95_ms=float_or_none(row.get("p95_ms")),
                    p99_ms=float_or_none(row.get("p99_ms")),
                    error_count=errors,
                    error_rate=error_rate(errors, count),
                    input_tokens=int_or_zero(row.get("input_tokens")),
                    output_tokens=int_or_zero(row.get("output_tokens")),
                    total_tokens=int_or_zero(row.get("total_tokens")),
                )
            )
        return stats

    async def get_status_distribution(
        self, window: str, agent_name: str | None = None, trace_id: str | None = None
    ) -> dict[str, int]:
        """Always every stored status, zeros included, like every other backend."""
        rows = await self._rpc_rows(RPC_STATUS_DISTRIBUTION, self._rpc_filters(window, agent_name, trace_id))
        return status_counts((row["status"], int_or_zero(row.get("n"))) for row in rows)

    async def get_quality_metrics(
        self, window: str, agent_name: str | None = None, trace_id: str | None = None
    ) -> QualityMetrics:
        """Counts and percentiles come from SQL; the rates and the score are derived as in every backend."""
        rows = await self._rpc_rows(RPC_QUALITY_COUNTS, self._rpc_filters(window, agent_name, trace_id))
        row = rows[0] if rows else {}
        return QualityMetrics.from_counts(
            window,
            total=int_or_zero(row.get("total")),
            ok=int_or_zero(row.get("ok_count")),
            error=int_or_zero(row.get("error_count")),
            timeout=int_or_zero(row.get("timeout_count")),
            started=int_or_zero(row.get("started_count")),
            fallback=int_or_zero(row.get("fallback_count")),
            p50=float_or_none(row.get("p50_ms")),
            p95=float_or_none(row.get("p95_ms")),
            p99=float_or_none(row.get("p99_ms")),
            avg=float_or_none(row.get("avg_ms")),
        )

    # ------------------------------------------------------------------ feedback

    async def insert_feedback_batch(self, items: Sequence[Feedback]) -> BatchInsertResult:
        """One RPC per request-sized chunk, ``obs_insert_feedback`` (inserted count, duplicates skipped):
        the rows were validated, so a refusal is about the request, and the chunk is retried whole."""
        result = BatchInsertResult()
        rows = [item.to_row() for item in items]
        for start in range(0, len(rows), self._max_rows):
            chunk = rows[start : start + self._max_rows]

            def request(c: AsyncClient, chunk: list[dict[str, Any]] = chunk) -> Awaitable[Any]:
                return c.rpc(RPC_INSERT_FEEDBACK, {"p_rows": chunk}).execute()

            response = await self._call(RPC_INSERT_FEEDBACK, request)
            inserted = _scalar_int(response.data)
            result += BatchInsertResult(inserted=inserted, duplicates=len(chunk) - inserted)
        return result

    async def get_feedback_by_agent(
        self, window: str, agent_name: str | None = None, trace_id: str | None = None
    ) -> FeedbackByAgent:
        rows = await self._rpc_rows(RPC_FEEDBACK_BY_AGENT, self._rpc_filters(window, agent_name, trace_id))
        return feedback_by_agent((r.get("agent_name"), r.get("name"), r.get("avg_value"), r.get("n")) for r in rows)

    async def get_feedback(self, trace_id: str) -> list[Feedback]:
        response = await self._call(
            "select feedback",
            lambda c: c.table(FEEDBACK_TABLE).select(*FEEDBACK_COLUMNS).eq("trace_id", trace_id)
            .order("created_at").order("feedback_id").limit(self._page_size).execute(),
        )  # fmt: skip
        return [Feedback.model_validate(row) for row in response.data or []]

    async def delete_old_feedback(self, days: int) -> int:
        if days < 0:
            raise ValueError(f"days must be zero or positive, got {days}")
        cutoff = utc_text(datetime.now(UTC) - timedelta(days=days))
        response = await self._call(
            RPC_DELETE_OLD_FEEDBACK, lambda c: c.rpc(RPC_DELETE_OLD_FEEDBACK, {"p_cutoff": cutoff}).execute()
        )
        return _scalar_int(response.data)

    async def find_trace_of_span(self, span_id: str) -> str | None:
        response = await self._call(
            "select",
            lambda c: c.table(TABLE).select("trace_id").filter("span_id", "eq", span_id)
            .order("start_time", desc=True).limit(1).execute(),
        )  # fmt: skip
        rows = response.data or []
        first = rows[0] if isinstance(rows, list) and rows else None
        return str(first["trace_id"]) if isinstance(first, dict) else None


def _conversation_filters(
    window: str | None, agent_name: str | None, thread_id: str | None, user_id: str | None
) -> list[tuple[str, str, str]]:
    """PostgREST filters of a conversation read: the window (None: all time), agent, thread, user."""
    filters = [] if window is None else [("start_time", "gte", utc_text(window_start(window)))]
    for column, value in (("agent_name", agent_name), ("thread_id", thread_id), ("user_id", user_id)):
        if value is not None:
            filters.append((column, "eq", value))
    return filters


def _scalar_int(data: object) -> int:
    """A scalar function's result: PostgREST sends the bare value (``5``); tolerate a row too."""
    if isinstance(data, bool):
        raise StoreRequestError(f"{RPC_DELETE_OLD}: expected a row count, got {data!r}")
    if isinstance(data, int | float | str):
        return int(data)
    if isinstance(data, list) and len(data) == 1:
        return _scalar_int(data[0])
    if isinstance(data, dict) and len(data) == 1:
        return _scalar_int(next(iter(data.values())))
    raise StoreRequestError(f"{RPC_DELETE_OLD}: expected a row count, got {data!r}")
