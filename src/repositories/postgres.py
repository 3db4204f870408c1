"""Postgres span store (psycopg 3, async, pooled): any Postgres, or a Supabase connection string.

Design notes (why it looks like this):

* **The pool lives on the repository's own I/O thread and event loop.** psycopg's async
  connections and ``AsyncConnectionPool`` belong to the loop they were opened on, but one
  repository is used from several loops: the batch flusher writes from its own thread's loop,
  while agents, the CLI and tests read from theirs, and ``close()`` often runs after the flusher's
  loop is gone. So every operation is handed to a private loop thread
  (``run_coroutine_threadsafe``) and awaited from the caller's loop; the cost is one thread hop
  (tens of µs) per call, next to milliseconds of database work. The constraint this leaves: the
  repository must not be used after interpreter shutdown has begun on a Python that forbids new
  threads then, unless it was already used before (the thread starts lazily on first use).
  ``close()`` closes the pool on its own loop and stops the thread; the next call reopens both.
* **Batch writes: an optimistic binary COPY straight into the table.** A fresh batch from the
  flusher has no duplicate and no bad row, so it goes in as fast as a raw COPY (one
  transaction: BEGIN, COPY, COMMIT), with the rows converted while the server ingests them.
  COPY cannot skip duplicates, so a unique violation (a replayed batch, a span sent twice, a
  concurrent writer) sends the batch to the **staging path**: binary COPY into a loose
  temporary table (ids and JSON as text, integers as bigint, no constraints), then one
  ``INSERT ... SELECT ... ON CONFLICT (trace_id, span_id) DO NOTHING`` that counts duplicates.
  Measured at batch 1,000 with fsync on (``benchmarks/bench_store.py``, 2 cores): this path
  ~75k rows/s, 0.9x a raw binary COPY of pre-built rows; the staged path alone ~0.6x, a text
  COPY into the staging table ~0.6x, the one-JSON-parameter ``jsonb_to_recordset`` insert
  ~0.35x. The cost of the optimistic path: a replayed batch is written twice (the failed
  COPY's rows are dead tuples for VACUUM) — a replay still ran at ~59k rows/s. The staging
  table is created ``IF NOT EXISTS ... ON COMMIT DELETE ROWS`` inside each transaction, which
  also works behind a transaction-mode pooler (Supabase's port 6543), where consecutive
  transactions may run on different server sessions.
* **One bad row never costs the others.** When either path fails with a row-level error
  (SQLSTATE class 22 / 23, or a value psycopg cannot send), each row is converted carefully
  (readable reasons, NULs replaced) and the batch is written in one transaction, bisecting
  with savepoints: ~2·log2(n) statements find a single bad row among 1,000, which is
  dead-lettered with the database's reason while the rest commit together. Any other failure
  (connection lost, permission, missing table) fails the whole batch with a
  :class:`~src.repositories.base.StoreError` so the caller retries or spools it.
  ``write_paths`` counts which path each batch took.
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
* **Text Postgres cannot store**: NUL characters are not allowed in ``text`` or ``jsonb``; they are
  replaced with U+FFFD here rather than losing the span.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import uuid
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from json.encoder import c_make_encoder as _c_make_encoder  # type: ignore[attr-defined]
from json.encoder import encode_basestring_ascii as _encode_str  # type: ignore[attr-defined]
from pathlib import Path
from time import monotonic
from typing import Any, Final, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.adapt import Dumper
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import Format
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from src.agents.ml_foundation.observability_connector.models import (
    LatencyStats,
    ObservabilitySpan,
    QualityMetrics,
    error_rate,
)
from src.repositories.base import (
    COLUMNS,
    TABLE,
    BatchInsertResult,
    GroupBy,
    ProgressCallback,
    SpanStore,
    StoreAuthError,
    StoreError,
    StorePermissionError,
    StoreSchemaError,
    StoreUnavailableError,
    check_group_by,
    check_limit,
    hours_start,
    status_counts,
    window_start,
)
from src.repositories.json_text import json_text as _json_text  # one JSON policy (NaN, cycles, odd types) for all

__all__ = [
    "SCHEMA_PATH",
    "TABLE",
    "MigrationReport",
    "PostgresSpanRepository",
    "describe_dsn",
    "migrate",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA_PATH: Final = Path(__file__).resolve().parents[2] / "database" / "ml" / "mlops_tables.sql"

_COLS: Final = ", ".join(COLUMNS)
_SELECT_COLS: Final = ", ".join("id::text AS id" if c == "id" else c for c in COLUMNS)

# Staging: the row number ``n`` (position in the batch, for bisecting and error reports), then
# every column in its loosest form. Binary COPY types, in the same order.
_STAGE: Final = "obs_span_stage"
_STAGE_DDL: Final = f"""CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (
    n int4, id text, span_id text, trace_id text, parent_span_id text, operation_name text,
    agent_name text, agent_tier int8, start_time timestamptz, end_time timestamptz,
    duration_ms float8, status text, error_type text, error_message text, attributes text,
    llm_model text, input_tokens int8, output_tokens int8, total_tokens int8, events text,
    created_at timestamptz
) ON COMMIT DELETE ROWS"""
_STAGE_TYPES: Final = [
    "int4", "text", "text", "text", "text", "text",
    "text", "int8", "timestamptz", "timestamptz",
    "float8", "text", "text", "text", "text",
    "text", "int8", "int8", "int8", "text",
    "timestamptz",
]  # fmt: skip
_COPY_STAGE: Final = f"COPY {_STAGE} (n, {_COLS}) FROM STDIN (FORMAT BINARY)"
_BEGIN_STAGE: Final = f"BEGIN; {_STAGE_DDL}"
_INSERT_FROM_STAGE: Final = f"""INSERT INTO {TABLE} ({_COLS})
SELECT id::uuid, span_id, trace_id, parent_span_id, operation_name, agent_name, agent_tier::int4,
       start_time, end_time, duration_ms, status, error_type, error_message, attributes::jsonb,
       llm_model, input_tokens::int4, output_tokens::int4, total_tokens::int4, events::jsonb, created_at
FROM {_STAGE} WHERE n >= {{lo:d}} AND n <= {{hi:d}} ORDER BY n
ON CONFLICT (trace_id, span_id) DO NOTHING"""


def _insert_from_stage(lo: int, hi: int, *, commit: bool = False) -> str:
    """The staged rows ``lo..hi`` into the table. Literal integers, no parameters, so the statement
    can share one round trip with the COMMIT (parameters would force one statement per message)."""
    sql = _INSERT_FROM_STAGE.format(lo=int(lo), hi=int(hi))
    return f"{sql}; COMMIT" if commit else sql


async def _rollback(conn: psycopg.AsyncConnection[Any]) -> None:
    """End a transaction the fast path opened by hand; the pool discards a connection this fails on."""
    if conn.broken or conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        return
    with contextlib.suppress(Exception):
        await conn.execute("ROLLBACK")


# Direct COPY into the table (the fast path). Binary types in column order; ``id`` and the two
# JSON columns arrive as text and are sent by the two dumpers below, registered by OID on the
# COPY's cursor only, so nothing else on the connection changes.
_COPY_TABLE: Final = f"COPY {TABLE} ({_COLS}) FROM STDIN (FORMAT BINARY)"
_TABLE_TYPES: Final = [
    "uuid", "text", "text", "text", "text", "text", "int4", "timestamptz", "timestamptz", "float8",
    "text", "text", "text", "jsonb", "text", "int4", "int4", "int4", "jsonb", "timestamptz",
]  # fmt: skip


class _UuidTextBinaryDumper(Dumper):
    """A uuid given as text (how spans carry ids), sent in binary without building a UUID object."""

    format = Format.BINARY
    oid = psycopg.postgres.types["uuid"].oid

    def dump(self, obj: Any) -> bytes:
        if isinstance(obj, uuid.UUID):
            return obj.bytes
        raw = bytes.fromhex(str(obj).replace("-", ""))
        if len(raw) != 16:
            raise ValueError(f"id {obj!r} is not a UUID")
        return raw


class _JsonbTextBinaryDumper(Dumper):
    """JSON already encoded (by the one JSON policy every backend shares), sent as binary jsonb."""

    format = Format.BINARY
    oid = psycopg.postgres.types["jsonb"].oid

    def dump(self, obj: Any) -> bytes:
        return b"\x01" + obj.encode()  # jsonb binary format version 1, then the text


class _UnconvertibleRowError(Exception):
    """A span the lean conversion cannot read (e.g. missing fields): the careful path says why."""


#: A pooled connection idle longer than this is checked (one empty query) before use: after a
#: database restart or a pooler's idle cut-off it is the stale ones that fail. Connections in
#: steady use skip the check, which would otherwise cost a round trip per batch.
_CHECK_AFTER_IDLE_S: Final = 5.0

_INT8_MIN: Final = -(2**63)
_INT8_MAX: Final = 2**63 - 1

#: Errors that belong to a row rather than to the batch or the connection: SQLSTATE class 22
#: (data exception) and 23 (integrity), and values psycopg cannot encode on our side.
_ROW_ERRORS: Final = (
    psycopg.DataError,
    psycopg.IntegrityError,
    UnicodeError,
    OverflowError,
    ValueError,
    TypeError,
)


# --------------------------------------------------------------------------- conversion


def _text(value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        value = str(value)
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _strip_nul(value: object) -> object:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_strip_nul(k): _strip_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_nul(v) for v in value]
    return value


def _json(value: object, empty: str) -> str:
    text = _json_text(value, empty)
    # jsonb rejects \u0000; only then pay for a second pass (the escape is rare, the check cheap).
    if "\\u0000" in text:
        text = _json_text(_strip_nul(json.loads(text)), empty)
    return text


def _refuse(value: object) -> object:
    raise TypeError(f"{type(value).__name__} is not plain JSON")


# A C encoder built once, with exactly the output of the shared policy for plain JSON values
# (compact separators, ASCII escapes, NaN refused) but none of its per-call set-up: json's
# ``encode()`` builds a new one on every call, which was half the fast path's cost per row
# (0.8 µs against 1.8 µs for a typical attributes dict). No cycle check either; anything it
# refuses — non-JSON values, NaN, a cycle — goes through the full policy instead.
_C_ENCODE: Final = (
    _c_make_encoder(None, _refuse, _encode_str, None, ":", ",", False, False, False) if _c_make_encoder else None
)


def _fast_json(value: object, empty: str) -> str:
    if value is None:
        return empty
    if not value and value.__class__ in (list, dict):  # events are usually []
        return "[]" if value.__class__ is list else "{}"
    if _C_ENCODE is not None:
        try:
            return "".join(_C_ENCODE(value, 0))
        except (TypeError, ValueError, RecursionError):
            pass
    return _json_text(value, empty)


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__} {value!r}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _int8(value: int | None, name: str) -> int | None:
    if value is None:
        return None
    value = int(value)
    if not _INT8_MIN <= value <= _INT8_MAX:
        # Out of even the staging type's range: say so in the database's words.
        raise ValueError(f"{name} {value} is out of range for type integer")
    return value


def _span_to_stage_row(n: int, span: ObservabilitySpan) -> tuple[Any, ...]:
    """The careful conversion (the slow path): every value checked and normalised, NULs replaced,
    so a row that still fails is the database's call, and one that cannot be sent says why."""
    duration = span.duration_ms
    return (
        n,
        _text(span.id),
        _text(span.span_id),
        _text(span.trace_id),
        _text(span.parent_span_id),
        _text(span.operation_name),
        _text(span.agent_name),
        _int8(span.agent_tier, "agent_tier"),
        _aware(span.start_time),
        _aware(span.end_time),
        None if duration is None else float(duration),
        _text(span.status),
        _text(span.error_type),
        _text(span.error_message),
        _json(span.attributes, "{}"),
        _text(span.llm_model),
        _int8(span.input_tokens, "input_tokens"),
        _int8(span.output_tokens, "output_tokens"),
        _int8(span.total_tokens, "total_tokens"),
        _json(span.events, "[]"),
        _aware(span.created_at),
    )


def _lean_table_row(span: ObservabilitySpan) -> tuple[Any, ...]:
    """The fast path's conversion: field values as they are, JSON encoded, nothing checked.

    About 3 µs per row against 7 µs for :func:`_span_to_stage_row`: whatever this lets through
    that Postgres cannot take (a NUL character, a naive datetime, an out-of-range number, an id
    that is not a UUID) fails the COPY, and the careful path then converts and judges each row.
    """
    d = span.__dict__
    attributes = d["attributes"]
    events = d["events"]
    return (
        d["id"],
        d["span_id"],
        d["trace_id"],
        d["parent_span_id"],
        d["operation_type"],
        d["agent_name"],
        d["agent_tier"],
        d["started_at"],
        d["end_time"],
        d["duration_ms"],
        d["status"],
        d["error_type"],
        d["error_message"],
        _fast_json(attributes, "{}"),
        d["llm_model"],
        d["input_tokens"],
        d["output_tokens"],
        d["total_tokens"],
        _fast_json(events, "[]"),
        d["created_at"],
    )


def _lean_stage_row(n: int, span: ObservabilitySpan) -> tuple[Any, ...]:
    """:func:`_lean_table_row` with the row number in front, for the staging table."""
    return (n, *_lean_table_row(span))


def _row_to_span(row: Sequence[Any]) -> ObservabilitySpan:
    data = dict(zip(COLUMNS, row, strict=True))
    if data["attributes"] is None:
        data["attributes"] = {}
    if data["events"] is None:
        data["events"] = []
    return ObservabilitySpan.model_validate(data)


def _span_label(span: object) -> str:
    try:
        return str(getattr(span, "span_id", None) or "<no span_id>")
    except Exception:
        return "<unprintable span_id>"


def _reason(exc: BaseException) -> str:
    """The database's own message (first line, plus DETAIL when it names the value)."""
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        text = exc.diag.message_primary
        if exc.diag.message_detail:
            text += f" ({exc.diag.message_detail})"
        if exc.sqlstate:
            text += f" [SQLSTATE {exc.sqlstate}]"
        return f"{type(exc).__name__}: {text}"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"


def describe_dsn(dsn: str) -> str:
    """``postgresql://user@host:port/dbname`` — never the password, whatever form the DSN had."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "postgresql://<unparseable connection string>"
    user = str(params.get("user") or "")
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or "5432")
    dbname = str(params.get("dbname") or user)
    return f"postgresql://{user + '@' if user else ''}{host}:{port}/{dbname}"


def _store_error(exc: BaseException, where: str) -> StoreError:
    """Map a driver / pool failure onto the backend-neutral error types (retryable or not)."""
    sqlstate = getattr(exc, "sqlstate", None) or ""
    message = f"{where}: {_reason(exc)}"
    if isinstance(exc, PoolTimeout):
        return StoreUnavailableError(f"{where}: no database connection within the timeout ({exc})")
    if sqlstate in ("28P01", "28000") or "password authentication failed" in str(exc):
        return StoreAuthError(message, code=sqlstate or None)
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return StorePermissionError(message, code=sqlstate)
    if isinstance(exc, pg_errors.UndefinedTable | pg_errors.UndefinedFunction | pg_errors.UndefinedColumn):
        return StoreSchemaError(
            message, code=sqlstate, hint="apply database/ml/mlops_tables.sql with `obs-connector migrate`"
        )
    if isinstance(exc, psycopg.OperationalError | pg_errors.AdminShutdown | pg_errors.CannotConnectNow):
        return StoreUnavailableError(message, code=sqlstate or None)
    if isinstance(exc, pg_errors.QueryCanceled | pg_errors.SerializationFailure | pg_errors.DeadlockDetected):
        return StoreUnavailableError(message, code=sqlstate)
    if isinstance(exc, OSError | TimeoutError):
        return StoreUnavailableError(message)
    return StoreError(message, code=sqlstate or None)


# --------------------------------------------------------------------------- the I/O thread


class _IOLoop:
    """A daemon thread running one event loop; the pool and all its connections live here."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.thread.start()
        self._ready.wait()
        self.pool: AsyncConnectionPool | None = None
        self.pool_lock = asyncio.Lock()  # only ever used on self.loop

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        try:
            self.loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def submit(self, coro: Awaitable[T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.abandon()
        self.thread.join(timeout=10)

    def abandon(self) -> None:
        """Stop the loop without waiting (a repository garbage-collected without ``close()``)."""
        with contextlib.suppress(RuntimeError):  # already closed
            self.loop.call_soon_threadsafe(self.loop.stop)


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
        self._min_size = min_size
        self._max_size = max_size
        self._connect_timeout_s = connect_timeout_s
        self._pool_timeout_s = pool_timeout_s
        self._application_name = application_name
        # Added to, never replacing, the DSN's own ``options`` (e.g. ``-c role=service_role``).
        dsn_options = params.get("options")
        # client_min_messages: the staging DDL's "already exists, skipping" NOTICE on every batch.
        ours = "-c client_min_messages=warning"
        if statement_timeout_ms:
            ours += f" -c statement_timeout={int(statement_timeout_ms)}"
        self._options = " ".join(str(o) for o in (dsn_options, ours) if o) or None
        self._lock = threading.Lock()
        self._io: _IOLoop | None = None
        self._finalizer: weakref.finalize | None = None
        #: Batches per write path ("direct", "staged", "careful"): how often the slow paths run.
        self.write_paths: Counter[str] = Counter()
        self._last_used: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], float] = weakref.WeakKeyDictionary()

    def describe(self) -> str:
        return describe_dsn(self._dsn)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()!r})"

    # ------------------------------------------------------------------ lifecycle

    def _connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "prepare_threshold": None,
            "application_name": self._application_name,
            "connect_timeout": max(1, round(self._connect_timeout_s)),
        }
        if self._options:
            kwargs["options"] = self._options
        return kwargs

    def _get_io(self) -> _IOLoop:
        with self._lock:
            if self._io is None:
                self._io = _IOLoop(name=f"postgres-spans-{id(self):x}")
                # A repository dropped without close() must not leave its thread running forever.
                self._finalizer = weakref.finalize(self, self._io.abandon)
            return self._io

    async def _pool(self, io: _IOLoop) -> AsyncConnectionPool:
        """The pool of ``io`` (runs on io.loop), opened on first use; a failed open is retried later."""
        if io.pool is not None:
            return io.pool
        async with io.pool_lock:
            if io.pool is None:
                pool = AsyncConnectionPool(
                    self._dsn,
                    min_size=self._min_size,
                    max_size=self._max_size,
                    kwargs=self._connect_kwargs(),
                    open=False,
                    check=self._check_if_idle,
                    timeout=self._pool_timeout_s,
                    name="obs-spans",
                )
                try:
                    await pool.open(wait=self._min_size > 0, timeout=self._connect_timeout_s)
                except PoolTimeout:
                    await pool.close()
                    # The pool only logs why its connections failed; one direct attempt raises the
                    # reason itself (a wrong password, an unknown database) instead of a timeout.
                    conn = await psycopg.AsyncConnection.connect(self._dsn, **self._connect_kwargs())
                    await conn.close()
                    raise
                except BaseException:
                    await pool.close()
                    raise
                io.pool = pool
        return io.pool

    async def _call(self, op: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]], what: str) -> T:
        """Run ``op`` with a pooled connection on the I/O loop and await it from the caller's loop."""

        async def on_io_loop(io: _IOLoop) -> T:
            pool = await self._pool(io)
            async with pool.connection() as conn:
                try:
                    return await op(conn)
                finally:
                    self._last_used[conn] = monotonic()

        try:
            io = self._get_io()
            if asyncio.get_running_loop() is io.loop:
                return await on_io_loop(io)
            return await asyncio.wrap_future(io.submit(on_io_loop(io)))
        except StoreError:
            raise
        except (psycopg.Error, PoolTimeout, OSError, TimeoutError) as exc:
            raise _store_error(exc, f"{what} on {self.describe()}") from exc

    async def _check_if_idle(self, conn: psycopg.AsyncConnection[Any]) -> None:
        last = self._last_used.get(conn)
        if last is None or monotonic() - last > _CHECK_AFTER_IDLE_S:
            await AsyncConnectionPool.check_connection(conn)

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
        """Close the pool on its own loop and stop the I/O thread (idempotent)."""
        with self._lock:
            io, self._io = self._io, None
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None
        if io is None:
            return
        if io.pool is not None:
            pool = io.pool

            async def close_pool() -> None:
                await pool.close(timeout=5.0)

            try:
                await asyncio.wrap_future(io.submit(close_pool()))
            except Exception as exc:  # closing must not fail the caller
                log.warning("closing the Postgres pool of %s failed: %s", self.describe(), exc)
        await asyncio.to_thread(io.stop)

    # ------------------------------------------------------------------ writes

    async def insert_span(self, span: ObservabilitySpan) -> bool:
        """A bad row raises ValueError with the database's reason; a duplicate returns False."""
        result = await self.insert_spans_batch([span])
        if result.errors:
            span_id, reason = result.errors[0]
            raise ValueError(f"span {span_id!r} was not stored: {reason}")
        return result.inserted == 1

    async def insert_spans_batch(self, spans: Sequence[ObservabilitySpan]) -> BatchInsertResult:
        """Idempotent batch write in up to three tiers, each only when the one before cannot finish.

        1. **Direct binary COPY into the table**, one transaction: the common case (a fresh
           batch, no duplicate, no bad row) costs what a raw COPY costs.
        2. **Staged**: on a unique violation (a replayed batch, a span twice in one batch, a
           concurrent writer) the batch goes through the staging table and
           ``INSERT ... ON CONFLICT (trace_id, span_id) DO NOTHING``, which counts duplicates.
        3. **Careful**: on a row-level error (SQLSTATE class 22/23, or a value psycopg cannot
           send) each row is converted carefully and the batch is bisected with savepoints, so
           only the bad rows are dead-lettered, each with the database's reason.
        Anything else (connection, permission, missing table) fails the whole batch with a
        ``StoreError`` for the caller to retry or spool; nothing was committed then.
        """
        spans = list(spans)
        if not spans:
            return BatchInsertResult()

        async def direct(conn: psycopg.AsyncConnection[Any]) -> str:
            try:
                await conn.execute("BEGIN")
                cursor = conn.cursor()
                cursor.adapters.register_dumper(None, _UuidTextBinaryDumper)
                cursor.adapters.register_dumper(None, _JsonbTextBinaryDumper)
                async with cursor.copy(_COPY_TABLE) as copy:
                    copy.set_types(_TABLE_TYPES)
                    for span in spans:  # converted while the server ingests: two cores at work
                        try:
                            row = _lean_table_row(span)
                        except Exception as exc:
                            raise _UnconvertibleRowError(_reason(exc)) from exc
                        await copy.write_row(row)
                await conn.execute("COMMIT")
                return "stored"
            except pg_errors.UniqueViolation:
                await _rollback(conn)
                return "duplicates"
            except (*_ROW_ERRORS, _UnconvertibleRowError) as exc:
                await _rollback(conn)
                if conn.broken:
                    raise
                log.info("batch of %d spans has a bad row (%s); isolating it", len(spans), _reason(exc))
                return "bad row"
            except BaseException:
                await _rollback(conn)
                raise

        outcome = await self._call(direct, f"writing {len(spans)} spans")
        if outcome == "stored":
            self.write_paths["direct"] += 1
            return BatchInsertResult(inserted=len(spans))
        if outcome == "duplicates":
            staged = await self._insert_staged(spans)
            if staged is not None:
                self.write_paths["staged"] += 1
                return staged
        self.write_paths["careful"] += 1
        return await self._insert_carefully(spans)

    async def _insert_staged(self, spans: list[ObservabilitySpan]) -> BatchInsertResult | None:
        """Tier 2: COPY into the staging table, ``INSERT ... ON CONFLICT DO NOTHING``; None on a bad row."""
        rows: list[tuple[Any, ...]] = []
        for n, span in enumerate(spans):
            try:
                rows.append(_lean_stage_row(n, span))
            except Exception:
                return None

        async def staged(conn: psycopg.AsyncConnection[Any]) -> int | None:
            # Three round trips: BEGIN + staging DDL, the COPY, INSERT + COMMIT.
            try:
                await conn.execute(_BEGIN_STAGE)
                await self._copy(conn, rows)
                cur = await conn.execute(_insert_from_stage(0, len(rows) - 1, commit=True))
                return max(cur.rowcount, 0)
            except _ROW_ERRORS as exc:
                await _rollback(conn)
                if conn.broken:
                    raise
                log.info("batch of %d spans has a bad row (%s); isolating it", len(rows), _reason(exc))
                return None
            except BaseException:
                await _rollback(conn)
                raise

        inserted = await self._call(staged, f"writing {len(rows)} spans (with duplicates)")
        if inserted is None:
            return None
        return BatchInsertResult(inserted=inserted, duplicates=len(rows) - inserted)

    async def _insert_carefully(self, spans: list[ObservabilitySpan]) -> BatchInsertResult:
        """Tier 3: careful conversion (rows it rejects never reach the database), then bisection."""
        result = BatchInsertResult()
        careful: list[tuple[Any, ...]] = []
        for n, span in enumerate(spans):
            try:
                careful.append(_span_to_stage_row(n, span))
            except Exception as exc:
                result.failed += 1
                result.errors.append((_span_label(span), _reason(exc)))

        async def isolate(conn: psycopg.AsyncConnection[Any]) -> BatchInsertResult:
            return await self._insert_isolating(conn, careful, spans)

        if careful:
            result += await self._call(isolate, f"writing {len(careful)} spans row by row")
        return result

    @staticmethod
    async def _copy(conn: psycopg.AsyncConnection[Any], rows: Sequence[tuple[Any, ...]]) -> None:
        async with conn.cursor().copy(_COPY_STAGE) as copy:
            copy.set_types(_STAGE_TYPES)
            for row in rows:
                await copy.write_row(row)

    async def _insert_isolating(
        self,
        conn: psycopg.AsyncConnection[Any],
        rows: list[tuple[Any, ...]],
        spans: list[ObservabilitySpan],
    ) -> BatchInsertResult:
        """Stage and insert by bisection inside one transaction; each failing single row is reported."""
        result = BatchInsertResult()
        staged: list[int] = []

        async def stage(part: list[tuple[Any, ...]]) -> None:
            try:
                async with conn.transaction():  # a savepoint inside the outer transaction
                    await self._copy(conn, part)
            except _ROW_ERRORS as exc:
                if conn.broken:
                    raise
                if len(part) == 1:
                    result.failed += 1
                    result.errors.append((_span_label(spans[part[0][0]]), _reason(exc)))
                    return
                mid = len(part) // 2
                await stage(part[:mid])
                await stage(part[mid:])
                return
            staged.extend(row[0] for row in part)

        async def insert(part: list[int]) -> None:
            try:
                async with conn.transaction():
                    cur = await conn.execute(_insert_from_stage(part[0], part[-1]))
            except _ROW_ERRORS as exc:
                if conn.broken:
                    raise
                if len(part) == 1:
                    result.failed += 1
                    result.errors.append((_span_label(spans[part[0]]), _reason(exc)))
                    return
                mid = len(part) // 2
                await insert(part[:mid])
                await insert(part[mid:])
                return
            inserted = max(cur.rowcount, 0)
            result.inserted += inserted
            result.duplicates += len(part) - inserted

        async with conn.transaction():
            await conn.execute(_STAGE_DDL)
            await stage(rows)
            staged.sort()
            if staged:
                # Staged row numbers are contiguous within each part only by accident; bisect on
                # the list, and let the range [first, last] pick exactly the staged rows between.
                await insert(staged)
        return result

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

    async def _fetchall(self, sql: str, params: Sequence[Any], what: str) -> list[tuple[Any, ...]]:
        async def op(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cur = await conn.execute(sql, params)  # type: ignore[arg-type]
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
        return [_row_to_span(row) for row in rows]

    async def get_spans_by_trace_id(self, trace_id: str) -> list[ObservabilitySpan]:
        sql = f"SELECT {_SELECT_COLS} FROM {TABLE} WHERE trace_id = %s ORDER BY start_time, id"
        rows = await self._fetchall(sql, [trace_id], "reading a trace")
        return [_row_to_span(row) for row in rows]

    async def get_spans_by_agent(self, agent_name: str, hours: float = 24, limit: int = 500) -> list[ObservabilitySpan]:
        since = hours_start(hours)
        check_limit(limit)
        sql = (
            f"SELECT {_SELECT_COLS} FROM {TABLE} WHERE agent_name = %s AND start_time >= %s "
            "ORDER BY start_time DESC, id DESC LIMIT %s"
        )
        rows = await self._fetchall(sql, [agent_name, since, limit], "reading an agent's spans")
        return [_row_to_span(row) for row in rows]

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


# --------------------------------------------------------------------------- migrations


@dataclass
class MigrationReport:
    """What ``migrate`` found and did, for people (``obs-connector migrate``) and tests."""

    database: str
    server_version: str
    created: list[str] = field(default_factory=list)
    already_present: list[str] = field(default_factory=list)
    supabase_roles: list[str] = field(default_factory=list)
    access: dict[str, str] = field(default_factory=dict)  # role -> "denied" | "granted" | "partial"

    @property
    def changed(self) -> bool:
        return bool(self.created)


_OBJECTS_SQL: Final = """
SELECT 'table ' || c.relname FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace
 WHERE ns.nspname = 'public' AND c.relname = 'ml_observability_spans' AND c.relkind = 'r'
UNION ALL
SELECT 'row level security on ml_observability_spans' FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace
 WHERE ns.nspname = 'public' AND c.relname = 'ml_observability_spans' AND c.relrowsecurity
UNION ALL
SELECT 'index ' || indexname FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'ml_observability_spans'
UNION ALL
SELECT 'view ' || viewname FROM pg_views WHERE schemaname = 'public' AND viewname = 'v_agent_latency_summary'
UNION ALL
SELECT 'function ' || p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace ns ON ns.oid = p.pronamespace
 WHERE ns.nspname = 'public' AND p.proname IN
       ('obs_latency_stats', 'obs_status_distribution', 'obs_quality_counts', 'obs_delete_old_spans')
UNION ALL
SELECT 'policy ' || policyname FROM pg_policies WHERE schemaname = 'public' AND tablename = 'ml_observability_spans'
UNION ALL
SELECT 'check ' || c.conname || ': ' || array_to_string(ARRAY(
           SELECT m[1] FROM regexp_matches(pg_get_constraintdef(c.oid), '''([a-z_]+)''', 'g') AS m), ', ')
  FROM pg_constraint c
 WHERE c.conrelid = to_regclass('public.ml_observability_spans') AND c.conname = 'ml_observability_spans_status_check'
"""

_ACCESS_SQL: Final = """
SELECT r.rolname,
       has_table_privilege(r.oid, 'public.ml_observability_spans', 'SELECT'),
       has_table_privilege(r.oid, 'public.ml_observability_spans', 'INSERT'),
       has_table_privilege(r.oid, 'public.ml_observability_spans', 'DELETE'),
       has_table_privilege(r.oid, 'public.v_agent_latency_summary', 'SELECT'),
       has_function_privilege(r.oid, 'public.obs_latency_stats(timestamptz, text, text, text)', 'EXECUTE'),
       has_function_privilege(r.oid, 'public.obs_delete_old_spans(timestamptz, integer)', 'EXECUTE')
FROM pg_roles r WHERE r.rolname IN ('anon', 'authenticated', 'service_role') ORDER BY r.rolname
"""


def migrate(dsn: str, schema_path: Path | str | None = None, *, connect_timeout_s: float = 10.0) -> MigrationReport:
    """Apply ``database/ml/mlops_tables.sql`` (idempotent, one transaction) and report the outcome.

    Synchronous on purpose: a one-shot administrative step that the CLI, the test fixtures and
    the benchmark all call outside any event loop.
    """
    path = Path(schema_path) if schema_path is not None else SCHEMA_PATH
    try:
        sql = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StoreSchemaError(f"cannot read the schema file {path}: {exc}") from exc
    where = describe_dsn(dsn)
    try:
        with psycopg.connect(
            dsn, autocommit=True, connect_timeout=max(1, round(connect_timeout_s)), prepare_threshold=None
        ) as conn:
            before = {row[0] for row in conn.execute(_OBJECTS_SQL).fetchall()}
            conn.execute(sql)  # type: ignore[arg-type]  # the file is trusted, multi-statement SQL
            after = [row[0] for row in conn.execute(_OBJECTS_SQL).fetchall()]
            version = conn.execute("SHOW server_version").fetchone()
            report = MigrationReport(database=where, server_version=str(version[0]) if version else "?")
            for name in after:
                (report.already_present if name in before else report.created).append(name)
            for role, *privileges in conn.execute(_ACCESS_SQL).fetchall():
                report.supabase_roles.append(role)
                report.access[role] = "granted" if all(privileges) else "denied" if not any(privileges) else "partial"
    except psycopg.Error as exc:
        raise _store_error(exc, f"applying {path.name} to {where}") from exc
    return report
