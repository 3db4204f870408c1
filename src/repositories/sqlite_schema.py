"""The SQLite span table: its DDL, indexes and insert statement, and creating or upgrading it.

CHECK constraints mirror the pydantic model (status, non-negative durations and tokens, valid
JSON), so a row that slipped past validation fails at insert time, where it is reported with a
reason, instead of poisoning every later ``json_extract`` query.
"""

from __future__ import annotations

import sqlite3
from typing import Final, get_args

from src.agents.ml_foundation.observability_connector.models import (
    SpanStatus,
)
from src.repositories.base import (
    COLUMNS,
    TABLE,
)
from src.repositories.sqlite_feedback import create_feedback
from src.repositories.sqlite_rollups import create_rollups

__all__ = ["INSERT", "SCHEMA_VERSION", "ensure_schema", "shadow_added_columns"]

#: 2: ``status`` also accepts ``timeout`` (a version-1 table is rebuilt on open, see ensure_schema).
SCHEMA_VERSION: Final = 2
#: Window functions (3.25) and UPSERT's ``DO NOTHING`` (3.24) are what the store relies on.
MIN_SQLITE: Final = (3, 25, 0)

COLS = ", ".join(COLUMNS)

STATUSES: Final = ", ".join(f"'{status}'" for status in get_args(SpanStatus))


def table_ddl(name: str) -> str:
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
    status          TEXT    NOT NULL CHECK (status IN ({STATUSES})),
    error_type      TEXT,
    error_message   TEXT,
    attributes      TEXT    NOT NULL DEFAULT '{{}}' CHECK (json_valid(attributes)),
    llm_model       TEXT,
    input_tokens    INTEGER CHECK (input_tokens IS NULL OR input_tokens >= 0),
    output_tokens   INTEGER CHECK (output_tokens IS NULL OR output_tokens >= 0),
    total_tokens    INTEGER CHECK (total_tokens IS NULL OR total_tokens >= 0),
    events          TEXT    NOT NULL DEFAULT '[]' CHECK (json_valid(events)),
    created_at      TEXT    NOT NULL,
    cost_usd        REAL    CHECK (cost_usd IS NULL OR cost_usd >= 0),
    thread_id       TEXT,
    user_id         TEXT,
    tags            TEXT    CHECK (tags IS NULL OR json_valid(tags)),
    ttft_ms         REAL    CHECK (ttft_ms IS NULL OR ttft_ms >= 0),
    UNIQUE (trace_id, span_id)
)"""


# The unique key (trace_id, span_id) already serves lookups by trace_id, and the composite
# (agent_name, start_time) serves lookups by agent_name; separate single-column indexes on those
# would only cost insert time.
INDEXES: Final = (
    f"CREATE INDEX IF NOT EXISTS idx_{TABLE}_start_time ON {TABLE} (start_time)",
    f"CREATE INDEX IF NOT EXISTS idx_{TABLE}_agent_start ON {TABLE} (agent_name, start_time)",
    # Conversations: `trace --thread`, metrics filtered by thread or user, TTFT percentiles.
    # Partial: most spans have none of these, and a partial index costs their inserts nothing.
    f"CREATE INDEX IF NOT EXISTS idx_{TABLE}_thread_start ON {TABLE} (thread_id, start_time) "
    "WHERE thread_id IS NOT NULL",
    f"CREATE INDEX IF NOT EXISTS idx_{TABLE}_user_start ON {TABLE} (user_id, start_time) WHERE user_id IS NOT NULL",
    # Covering: the TTFT read takes (agent, model, ttft) of the newest rows from the index alone.
    f"CREATE INDEX IF NOT EXISTS idx_{TABLE}_ttft_start ON {TABLE} (start_time, agent_name, llm_model, ttft_ms) "
    "WHERE ttft_ms IS NOT NULL",
)

INSERT: Final = (
    f"INSERT INTO {TABLE} ({COLS}) VALUES ({', '.join('?' * len(COLUMNS))}) ON CONFLICT (trace_id, span_id) DO NOTHING"
)

#: Errors that belong to one row (constraint, binding, conversion). Anything else — a locked or
#: full database, I/O — fails the batch as a whole and is raised for the caller to retry/spool.
ROW_ERRORS: Final = (
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    sqlite3.DataError,
    OverflowError,
    TypeError,
    ValueError,
)


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the table and indexes, upgrading an older table first, in one write transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Not executescript(): it would COMMIT on its own, outside our transaction. The
        # check runs under the write lock, so two processes opening one old file upgrade it once.
        found = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,))
        row = found.fetchone()
        if row is not None:
            _add_columns(conn)
        if row is not None and "'timeout'" not in row[0]:
            _widen_status_check(conn)
        conn.execute(table_ddl(TABLE))
        for statement in INDEXES:
            conn.execute(statement)
        # The rollup tables, back-filled from the rows already stored when they are new.
        create_rollups(conn)
        create_feedback(conn)  # feedback scores: their own table (sqlite_feedback.py)
        if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


#: Columns added after the table's first release: (name, definition), added to an older table in
#: place (``ALTER TABLE ... ADD COLUMN``: no copy, the rows read the new column as NULL).
ADDED_COLUMNS: Final = (
    ("cost_usd", "REAL CHECK (cost_usd IS NULL OR cost_usd >= 0)"),
    # conversations (issue 19)
    ("thread_id", "TEXT"),
    ("user_id", "TEXT"),
    ("tags", "TEXT CHECK (tags IS NULL OR json_valid(tags))"),
    ("ttft_ms", "REAL CHECK (ttft_ms IS NULL OR ttft_ms >= 0)"),
)


def _add_columns(conn: sqlite3.Connection) -> None:
    """Give a table made by an older version the columns added since (inside the caller's
    transaction; ADD COLUMN of a nullable column rewrites no row)."""
    present = {row[1] for row in conn.execute(f"PRAGMA table_info({TABLE})")}
    for name, definition in ADDED_COLUMNS:
        if name not in present:
            conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN {name} {definition}")
    if "thread_id" not in present:
        # Once, when the columns arrive: what earlier releases kept only as the callback
        # handler's attributes moves into them (the rollups do not depend on these columns).
        conn.execute(BACKFILL)


_THREAD = """json_extract(attributes, '$."langgraph.thread_id"')"""
_THREAD_TYPE = """json_type(attributes, '$."langgraph.thread_id"')"""
_TTFT = """json_extract(attributes, '$."llm.time_to_first_token_ms"')"""
_TTFT_TYPE = """json_type(attributes, '$."llm.time_to_first_token_ms"')"""
BACKFILL: Final = f"""UPDATE {TABLE}
SET thread_id = CASE WHEN {_THREAD_TYPE} IN ('text', 'integer', 'real') THEN CAST({_THREAD} AS TEXT) END,
    ttft_ms = CASE WHEN {_TTFT_TYPE} IN ('integer', 'real') AND {_TTFT} >= 0 THEN CAST({_TTFT} AS REAL) END
WHERE {_THREAD} IS NOT NULL OR {_TTFT} IS NOT NULL"""


def shadow_added_columns(conn: sqlite3.Connection) -> None:
    """On a read-only connection to a file no writer has upgraded yet, show the added columns as
    NULL: a temporary view of the table's name, which the connection resolves before the
    file's table (``temp`` comes first), so every read works unchanged and the file is not
    touched. ``rowid`` is carried for the reads that order by it."""
    present = {row[1] for row in conn.execute(f"PRAGMA main.table_info({TABLE})")}
    missing = [name for name, _definition in ADDED_COLUMNS if name not in present]
    if missing:
        nulls = ", ".join(f"NULL AS {name}" for name in missing)
        conn.execute(f"CREATE TEMP VIEW IF NOT EXISTS {TABLE} AS SELECT rowid AS rowid, *, {nulls} FROM main.{TABLE}")


def _widen_status_check(conn: sqlite3.Connection) -> None:
    """Rebuild a version-1 table, whose CHECK refuses ``timeout``, inside the caller's transaction.

    SQLite cannot alter a CHECK constraint: the documented way is a new table, a copy, a drop
    and a rename (the indexes go with the old table and are created again by the caller).
    One-off, and proportional to the table: an existing store pays it on its first open.
    """
    upgraded = f"{TABLE}_v{SCHEMA_VERSION}"
    conn.execute(f"DROP TABLE IF EXISTS {upgraded}")
    conn.execute(table_ddl(upgraded))
    conn.execute(f"INSERT INTO {upgraded} ({COLS}) SELECT {COLS} FROM {TABLE} ORDER BY rowid")
    conn.execute(f"DROP TABLE {TABLE}")
    conn.execute(f"ALTER TABLE {upgraded} RENAME TO {TABLE}")
