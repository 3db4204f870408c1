"""The one place that handles ``fork``: the child rebuilds its pipeline, the parent is untouched.

A forked child (``gunicorn --preload``, Celery's prefork pool, ``multiprocessing`` with the
``fork`` start method) inherits a copy of the parent's memory but none of its threads: a flusher
marked started whose thread does not exist, the parent's queued spans, its store connections,
spool handle, Opik sender and Redis clients. Left alone, the child's spans wait forever for a
thread that is not there, and any span it did deliver from the inherited queue would be a
duplicate of one the parent delivers.

One ``os.register_at_fork(after_in_child=...)`` hook, registered once when this module is first
imported, runs the resets the components register here, in the child only, before the child
runs any code of its own. Each reset forgets inherited state (queues, threads, locks, loops,
connections) so that the child builds its own on first use; nothing is checked on the hot path.

Inherited connections are never closed by the child: closing a psycopg connection sends a
Terminate on the socket it shares with the parent, and closing an SQLite connection may touch
the parent's locks or WAL. :func:`keep_inherited` holds such objects for the child's lifetime so
that dropping the last reference runs no finalizer either.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["ForkAware", "keep_inherited", "register_after_fork", "register_before_fork", "watch_after_fork"]

log = logging.getLogger(__name__)


class ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...


# Module-level resets (a module's singletons and locks), in registration order.
_functions: list[Callable[[], None]] = []
# Run in the parent just before it forks (bounded waits for work that must not be cut in half).
_before: list[Callable[[], None]] = []
# Objects that reset themselves; held weakly so that registering never keeps one alive.
_objects: weakref.WeakSet[Any] = weakref.WeakSet()
# The parent's objects the child dropped: referenced until the child exits, never finalized early.
_inherited: list[Any] = []


def register_after_fork(callback: Callable[[], None]) -> None:
    """Run ``callback`` in every child forked from now on (a module's singletons; once per module)."""
    if callback not in _functions:
        _functions.append(callback)


def register_before_fork(callback: Callable[[], None]) -> None:
    """Run ``callback`` in the parent before each fork; it must be quick and bounded."""
    if callback not in _before:
        _before.append(callback)


def watch_after_fork(obj: ForkAware) -> None:
    """Call ``obj._after_fork_in_child()`` in every child forked while ``obj`` is alive."""
    _objects.add(obj)


def keep_inherited(obj: object) -> None:
    """Hold an object the child no longer uses so that no finalizer of it runs in the child."""
    if obj is not None:
        _inherited.append(obj)


def _before_fork() -> None:
    for callback in list(_before):
        try:
            callback()
        except Exception:
            log.exception("preparing %s for a fork failed", getattr(callback, "__qualname__", callback))


def _after_fork_in_child() -> None:
    # Objects first: a processor forgets the parent's queue before a module reset drops a context.
    for obj in list(_objects):
        try:
            obj._after_fork_in_child()
        except Exception:  # a fork hook that raises would be printed and ignored by CPython anyway
            log.exception("resetting %s after fork failed", type(obj).__name__)
    for callback in list(_functions):
        try:
            callback()
        except Exception:
            log.exception("resetting %s after fork failed", getattr(callback, "__qualname__", callback))


if hasattr(os, "register_at_fork"):  # POSIX; where there is no fork there is nothing to reset
    # "before" hooks run in reverse order of registration, and logging's and the thread pools'
    # take locks (every log call, every executor submit) that a flusher finishing its work needs:
    # registering after them makes ours run first, while those locks are still free.
    import concurrent.futures.thread  # noqa: F401

    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
