"""Batch writes: an optimistic binary COPY, a staged insert for duplicates, a careful bisection
for bad rows; each tier only when the one before cannot finish.

A fresh batch from the flusher has no duplicate and no bad row, so it goes in as fast as a raw
COPY (one transaction: BEGIN, COPY, COMMIT), with the rows converted while the server ingests
them. COPY cannot skip duplicates, so a unique violation (a replayed batch, a span sent twice, a
concurrent writer) sends the batch to the **staging path**: binary COPY into a loose temporary
table (ids and JSON as text, integers as bigint, no constraints), then one ``INSERT ... SELECT ...
ON CONFLICT (trace_id, span_id) DO NOTHING`` that counts duplicates. Why this order: the common
case pays only for a raw COPY; a replayed batch pays for a failed COPY (its rows become dead
tuples for VACUUM) plus the staged write, which is rare. The staging table is created ``IF NOT
EXISTS ... ON COMMIT DELETE ROWS`` inside each transaction, which also works behind a
transaction-mode pooler (Supabase's port 6543), where consecutive transactions may run on
different server sessions. (Throughput of each path: ``benchmarks/README.md``.)

**One bad row never costs the others.** When either path fails with a row-level error (SQLSTATE
class 22 / 23, or a value psycopg cannot send), each row is converted carefully (readable
reasons, NULs replaced) and the batch is written in one transaction, bisecting with savepoints:
~2·log2(n) statements find a single bad row among 1,000, which is dead-lettered with the
database's reason while the rest commit together. Any other failure (connection lost,
permission, missing table) fails the whole batch with a ``StoreError`` so the caller retries or
spools it.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

import psycopg
from psycopg import errors as pg_errors

from src.agents.ml_foundation.observability_connector.models import ObservabilitySpan
from src.repositories.base import COLUMNS, TABLE, BatchInsertResult
from src.repositories.postgres_errors import ROW_ERRORS, reason, span_label
from src.repositories.postgres_rows import (
    JsonbTextBinaryDumper,
    UnconvertibleRowError,
    UuidTextBinaryDumper,
    careful_stage_row,
    lean_stage_row,
    lean_table_row,
)

__all__ = ["Call", "write_batch"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Runs an operation with a pooled connection (the repository's ``_call``): ``call(op, what)``.
Call = Callable[[Callable[[psycopg.AsyncConnection[Any]], Awaitable[Any]], str], Awaitable[Any]]

_COLS: Final = ", ".join(COLUMNS)


# Staging: the row number ``n`` (position in the batch, for bisecting and error reports), then
# every column in its loosest form. Binary COPY types, in the same order.
_STAGE: Final = "obs_span_stage"
_STAGE_DDL: Final = f"""CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (
    n int4, id text, span_id text, trace_id text, parent_span_id text, operation_name text,
    agent_name text, agent_tier int8, start_time timestamptz, end_time timestamptz,
    duration_ms float8, status text, error_type text, error_message text, attributes text,
    llm_model text, input_tokens int8, output_tokens int8, total_tokens int8, events text,
    created_at timestamptz, cost_usd float8, thread_id text, user_id text, tags text[], ttft_ms float8
) ON COMMIT DELETE ROWS"""
_STAGE_TYPES: Final = [
    "int4", "text", "text", "text", "text", "text",
    "text", "int8", "timestamptz", "timestamptz",
    "float8", "text", "text", "text", "text",
    "text", "int8", "int8", "int8", "text",
    "timestamptz", "float8", "text", "text", "text[]", "float8",
]  # fmt: skip
_COPY_STAGE: Final = f"COPY {_STAGE} (n, {_COLS}) FROM STDIN (FORMAT BINARY)"
_BEGIN_STAGE: Final = f"BEGIN; {_STAGE_DDL}"
_INSERT_FROM_STAGE: Final = f"""INSERT INTO {TABLE} ({_COLS})
SELECT id::uuid, span_id, trace_id, parent_span_id, operation_name, agent_name, agent_tier::int4,
       start_time, end_time, duration_ms, status, error_type, error_message, attributes::jsonb,
       llm_model, input_tokens::int4, output_tokens::int4, total_tokens::int4, events::jsonb, created_at,
       cost_usd, thread_id, user_id, tags, ttft_ms
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
# JSON columns arrive as text and are sent by the two dumpers of postgres_rows, registered by OID on the
# COPY's cursor only, so nothing else on the connection changes.
_COPY_TABLE: Final = f"COPY {TABLE} ({_COLS}) FROM STDIN (FORMAT BINARY)"
_TABLE_TYPES: Final = [
    "uuid", "text", "text", "text", "text", "text", "int4", "timestamptz", "timestamptz", "float8",
    "text", "text", "text", "jsonb", "text", "int4", "int4", "int4", "jsonb", "timestamptz", "float8",
    "text", "text", "text[]", "float8",
]  # fmt: skip


async def write_batch(call: Call, spans: list[ObservabilitySpan], write_paths: Counter[str]) -> BatchInsertResult:
    """Idempotent batch write in up to three tiers (see the module doc); ``write_paths`` counts
    which tier finished each batch ("direct", "staged", "careful")."""
    if not spans:
        return BatchInsertResult()

    async def direct(conn: psycopg.AsyncConnection[Any]) -> str:
        try:
            await conn.execute("BEGIN")
            cursor = conn.cursor()
            cursor.adapters.register_dumper(None, UuidTextBinaryDumper)
            cursor.adapters.register_dumper(None, JsonbTextBinaryDumper)
            async with cursor.copy(_COPY_TABLE) as copy:
                copy.set_types(_TABLE_TYPES)
                for span in spans:  # converted while the server ingests: two cores at work
                    try:
                        row = lean_table_row(span)
                    except Exception as exc:
                        raise UnconvertibleRowError(reason(exc)) from exc
                    await copy.write_row(row)
            await conn.execute("COMMIT")
            return "stored"
        except pg_errors.UniqueViolation:
            await _rollback(conn)
            return "duplicates"
        except (*ROW_ERRORS, UnconvertibleRowError) as exc:
            await _rollback(conn)
            if conn.broken:
                raise
            log.info("batch of %d spans has a bad row (%s); isolating it", len(spans), reason(exc))
            return "bad row"
        except BaseException:
            await _rollback(conn)
            raise

    outcome = await call(direct, f"writing {len(spans)} spans")
    if outcome == "stored":
        write_paths["direct"] += 1
        return BatchInsertResult(inserted=len(spans))
    if outcome == "duplicates":
        staged = await _insert_staged(call, spans)
        if staged is not None:
            write_paths["staged"] += 1
            return staged
    write_paths["careful"] += 1
    return await _insert_carefully(call, spans)


async def _insert_staged(call: Call, spans: list[ObservabilitySpan]) -> BatchInsertResult | None:
    """Tier 2: COPY into the staging table, ``INSERT ... ON CONFLICT DO NOTHING``; None on a bad row."""
    rows: list[tuple[Any, ...]] = []
    for n, span in enumerate(spans):
        try:
            rows.append(lean_stage_row(n, span))
        except Exception:
            return None

    async def staged(conn: psycopg.AsyncConnection[Any]) -> int | None:
        # Three round trips: BEGIN + staging DDL, the COPY, INSERT + COMMIT.
        try:
            await conn.execute(_BEGIN_STAGE)
            await _copy(conn, rows)
            cur = await conn.execute(_insert_from_stage(0, len(rows) - 1, commit=True))
            return max(cur.rowcount, 0)
        except ROW_ERRORS as exc:
            await _rollback(conn)
            if conn.broken:
                raise
            log.info("batch of %d spans has a bad row (%s); isolating it", len(rows), reason(exc))
            return None
        except BaseException:
            await _rollback(conn)
            raise

    inserted: int | None = await call(staged, f"writing {len(rows)} spans (with duplicates)")
    if inserted is None:
        return None
    return BatchInsertResult(inserted=inserted, duplicates=len(rows) - inserted)


async def _insert_carefully(call: Call, spans: list[ObservabilitySpan]) -> BatchInsertResult:
    """Tier 3: careful conversion (rows it rejects never reach the database), then bisection."""
    result = BatchInsertResult()
    careful: list[tuple[Any, ...]] = []
    for n, span in enumerate(spans):
        try:
            careful.append(careful_stage_row(n, span))
        except Exception as exc:
            result.failed += 1
            result.errors.append((span_label(span), reason(exc)))

    async def isolate(conn: psycopg.AsyncConnection[Any]) -> BatchInsertResult:
        return await _insert_isolating(conn, careful, spans)

    if careful:
        result += await call(isolate, f"writing {len(careful)} spans row by row")
    return result


async def _copy(conn: psycopg.AsyncConnection[Any], rows: Sequence[tuple[Any, ...]]) -> None:
    async with conn.cursor().copy(_COPY_STAGE) as copy:
        copy.set_types(_STAGE_TYPES)
        for row in rows:
            await copy.write_row(row)


async def _insert_isolating(
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
                await _copy(conn, part)
        except ROW_ERRORS as exc:
            if conn.broken:
                raise
            if len(part) == 1:
                result.failed += 1
                result.errors.append((span_label(spans[part[0][0]]), reason(exc)))
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
        except ROW_ERRORS as exc:
            if conn.broken:
                raise
            if len(part) == 1:
                result.failed += 1
                result.errors.append((span_label(spans[part[0]]), reason(exc)))
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
