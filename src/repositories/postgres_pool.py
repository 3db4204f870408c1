"""Where the Postgres pool lives: on a private background loop, usable from any thread and loop.

psycopg's async connections and ``AsyncConnectionPool`` belong to the loop they were opened on,
but one repository is used from several loops: the batch flusher writes from its own thread's
loop, while agents, the CLI and tests read from theirs, and ``close()`` often runs after the
flusher's loop is gone. So every operation is handed to a private loop (:mod:`..background`)
and awaited from the caller's loop; one thread hop per call is small next to the database work.

``close()`` closes the pool on its own loop and stops the thread; the next call reopens both. At
interpreter exit the pool closes itself in the ``SINKS`` stage of :mod:`..lifecycle`, after the
flushers have delivered what they held. In a forked child it forgets the parent's loop and pool
(never closing them: a close would send a Terminate on a socket the parent still uses) and opens
its own on first use.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable
from time import monotonic
from typing import Any, Final, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from src.agents.ml_foundation.observability_connector.background import BackgroundLoop
from src.agents.ml_foundation.observability_connector.lifecycle import (
    SINKS,
    keep_inherited,
    on_shutdown,
    watch_after_fork,
)
from src.repositories.base import StoreError
from src.repositories.postgres_errors import reason, store_error

__all__ = ["PostgresPool"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: A pooled connection idle longer than this is checked (one empty query) before use: after a
#: database restart or a pooler's idle cut-off it is the stale ones that fail. Connections in
#: steady use skip the check, which would otherwise cost a round trip per batch.
_CHECK_AFTER_IDLE_S: Final = 5.0


class _ConnectionLostError(Exception):
    """The connection broke while an operation ran on it (``cause``: psycopg's error)."""

    def __init__(self, cause: psycopg.OperationalError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _IOLoop(BackgroundLoop):
    """The repository's private loop and the pool that lives on it (both dropped together)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.pool: AsyncConnectionPool | None = None
        self.pool_lock = asyncio.Lock()  # only ever used on this loop


class PostgresPool:
    """A psycopg connection pool on its own background loop, opened on first use."""

    def __init__(
        self,
        dsn: str,
        connect_kwargs: dict[str, Any],
        *,
        min_size: int,
        max_size: int,
        connect_timeout_s: float,
        pool_timeout_s: float,
        where: str,
    ) -> None:
        self._dsn = dsn
        self._connect_kwargs = connect_kwargs
        self._min_size = min_size
        self._max_size = max_size
        self._connect_timeout_s = connect_timeout_s
        self._pool_timeout_s = pool_timeout_s
        self._where = where  # the DSN without its password, for messages
        self._lock = threading.Lock()
        self._io: _IOLoop | None = None
        self._finalizer: weakref.finalize | None = None
        self._last_used: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], float] = weakref.WeakKeyDictionary()
        watch_after_fork(self)

    def _after_fork_in_child(self) -> None:
        keep_inherited(self._io)
        self._io = None
        self._lock = threading.Lock()
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def _get_io(self) -> _IOLoop:
        with self._lock:
            if self._io is None:
                io = _IOLoop(name=f"postgres-spans-{id(self):x}")
                io.start(wait=True)
                self._io = io
                # A pool dropped without close() must not leave its thread running forever.
                self._finalizer = weakref.finalize(self, io.stop)
                on_shutdown(SINKS, self.close_now)  # after the flushers, at interpreter exit
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
                    kwargs=self._connect_kwargs,
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
                    conn = await psycopg.AsyncConnection.connect(self._dsn, **self._connect_kwargs)
                    await conn.close()
                    raise
                except BaseException:
                    await pool.close()
                    raise
                io.pool = pool
        return io.pool

    async def call(self, op: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]], what: str) -> T:
        """Run ``op`` with a pooled connection on the I/O loop and await it from the caller's loop.

        A connection lost while ``op`` ran (the server restarted, an administrator or a pooler ended
        the session, the network cut it mid-COPY) is retried once, whole, on a new connection:
        every operation of the store is one transaction, so the lost attempt left nothing behind,
        and the writes are idempotent on ``(trace_id, span_id)``, so an attempt whose COMMIT
        reached the server before the cut costs only duplicates the retry counts, never a second
        row. A second loss, or no connection at all, raises: the delivery layer spools the batch.
        """

        async def on_io_loop(io: _IOLoop) -> T:
            pool = await self._pool(io)
            async with pool.connection() as conn:
                try:
                    return await op(conn)
                except psycopg.OperationalError as exc:
                    if conn.broken:  # the pool discards it when it comes back
                        raise _ConnectionLostError(exc) from exc
                    raise
                finally:
                    self._last_used[conn] = monotonic()

        async def run_once(io: _IOLoop) -> T:
            if io.in_loop():
                return await on_io_loop(io)
            return await asyncio.wrap_future(io.submit(on_io_loop(io)))

        try:
            io = self._get_io()
            try:
                return await run_once(io)
            except _ConnectionLostError as lost:
                log.warning(
                    "the connection to %s was lost while %s (%s); retrying once on a new connection",
                    self._where,
                    what,
                    reason(lost.cause),
                )
            try:
                return await run_once(io)
            except _ConnectionLostError as lost:
                raise lost.cause from None
        except StoreError:
            raise
        except (psycopg.Error, PoolTimeout, OSError, TimeoutError) as exc:
            raise store_error(exc, f"{what} on {self._where}") from exc

    async def _check_if_idle(self, conn: psycopg.AsyncConnection[Any]) -> None:
        last = self._last_used.get(conn)
        if last is None or monotonic() - last > _CHECK_AFTER_IDLE_S:
            await AsyncConnectionPool.check_connection(conn)

    async def close(self) -> None:
        """Close the pool on its own loop and stop the loop's thread (idempotent)."""
        io = self._detach_io()
        if io is not None:
            await asyncio.to_thread(self._shut, io)

    def close_now(self) -> None:
        """:meth:`close` for code without an event loop (the ``SINKS`` stage at interpreter exit)."""
        io = self._detach_io()
        if io is not None:
            self._shut(io)

    def _detach_io(self) -> _IOLoop | None:
        with self._lock:
            io, self._io = self._io, None
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None
        return io

    def _shut(self, io: _IOLoop) -> None:
        pool = io.pool
        if pool is not None and not io.in_loop():
            try:
                io.submit(pool.close(timeout=5.0)).result(timeout=10.0)
            except Exception as exc:  # closing must not fail the caller
                log.warning("closing the Postgres pool of %s failed: %s", self._where, exc)
        io.stop()
        io.join(timeout=10.0)
