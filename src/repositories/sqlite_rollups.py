"""The SQLite store's rollup tables: DDL, maintenance inside the write transaction, the window
query, rebuild and verify.

Why SQL statements over the just-inserted rows instead of triggers: a row trigger runs six
upserts per span; one ``INSERT ... SELECT ... GROUP BY`` per log over the batch costs two
statements per batch. Why logs instead of upserting the levels on every write: a live batch
touches one or two minutes, but upserting its (minute, agent, tier) groups into the minute, hour
and day rows rewrote three b-tree rows per group — the largest part of what the rollups cost a
batch of 100. Appending the minute groups to ``ml_span_rollup_pending`` costs one insert per
group; the fold of the sketch log (``sqlite_sketch``) folds this log too, and readers add its
minutes. The batch's rows are the rows with
``rowid`` above the largest one before the insert: the insert holds SQLite's write lock
(``BEGIN IMMEDIATE``), so nobody else adds rows meanwhile, new rowids are always larger than
the largest one present, and a duplicate that ``ON CONFLICT DO NOTHING`` skipped gets no rowid
at all — only rows actually inserted are counted. Deletes (retention) subtract the rows they
remove in the same transaction and drop buckets that reach zero.

Buckets are named by the prefix of the stored UTC ISO text of ``start_time`` (``LEVELS``), so
a bucket range is a text range on the primary key.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Final

import numpy as np

from src.agents.ml_foundation.observability_connector.latency_sketch import ZERO_INDEX, Sketch, index_sql
from src.agents.ml_foundation.observability_connector.rollups import (
    LEVELS,
    RollupGroup,
    window_segments,
)
from src.repositories import sqlite_sketch
from src.repositories.base import TABLE
from src.repositories.rollup_check import compare_keyed
from src.repositories.row_values import utc_text
from src.repositories.sqlite_queries import FALLBACK_SQL
from src.repositories.sqlite_sketch import (
    PENDING,
    PENDING_DDL,
    SKETCH,
    SKETCH_DDL,
    blob_counts,
    fold,
    pending_statement,
)

__all__ = [
    "ROLLUPS",
    "SKETCH",
    "adjust_rows",
    "apply_rows",
    "create_rollups",
    "delete_with_rollups",
    "fold_all",
    "read_groups",
    "rebuild_day",
    "verify",
]

ROLLUPS: Final = "ml_span_rollups"
#: The figures' pending log: per write, its (minute, agent, tier) groups, appended; folded into
#: the minute, hour and day rows of ROLLUPS together with the sketch log (module doc).
FIGURES_LOG: Final = "ml_span_rollup_pending"

_COUNTS: Final = (
    "n_all",
    "n_ok",
    "n_error",
    "n_timeout",
    "n_started",
    "n_fallback",
    "tok_in",
    "tok_out",
    "tok_total",
    "dur_n",
    "dur_sum",
    "cost_sum",
    "n_unpriced",
)

_REAL: Final = frozenset({"dur_sum", "cost_sum"})
_LOG_COLUMNS: Final = ", ".join(f"{c} {'REAL' if c in _REAL else 'INTEGER'} NOT NULL" for c in _COUNTS)

DDL: Final = (
    f"""CREATE TABLE IF NOT EXISTS {ROLLUPS} (
    level INTEGER NOT NULL, bucket TEXT NOT NULL, agent_name TEXT NOT NULL, agent_tier INTEGER NOT NULL,
    n_all INTEGER NOT NULL, n_ok INTEGER NOT NULL, n_error INTEGER NOT NULL, n_timeout INTEGER NOT NULL,
    n_started INTEGER NOT NULL, n_fallback INTEGER NOT NULL,
    tok_in INTEGER NOT NULL, tok_out INTEGER NOT NULL, tok_total INTEGER NOT NULL,
    dur_n INTEGER NOT NULL, dur_sum REAL NOT NULL, cost_sum REAL NOT NULL, n_unpriced INTEGER NOT NULL,
    PRIMARY KEY (level, bucket, agent_name, agent_tier)
) WITHOUT ROWID""",
    SKETCH_DDL,
    PENDING_DDL,
    f"""CREATE TABLE IF NOT EXISTS {FIGURES_LOG} (
    minute TEXT NOT NULL, agent_name TEXT NOT NULL, agent_tier INTEGER NOT NULL, {_LOG_COLUMNS}
)""",
)

_IDX: Final = index_sql("duration_ms")
#: An LLM call (a model named) that has no cost: an unknown model or counts that could not be priced.
_UNPRICED_SQL: Final = "(llm_model IS NOT NULL AND cost_usd IS NULL)"


def _row_figures(sign: int) -> str:
    """The per-row figures summed into a bucket, signed (+1 insert, −1 delete)."""
    return (
        f"{sign} * COUNT(*), {sign} * SUM(status = 'ok'), {sign} * SUM(status = 'error'), "
        f"{sign} * SUM(status = 'timeout'), {sign} * SUM(status = 'started'), {sign} * SUM({FALLBACK_SQL}), "
        f"{sign} * COALESCE(SUM(input_tokens), 0), {sign} * COALESCE(SUM(output_tokens), 0), "
        f"{sign} * COALESCE(SUM(total_tokens), 0), {sign} * COUNT(duration_ms), "
        f"{sign} * COALESCE(SUM(duration_ms), 0.0), {sign} * COALESCE(SUM(cost_usd), 0.0), "
        f"{sign} * SUM({_UNPRICED_SQL})"
    )


def _log_statement(where: str, sign: int) -> str:
    """The statement appending the signed (minute, agent, tier) figures of the raw rows matching
    ``where`` to the figures log: one append of a few rows, where an upsert into every level
    rewrote three b-tree rows per group on every write."""
    return (
        f"INSERT INTO {FIGURES_LOG} (minute, agent_name, agent_tier, {', '.join(_COUNTS)}) "
        f"SELECT substr(start_time, 1, {LEVELS[0][2]}), agent_name, agent_tier, "
        f"{_row_figures(sign)} FROM {TABLE} WHERE {where} GROUP BY 1, 2, 3"
    )


def _fold_figures_sql() -> str:
    """The upsert of the figures log, summed, into every level: hours and days are sums of the
    log's minute groups (each level's bucket is a prefix of the minute)."""
    cols = ", ".join(_COUNTS)
    sets = ", ".join(f"{c} = {c} + excluded.{c}" for c in _COUNTS)
    sums = ", ".join(f"SUM({c})" for c in _COUNTS)
    levels = " UNION ALL ".join(f"SELECT {level} AS level, {length} AS length" for level, _width, length in LEVELS)
    return (
        f"INSERT INTO {ROLLUPS} (level, bucket, agent_name, agent_tier, {cols}) "
        f"SELECT l.level, substr(m.minute, 1, l.length), m.agent_name, m.agent_tier, {sums} "
        f"FROM {FIGURES_LOG} AS m CROSS JOIN ({levels}) AS l WHERE true GROUP BY 1, 2, 3, 4 "
        f"ON CONFLICT (level, bucket, agent_name, agent_tier) DO UPDATE SET {sets}"
    )


_FOLD_FIGURES: Final = _fold_figures_sql()


def _fold_figures(conn: sqlite3.Connection) -> None:
    """Fold the figures log into the levels and empty it; buckets a delete emptied go."""
    subtracted = conn.execute(f"SELECT 1 FROM {FIGURES_LOG} WHERE n_all < 0 LIMIT 1").fetchone()
    conn.execute(_FOLD_FIGURES)
    conn.execute(f"DELETE FROM {FIGURES_LOG}")
    if subtracted is not None:  # only deletes empty a bucket: inserts never pay this scan
        conn.execute(f"DELETE FROM {ROLLUPS} WHERE n_all = 0")


def fold_all(conn: sqlite3.Connection) -> None:
    """Fold both pending logs (inside the caller's write transaction)."""
    _fold_figures(conn)
    fold(conn)


#: Two subqueries, not ``MAX(rowid) - MIN(rowid)`` in one expression: SQLite answers a lone MIN or
#: MAX of the rowid from one end of the b-tree, but both in one expression scan the whole log.
_LOG_SPANS: Final = " UNION ALL ".join(
    f"SELECT (SELECT MAX(rowid) FROM {t}) - (SELECT MIN(rowid) FROM {t})" for t in (PENDING, FIGURES_LOG)
)


def _fold_if_due(conn: sqlite3.Connection) -> None:
    """Fold both logs once either holds ``FOLD_AT`` rows (read at call time: tests lower it)."""
    if any(span is not None and span >= sqlite_sketch.FOLD_AT for (span,) in conn.execute(_LOG_SPANS)):
        fold_all(conn)


def _run(conn: sqlite3.Connection, statements: list[tuple[str, bool]], params: tuple[Any, ...]) -> None:
    for sql, takes_params in statements:
        conn.execute(sql, params if takes_params else ())


_INSERTED: Final = [(_log_statement("rowid > ?", 1), True), (pending_statement("rowid > ?", 1), True)]
_DOOMED_TABLE: Final = "temp.obs_doomed_spans"
_DOOMED: Final = f"rowid IN (SELECT rid FROM {_DOOMED_TABLE})"
_DELETED: Final = [(_log_statement(_DOOMED, -1), False), (pending_statement(_DOOMED, -1), False)]


def create_rollups(conn: sqlite3.Connection) -> bool:
    """Create the rollup tables inside the caller's write transaction; back-fill them from the
    raw rows when they did not exist (an existing store gains them on its first open). True
    when they were created."""
    found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (ROLLUPS,)).fetchone()
    if found is not None and "cost_sum" not in {row[1] for row in conn.execute(f"PRAGMA table_info({ROLLUPS})")}:
        # Rollups from before cost was summed cannot say how many of their LLM calls were
        # unpriced: dropped and back-filled from the raw rows below (one-off, like their creation).
        for table in (ROLLUPS, SKETCH, PENDING, FIGURES_LOG):
            conn.execute(f"DROP TABLE IF EXISTS {table}")
        found = None
    for statement in DDL:
        conn.execute(statement)
    if found is not None:
        return False
    # Logs left by rollups dropped before belong to them.
    conn.execute(f"DELETE FROM {PENDING}")
    conn.execute(f"DELETE FROM {FIGURES_LOG}")
    _run(conn, _INSERTED, (0,))
    fold_all(conn)
    return True


def max_rowid(conn: sqlite3.Connection) -> int:
    return int(conn.execute(f"SELECT COALESCE(MAX(rowid), 0) FROM {TABLE}").fetchone()[0])


def apply_rows(conn: sqlite3.Connection, after_rowid: int) -> None:
    """Add every raw row with ``rowid > after_rowid`` to the rollups (inside the write transaction)."""
    _run(conn, _INSERTED, (after_rowid,))
    _fold_if_due(conn)


def delete_with_rollups(conn: sqlite3.Connection, select_rowids: str, params: tuple[Any, ...]) -> int:
    """Delete the raw rows ``select_rowids`` names and subtract them from the rollups, inside the
    caller's write transaction; buckets left empty are dropped. Returns the rows deleted."""
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS obs_doomed_spans (rid INTEGER PRIMARY KEY)")
    conn.execute(f"DELETE FROM {_DOOMED_TABLE}")
    conn.execute(f"INSERT INTO {_DOOMED_TABLE} (rid) {select_rowids}", params)
    _run(conn, _DELETED, ())
    _fold_figures(conn)  # the rare path: buckets it empties go now
    _fold_if_due(conn)
    cursor = conn.execute(f"DELETE FROM {TABLE} WHERE rowid IN (SELECT rid FROM {_DOOMED_TABLE})")
    conn.execute(f"DELETE FROM {_DOOMED_TABLE}")
    return cursor.rowcount


_CHANGED_TABLE: Final = "temp.obs_changed_spans"
_CHANGED: Final = f"rowid IN (SELECT rid FROM {_CHANGED_TABLE})"


def adjust_rows(conn: sqlite3.Connection, rowids: list[int], change: Callable[[], object]) -> None:
    """Run ``change`` (an UPDATE of the rows ``rowids`` that leaves their start time, agent, tier
    and duration alone, such as setting a cost) inside the caller's write transaction, with the
    rows' figures taken out of the rollups before and put back after: the figures log gets
    their old and new figures, so the levels move by the difference when it is folded. The
    latency sketch does not change and is not touched."""
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS obs_changed_spans (rid INTEGER PRIMARY KEY)")
    conn.execute(f"DELETE FROM {_CHANGED_TABLE}")
    conn.executemany(f"INSERT OR IGNORE INTO {_CHANGED_TABLE} (rid) VALUES (?)", [(r,) for r in rowids])
    conn.execute(_log_statement(_CHANGED, -1))
    change()
    conn.execute(_log_statement(_CHANGED, 1))
    conn.execute(f"DELETE FROM {_CHANGED_TABLE}")
    _fold_if_due(conn)


def _bounds(since: datetime) -> dict[str, str]:
    seg = window_segments(since)
    return {
        "since": utc_text(seg.since),
        "raw_end": utc_text(seg.minute),
        "m0": utc_text(seg.minute)[:16],
        "m1": utc_text(seg.hour)[:16],
        "h0": utc_text(seg.hour)[:13],
        "h1": utc_text(seg.day)[:13],
        "d0": utc_text(seg.day)[:10],
    }


def _window_union(columns: str, raw_columns: str, agent: bool, raw_where: str = "") -> str:
    agent_rule = " AND agent_name = :agent" if agent else ""
    return (
        f"SELECT {columns} FROM {{t}} WHERE level = 0 AND bucket >= :m0 AND bucket < :m1{agent_rule} "
        f"UNION ALL SELECT {columns} FROM {{t}} WHERE level = 1 AND bucket >= :h0 AND bucket < :h1{agent_rule} "
        f"UNION ALL SELECT {columns} FROM {{t}} WHERE level = 2 AND bucket >= :d0{agent_rule} "
        f"UNION ALL SELECT {raw_columns} FROM {TABLE} "
        f"WHERE start_time >= :since AND start_time < :raw_end{agent_rule}{raw_where}"
    )


_RAW_FIGURES: Final = (
    f"agent_name, agent_tier, 1 AS n_all, status = 'ok' AS n_ok, status = 'error' AS n_error, "
    f"status = 'timeout' AS n_timeout, status = 'started' AS n_started, {FALLBACK_SQL} AS n_fallback, "
    "COALESCE(input_tokens, 0) AS tok_in, COALESCE(output_tokens, 0) AS tok_out, "
    "COALESCE(total_tokens, 0) AS tok_total, duration_ms IS NOT NULL AS dur_n, COALESCE(duration_ms, 0.0) AS dur_sum, "
    f"COALESCE(cost_usd, 0.0) AS cost_sum, {_UNPRICED_SQL} AS n_unpriced"
)


def _totals_sql(agent: bool) -> str:
    columns = "agent_name, agent_tier, " + ", ".join(_COUNTS)
    inner = _window_union(columns, _RAW_FIGURES, agent).replace("{t}", ROLLUPS)
    agent_rule = " AND agent_name = :agent" if agent else ""
    # The log holds minutes: every one from the window's first whole minute on is inside it.
    inner += f" UNION ALL SELECT {columns} FROM {FIGURES_LOG} WHERE minute >= :m0{agent_rule}"
    sums = ", ".join(f"SUM({c})" for c in _COUNTS)
    return f"SELECT agent_name, agent_tier, {sums} FROM ({inner}) GROUP BY agent_name, agent_tier"


def _sketch_sql(agent: bool) -> str:
    agent_rule = " AND agent_name = :agent" if agent else ""
    return (
        f"SELECT agent_name, agent_tier, idx0, counts, zeros FROM {SKETCH} "
        f"WHERE level = 0 AND bucket >= :m0 AND bucket < :m1{agent_rule} "
        f"UNION ALL SELECT agent_name, agent_tier, idx0, counts, zeros FROM {SKETCH} "
        f"WHERE level = 1 AND bucket >= :h0 AND bucket < :h1{agent_rule} "
        f"UNION ALL SELECT agent_name, agent_tier, idx0, counts, zeros FROM {SKETCH} "
        f"WHERE level = 2 AND bucket >= :d0{agent_rule}"
    )


def _edge_sql(agent: bool) -> str:
    agent_rule = " AND agent_name = :agent" if agent else ""
    return (
        f"SELECT agent_name, agent_tier, {_IDX}, COUNT(*) FROM {TABLE} "
        f"WHERE start_time >= :since AND start_time < :raw_end AND duration_ms IS NOT NULL{agent_rule} "
        "GROUP BY 1, 2, 3"
    )


def _pending_sql(agent: bool) -> str:
    agent_rule = " AND agent_name = :agent" if agent else ""
    return (
        # The log holds minutes: every one from the window's first whole minute on is inside it.
        f"SELECT agent_name, agent_tier, idx, SUM(n) FROM {PENDING} WHERE bucket >= :m0{agent_rule} GROUP BY 1, 2, 3"
    )


_QUERIES: Final = {
    agent: (_totals_sql(agent), _sketch_sql(agent), _edge_sql(agent), _pending_sql(agent)) for agent in (False, True)
}


def read_groups(conn: sqlite3.Connection, since: datetime, agent_name: str | None) -> list[RollupGroup]:
    """Every (agent, tier) of ``[since, ∞)``: all reads in one snapshot, so counts and sketches agree."""
    params: dict[str, Any] = _bounds(since)
    if agent_name is not None:
        params["agent"] = agent_name
    totals_sql, sketch_sql, edge_sql, pending_sql = _QUERIES[agent_name is not None]
    conn.execute("BEGIN")
    try:
        totals = conn.execute(totals_sql, params).fetchall()
        blobs = conn.execute(sketch_sql, params).fetchall()
        edge = conn.execute(edge_sql, params).fetchall() + conn.execute(pending_sql, params).fetchall()
    finally:
        conn.execute("COMMIT")
    groups: dict[tuple[str, int], RollupGroup] = {}
    for agent, tier, *figures in totals:
        groups[(agent, tier)] = RollupGroup.from_figures(agent, int(tier), figures)
    parts: dict[tuple[str, int], list[tuple[int, Any]]] = {}
    zeros: dict[tuple[str, int], int] = {}
    for agent, tier, idx0, blob, n_zero in blobs:
        parts.setdefault((agent, tier), []).append(blob_counts(idx0, blob))
        zeros[(agent, tier)] = zeros.get((agent, tier), 0) + int(n_zero)
    edge_pairs: dict[tuple[str, int], tuple[list[int], list[int]]] = {}
    for agent, tier, idx, n in edge:  # the raw edge and the pending log: (index, count) groups
        indexes, counts = edge_pairs.setdefault((agent, tier), ([], []))
        indexes.append(int(idx))
        counts.append(int(n))
    for key, group in groups.items():
        sparse = edge_pairs.get(key)
        group.sketch = Sketch.of(
            dense=parts.get(key, []),
            sparse=[(np.array(sparse[0], dtype=np.int64), np.array(sparse[1], dtype=np.int64))] if sparse else [],
            zeros=zeros.get(key, 0),
        )
    return list(groups.values())


def rebuild_day(conn: sqlite3.Connection, day: datetime) -> None:
    """Recompute every bucket of one UTC day from the raw rows, in one write transaction."""
    start = day.replace(hour=0, minute=0, second=0, microsecond=0)
    lo, hi = utc_text(start), utc_text(start + timedelta(days=1))
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table in (ROLLUPS, SKETCH, PENDING):
            conn.execute(f"DELETE FROM {table} WHERE bucket >= ? AND bucket < ?", (lo[:10], hi[:10]))
        conn.execute(f"DELETE FROM {FIGURES_LOG} WHERE minute >= ? AND minute < ?", (lo[:10], hi[:10]))
        where = "start_time >= ? AND start_time < ?"
        _run(conn, [(_log_statement(where, 1), True), (pending_statement(where, 1), True)], (lo, hi))
        fold_all(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _raw_by_day(conn: sqlite3.Connection, since: str) -> tuple[list[Any], list[Any]]:
    totals = list(
        conn.execute(
            f"SELECT substr(start_time, 1, 10), agent_name, agent_tier, {_row_figures(1)} FROM {TABLE} "
            "WHERE start_time >= ? GROUP BY 1, 2, 3",
            (since,),
        )
    )
    sketch = list(
        conn.execute(
            f"SELECT substr(start_time, 1, 10), agent_name, agent_tier, {_IDX}, COUNT(*) FROM {TABLE} "
            "WHERE start_time >= ? AND duration_ms IS NOT NULL GROUP BY 1, 2, 3, 4",
            (since,),
        )
    )
    return totals, sketch


def _sketch_by_day(conn: sqlite3.Connection, level: int, day: str) -> list[tuple[Any, ...]]:
    """One level's blobs expanded to (day, agent, tier, idx, count), summed per day."""
    sums: dict[tuple[str, str, int, int], int] = {}
    rows = conn.execute(
        f"SELECT substr(bucket, 1, 10), agent_name, agent_tier, idx0, counts, zeros FROM {SKETCH} "
        "WHERE level = ? AND bucket >= ?",
        (level, day),
    )
    for bucket_day, agent, tier, idx0, blob, n_zero in rows:
        lo, counts = blob_counts(idx0, blob)
        for i in np.flatnonzero(counts):
            key = (bucket_day, agent, tier, lo + int(i))
            sums[key] = sums.get(key, 0) + int(counts[i])
        if n_zero:
            key = (bucket_day, agent, tier, ZERO_INDEX)
            sums[key] = sums.get(key, 0) + int(n_zero)
    for bucket_day, agent, tier, idx, n in conn.execute(
        # Logged minutes count at every level once folded.
        f"SELECT substr(bucket, 1, 10), agent_name, agent_tier, idx, SUM(n) FROM {PENDING} "
        "WHERE bucket >= ? GROUP BY 1, 2, 3, 4",
        (day,),
    ):
        key = (bucket_day, agent, tier, int(idx))
        sums[key] = sums.get(key, 0) + int(n)
    return [(*key, n) for key, n in sums.items() if n]


def verify(conn: sqlite3.Connection, since: datetime, report: Callable[[str], None]) -> int:
    """Compare every level, summed per UTC day, with the raw rows from ``since`` (a day start);
    returns the number of mismatches, each described through ``report``."""
    lo = utc_text(since)
    conn.execute("BEGIN")
    try:
        raw_totals, raw_sketch = _raw_by_day(conn, lo)
        problems = 0
        sums = ", ".join(f"SUM({c})" for c in _COUNTS)
        for level, _w, _length in LEVELS:
            rolled = list(
                conn.execute(
                    # Logged minutes count at every level once folded.
                    f"SELECT substr(bucket, 1, 10), agent_name, agent_tier, {sums} FROM ("
                    f"SELECT bucket, agent_name, agent_tier, {', '.join(_COUNTS)} FROM {ROLLUPS} "
                    "WHERE level = ? AND bucket >= ? "
                    f"UNION ALL SELECT minute, agent_name, agent_tier, {', '.join(_COUNTS)} FROM {FIGURES_LOG} "
                    "WHERE minute >= ?) GROUP BY 1, 2, 3",
                    (level, lo[:10], lo[:10]),
                )
            )
            problems += compare_keyed(f"level {level} totals", raw_totals, rolled, 3, report)
            rolled_sketch = _sketch_by_day(conn, level, lo[:10])
            problems += compare_keyed(f"level {level} sketch", raw_sketch, rolled_sketch, 4, report)
    finally:
        conn.execute("COMMIT")
    return problems
