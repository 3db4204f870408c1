"""The on-disk spool: where a batch waits while a sink is down or the buffer is full.

One SQLite file in WAL mode with ``synchronous=FULL``: :meth:`Spool.append` returns only
after the batch is on disk, so a batch acknowledged to the spool survives a crash (SIGKILL
included). Each batch records which sinks still owe it a delivery; a sink that recovers
replays its own backlog in order without waiting for the others, and a batch is deleted once
every sink has it. The spool is bounded: past ``max_bytes`` the oldest batches are dropped,
counted and logged — never silently.

Several processes may share the file: each sink's backlog is replayed by one of them at a time,
the holder of the sink's lease (:mod:`.spool_lease`). A batch the disk cannot take (full, a
file-size limit) is counted and reported once a minute (:mod:`.spool_drops`) and raised as
:class:`SpoolWriteError`, which callers treat as already reported.

Payloads are the validated, redacted rows (JSON), so nothing secret is ever written here.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclasses_field
from pathlib import Path
from typing import Any

from . import spool_lease
from .json_codec import json_bytes, loads
from .lifecycle import keep_inherited, watch_after_fork
from .paths import absolute as _absolute
from .paths import shown as _shown
from .spool_drops import SpoolWriteFailures, WriteFailureStats
from .spool_file import SpoolError, SpoolMissingError, open_spool
from .spool_lease import LeaseOwner, ReplayLease

__all__ = [
    "ReplayLease",
    "Spool",
    "SpoolBatch",
    "SpoolError",
    "SpoolMissingError",
    "SpoolStats",
    "SpoolWriteError",
    "WriteFailureStats",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SpoolBatch:
    id: int
    created_at: float
    rows: list[dict[str, Any]]
    attempts: int
    next_attempt_at: float = 0.0


@dataclass(frozen=True, slots=True)
class SpoolStats:
    batches: int
    spans: int
    bytes: int
    oldest_age_s: float | None
    pending_by_sink: dict[str, int]
    dropped_spans: int
    dropped_batches: int
    dead_letters: int
    replay_leases: dict[str, ReplayLease] = dataclasses_field(default_factory=dict)
    unwritten: WriteFailureStats = dataclasses_field(default_factory=lambda: WriteFailureStats(0, 0, None, None))


class SpoolWriteError(SpoolError):
    """A batch could not be written (disk full, file-size limit, unwritable file): its spans are
    lost. Already counted and logged (once a minute) by the spool: callers need not log it again."""


class Spool:
    """Durable, bounded, per-sink backlog of span batches.

    ``read_only``: for looking only (``obs-connector status``): the file is opened with SQLite's
    ``mode=ro``, so a missing spool is reported (:class:`SpoolError`), never created.
    """

    def __init__(self, path: str | Path, max_bytes: int = 1 << 30, *, read_only: bool = False) -> None:
        self.path = _absolute(Path(path))
        self.max_bytes = max_bytes
        self.read_only = read_only
        self._lock = threading.Lock()  # one writer connection shared by the flusher's threads
        self._conn: sqlite3.Connection | None = None
        self._bytes: int | None = None
        self._owner = LeaseOwner.new()
        self.unwritten = SpoolWriteFailures(_shown(self.path))
        watch_after_fork(self)

    def _after_fork_in_child(self) -> None:
        """A forked child opens its own connection (the parent's is never touched from here: closing
        it could disturb the parent's locks or WAL) and is a new lease owner: it holds no lease."""
        if self._conn is not None:
            keep_inherited(self._conn)
        self._conn = None
        self._bytes = None
        self._lock = threading.Lock()
        self._owner = LeaseOwner.new()
        self.unwritten.reset_after_fork()

    # -- connection -----------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = open_spool(self.path, read_only=self.read_only)
            try:
                self._bytes = conn.execute("SELECT COALESCE(SUM(n_bytes), 0) FROM spool_batches").fetchone()[0]
            except sqlite3.Error as exc:
                conn.close()
                raise SpoolError(f"the spool {_shown(self.path)} cannot be read: {exc}") from None
            self._conn = conn
        return self._conn

    def close(self) -> None:
        """Release this object's leases and close the file."""
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("DELETE FROM spool_leases WHERE owner = ?", (self._owner.token,))
                self._conn.close()
                self._conn = None

    # -- writing --------------------------------------------------------------------------

    def append(self, rows: Sequence[dict[str, Any]], sinks: Iterable[str]) -> int:
        """Persist one batch (one row per span) owed to ``sinks``; returns its id once it is on disk.

        Raises :class:`SpoolWriteError` when the disk cannot take it (counted in :attr:`unwritten`
        and logged at most once a minute).
        """
        sinks = list(dict.fromkeys(sinks))
        if not rows or not sinks:
            raise ValueError("a spooled batch needs at least one row and one sink")
        blob = zlib.compress(json_bytes(rows), 1)
        now = time.time()
        with self._lock:
            try:
                db = self._db()
                db.execute("BEGIN IMMEDIATE")
                try:
                    cur = db.execute(
                        "INSERT INTO spool_batches (created_at, n_spans, n_bytes, payload) VALUES (?, ?, ?, ?)",
                        (now, len(rows), len(blob), blob),
                    )
                    batch_id = int(cur.lastrowid or 0)
                    db.executemany(
                        "INSERT INTO spool_pending (sink, batch_id) VALUES (?, ?)", [(s, batch_id) for s in sinks]
                    )
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:  # SQLite may have rolled back itself (disk full)
                        with contextlib.suppress(sqlite3.Error):
                            db.execute("ROLLBACK")
                    raise
            except (sqlite3.Error, OSError, SpoolError) as exc:
                # The connection is kept: SQLite has rolled the write back and the connection stays
                # usable, whereas reopening needs writes of its own (the WAL index) a full disk refuses.
                reason = str(exc) or type(exc).__name__
                self.unwritten.record(len(rows), reason)
                raise SpoolWriteError(
                    f"the spool {_shown(self.path)} could not keep {len(rows)} span(s): {reason}"
                ) from None
            self._bytes = (self._bytes or 0) + len(blob)
            if self._bytes > self.max_bytes:
                try:
                    self._enforce_bound(db)
                except sqlite3.Error as exc:  # the batch is on disk; only trimming the oldest failed
                    log.error("the spool %s could not drop its oldest batches: %s", _shown(self.path), exc)
        return batch_id

    def _enforce_bound(self, db: sqlite3.Connection) -> None:
        """Drop the oldest batches until the spool fits; every dropped span is counted."""
        dropped_spans = dropped_batches = 0
        while (self._bytes or 0) > self.max_bytes:
            row = db.execute("SELECT id, n_spans, n_bytes FROM spool_batches ORDER BY id LIMIT 1").fetchone()
            if row is None:
                self._bytes = 0
                break
            db.execute("DELETE FROM spool_batches WHERE id = ?", (row[0],))
            self._bytes = (self._bytes or 0) - row[2]
            dropped_spans += row[1]
            dropped_batches += 1
        if dropped_batches:
            self._bump(db, "dropped_spans", dropped_spans)
            self._bump(db, "dropped_batches", dropped_batches)
            log.error(
                "spool over its bound of %d bytes: dropped the %d oldest batch(es), %d span(s) lost; "
                "raise batching.spool_max_bytes or bring the sinks back",
                self.max_bytes,
                dropped_batches,
                dropped_spans,
            )

    @staticmethod
    def _bump(db: sqlite3.Connection, name: str, by: int) -> None:
        db.execute(
            "INSERT INTO spool_counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, by),
        )

    # -- replay ---------------------------------------------------------------------------

    def pending(self, sink: str, limit: int = 1, now: float | None = None) -> list[SpoolBatch]:
        """The oldest batches ``sink`` still owes, in order, that are due for an attempt."""
        at = time.time() if now is None else now
        with self._lock:
            rows = (
                self._db()
                .execute(
                    "SELECT b.id, b.created_at, b.payload, p.attempts FROM spool_pending p "
                    "JOIN spool_batches b ON b.id = p.batch_id "
                    "WHERE p.sink = ? AND p.next_attempt_at <= ? ORDER BY p.batch_id LIMIT ?",
                    (sink, at, limit),
                )
                .fetchall()
            )
        return [SpoolBatch(r[0], r[1], loads(zlib.decompress(r[2])), r[3]) for r in rows]

    def head(self, sink: str) -> SpoolBatch | None:
        """The oldest batch ``sink`` owes, due or not: replay never overtakes it (order kept)."""
        with self._lock:
            row = (
                self._db()
                .execute(
                    "SELECT b.id, b.created_at, b.payload, p.attempts, p.next_attempt_at FROM spool_pending p "
                    "JOIN spool_batches b ON b.id = p.batch_id WHERE p.sink = ? ORDER BY p.batch_id LIMIT 1",
                    (sink,),
                )
                .fetchone()
            )
        if row is None:
            return None
        return SpoolBatch(row[0], row[1], loads(zlib.decompress(row[2])), row[3], row[4])

    def ack(self, sink: str, batch_id: int) -> None:
        """``sink`` has the batch; delete it once no sink owes it any more."""
        with self._lock:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM spool_pending WHERE sink = ? AND batch_id = ?", (sink, batch_id))
                left = db.execute("SELECT 1 FROM spool_pending WHERE batch_id = ? LIMIT 1", (batch_id,)).fetchone()
                if left is None:
                    size = db.execute("SELECT n_bytes FROM spool_batches WHERE id = ?", (batch_id,)).fetchone()
                    db.execute("DELETE FROM spool_batches WHERE id = ?", (batch_id,))
                    if size is not None:
                        self._bytes = (self._bytes or 0) - size[0]
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def retry_later(self, sink: str, batch_id: int, error: str, delay_s: float) -> None:
        with self._lock:
            self._db().execute(
                "UPDATE spool_pending SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? "
                "WHERE sink = ? AND batch_id = ?",
                (time.time() + delay_s, error[:500], sink, batch_id),
            )

    def make_due(self, sink: str) -> None:
        """A sink recovered: everything it owes is due now (replay in order)."""
        with self._lock:
            self._db().execute("UPDATE spool_pending SET next_attempt_at = 0 WHERE sink = ?", (sink,))

    def backlog(self, sink: str) -> tuple[int, int]:
        """(batches, spans) that ``sink`` still owes."""
        with self._lock:
            row = (
                self._db()
                .execute(
                    "SELECT COUNT(*), COALESCE(SUM(b.n_spans), 0) FROM spool_pending p "
                    "JOIN spool_batches b ON b.id = p.batch_id WHERE p.sink = ?",
                    (sink,),
                )
                .fetchone()
            )
        return int(row[0]), int(row[1])

    # -- who replays ------------------------------------------------------------------------

    def acquire_replay(self, sink: str, ttl_s: float) -> bool:
        """Take or renew ``sink``'s replay lease for ``ttl_s`` (see :mod:`.spool_lease`); False
        while another live owner (another process, or another Spool object) holds it."""
        with self._lock:
            return spool_lease.acquire(self._db(), sink, self._owner, ttl_s)

    def release_replay(self, sink: str) -> None:
        """Give back ``sink``'s replay lease if this object holds it."""
        with self._lock:
            spool_lease.release(self._db(), sink, self._owner)

    def replay_leases(self) -> dict[str, ReplayLease]:
        """The live replay leases by sink: which process replays which backlog now."""
        with self._lock:
            return spool_lease.holders(self._db(), None if self.read_only else self._owner)

    def has_pending(self, sink: str) -> bool:
        with self._lock:
            return (
                self._db().execute("SELECT 1 FROM spool_pending WHERE sink = ? LIMIT 1", (sink,)).fetchone() is not None
            )

    # -- dead letters -----------------------------------------------------------------------

    def dead_letter(self, sink: str, row: dict[str, Any], reason: str) -> None:
        """Keep a row a sink refused for good, with the sink's reason, for people to inspect."""
        with self._lock:
            self._db().execute(
                "INSERT INTO dead_letters (sink, created_at, span_id, reason, row) VALUES (?, ?, ?, ?, ?)",
                (sink, time.time(), str(row.get("span_id")), reason[:2000], json_bytes(row).decode()),
            )

    def dead_letter_many(self, sink: str, items: Sequence[tuple[dict[str, Any], str]]) -> None:
        """:meth:`dead_letter` for many (row, reason) pairs in one transaction: one disk sync, not one each."""
        now = time.time()
        values = [(sink, now, str(row.get("span_id")), reason[:2000], json_bytes(row).decode())
                  for row, reason in items]  # fmt: skip
        with self._lock:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT INTO dead_letters (sink, created_at, span_id, reason, row) VALUES (?, ?, ?, ?, ?)", values
                )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def dead_letters(self, limit: int = 100) -> list[tuple[str, str | None, str]]:
        """(sink, span_id, reason), newest first."""
        with self._lock:
            return list(
                self._db()
                .execute("SELECT sink, span_id, reason FROM dead_letters ORDER BY id DESC LIMIT ?", (limit,))
                .fetchall()
            )

    # -- self-observation -------------------------------------------------------------------

    def stats(self) -> SpoolStats:
        with self._lock:
            db = self._db()
            batches, spans, size, oldest = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(n_spans), 0), COALESCE(SUM(n_bytes), 0), MIN(created_at) "
                "FROM spool_batches"
            ).fetchone()
            by_sink = dict(db.execute("SELECT sink, COUNT(*) FROM spool_pending GROUP BY sink").fetchall())
            counters = dict(db.execute("SELECT name, value FROM spool_counters").fetchall())
            dead = db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
            leases = spool_lease.holders(db, None if self.read_only else self._owner)
        return SpoolStats(
            batches=batches,
            spans=spans,
            bytes=size,
            oldest_age_s=None if oldest is None else max(0.0, time.time() - oldest),
            pending_by_sink=by_sink,
            dropped_spans=counters.get("dropped_spans", 0),
            dropped_batches=counters.get("dropped_batches", 0),
            dead_letters=dead,
            replay_leases=leases,
            unwritten=self.unwritten.stats(),
        )
