"""Embedded SQLite span store: the default backend, so a fresh machine works with nothing running.

Design notes (why it looks like this):

* **One connection per thread, on a small private thread pool.** ``sqlite3`` connections must not
  be shared between threads, and the repository is used from several event loops at once (the
  flusher thread has its own loop; CLI / tests read from another). Every call hops onto the
  repository's own executor, whose worker threads each own one connection; that keeps the
  caller's loop free, bounds the number of connections, and does not depend on whichever loop
  happens to be calling.
* **WAL + busy timeout + ``BEGIN IMMEDIATE``** for writes: readers never block the writer and
  vice versa; two writers queue on the busy timeout instead of failing. ``IMMEDIATE`` takes the
  write lock up front, so a transaction never has to upgrade a read lock (the upgrade path cannot
  wait on the busy handler and fails with "database is locked").
* **Timestamps are fixed-format UTC ISO text** (``YYYY-MM-DDTHH:MM:SS.ffffff+00:00``): they sort
  and compare lexicographically, so window filters use the indexes, and they round-trip as
  timezone-aware datetimes.
* **CHECK constraints mirror the pydantic model** (status, non-negative durations and tokens,
  valid JSON), so a row that slipped past validation fails at insert time, where it is reported
  with a reason, instead of poisoning every later ``json_extract`` query.
* **Metrics are computed in SQL.** Percentiles are continuous (Postgres ``percentile_cont``): the
  value at position ``p·(n−1)`` of the ascending durations, interpolated as
  ``lo + (hi − lo)·frac`` exactly as Postgres' ``float8_lerp`` does, so both backends give the
  same numbers for the same rows.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from stat import S_ISDIR
from time import monotonic, sleep
from typing import Any, Final, Literal, TypeVar, get_args
from urllib.parse import quote

from src.agents.ml_foundation.observability_connector.json_codec import json_text as _dumps
from src.agents.ml_foundation.observability_connector.json_codec import safe_str as _safe_str
from src.agents.ml_foundation.observability_connector.models import (
    LatencyStats,
    ObservabilitySpan,
    QualityMetrics,
    SpanStatus,
    error_rate,
)
from src.agents.ml_foundation.observability_connector.paths import absolute as _absolute
from src.agents.ml_foundation.observability_connector.paths import os_reason as _os_reason
from src.agents.ml_foundation.observability_connector.paths import shown as _shown
from src.repositories.base import (
    COLUMNS,
    TABLE,
    BatchInsertResult,
    GroupBy,
    ProgressCallback,
    SpanStore,
    StoreError,
    StoreRequestError,
    StoreSchemaError,
    StoreUnavailableError,
    check_group_by,
    check_limit,
    hours_start,
    status_counts,
    window_start,
)

__all__ = ["SCHEMA_VERSION", "TABLE", "SQLiteSpanRepository", "StoreCorruptError", "StoreNotFoundError"]

T = TypeVar("T")
Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

#: 2: ``status`` also accepts ``timeout`` (a version-1 table is rebuilt on open, see _create_schema).
SCHEMA_VERSION: Final = 2
#: Window functions (3.25) and UPSERT's ``DO NOTHING`` (3.24) are what the store relies on.
_MIN_SQLITE: Final = (3, 25, 0)

_COLS = ", ".join(COLUMNS)

_STATUSES: Final = ", ".join(f"'{status}'" for status in get_args(SpanStatus))


def _table_ddl(name: str) -> str:
    """The table's definition under ``name`` (the upgrade builds the new table beside the old one)."""
    return f"""
CREATE TABLE IF NOT EXISTS {name} (
    id              TEXT    NOT NULL PRIMARY KEY,
    span_id         TEXT    NOT NULL CHECK (length(span_id) > 0),
    trace_id        TEXT    NOT NULL CHECK (length(trace_id) > 0),
    parent_span_id  TEXT,
    operation_name  TEXT    NOT NULL,
    agent_name      TEXT    NOT NULL,
    agent_tier      INTEGER NOT NULL DEFAULT -1,
    start_time      TEXT    NOT NULL,
    end_time        TEXT,
    duration_ms     REAL    CHECK (duration_ms IS NULL OR duration_ms >= 0),
    status          TEXT    NOT NULL CHECK (status IN ({_STATUSES})),
    error_type      TEXT,
    error_message   TEXT,
    attributes      TEXT    NOT NULL DEFAULT '{{}}' CHECK (json_valid(attributes)),
    llm_model       TEXT,
    input_tokens    INTEGER CHECK (input_tokens IS NULL OR input_tokens >= 0),
    output_tokens   INTEGER CHECK (output_tokens IS NULL OR output_tokens >= 0),
    total_tokens    INTEGER CHECK (total_tokens IS NULL OR total_tokens >= 0),
    events          TEXT    NOT NULL DEFAULT '[]' CHECK (json_valid(events)),
    created_at      TEXT    NOT NULL,
    UNIQUE (trace_id, span_id)
)"""


# The unique key (trace_id, span_id) already serves lookups by trace_id, and the composite
# (agent_name, start_time) serves lookups by agent_name; separate single-column indexes on those
# would only cost insert time.
_INDEXES: Final = (
    f"CREATE INDEX IF NOT EXISTS idx_{TABLE}_start_time ON {TABLE} (start_time)",
    f"CREATE INDEX IF NOT EXISTS idx_{TABLE}_agent_start ON {TABLE} (agent_name, start_time)",
)

_INSERT: Final = (
    f"INSERT INTO {TABLE} ({_COLS}) VALUES ({', '.join('?' * len(COLUMNS))}) ON CONFLICT (trace_id, span_id) DO NOTHING"
)

#: Errors that belong to one row (constraint, binding, conversion). Anything else — a locked or
#: full database, I/O — fails the batch as a whole and is raised for the caller to retry/spool.
_ROW_ERRORS: Final = (
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    sqlite3.DataError,
    OverflowError,
    TypeError,
    ValueError,
)

# Python truthiness of attributes.fallback_used, decided in SQL: true, a non-zero number, a
# non-empty string, array or object. Absent / null / false / 0 / "" / [] / {} are not fallbacks.
_FALLBACK_SQL: Final = """CASE json_type(attributes, '$.fallback_used')
    WHEN 'true' THEN 1
    WHEN 'integer' THEN json_extract(attributes, '$.fallback_used') != 0
    WHEN 'real' THEN json_extract(attributes, '$.fallback_used') != 0
    WHEN 'text' THEN json_extract(attributes, '$.fallback_used') != ''
    WHEN 'array' THEN json_array_length(attributes, '$.fallback_used') > 0
    WHEN 'object' THEN json_extract(attributes, '$.fallback_used') != '{}'
    ELSE 0 END"""

_PERCENTILES: Final = {"p50": 0.50, "p95": 0.95, "p99": 0.99}
_GROUP_KEYS: Final[dict[str, tuple[str, str]]] = {
    # group_by -> (key expression, ORDER BY expression)
    "agent": ("agent_name", "t.k"),
    "tier": ("CAST(agent_tier AS TEXT)", "CAST(t.k AS INTEGER)"),
    "all": ("'all'", "t.k"),
}


def _stats_sql(key_expr: str, where: str, order_by: str, *, with_fallback: bool = False) -> str:
    """Counts, tokens, average and continuous percentiles per group in one statement.

    ``ranked`` numbers the non-null durations of each group from 0 in ascending order; for each
    percentile the two neighbours of position ``p·(n−1)`` are picked with conditional
    aggregates, and the outer select interpolates between them.
    """
    picks = []
    lerps = []
    for name, p in _PERCENTILES.items():
        pos = f"({p!r} * (n - 1))"
        lo = f"CAST({pos} AS INTEGER)"
        picks.append(
            f"MAX(CASE WHEN i = {lo} THEN d END) AS {name}_lo, "
            f"MAX(CASE WHEN i = {lo} + 1 THEN d END) AS {name}_hi, "
            f"MAX({pos} - {lo}) AS {name}_f"
        )
        lerps.append(f"p.{name}_lo + (COALESCE(p.{name}_hi, p.{name}_lo) - p.{name}_lo) * p.{name}_f AS {name}")
    fallback = f", SUM({_FALLBACK_SQL}) AS n_fallback" if with_fallback else ", 0 AS n_fallback"
    attributes = ", attributes" if with_fallback else ""
    return f"""
WITH base AS (
    SELECT {key_expr} AS k, duration_ms AS d, status, input_tokens, output_tokens, total_tokens{attributes}
    FROM {TABLE} WHERE {where}
),
totals AS (
    SELECT k,
           COUNT(*) AS n_all,
           COALESCE(SUM(status = 'ok'), 0) AS n_ok,
           COALESCE(SUM(status = 'error'), 0) AS n_error,
           COALESCE(SUM(status = 'timeout'), 0) AS n_timeout,
           COALESCE(SUM(status = 'started'), 0) AS n_started,
           COALESCE(SUM(input_tokens), 0) AS tok_in,
           COALESCE(SUM(output_tokens), 0) AS tok_out,
           COALESCE(SUM(total_tokens), 0) AS tok_total,
           AVG(d) AS avg_d{fallback}
    FROM base GROUP BY k
),
ranked AS (
    SELECT k, d,
           ROW_NUMBER() OVER (PARTITION BY k ORDER BY d) - 1 AS i,
           COUNT(*) OVER (PARTITION BY k) AS n
    FROM base WHERE d IS NOT NULL
),
picked AS (
    SELECT k, {", ".join(picks)} FROM ranked GROUP BY k
)
SELECT t.k, t.n_all, t.n_ok, t.n_error, t.n_timeout, t.n_started, t.tok_in, t.tok_out, t.tok_total, t.avg_d,
       {", ".join(lerps)}, t.n_fallback
FROM totals AS t LEFT JOIN picked AS p ON p.k = t.k
ORDER BY {order_by}
"""


# --------------------------------------------------------------------------- value conversion


def _ts(value: datetime) -> str:
    """The one text form every timestamp is stored in; naive values are UTC like in the model."""
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__} {value!r}")
    if value.tzinfo is not UTC:  # validated spans are already UTC: skip the conversion
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")


def _ts_or_none(value: datetime | None) -> str | None:
    return None if value is None else _ts(value)


def _parse_ts(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _float_or_none(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _span_to_row(span: ObservabilitySpan) -> tuple[Any, ...]:
    return (
        span.id,
        span.span_id,
        span.trace_id,
        span.parent_span_id,
        span.operation_name,
        span.agent_name,
        span.agent_tier,
        _ts(span.start_time),
        _ts_or_none(span.end_time),
        _float_or_none(span.duration_ms),
        span.status,
        span.error_type,
        span.error_message,
        _dumps(span.attributes, "{}"),
        span.llm_model,
        span.input_tokens,
        span.output_tokens,
        span.total_tokens,
        _dumps(span.events, "[]"),
        _ts(span.created_at),
    )


def _row_to_span(row: Sequence[Any]) -> ObservabilitySpan:
    data = dict(zip(COLUMNS, row, strict=True))
    data["start_time"] = _parse_ts(data["start_time"])
    data["end_time"] = _parse_ts(data["end_time"])
    data["created_at"] = _parse_ts(data["created_at"])
    data["attributes"] = json.loads(data["attributes"]) if data["attributes"] else {}
    data["events"] = json.loads(data["events"]) if data["events"] else []
    return ObservabilitySpan.model_validate(data)


def _span_label(span: object) -> str:
    return _safe_str(getattr(span, "span_id", None) or "<no span_id>")


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _filters(window: str, agent_name: str | None, trace_id: str | None) -> tuple[str, list[Any]]:
    """WHERE clause for the shared filters; ``window`` is validated here (ValueError names forms)."""
    clauses = ["start_time >= ?"]
    params: list[Any] = [_ts(window_start(window))]
    if agent_name is not None:
        clauses.append("agent_name = ?")
        params.append(agent_name)
    if trace_id is not None:
        clauses.append("trace_id = ?")
        params.append(trace_id)
    return " AND ".join(clauses), params


# --------------------------------------------------------------------------- opening errors


class StoreNotFoundError(StoreRequestError):
    """A read-only store found no file at its path: a mistyped ``--store``, or nothing recorded yet.

    Read-only stores never create the file (a typo must not leave an empty database behind).
    """


class StoreCorruptError(StoreError):
    """The file at the store's path is not a SQLite database SQLite can read (garbage, truncated)."""


#: SQLite's own codes for a file that is not (or no longer) a database.
_CORRUPT_CODES: Final = frozenset({"SQLITE_NOTADB", "SQLITE_CORRUPT"})


# --------------------------------------------------------------------------- repository


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
        checkpoint. ``"FULL"`` closes that gap with an fsync per batch (about half the insert
        throughput measured here) — the right choice where this file is the system of record.

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
        self._busy_timeout_s = busy_timeout_s
        self._synchronous = sync
        self._max_workers = max_workers
        self._lock = threading.Lock()
        self._schema_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._connections: dict[int, sqlite3.Connection] = {}
        self._local = threading.local()
        self._generation = 0
        self._schema_ready = False

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
                    max_workers=self._max_workers, thread_name_prefix=f"sqlite-spans-{self._path.name}"
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
        conn = self._connect()
        with self._lock:
            self._connections[threading.get_ident()] = conn
            local.conn = conn
            local.generation = self._generation
        return conn

    def _connect(self) -> sqlite3.Connection:
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise RuntimeError(
                f"SQLite {sqlite3.sqlite_version} is too old for the span store; "
                f"{'.'.join(map(str, _MIN_SQLITE))} or newer is required (window functions, UPSERT)"
            )
        self._check_path()
        try:
            conn = self._open_connection()
        except sqlite3.Error as exc:
            raise self._open_error(exc) from None
        try:
            if self._read_only:
                self._check_readable(conn)
                return conn
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
            self._enable_wal(conn)
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute("PRAGMA temp_store = MEMORY")
            conn.execute("PRAGMA cache_size = -32768")
            # Checkpoints fsync even at synchronous=NORMAL; the default (every 1,000 pages) ran one
            # every few batches because random keys (uuid id, trace ids) dirty many index pages.
            # 8,192 pages (~32 MB of WAL) roughly doubled insert throughput; the file is truncated
            # back to journal_size_limit after each checkpoint.
            conn.execute("PRAGMA wal_autocheckpoint = 8192")
            conn.execute("PRAGMA journal_size_limit = 67108864")
            if not self._schema_ready:
                self._create_schema(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise self._open_error(exc) from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_path(self) -> None:
        """Refuse a path that cannot hold the store, with the reason, before SQLite's vaguer
        "unable to open database file"; a writable store creates its directory here."""
        path = self._path
        shown = _shown(path)
        try:
            if self._read_only:
                if not S_ISDIR(path.stat().st_mode):
                    return
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                if not path.is_dir():
                    return
        except (FileNotFoundError, NotADirectoryError) as exc:
            if self._read_only:
                raise StoreNotFoundError(
                    f"no store at {shown}",
                    hint="check --store / OBS_STORE__SQLITE_PATH; the store is created by the first span written",
                ) from None
            raise StoreUnavailableError(f"the SQLite store {shown} cannot be created: {_os_reason(exc)}") from None
        except OSError as exc:
            action = "opened" if self._read_only else "created"
            raise StoreUnavailableError(f"the SQLite store {shown} cannot be {action}: {_os_reason(exc)}") from None
        raise StoreRequestError(f"the SQLite store path {shown} is a directory; give the path of a file in it")

    def _open_connection(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves. check_same_thread is
        # off only so close() can close connections owned by already-stopped worker threads.
        if self._read_only:
            return sqlite3.connect(
                f"file:{quote(str(self._path))}?mode=ro",
                uri=True,
                timeout=self._busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
        return sqlite3.connect(self._path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False)

    def _check_readable(self, conn: sqlite3.Connection) -> None:
        """A read-only connection reads the schema now: a corrupt file or a database that is not
        a span store fails here with a reason, not with "no such table" in the middle of a query."""
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
        found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)).fetchone()
        if found is None:
            raise StoreSchemaError(
                f"{_shown(self._path)} is a SQLite database without the span table {TABLE}",
                hint="is this the span store? check --store / OBS_STORE__SQLITE_PATH",
            )

    def _open_error(self, exc: sqlite3.Error) -> StoreError:
        """SQLite's failure to open the file as a StoreError naming the file and the problem."""
        if getattr(exc, "sqlite_errorname", None) in _CORRUPT_CODES:
            return StoreCorruptError(f"the SQLite store {_shown(self._path)} is not a readable database: {exc}")
        action = "read" if self._read_only else "opened"
        return StoreUnavailableError(f"the SQLite store {_shown(self._path)} cannot be {action}: {exc}")

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        """Switch to WAL, retrying: the switch can fail with "locked" without consulting the busy
        handler while another process is creating the same file (seen with two repositories
        opening one new database at once)."""
        deadline = monotonic() + self._busy_timeout_s
        delay = 0.005
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
                if str(mode).lower() != "wal":
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                transient = "locked" in str(exc) or "busy" in str(exc)
                if not transient or monotonic() >= deadline:
                    raise
                sleep(delay)
                delay = min(delay * 2, 0.2)
        if str(mode).lower() != "wal":
            raise RuntimeError(
                f"could not switch {self._path} to WAL mode (journal_mode={mode}); concurrent reads "
                "during writes need it — is the file on a network filesystem?"
            )

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        with self._schema_lock:
            if self._schema_ready:
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Not executescript(): it would COMMIT on its own, outside our transaction. The
                # check runs under the write lock, so two processes opening one old file upgrade it once.
                found = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,))
                row = found.fetchone()
                if row is not None and "'timeout'" not in row[0]:
                    self._widen_status_check(conn)
                conn.execute(_table_ddl(TABLE))
                for statement in _INDEXES:
                    conn.execute(statement)
                if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self._schema_ready = True

    @staticmethod
    def _widen_status_check(conn: sqlite3.Connection) -> None:
        """Rebuild a version-1 table, whose CHECK refuses ``timeout``, inside the caller's transaction.

        SQLite cannot alter a CHECK constraint: the documented way is a new table, a copy, a drop
        and a rename (the indexes go with the old table and are created again by the caller).
        One-off, and proportional to the table: an existing store pays it on its first open.
        """
        upgraded = f"{TABLE}_v{SCHEMA_VERSION}"
        conn.execute(f"DROP TABLE IF EXISTS {upgraded}")
        conn.execute(_table_ddl(upgraded))
        conn.execute(f"INSERT INTO {upgraded} ({_COLS}) SELECT {_COLS} FROM {TABLE} ORDER BY rowid")
        conn.execute(f"DROP TABLE {TABLE}")
        conn.execute(f"ALTER TABLE {upgraded} RENAME TO {TABLE}")

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
            try:
                row = _span_to_row(span)
            except Exception as exc:
                result.failed += 1
                result.errors.append((_span_label(span), _reason(exc)))
            else:
                rows.append(row)
                labels.append(_span_label(span))
        if not rows:
            return result

        conn.execute("BEGIN IMMEDIATE")
        try:
            before = conn.total_changes
            conn.executemany(_INSERT, rows)
            inserted = conn.total_changes - before
            conn.execute("COMMIT")
        except _ROW_ERRORS:
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
            for label, row in zip(labels, rows, strict=True):
                before = conn.total_changes
                try:
                    conn.execute(_INSERT, row)
                except _ROW_ERRORS as exc:
                    if not conn.in_transaction:  # never expected: the error undid more than its row
                        raise sqlite3.OperationalError(f"transaction aborted by span {label!r}: {exc}") from exc
                    result.failed += 1
                    result.errors.append((label, _reason(exc)))
                    continue
                if conn.total_changes - before:
                    result.inserted += 1
                else:
                    result.duplicates += 1
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
        cutoff = _ts(datetime.now(UTC) - timedelta(days=days))
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
            cursor = conn.execute(
                f"DELETE FROM {TABLE} WHERE rowid IN "
                f"(SELECT rowid FROM {TABLE} WHERE start_time < ? ORDER BY start_time LIMIT ?)",
                (cutoff, batch_size),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return cursor.rowcount

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
        where, params = _filters(window, agent_name, trace_id)
        sql = f"SELECT {_COLS} FROM {TABLE} WHERE {where} ORDER BY start_time, rowid LIMIT ?"
        rows = await self._run(partial(self._fetchall, sql, [*params, limit]))
        return [_row_to_span(row) for row in rows]

    async def get_spans_by_trace_id(self, trace_id: str) -> list[ObservabilitySpan]:
        sql = f"SELECT {_COLS} FROM {TABLE} WHERE trace_id = ? ORDER BY start_time, rowid"
        rows = await self._run(partial(self._fetchall, sql, [trace_id]))
        return [_row_to_span(row) for row in rows]

    async def get_spans_by_agent(self, agent_name: str, hours: float = 24, limit: int = 500) -> list[ObservabilitySpan]:
        since = _ts(hours_start(hours))
        check_limit(limit)
        sql = (
            f"SELECT {_COLS} FROM {TABLE} WHERE agent_name = ? AND start_time >= ? "
            "ORDER BY start_time DESC, rowid DESC LIMIT ?"
        )
        rows = await self._run(partial(self._fetchall, sql, [agent_name, since, limit]))
        return [_row_to_span(row) for row in rows]

    async def count_spans(self) -> int:
        rows = await self._run(partial(self._fetchall, f"SELECT COUNT(*) FROM {TABLE}", []))
        return int(rows[0][0])

    async def get_status_distribution(
        self, window: str, agent_name: str | None = None, trace_id: str | None = None
    ) -> dict[str, int]:
        """Always every stored status, zeros included, so callers can index without ``.get``."""
        where, params = _filters(window, agent_name, trace_id)
        sql = f"SELECT status, COUNT(*) FROM {TABLE} WHERE {where} GROUP BY status"
        rows = await self._run(partial(self._fetchall, sql, params))
        return status_counts(rows)

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
        key_expr, order_by = _GROUP_KEYS[group_by]
        where, params = _filters(window, agent_name, trace_id)
        rows = await self._run(partial(self._fetchall, _stats_sql(key_expr, where, order_by), params))
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
        where, params = _filters(window, agent_name, trace_id)
        sql = _stats_sql("'all'", where, "t.k", with_fallback=True)
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

    @staticmethod
    def _fetchall(sql: str, params: Sequence[Any], conn: sqlite3.Connection) -> list[Any]:
        # Reads run in autocommit mode: each statement sees one consistent WAL snapshot.
        return conn.execute(sql, params).fetchall()
