"""The one background-loop helper: a daemon thread running its own asyncio event loop.

Why such threads exist here: the flusher must deliver while the agents' own loops are busy (or
absent: sync code, callback handlers), and psycopg's async pool belongs to the loop it was opened
on while the repository is used from many loops. Each gets a private loop on its own thread and
other threads hand it work with :meth:`BackgroundLoop.submit` / :meth:`BackgroundLoop.call_soon`.

A loop runs either until :meth:`BackgroundLoop.stop` (a service loop: work arrives by
``submit``) or until the coroutine given to :meth:`BackgroundLoop.start` returns (the flusher's
main loop). It can be started again after it ended: each run gets a new thread and a new loop.

Fork-aware: in a forked child the parent's thread does not exist, so the helper forgets it (the
inherited loop is kept referenced, never closed: see :mod:`.lifecycle`) and reads as not running;
its owner starts a new one on first use.

GIL sharing (:func:`share_gil`): the work these threads do (encoding a burst, converting a
batch) is mostly pure Python, and a pure-Python thread keeps the GIL for a whole switch interval
(5 ms) once another thread asks for it. The application's event loop asks for it after every
``select`` and every cross-thread wake-up, so each hand-over could make its coroutines wake up
5 ms late. Long loops on these threads therefore call :func:`share_gil`, which gives the GIL
back after about half a millisecond of work instead, without touching the interpreter's
switch interval (an application-wide setting that is the application's to choose).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from .lifecycle import keep_inherited, watch_after_fork

__all__ = ["SHARE_GIL_EVERY_S", "BackgroundLoop", "share_gil", "share_gil_on_this_thread"]

T = TypeVar("T")

#: How long a background thread runs before :func:`share_gil` hands the GIL over.
SHARE_GIL_EVERY_S = 0.0005
_turn = threading.local()  # ``since``: set on this module's threads only


def share_gil() -> None:
    """On a :class:`BackgroundLoop` thread: let a thread that waits for the GIL have it, if this
    one has run for ``SHARE_GIL_EVERY_S`` since it last did; elsewhere nothing (never on an
    application's thread).

    ``time.sleep(0)`` releases the GIL and takes it back at once when nobody waits (a system
    call, about a microsecond), so a loop may call this once per item.
    """
    since = getattr(_turn, "since", None)
    if since is None:
        return
    now = time.perf_counter()
    if now - since >= SHARE_GIL_EVERY_S:
        time.sleep(0)
        _turn.since = time.perf_counter()


def share_gil_on_this_thread() -> None:
    """Make :func:`share_gil` work on the calling thread: for the connector's own worker threads
    that are not a :class:`BackgroundLoop` (an executor's ``initializer``), never an application's."""
    _turn.since = time.perf_counter()


class BackgroundLoop:
    """One daemon thread with its own event loop; thread-safe, restartable, fork-aware."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        watch_after_fork(self)

    def _after_fork_in_child(self) -> None:
        keep_inherited(self._loop)
        self._loop = None
        self._thread = None
        self._lock = threading.Lock()

    # -- lifecycle

    def start(
        self, main: Callable[[], Awaitable[Any]] | None = None, *, wait: bool = False
    ) -> asyncio.AbstractEventLoop:
        """Start a new thread and loop unless one is running; returns the running loop.

        ``main``: the loop ends when ``main()`` returns (None: when :meth:`stop` is called).
        ``wait``: return only once the loop runs. Raises ``RuntimeError`` when no thread can be
        started (interpreter shutdown).
        """
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and self._loop is not None:
                return self._loop
            loop = asyncio.new_event_loop()
            ready = threading.Event()
            thread = threading.Thread(target=self._run, args=(loop, main, ready), name=self.name, daemon=True)
            try:
                thread.start()
            except BaseException:
                loop.close()
                raise
            self._loop, self._thread = loop, thread
        if wait:
            ready.wait()
        return loop

    @staticmethod
    def _run(
        loop: asyncio.AbstractEventLoop, main: Callable[[], Awaitable[Any]] | None, ready: threading.Event
    ) -> None:
        asyncio.set_event_loop(loop)
        _turn.since = time.perf_counter()  # share_gil works on this thread
        loop.call_soon(ready.set)
        try:
            if main is None:
                loop.run_forever()
            else:
                loop.run_until_complete(main())
        finally:
            try:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def stop(self) -> None:
        """Ask a service loop to stop, without waiting (see :meth:`join`); harmless when stopped."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # already closed
                loop.call_soon_threadsafe(loop.stop)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; True when it has (or never ran)."""
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return thread is None
        thread.join(timeout)
        return not thread.is_alive()

    # -- state

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    @property
    def thread(self) -> threading.Thread | None:
        """The current run's thread (a new object per run: compare by identity)."""
        return self._thread

    def is_alive(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def in_loop(self) -> bool:
        """True when called on this helper's own thread."""
        thread = self._thread
        return thread is not None and thread is threading.current_thread()

    # -- handing work to the loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Run ``coro`` on the loop; ``RuntimeError`` when it is not started or already closed."""
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError(f"{self.name}: the background loop is not running")
        return asyncio.run_coroutine_threadsafe(coro, loop)

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> bool:
        """Schedule ``callback(*args)`` on the loop from any thread; False when there is no open loop."""
        loop = self._loop
        if loop is None:
            return False
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # closed at shutdown
            return False
        return True
