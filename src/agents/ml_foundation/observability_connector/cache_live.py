"""Single-flight refreshes for bounded-staleness metrics answers (``max_staleness_s``).

Why this exists: under live traffic every batch lands inside every window that ends now, so a
strict cache entry (``cache.py``) is dropped by the next write, ~100 ms after it was stored, and
a dashboard asking every 200 ms almost never hits. A caller that accepts answers up to ``S``
seconds old is served from an entry that span writes do not drop (its age is its bound); the
cache refreshes that entry in the background before it grows too old. This module keeps those
refreshes to at most one per key on each event loop, off the caller's path, with their failures
logged and counted instead of raised into a caller that already has its answer.

A refresh runs as a task on the running loop (the caller's). Readers that cannot be served
(no entry, or one older than their bound) await the running refresh instead of starting their
own, shielded so a reader that is cancelled does not cancel it for the others. Across processes
sharing Redis each process refreshes on its own (one per key per process and loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

from .lifecycle import watch_after_fork
from .log_gate import LogGate

__all__ = ["SingleFlight"]

log = logging.getLogger(__name__)

_Tasks = dict[str, "asyncio.Task[Any]"]


class SingleFlight:
    """At most one running computation per key on each event loop; later callers join it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Tasks] = weakref.WeakKeyDictionary()
        self._gate = LogGate()
        self.started = 0
        self.failed = 0
        self.last_error: str | None = None
        watch_after_fork(self)

    def _after_fork_in_child(self) -> None:
        # The parent's tasks belong to the parent's loops; a child starts with none.
        self._lock = threading.Lock()
        self._tasks = weakref.WeakKeyDictionary()

    def start(self, key: str, factory: Callable[[], Coroutine[Any, Any, Any]]) -> asyncio.Task[Any]:
        """The running task for ``key`` on this loop, or a new one from ``factory()``."""
        loop = asyncio.get_running_loop()
        with self._lock:
            tasks = self._tasks.setdefault(loop, {})
            task = tasks.get(key)
            if task is not None and not task.done():
                return task
            task = loop.create_task(factory(), name=f"metrics-cache-refresh:{key}")
            tasks[key] = task
            self.started += 1
        task.add_done_callback(functools.partial(self._done, tasks, key))
        return task

    def _done(self, tasks: _Tasks, key: str, task: asyncio.Task[Any]) -> None:
        with self._lock:
            if tasks.get(key) is task:
                del tasks[key]
        if task.cancelled():
            return
        exc = task.exception()  # also marks it retrieved: a background failure is not "never retrieved"
        if exc is None:
            return
        with self._lock:
            self.failed += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            should_log = self._gate.open()
        if should_log:
            log.warning(
                "metrics cache: refreshing a cached answer failed (%s); it is retried by the next question "
                "(%d failure(s) so far)",
                self.last_error,
                self.failed,
            )

    def running(self) -> int:
        """Refreshes running on this loop (for tests and status)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            return sum(not t.done() for t in self._tasks.get(loop, {}).values())

    async def wait_idle(self) -> None:
        """Wait for this loop's running refreshes (their failures stay logged and counted)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            pending = [t for t in self._tasks.get(loop, {}).values() if not t.done()]
        if pending:
            await asyncio.wait(pending)

    async def aclose(self) -> None:
        """Cancel this loop's running refreshes and wait for them (the store may close next)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        with self._lock:
            pending = list(self._tasks.pop(loop, {}).values())
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(BaseException):
                await task
