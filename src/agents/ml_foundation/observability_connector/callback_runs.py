"""One handler's open runs: the bookkeeping behind :class:`callbacks.ObservabilityCallbackHandler`.

Each run that becomes a span is opened here, parented by LangChain's ``run_id`` /
``parent_run_id`` (see :mod:`callbacks` for why never by contextvars), and finished and
submitted when it ends or fails. Runs that are not spans get a :class:`Skipped` placeholder;
runs another handler records are remembered as foreign (see :mod:`callback_registry`).

Memory: a run's entry is removed when it ends or errors, so a finished run costs nothing.
``max_open_runs`` bounds the map for runs whose end never arrives; the oldest open runs are
then evicted, counted in ``evicted``, and — if they were spans — submitted with the error
type ``RunEvicted`` so that they are not lost silently.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from time import time_ns
from typing import Any
from uuid import UUID

# LangGraph's control-flow exceptions (interrupt(), Command(graph=PARENT)) are not failures.
from langgraph.errors import GraphBubbleUp, GraphInterrupt

from .callback_payloads import INTERRUPTED, RUN_TYPE, THREAD_ID
from .callback_registry import (
    ADOPT,
    ADOPTED,
    CHILD,
    FOREIGN,
    IGNORE,
    MAX_REGISTERED_RUNS,
    OWNERS,
    ROOT,
    Foreign,
    Skipped,
    trim_registry,
)
from .log_gate import LogGate
from .span_opening import open_under
from .spans import Span
from .trace_context import ParentLike, current_parent

__all__ = ["RunTree"]

logger = logging.getLogger(__name__)

# Paused traces remembered per handler; only a graph run that never ends leaves one behind.
_MAX_PAUSED = 1_000


class RunTree:
    """The open runs of one handler (spans, skipped placeholders, foreign runs), oldest first."""

    def __init__(
        self,
        submit: Callable[[Span], None],
        agent_name: str,
        *,
        capture_inputs: bool = False,
        max_open_runs: int = 10_000,
        sample_root: Callable[[str, str], bool] | None = None,
    ) -> None:
        super().__init__()  # the handler's other base, LangChain's BaseCallbackHandler
        if max_open_runs < 1:
            raise ValueError("max_open_runs must be at least 1")
        self._submit = submit
        # Sampling decision for a trace this handler starts (None: keep every trace).
        self._sample_root = sample_root
        self.agent_name = agent_name
        self.capture_inputs = capture_inputs
        self.max_open_runs = max_open_runs
        # run_id -> Span (tracked), Skipped or FOREIGN; insertion order = age, for eviction.
        self._runs: dict[UUID, Span | Skipped | Foreign] = {}
        self.evicted = 0
        self._evicted_logged = 0
        # Traces in which a run of this handler was interrupted, until this handler's graph span
        # of that trace ends: the graph run itself ends normally when it pauses, so this is how its
        # span learns that it paused. Insertion-ordered, bounded by _MAX_PAUSED.
        self._paused: dict[str, None] = {}
        self._eviction_log = LogGate()

    @property
    def open_runs(self) -> int:
        """Runs started and not yet ended (spans, skipped placeholders and foreign runs)."""
        return len(self._runs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(agent_name={self.agent_name!r}, open_runs={len(self._runs)})"

    def _open(self, run_id: UUID, parent: ParentLike | None, operation: str, attributes: dict[str, Any]) -> Span:
        span = self._new_span(parent, operation, attributes, time_ns())
        runs = self._runs
        runs[run_id] = span
        OWNERS[run_id] = self
        if len(runs) > self.max_open_runs:
            self._evict()
        if len(OWNERS) > MAX_REGISTERED_RUNS:
            trim_registry(OWNERS)
        return span

    def _new_span(self, parent: ParentLike | None, operation: str, attributes: dict[str, Any], start_ns: int) -> Span:
        # A root run nests under the caller's open span (obs.span(...) / attach(...)), so the
        # graph joins the trace the agent is already in.
        sample = self._sample_root
        return open_under(
            parent if parent is not None else current_parent(),
            operation,
            self.agent_name,
            attributes,
            start_ns,
            _keep_everything if sample is None else sample,
        )

    def _skip(self, run_id: UUID, anchor: Span | None, name: str | None, hidden: bool) -> None:
        runs = self._runs
        runs[run_id] = Skipped(anchor, name, time_ns(), hidden)
        OWNERS[run_id] = self
        if len(runs) > self.max_open_runs:
            self._evict()
        if len(OWNERS) > MAX_REGISTERED_RUNS:
            trim_registry(OWNERS)

    def _ignore(self, run_id: UUID) -> None:
        """Another handler records this run: remember it only so that its children and its
        end event are ignored too (not registered: the registry names the recording handler)."""
        runs = self._runs
        runs[run_id] = FOREIGN
        if len(runs) > self.max_open_runs:
            self._evict()

    def _disown(self, run_id: UUID) -> None:
        """Another handler adopted a run this handler opened: drop it unsubmitted, ignore its tree."""
        runs = self._runs
        if runs.get(run_id) is not None:
            runs[run_id] = FOREIGN  # same key: keeps the run's place in the eviction order

    def _route(self, run_id: UUID, parent_run_id: UUID | None) -> tuple[Span | None, Skipped | None, int]:
        """Where a starting run belongs: (nearest parent span, parent placeholder, how).

        ``how`` is ``CHILD`` (its parent is ours), ``ROOT``, ``ADOPT`` (another of our
        handlers records the parent: this handler is the innermost one attached for the run,
        so it records it under that handler's span) or ``IGNORE`` (recorded elsewhere; the
        run is already remembered as foreign).
        """
        if parent_run_id is None:
            return None, None, ROOT
        entry = self._runs.get(parent_run_id)
        if entry is None:
            owner = OWNERS.get(parent_run_id)
            if owner is None or owner is self:
                return None, None, ROOT
            # LangChain called the outer handlers for this event first; whichever of them
            # opened this run drops it. Then the run is ours (registered by _open/_skip).
            previous = OWNERS.get(run_id)
            if previous is not None and previous is not self:
                previous._disown(run_id)
            ADOPTED[run_id] = self
            if len(ADOPTED) > MAX_REGISTERED_RUNS:
                trim_registry(ADOPTED)
            return owner._nearest(parent_run_id), None, ADOPT
        if entry is FOREIGN:
            self._ignore(run_id)
            return None, None, IGNORE
        if ADOPTED:
            # A handler called before this one for the same event adopted the run (local
            # handlers come first when a config's callbacks are a manager merged with a list).
            adopter = ADOPTED.get(run_id)
            if adopter is not None and adopter is not self:
                self._ignore(run_id)
                return None, None, IGNORE
        if entry.__class__ is Skipped:
            return entry.anchor, entry, CHILD  # type: ignore[union-attr,return-value]
        return entry, None, CHILD  # type: ignore[return-value]

    def _evict(self) -> None:
        """Drop the oldest open runs until the map is within bounds."""
        runs = self._runs
        limit = self.max_open_runs
        now = time_ns()
        attempts = 0
        while len(runs) > limit and attempts < 4 * limit:
            attempts += 1
            try:
                run_id = next(iter(runs))
                entry = runs.pop(run_id)
            except (StopIteration, KeyError, RuntimeError):
                # Another thread changed the map between the two steps; look again.
                continue
            self.evicted += 1
            if entry is FOREIGN:
                continue
            if OWNERS.get(run_id) is self:
                OWNERS.pop(run_id, None)
            if ADOPTED and ADOPTED.get(run_id) is self:
                ADOPTED.pop(run_id, None)
            if entry.__class__ is Span:
                span: Span = entry  # type: ignore[assignment]
                span.record_error(
                    f"open-run limit ({limit}) reached before this run's end event arrived",
                    "RunEvicted",
                )
                span.attributes["callback.evicted"] = True
                span.finish(now if now > span.start_ns else span.start_ns)
                self._submit(span)
        if self._eviction_log.open():
            # Rate-limited: this runs on the agent's thread, and a leak evicts on every event.
            logger.warning(
                "observability callback handler for %s evicted %d open run(s) (limit %d, %d since last report); "
                "their end events never arrived",
                self.agent_name,
                self.evicted,
                limit,
                self.evicted - self._evicted_logged,
            )
            self._evicted_logged = self.evicted

    def _promote(self, run_id: UUID, skipped: Skipped, thread_id: str | None = None) -> Span:
        """A skipped chain that turned out to be a compiled subgraph becomes a span, in place.

        ``thread_id``: the LangGraph thread of the node that revealed it (the subgraph runs in it).
        """
        promoted = skipped.promoted
        if not promoted:
            name = skipped.name or "subgraph"
            attributes: dict[str, Any] = {RUN_TYPE: "subgraph"}
            if thread_id is not None:
                attributes[THREAD_ID] = thread_id
            promoted.append(self._new_span(skipped.anchor, name, attributes, skipped.start_ns))
        span = promoted[0]
        self._runs[run_id] = span  # same key: keeps the run's place in the eviction order
        return span

    def _close(self, run_id: UUID) -> Span | Skipped | None:
        """Forget a run that ended; its registry entries go too (unless another handler records it)."""
        entry = self._runs.pop(run_id, None)
        if entry is None or entry is FOREIGN:
            return None
        OWNERS.pop(run_id, None)
        if ADOPTED:
            ADOPTED.pop(run_id, None)
        return entry  # type: ignore[return-value]

    def _end(self, run_id: UUID, output: Any = None) -> Span | None:
        entry = self._close(run_id)
        if entry is None or entry.__class__ is not Span:
            return None
        span: Span = entry  # type: ignore[assignment]
        if self.capture_inputs and output is not None:
            span.output_data = output
        return span

    def _paused_here(self, span: Span) -> bool:
        """Whether a graph span that is ending normally paused (a run under it was interrupted)."""
        return self._paused.pop(span.trace_id, False) is None

    def _finish(self, span: Span) -> None:
        end = time_ns()
        span.finish(end if end > span.start_ns else span.start_ns)
        self._submit(span)

    def _fail(self, run_id: UUID, error: BaseException) -> None:
        entry = self._close(run_id)
        if entry is None or entry.__class__ is not Span:
            return
        span: Span = entry  # type: ignore[assignment]
        is_graph = span.attributes.get(RUN_TYPE) == "graph"
        if is_graph and self._paused:
            # A graph span that fails (a nested agent's, which the interrupt passes through, or
            # one that failed after a branch paused) says so itself: nothing left to remember.
            self._paused.pop(span.trace_id, None)
        if isinstance(error, GraphBubbleUp):
            # interrupt() pauses for a human and Command(graph=PARENT) hands control to the
            # parent graph: control flow, not failure.
            span.attributes["langgraph.bubble_up"] = type(error).__name__
            if isinstance(error, GraphInterrupt):
                span.attributes[INTERRUPTED] = True
                if not is_graph:
                    paused = self._paused
                    paused[span.trace_id] = None
                    if len(paused) > _MAX_PAUSED:
                        paused.pop(next(iter(paused)), None)
        elif isinstance(error, GeneratorExit):
            # The consumer of astream()/stream() stopped reading early; the run did not fail.
            span.attributes["langchain.stream_closed_early"] = True
        else:
            span.record_error(error)
        self._finish(span)

    def _nearest(self, run_id: UUID) -> Span | None:
        """The span recording ``run_id``, or the nearest recorded ancestor of a skipped run."""
        entry = self._runs.get(run_id)
        if entry is None or entry is FOREIGN:
            return None
        if entry.__class__ is Skipped:
            return entry.anchor  # type: ignore[union-attr]
        return entry  # type: ignore[return-value]


def _keep_everything(trace_id: str, agent_name: str) -> bool:
    """A handler without a sampler keeps every trace it roots."""
    return True
