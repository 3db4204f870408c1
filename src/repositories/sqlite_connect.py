"""Opening the SQLite store's file: path checks, pragmas, WAL, the schema, and clear errors.

* **WAL + busy timeout + ``BEGIN IMMEDIATE``** for writes: readers never block the writer and
  vice versa; two writers queue on the busy timeout instead of failing. ``IMMEDIATE`` takes the
  write lock up front, so a transaction never has to upgrade a read lock (the upgrade path cannot
  wait on the busy handler and fails with "database is locked").
* A path that cannot hold the store, a file that is not a database, or a database without the
  span table fails with a :class:`StoreError` naming the file and the problem.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from stat import S_ISDIR
from time import monotonic, sleep
from typing import Final
from urllib.parse import quote

from src.agents.ml_foundation.observability_connector.paths import os_reason as _os_reason
from src.agents.ml_foundation.observability_connector.paths import shown as _shown
from src.repositories.base import (
    TABLE,
    StoreError,
    StoreRequestError,
    StoreSchemaError,
    StoreUnavailableError,
)
from src.repositories.sqlite_schema import MIN_SQLITE, ensure_schema, shadow_added_columns

__all__ = ["SQLiteConnector", "StoreCorruptError", "StoreNotFoundError"]


class StoreNotFoundError(StoreRequestError):
    """A read-only store found no file at its path: a mistyped ``--store``, or nothing recorded yet.

    Read-only stores never create the file (a typo must not leave an empty database behind).
    """


class StoreCorruptError(StoreError):
    """The file at the store's path is not a SQLite database SQLite can read (garbage, truncated)."""


#: SQLite's own codes for a file that is not (or no longer) a database.
_CORRUPT_CODES: Final = frozenset({"SQLITE_NOTADB", "SQLITE_CORRUPT"})


class SQLiteConnector:
    """Opens connections to one store file with its settings; ensures the schema on the first."""

    def __init__(self, path: Path, *, read_only: bool, busy_timeout_s: float, synchronous: str) -> None:
        self._path = path
        self._read_only = read_only
        self._busy_timeout_s = busy_timeout_s
        self._synchronous = synchronous
        self._schema_lock = threading.Lock()
        self._schema_ready = False

    def connect(self) -> sqlite3.Connection:
        """A new connection with the store's pragmas, the schema ensured once per connector."""
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise RuntimeError(
                f"SQLite {sqlite3.sqlite_version} is too old for the span store; "
                f"{'.'.join(map(str, MIN_SQLITE))} or newer is required (window functions, UPSERT)"
            )
        self._check_path()
        try:
            conn = self._open_connection()
        except sqlite3.Error as exc:
            raise self._open_error(exc) from None
        try:
            if self._read_only:
                self._check_readable(conn)
                shadow_added_columns(conn)
                return conn
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
            self._enable_wal(conn)
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute("PRAGMA temp_store = MEMORY")
            conn.execute("PRAGMA cache_size = -32768")
            # Checkpoints fsync even at synchronous=NORMAL; the default (every 1,000 pages) ran one
            # every few batches because random keys (uuid id, trace ids) dirty many index pages.
            # Fewer, larger checkpoints (8,192 pages of WAL) cost far less insert throughput; the
            # file is truncated back to journal_size_limit after each checkpoint.
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
            ensure_schema(conn)
            self._schema_ready = True
