"""The one owner of shutdown order and of ``fork``.

**Shutdown.** Components register what must run when the process ends with
:func:`on_shutdown` under a stage; :func:`shutdown` runs the stages in order — ``PRODUCERS``
(code that still makes spans ends them, so the flushers see them), ``FLUSHERS`` (queued spans
are delivered to the sinks), ``SINKS`` (sinks drain and close their connections) — and within a
stage in registration order. So a sink never closes while a flusher still holds spans for it,
whatever order the components were built in.

It runs once at interpreter exit and can be called explicitly (tests, the CLI). The exit hook is
registered with ``threading._register_atexit``, not ``atexit``: those hooks run before
``concurrent.futures`` joins its workers (``asyncio.to_thread``, which the sinks use, refuses work
after that), and they run last-registered first, so ``concurrent.futures.thread`` is imported
before ours is registered. ``atexit`` is only the fallback where that hook does not exist.

A bound method is held weakly (registering never keeps a repository or a connector alive); a
plain function is held strongly. Callbacks must be idempotent: an explicit :func:`shutdown`
followed by the exit hook runs them twice.

**Fork.** A forked child (``gunicorn --preload``, Celery's prefork pool, ``multiprocessing``
with ``fork``) inherits a copy of the parent's memory but none of its threads: a flusher marked
started whose thread does not exist, the parent's queued spans, its store connections, spool
handle, Opik sender and Redis clients. Left alone, the child's spans wait forever for a thread
that is not there, and any span it delivered from the inherited queue would be a duplicate of
one the parent delivers.

One ``os.register_at_fork`` hook runs the resets components register here, in the child only,
before the child runs any code of its own. Each reset forgets inherited state (queues, threads,
locks, loops, connections) so the child builds its own on first use; nothing is checked on the
hot path. Inherited connections are never closed by the child: closing a psycopg connection
sends a Terminate on the socket it shares with the parent, and closing an SQLite connection may
touch the parent's locks or WAL. :func:`keep_inherited` holds such objects for the child's
lifetime so that dropping the last reference runs no finalizer either.
"""

from __future__ import annotations

import atexit
import enum
import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, Protocol

# Imported before our exit hook is registered: threading's exit hooks run last registered first,
# so ours then runs while the thread pools still take work (see the module doc).
import concurrent.futures.thread  # noqa: F401  # isort: skip

__all__ = [
    "FLUSHERS",
    "PRODUCERS",
    "SINKS",
    "ForkAware",
    "ShutdownOrder",
    "Stage",
    "keep_inherited",
    "on_shutdown",
    "register_after_fork",
    "register_before_fork",
    "shutdown",
    "watch_after_fork",
]

log = logging.getLogger(__name__)


class Stage(enum.IntEnum):
    """Shutdown stages, run in this order."""

    PRODUCERS = 0
    FLUSHERS = 1
    SINKS = 2


PRODUCERS = Stage.PRODUCERS
FLUSHERS = Stage.FLUSHERS
SINKS = Stage.SINKS

_Ref = Callable[[], Callable[[], Any] | None]  # the callback, or None once a weakly held one died


class ShutdownOrder:
    """Callbacks per stage, run stage by stage; the process has one (:func:`on_shutdown`)."""

    def __init__(self) -> None:
        self._stages: dict[Stage, list[_Ref]] = {stage: [] for stage in Stage}
        self._lock = threading.Lock()

    def add(self, stage: Stage, callback: Callable[[], Any]) -> bool:
        """Register ``callback`` under ``stage``; False when it already was."""
        ref: _Ref = weakref.WeakMethod(callback) if hasattr(callback, "__self__") else (lambda: callback)  # type: ignore[arg-type]
        with self._lock:
            refs = self._stages[Stage(stage)]
            if any(existing() == callback for existing in refs):
                return False
            refs.append(ref)
        return True

    def run(self) -> None:
        """Run every live callback, stage by stage; never raises (each failure is logged)."""
        for stage in Stage:
            with self._lock:
                refs = self._stages[stage]
                callbacks = [cb for cb in (ref() for ref in refs) if cb is not None]
                self._stages[stage] = [ref for ref in refs if ref() is not None]  # forget the dead
            for callback in callbacks:
                try:
                    callback()
                except Exception:  # one component's failure must not stop the others' shutdown
                    log.exception("shutdown (%s): %s failed", stage.name.lower(), _name(callback))

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # another thread of the parent may have held it


_order = ShutdownOrder()
_exit_hook_installed = False


def on_shutdown(stage: Stage, callback: Callable[[], Any]) -> None:
    """Run ``callback()`` in ``stage`` at interpreter exit (and on every explicit :func:`shutdown`).

    Registering the same callback again (the same function, or the same object's same method)
    does nothing. A sink owner closes its sink with ``on_shutdown(SINKS, self.close_now)``: a
    synchronous, bounded, idempotent method (a bound method is held weakly).
    """
    global _exit_hook_installed
    _order.add(stage, callback)
    if not _exit_hook_installed:
        _exit_hook_installed = True
        _install_exit_hook()


def _install_exit_hook() -> None:
    register = getattr(threading, "_register_atexit", None)
    try:
        if register is None:
            raise RuntimeError("no threading exit hook")
        register(shutdown)
    except RuntimeError:  # no such hook, or interpreter shutdown has already begun
        atexit.register(shutdown)


def shutdown() -> None:
    """Run the process's shutdown stages now: producers, then flushers, then sinks (never raises)."""
    _order.run()


def _name(callback: object) -> str:
    return str(getattr(callback, "__qualname__", callback))


# --------------------------------------------------------------------------- fork


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
            log.exception("preparing %s for a fork failed", _name(callback))


def _after_fork_in_child() -> None:
    _order.after_fork_in_child()
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
            log.exception("resetting %s after fork failed", _name(callback))


if hasattr(os, "register_at_fork"):  # POSIX; where there is no fork there is nothing to reset
    # "before" hooks run in reverse order of registration, and logging's and the thread pools'
    # take locks (every log call, every executor submit) that a flusher finishing its work needs:
    # registering after them (concurrent.futures.thread is imported above) makes ours run first,
    # while those locks are still free.
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
