"""Who replays a sink's spooled backlog: a lease row per sink in the spool file.

Several processes may share one data directory (the spool included). Each sees the same backlog,
and if two replayed it at once they would send the same batch twice. So replaying a sink needs
its lease: a row ``(sink, owner, host, pid, expires_at)`` taken in a ``BEGIN IMMEDIATE``
transaction (SQLite serialises those across processes), renewed while the owner replays, and
released when its backlog is empty or the owner stops.

A lease is free when nobody holds it, when it expired (the owner hung or lives on another host),
or when its owner is a process of this host that no longer exists (killed by SIGKILL: no
``finally`` ran). The last check makes a crashed owner's lease recoverable at once instead of
after ``ttl_s``. The owner is a token per :class:`~.spool.Spool` object, not per process, and a
forked child draws a new one: a child never inherits its parent's lease.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
import uuid
from dataclasses import dataclass

__all__ = ["LEASE_SCHEMA", "LeaseOwner", "ReplayLease", "acquire", "holders", "release"]

LEASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool_leases (
    sink        TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    host        TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    acquired_at REAL NOT NULL,
    expires_at  REAL NOT NULL
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class LeaseOwner:
    """This process's identity as a lease holder (a fresh one after fork)."""

    token: str
    host: str
    pid: int

    @classmethod
    def new(cls) -> LeaseOwner:
        return cls(uuid.uuid4().hex, socket.gethostname(), os.getpid())


@dataclass(frozen=True, slots=True)
class ReplayLease:
    """A lease as the spool holds it (for status)."""

    sink: str
    host: str
    pid: int
    acquired_at: float
    expires_at: float
    mine: bool

    def as_dict(self) -> dict[str, object]:
        return {
            "host": self.host,
            "pid": self.pid,
            "held_s": round(max(0.0, time.time() - self.acquired_at), 1),
            "expires_in_s": round(self.expires_at - time.time(), 1),
            "this_process": self.mine,
        }


def acquire(db: sqlite3.Connection, sink: str, me: LeaseOwner, ttl_s: float) -> bool:
    """Take or renew ``sink``'s lease for ``ttl_s``; False while another live owner holds it.

    ``db`` is in autocommit mode; the read and the write are one immediate transaction, so two
    processes can never both see the lease free.
    """
    now = time.time()
    db.execute("BEGIN IMMEDIATE")
    try:
        row = db.execute("SELECT owner, host, pid, expires_at FROM spool_leases WHERE sink = ?", (sink,)).fetchone()
        if row is not None and row[0] != me.token and row[3] > now and not _owner_gone(row[1], row[2], me):
            db.execute("COMMIT")
            return False
        acquired_at = now if row is None or row[0] != me.token else None
        if acquired_at is None:
            db.execute("UPDATE spool_leases SET expires_at = ? WHERE sink = ?", (now + ttl_s, sink))
        else:
            db.execute(
                "INSERT OR REPLACE INTO spool_leases (sink, owner, host, pid, acquired_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (sink, me.token, me.host, me.pid, acquired_at, now + ttl_s),
            )
        db.execute("COMMIT")
        return True
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def release(db: sqlite3.Connection, sink: str, me: LeaseOwner) -> None:
    """Give ``sink``'s lease back if this owner holds it (another's is left alone)."""
    db.execute("DELETE FROM spool_leases WHERE sink = ? AND owner = ?", (sink, me.token))


def holders(db: sqlite3.Connection, me: LeaseOwner | None) -> dict[str, ReplayLease]:
    """The live leases by sink (expired ones and those of dead local processes are left out)."""
    try:
        rows = db.execute("SELECT sink, owner, host, pid, acquired_at, expires_at FROM spool_leases").fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # a spool written before leases existed
            return {}
        raise
    now = time.time()
    out: dict[str, ReplayLease] = {}
    for sink, owner, host, pid, acquired_at, expires_at in rows:
        mine = me is not None and owner == me.token
        if expires_at <= now or (not mine and _owner_gone(host, pid, me)):
            continue
        out[sink] = ReplayLease(sink, host, pid, acquired_at, expires_at, mine)
    return out


def _owner_gone(host: str, pid: int, me: LeaseOwner | None) -> bool:
    """True when the holder was a process of this host that has ended (or is a zombie)."""
    local_host = me.host if me is not None else socket.gethostname()
    if host != local_host:
        return False  # another machine's process: only the expiry can tell
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    try:  # killed but not yet reaped by its parent: it holds nothing any more
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[-1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False
