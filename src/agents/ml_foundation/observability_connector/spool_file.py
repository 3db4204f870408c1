"""Opening the spool's SQLite file: the schema, WAL, and a clear error for every way it fails.

Several processes may create and open one spool at once (one data directory): switching to WAL
and creating the schema retry "database is locked", which SQLite can answer there without
consulting its busy handler. A directory or file this process may not write is named at start,
rather than surfacing as SQLite's "unable to open database file" at the first batch.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from urllib.parse import quote

from .paths import os_reason as _os_reason
from .paths import shown as _shown
from .spool_lease import LEASE_SCHEMA

__all__ = ["SpoolError", "SpoolMissingError", "open_spool"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool_batches (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL    NOT NULL,
    n_spans    INTEGER NOT NULL,
    n_bytes    INTEGER NOT NULL,
    payload    BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS spool_pending (
    sink            TEXT    NOT NULL,
    batch_id        INTEGER NOT NULL REFERENCES spool_batches(id) ON DELETE CASCADE,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL    NOT NULL DEFAULT 0,
    last_error      TEXT,
    PRIMARY KEY (sink, batch_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    sink       TEXT NOT NULL,
    created_at REAL NOT NULL,
    span_id    TEXT,
    reason     TEXT NOT NULL,
    row        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS spool_counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"""


class SpoolError(Exception):
    """The spool file cannot be opened or read (a path that cannot be created, a corrupt file);
    the message names the file and the problem."""


class SpoolMissingError(SpoolError):
    """A read-only spool found no file: nothing has had to wait on disk yet."""


def open_spool(path: Path, *, read_only: bool) -> sqlite3.Connection:
    """A connection with the schema in place; every failure is a SpoolError naming the file."""
    try:
        if path.is_dir():
            raise SpoolError(f"the spool path {_shown(path)} is a directory, not a file")
        if read_only:
            if not path.exists():
                raise SpoolMissingError(f"no spool at {_shown(path)}")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            _check_writable(path)
    except OSError as exc:
        raise SpoolError(f"the spool {_shown(path)} cannot be created or opened: {_os_reason(exc)}") from None
    conn: sqlite3.Connection | None = None
    try:
        if read_only:
            uri = f"file:{quote(str(path))}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("SELECT 1 FROM spool_batches LIMIT 1")  # a corrupt file fails here, not later
        else:
            conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            _retry_locked(conn, "PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # durable before acknowledged
            conn.execute("PRAGMA foreign_keys=ON")
            _retry_locked(conn, _SCHEMA + LEASE_SCHEMA, script=True)
    except sqlite3.Error as exc:
        if conn is not None:
            conn.close()
        problem = "not a spool (no spool_batches table)" if "no such table" in str(exc) else str(exc)
        raise SpoolError(f"the spool {_shown(path)} cannot be opened: {problem}") from None
    return conn


def _check_writable(path: Path) -> None:
    """A read-only directory or file is named now, at start, rather than as SQLite's "unable to
    open database file" or "attempt to write a readonly database" at the first batch."""
    if not os.access(path.parent, os.W_OK | os.X_OK):  # the file and its WAL files live there
        raise SpoolError(
            f"the spool {_shown(path)} cannot be written: its directory is read-only for this process "
            f"(uid {os.geteuid()})"
        )
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise SpoolError(f"the spool {_shown(path)} cannot be written: the file is read-only for this process")


def _retry_locked(conn: sqlite3.Connection, sql: str, *, script: bool = False, timeout_s: float = 30.0) -> None:
    """Run ``sql``, retrying "database is locked": switching to WAL and creating the schema can
    fail that way without consulting the busy handler while another process creates the same
    file (several processes starting at once on one data directory)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        try:
            if script:
                conn.executescript(sql)
            else:
                conn.execute(sql)
            return
        except sqlite3.OperationalError as exc:
            if not ("locked" in str(exc) or "busy" in str(exc)) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
