"""The process-wide registry of open LangChain runs, shared by every callback handler.

Nested agents: when a node of agent A's graph (handler ``hA``) invokes agent B's graph with
``config={"callbacks": [hB]}``, LangChain merges the inherited handlers, so B's runs reach
``hA`` (first) and ``hB``. Each run must be recorded once, by the innermost handler attached
for it, under that handler's agent name. This registry maps every open run id to the handler
that records it. A handler that sees a run whose parent it never saw, but that another of our
handlers records, *adopts* the run: it parents the run under that handler's span (so the trace
stays one tree across agents), records it itself, and tells the handler that already opened
the same run to drop it (never submitted) and mark it *foreign*. A handler ignores every run
under a foreign one, including their end and error events. The registry costs one dict set
and one pop per run; entries go when runs end, error or are evicted, and the map is bounded by
``MAX_REGISTERED_RUNS``.

:func:`node_context` returns the trace context of the node a config belongs to, so spans
opened with ``obs.span(...)`` inside a node nest under the node's span.
"""

from __future__ import annotations

from typing import Any, Protocol
from uuid import UUID

from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import var_child_runnable_config

from .spans import Span
from .trace_context import ParentLike, TraceContext, current_parent

__all__ = ["MAX_REGISTERED_RUNS", "node_context", "registered_runs"]


class RunOwner(Protocol):
    """A handler as the registry sees it (``callback_runs.RunTree``, which imports this module)."""

    def _nearest(self, run_id: UUID) -> Span | None: ...

    def _disown(self, run_id: UUID) -> None: ...


# Process-wide registry, shared by every handler. Single dict operations are atomic under the
# GIL and each key is only written by the handlers of one run (whose events arrive in order),
# so no lock is needed.
MAX_REGISTERED_RUNS = 100_000
# run id -> the handler that records that run (a span or a skipped placeholder).
OWNERS: dict[UUID, RunOwner] = {}
# run id -> the handler that adopted it from another handler; lets a handler that LangChain
# calls *after* the adopter for the same event stand aside. Empty except while nested agents run.
ADOPTED: dict[UUID, RunOwner] = {}

# How a starting run relates to this handler (see RunTree._route).
CHILD = 0  # its parent is one of our runs
ROOT = 1  # no handler of ours knows its parent: a root (nested under the caller's current span)
ADOPT = 2  # another handler records its parent: we take the run over, under that handler's span
IGNORE = 3  # another handler records it (it sits under a foreign run, or was adopted)


class Foreign:
    """Marks a run that another handler records; its events and its children are ignored."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<foreign run>"


FOREIGN = Foreign()


def registered_runs() -> int:
    """Open runs in the process-wide registry (0 when no traced run is in flight)."""
    return len(OWNERS) + len(ADOPTED)


def trim_registry(registry: dict[UUID, Any]) -> None:
    """Keep a registry within ``MAX_REGISTERED_RUNS`` by dropping its oldest entries.

    Only reached when runs never end in handlers that are never evicted either; a dropped
    entry only means that a run started under it is not adopted (it becomes a root).
    """
    attempts = 0
    while len(registry) > MAX_REGISTERED_RUNS and attempts < 4 * MAX_REGISTERED_RUNS:
        attempts += 1
        try:
            registry.pop(next(iter(registry)), None)
        except (StopIteration, RuntimeError):
            continue


def recorded_span(run_id: UUID) -> Span | None:
    """The open span that records ``run_id``, or its nearest recorded ancestor, in any handler."""
    owner = OWNERS.get(run_id)
    if owner is None:
        return None
    return owner._nearest(run_id)


def node_context(config: RunnableConfig | None = None) -> TraceContext | None:
    """The trace context of the run that ``config`` belongs to, for spans opened inside a node.

    In a node ``def node(state, config)``, ``obs.span("fetch", "gap_analyzer",
    node_context(config))`` nests the span under the node's span. Without a config, the
    current runnable config (set by LangChain for the running node) is used. A run that is
    not a span itself (a prompt | model sequence, a hidden runnable) resolves to its nearest
    recorded ancestor. ``None`` when the run is not traced by one of our handlers.
    """
    if config is None:
        config = var_child_runnable_config.get()
        if config is None:
            return None
    callbacks = config.get("callbacks")
    # Inside a run, LangChain hands the run's children a callback manager whose parent_run_id
    # is that run; a plain list of handlers means the config is not inside any run.
    run_id = getattr(callbacks, "parent_run_id", None)
    if run_id is None:
        return None
    span = recorded_span(run_id)
    if span is None:
        return None
    return TraceContext(
        trace_id=span.trace_id,
        span_id=span.span_id,
        sampled=span.sampled,
        tracestate=span.tracestate,
        baggage=span.baggage or {},
        parent_span_id=span.parent_span_id,
    )


def adopted_parent(anchor: Span | None) -> ParentLike | None:
    """Parent of an adopted run: the other handler's span, or a span the node opened around the call.

    A node may wrap the nested agent call in ``obs.span("invoke_agent", ..., node_context(config))``;
    that span is the caller's current span, a child of the node's span, and the agent's graph
    nests under it. A current span of the same trace that started after the node did can
    only have been opened inside the node (the node's task or thread copied its context
    before the node started), so it is used too, even when it was parented elsewhere in the
    trace. Any other current span (the request's, opened before the graph ran) is an ancestor
    of the node, and the node's span is the better parent.
    """
    outer = current_parent()
    if outer is None or anchor is None:
        return anchor
    if outer.trace_id != anchor.trace_id or outer.span_id == anchor.span_id:
        return anchor
    if getattr(outer, "parent_span_id", None) == anchor.span_id:
        return outer
    start_ns = getattr(outer, "start_ns", None)
    if isinstance(start_ns, int) and start_ns >= anchor.start_ns:
        return outer
    return anchor


class Skipped:
    """Placeholder for a run that is not a span; it only forwards its children to ``anchor``."""

    __slots__ = ("anchor", "hidden", "name", "promoted", "start_ns")

    def __init__(self, anchor: Span | None, name: str | None, start_ns: int, hidden: bool) -> None:
        self.anchor = anchor  # nearest tracked ancestor (None: the run sits above every span)
        self.name = name
        self.start_ns = start_ns
        self.hidden = hidden
        # Filled by promotion. A list because list.append is atomic: when parallel nodes of a
        # subgraph start on pool threads at once, every thread appends and all use item 0, so
        # the subgraph gets exactly one span without a lock.
        self.promoted: list[Span] = []
