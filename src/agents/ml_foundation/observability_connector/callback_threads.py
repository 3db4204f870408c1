"""Which trace each LangGraph thread ran last in this process: the link from a resumed run back.

A graph paused by ``interrupt()`` (or a static breakpoint) ends its run; the human's answer
comes back later as a new run on the same ``thread_id`` with ``Command(resume=...)`` (or
``None`` as input, which continues from the checkpoint). That run is a new trace, so without a
link a reader sees two unrelated traces. The callback handler records, for every top-level graph
run with a thread, that the thread's latest trace is this one; a run that resumes gets the
previous one as ``langgraph.resumes_trace_id``.

Process-wide (handlers are often made per request) and bounded: the least recently used
threads are forgotten past ``MAX_THREADS``, which costs only the link of a conversation idle
that long. In-process only: a run resumed by another process (a checkpointer shared between
workers) shares the thread id but names no earlier trace, since the handler never reads the
checkpointer and the trace id is not in the checkpoint.
"""

from __future__ import annotations

from typing import Any

from langgraph.types import Command

__all__ = ["MAX_THREADS", "forget_threads", "is_resume", "known_threads", "link_run"]

MAX_THREADS = 10_000

# thread id -> trace id of its latest top-level run; insertion order = least recently used
# first. Different threads touch different keys, and LangGraph never runs one thread twice at
# once, so single dict operations (atomic under the GIL) are enough.
_LAST_TRACE: dict[str, str] = {}


def is_resume(inputs: Any) -> bool:
    """A graph's input that continues a thread instead of starting a new turn.

    ``Command(resume=...)`` answers an interrupt; a ``Command`` with only ``goto``/``update``
    steers a paused thread; ``None`` runs a thread on from its checkpoint (after a static
    breakpoint, or to retry).
    """
    return inputs is None or isinstance(inputs, Command)


def link_run(thread_id: str, trace_id: str, resume: bool) -> str | None:
    """Make ``trace_id`` the thread's latest; the trace it resumes when ``resume`` (else None)."""
    previous = _LAST_TRACE.pop(thread_id, None)  # re-inserted below: moves to most recent
    _LAST_TRACE[thread_id] = trace_id
    if len(_LAST_TRACE) > MAX_THREADS:
        _trim()
    if resume and previous is not None and previous != trace_id:
        return previous
    return None


def known_threads() -> int:
    """Threads whose latest trace is remembered (bounded by ``MAX_THREADS``)."""
    return len(_LAST_TRACE)


def forget_threads() -> None:
    """Forget every thread (tests; a process that wants no link across its own phases)."""
    _LAST_TRACE.clear()


def _trim() -> None:
    attempts = 0
    while len(_LAST_TRACE) > MAX_THREADS and attempts < 4 * MAX_THREADS:
        attempts += 1
        try:
            _LAST_TRACE.pop(next(iter(_LAST_TRACE)), None)
        except (StopIteration, RuntimeError):  # another thread changed the map meanwhile
            continue
