"""The SQLite feedback table (``ml_observability_feedback``): DDL, the idempotent insert and the
two reads the connector makes of it (scores per agent for metrics, a span's trace for
``log_feedback(span_id=...)``). The functions take the caller's connection: the repository runs
them on its own worker threads like every other statement (``sqlite.py``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, Final

from src.agents.ml_foundation.observability_connector.feedback import FEEDBACK_COLUMNS, FEEDBACK_TABLE, Feedback
from src.repositories.base import TABLE
from src.repositories.row_values import utc_text

__all__ = [
    "BY_AGENT_SQL",
    "COLUMNS",
    "DDL",
    "INSERT",
    "SPAN_TRACE_SQL",
    "create_feedback",
    "delete_before",
    "feedback_row",
    "insert",
]

COLUMNS: Final = FEEDBACK_COLUMNS

# The CHECKs mirror the model and the Postgres table, so a row that slipped past validation is
# refused at insert time with a reason instead of skewing every average.
DDL: Final = f"""
CREATE TABLE IF NOT EXISTS {FEEDBACK_TABLE} (
    feedback_id    TEXT NOT NULL PRIMARY KEY CHECK (length(feedback_id) > 0),
    trace_id       TEXT NOT NULL CHECK (length(trace_id) > 0),
    span_id        TEXT,
    name           TEXT NOT NULL CHECK (length(name) > 0),
    value          REAL NOT NULL CHECK (value = value AND abs(value) < 9e999),
    reason         TEXT,
    category_name  TEXT,
    source         TEXT NOT NULL DEFAULT 'sdk',
    created_at     TEXT NOT NULL
)"""

INDEXES: Final = (
    f"CREATE INDEX IF NOT EXISTS idx_{FEEDBACK_TABLE}_created ON {FEEDBACK_TABLE} (created_at)",
    f"CREATE INDEX IF NOT EXISTS idx_{FEEDBACK_TABLE}_trace ON {FEEDBACK_TABLE} (trace_id, span_id)",
)

INSERT: Final = (
    f"INSERT INTO {FEEDBACK_TABLE} ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
    "ON CONFLICT (feedback_id) DO NOTHING"
)

# A span's score belongs to that span's agent; a trace's to its root span's (no parent, else the
# earliest span); a score whose span is not stored (yet) to 'unknown'. The correlated lookup goes
# through the spans' UNIQUE (trace_id, span_id) index. Same rule as obs_feedback_by_agent.
BY_AGENT_SQL: Final = f"""
SELECT a.agent_name, a.name, avg(a.value), count(*)
FROM (
    SELECT coalesce((
               SELECT s.agent_name FROM {TABLE} s
               WHERE s.trace_id = f.trace_id AND (f.span_id IS NULL OR s.span_id = f.span_id)
               ORDER BY (s.parent_span_id IS NULL) DESC, s.start_time
               LIMIT 1
           ), 'unknown') AS agent_name,
           f.name AS name, f.value AS value
    FROM {FEEDBACK_TABLE} f
    WHERE f.created_at >= ? AND (? IS NULL OR f.trace_id = ?)
) a
WHERE ? IS NULL OR a.agent_name = ?
GROUP BY a.agent_name, a.name
ORDER BY a.agent_name, a.name
"""

#: The trace of a span known only by its span id (the latest one, should two traces share it).
SPAN_TRACE_SQL: Final = f"SELECT trace_id FROM {TABLE} WHERE span_id = ? ORDER BY start_time DESC LIMIT 1"


def create_feedback(conn: sqlite3.Connection) -> None:
    """The table and its indexes, inside the caller's schema transaction (safe to repeat)."""
    conn.execute(DDL)
    for statement in INDEXES:
        conn.execute(statement)


def feedback_row(item: Feedback) -> tuple[Any, ...]:
    return (
        item.feedback_id, item.trace_id, item.span_id, item.name, item.value, item.reason,
        item.category_name, item.source, utc_text(item.created_at),
    )  # fmt: skip


def insert(conn: sqlite3.Connection, items: Sequence[Feedback]) -> int:
    """Insert in one transaction; how many were new (a replayed id is skipped)."""
    rows = [feedback_row(item) for item in items]
    conn.execute("BEGIN IMMEDIATE")
    try:
        before = conn.total_changes
        conn.executemany(INSERT, rows)
        inserted = conn.total_changes - before
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return inserted


def delete_before(conn: sqlite3.Connection, cutoff: str) -> int:
    """Delete the scores created before ``cutoff`` (UTC text) in one transaction; how many went."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        deleted = conn.execute(f"DELETE FROM {FEEDBACK_TABLE} WHERE created_at < ?", (cutoff,)).rowcount
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return int(deleted)
