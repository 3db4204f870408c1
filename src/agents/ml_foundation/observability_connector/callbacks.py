"""A LangChain callback handler that turns any LangGraph agent's runs into spans.

An agent attaches it with ``graph.invoke(state, config={"callbacks": [handler]})`` and
changes nothing else. The span tree is built from LangChain's ``run_id`` / ``parent_run_id``
and never from contextvars: under ``ainvoke`` and parallel branches the callbacks of sibling
branches interleave on one event loop (or run on pool threads), so "the current span" there
is whichever branch ran last, which is how peers end up nesting branch A's LLM call under
branch B. The run ids are exact.

Only the runs that mean something to a reader become spans, giving the tree
``graph → node → llm / tool / retriever`` (and ``node → subgraph → node`` for nested graphs).
Every other chain run (prompt templates, ``RunnableSequence`` glue, conditional-edge routers,
runs tagged ``langsmith:hidden``) is *skipped*: it gets a tiny placeholder that remembers the
nearest tracked ancestor, so whatever it starts still attaches to the right span, and the
placeholder goes away when the run ends. A skipped chain turns out to be a compiled subgraph
when a LangGraph node starts directly under it; it is then promoted to a span in place.
``langsmith:hidden`` hides chain structure only: LLM, tool and retriever runs are always
spans (marked ``langchain.hidden``), because LangChain tags are inherited and skipping them
would silently drop the token usage and latency the metrics are built from.

Hot path: ``run_inline = True`` makes LangChain call the handler synchronously on the
caller's thread or loop (measured ~4 µs/event, against ~180 µs for the default thread-pool
dispatch). So every method does in-memory work only: no I/O, no locks (single dict
operations are atomic under the GIL), no copies and no serialisation — captured inputs and
outputs are references, sized and redacted later by the graph off the caller's path. Ids
come from :mod:`trace_context` (``random.getrandbits``, never ``os.urandom``).

Memory: a run's entry is removed when it ends or errors, so a finished run costs nothing.
``max_open_runs`` bounds the map for runs whose end never arrives; the oldest open runs are
then evicted, counted in ``evicted``, and — if they were spans — submitted with the error
type ``RunEvicted`` so that they are not lost silently.

Nested agents: when a node of agent A's graph (handler ``hA``) invokes agent B's graph with
``config={"callbacks": [hB]}``, LangChain merges the inherited handlers, so B's runs reach
``hA`` (first) and ``hB``. Each run must be recorded once, by the innermost handler attached
for it, under that handler's agent name. A process-wide registry maps every open run id to
the handler that records it. A handler that sees a run whose parent it never saw, but that
another of our handlers records, *adopts* the run: it parents the run under that handler's
span (so the trace stays one tree across agents), records it itself, and tells the handler
that already opened the same run to drop it (never submitted) and mark it *foreign*. A
handler ignores every run under a foreign one, including their end and error events. The
registry costs one dict set and one pop per run; entries go when runs end, error or are
evicted, and the map is bounded by ``MAX_REGISTERED_RUNS``.

:func:`node_context` returns the trace context of the node a config belongs to, so spans
opened with ``obs.span(...)`` inside a node nest under the node's span.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence, Sized
from time import monotonic, time_ns
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import var_child_runnable_config

# LangGraph's control-flow exceptions (interrupt(), Command(graph=PARENT)) are not failures.
from langgraph.errors import GraphBubbleUp, GraphInterrupt

from .spans import Span
from .trace_context import ParentLike, TraceContext, current_parent, new_span_id, new_trace_id, span_parent_id

__all__ = ["MAX_REGISTERED_RUNS", "ObservabilityCallbackHandler", "node_context", "registered_runs"]

logger = logging.getLogger(__name__)

HIDDEN_TAG = "langsmith:hidden"
_STEP_TAG_PREFIX = "graph:step:"
_EVICTION_LOG_INTERVAL_S = 60.0

# Attribute keys, kept in one place so the emitter, queries and tests agree on them.
RUN_TYPE = "langchain.run_type"
NODE = "langgraph.node"
STEP = "langgraph.step"
TRIGGERS = "langgraph.triggers"
THREAD_ID = "langgraph.thread_id"
HIDDEN = "langchain.hidden"

# Process-wide registry, shared by every handler. Single dict operations are atomic under the
# GIL and each key is only written by the handlers of one run (whose events arrive in order),
# so no lock is needed.
MAX_REGISTERED_RUNS = 100_000
# run id -> the handler that records that run (a span or a skipped placeholder).
_OWNERS: dict[UUID, ObservabilityCallbackHandler] = {}
# run id -> the handler that adopted it from another handler; lets a handler that LangChain
# calls *after* the adopter for the same event stand aside. Empty except while nested agents run.
_ADOPTED: dict[UUID, ObservabilityCallbackHandler] = {}

# How a starting run relates to this handler (see ObservabilityCallbackHandler._route).
_CHILD = 0  # its parent is one of our runs
_ROOT = 1  # no handler of ours knows its parent: a root (nested under the caller's current span)
_ADOPT = 2  # another handler records its parent: we take the run over, under that handler's span
_IGNORE = 3  # another handler records it (it sits under a foreign run, or was adopted)


class _Foreign:
    """Marks a run that another handler records; its events and its children are ignored."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<foreign run>"


_FOREIGN = _Foreign()


def registered_runs() -> int:
    """Open runs in the process-wide registry (0 when no traced run is in flight)."""
    return len(_OWNERS) + len(_ADOPTED)


def _trim(registry: dict[UUID, Any]) -> None:
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


def _recorded_span(run_id: UUID) -> Span | None:
    """The open span that records ``run_id``, or its nearest recorded ancestor, in any handler."""
    owner = _OWNERS.get(run_id)
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
    span = _recorded_span(run_id)
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


def _adopted_parent(anchor: Span | None) -> ParentLike | None:
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


class _Skipped:
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


def _has_step_tag(tags: Sequence[str]) -> bool:
    # A LangGraph task's own run carries the non-inheritable tag "graph:step:N"; runs nested
    # inside a node share its ``langgraph_node`` metadata but not this tag. A plain loop: a
    # generator in any() costs several times more and this runs on every chain start.
    for tag in tags:  # noqa: SIM110
        if tag.startswith(_STEP_TAG_PREFIX):
            return True
    return False


def _serialized_name(serialized: Mapping[str, Any] | None) -> str | None:
    if not serialized:
        return None
    name = serialized.get("name")
    if name:
        return str(name)
    ids = serialized.get("id")
    if isinstance(ids, list) and ids:
        return str(ids[-1])
    return None


def _model_name(
    serialized: Mapping[str, Any] | None,
    metadata: Mapping[str, Any] | None,
    invocation_params: Mapping[str, Any] | None,
) -> str | None:
    # ls_model_name is what LangChain integrations publish for tracing; the rest are the
    # provider-specific spellings the model would otherwise be found under.
    if metadata:
        name = metadata.get("ls_model_name")
        if name:
            return str(name)
    if invocation_params:
        for key in ("model", "model_name", "model_id", "deployment_name"):
            name = invocation_params.get(key)
            if name:
                return str(name)
    if serialized:
        kwargs = serialized.get("kwargs")
        if isinstance(kwargs, Mapping):
            for key in ("model", "model_name", "model_id", "deployment_name"):
                name = kwargs.get(key)
                if name:
                    return str(name)
    return None


def _put_details(span: Span, prefix: str, details: Any) -> None:
    # Details (cache reads, reasoning, audio...) are already part of input/output tokens, so
    # they are attributes and never added to the totals.
    if isinstance(details, Mapping):
        attrs = span.attributes
        for key, value in details.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                attrs[f"{prefix}.{key}"] = value


def _record_llm_result(span: Span, response: Any) -> None:
    """Tokens, response model and finish reason from an ``LLMResult`` (absent fields are fine)."""
    generations = getattr(response, "generations", None) or ()
    usage: Any = None
    first: Any = None
    for batch in generations:
        for generation in batch:
            if first is None:
                first = generation
            message = getattr(generation, "message", None)
            usage = getattr(message, "usage_metadata", None) if message is not None else None
            if usage:
                first = generation
                break
        if usage:
            break

    llm_output = getattr(response, "llm_output", None)
    if not isinstance(llm_output, Mapping):
        llm_output = None

    if usage:
        span.set_llm(
            input_tokens=usage.get("input_tokens"),
            output_tokens=usage.get("output_tokens"),
            total_tokens=usage.get("total_tokens"),
        )
        _put_details(span, "llm.usage.input_token_details", usage.get("input_token_details"))
        _put_details(span, "llm.usage.output_token_details", usage.get("output_token_details"))
    elif llm_output is not None:
        raw = llm_output.get("token_usage") or llm_output.get("usage")
        if isinstance(raw, Mapping):
            input_tokens = raw.get("prompt_tokens", raw.get("input_tokens"))
            output_tokens = raw.get("completion_tokens", raw.get("output_tokens"))
            span.set_llm(
                input_tokens=input_tokens if isinstance(input_tokens, int) else None,
                output_tokens=output_tokens if isinstance(output_tokens, int) else None,
                total_tokens=raw.get("total_tokens") if isinstance(raw.get("total_tokens"), int) else None,
            )
            _put_details(span, "llm.usage.input_token_details", raw.get("prompt_tokens_details"))
            _put_details(span, "llm.usage.output_token_details", raw.get("completion_tokens_details"))

    response_model: Any = None
    finish_reason: Any = None
    if first is not None:
        message = getattr(first, "message", None)
        metadata = getattr(message, "response_metadata", None) if message is not None else None
        if isinstance(metadata, Mapping):
            response_model = metadata.get("model_name") or metadata.get("model")
            finish_reason = metadata.get("finish_reason") or metadata.get("stop_reason")
        info = getattr(first, "generation_info", None)
        if finish_reason is None and isinstance(info, Mapping):
            finish_reason = info.get("finish_reason")
    if response_model is None and llm_output is not None:
        response_model = llm_output.get("model_name") or llm_output.get("model")
    if response_model:
        if span.llm_model is None:
            span.llm_model = str(response_model)
            span.operation_name = f"llm.{response_model}"
        elif response_model != span.llm_model:
            span.attributes["llm.response_model"] = str(response_model)
    if finish_reason:
        span.attributes["llm.finish_reason"] = finish_reason


class ObservabilityCallbackHandler(BaseCallbackHandler):
    """Attach with ``config={"callbacks": [handler]}``; every finished span goes to ``submit``.

    ``submit`` is the connector's hot-path enqueue (an append to a bounded buffer) and is
    called on the agent's thread, once per finished span. ``capture_inputs`` stores
    references to inputs and outputs (redaction and size limits apply later, off the
    caller's path). One handler serves any number of concurrent invocations.
    """

    run_inline = True  # sync and inline: ~4 µs/event; thread-pool dispatch costs ~180 µs
    raise_error = False  # a bug in observability must never break the agent

    def __init__(
        self,
        submit: Callable[[Span], None],
        agent_name: str,
        *,
        capture_inputs: bool = False,
        max_open_runs: int = 10_000,
        sample_root: Callable[[str, str], bool] | None = None,
    ) -> None:
        super().__init__()
        if max_open_runs < 1:
            raise ValueError("max_open_runs must be at least 1")
        self._submit = submit
        # Sampling decision for a trace this handler starts (None: keep every trace).
        self._sample_root = sample_root
        self.agent_name = agent_name
        self.capture_inputs = capture_inputs
        self.max_open_runs = max_open_runs
        # run_id -> Span (tracked), _Skipped or _FOREIGN; insertion order = age, for eviction.
        self._runs: dict[UUID, Span | _Skipped | _Foreign] = {}
        self.evicted = 0
        self._evicted_logged = 0
        self._last_eviction_log = -_EVICTION_LOG_INTERVAL_S

    @property
    def open_runs(self) -> int:
        """Runs started and not yet ended (spans, skipped placeholders and foreign runs)."""
        return len(self._runs)

    def __repr__(self) -> str:
        return f"ObservabilityCallbackHandler(agent_name={self.agent_name!r}, open_runs={len(self._runs)})"

    # -- run bookkeeping ------------------------------------------------------------------

    def _open(self, run_id: UUID, parent: ParentLike | None, operation: str, attributes: dict[str, Any]) -> Span:
        span = self._new_span(parent, operation, attributes, time_ns())
        runs = self._runs
        runs[run_id] = span
        _OWNERS[run_id] = self
        if len(runs) > self.max_open_runs:
            self._evict()
        if len(_OWNERS) > MAX_REGISTERED_RUNS:
            _trim(_OWNERS)
        return span

    def _new_span(self, parent: ParentLike | None, operation: str, attributes: dict[str, Any], start_ns: int) -> Span:
        if parent is not None:
            span = Span(
                new_span_id(),
                parent.trace_id,
                parent.span_id,
                operation,
                self.agent_name,
                None,
                "started",
                attributes,
                start_ns,
                parent.sampled,
                getattr(parent, "tracestate", ()),
                getattr(parent, "baggage", None),
            )
        else:
            # A root run: nest under the caller's open span (obs.span(...) / attach(...)) so
            # the graph joins the trace the agent is already in.
            outer = current_parent()
            if outer is None:
                trace_id = new_trace_id()
                sample = self._sample_root
                sampled = True if sample is None else sample(trace_id, self.agent_name)
                span = Span(
                    new_span_id(),
                    trace_id,
                    None,
                    operation,
                    self.agent_name,
                    None,
                    "started",
                    attributes,
                    start_ns,
                    sampled,
                )
            else:
                span = Span(
                    new_span_id(),
                    outer.trace_id,
                    span_parent_id(outer),
                    operation,
                    self.agent_name,
                    None,
                    "started",
                    attributes,
                    start_ns,
                    outer.sampled,
                    getattr(outer, "tracestate", ()),
                    getattr(outer, "baggage", None),
                )
        return span

    def _skip(self, run_id: UUID, anchor: Span | None, name: str | None, hidden: bool) -> None:
        runs = self._runs
        runs[run_id] = _Skipped(anchor, name, time_ns(), hidden)
        _OWNERS[run_id] = self
        if len(runs) > self.max_open_runs:
            self._evict()
        if len(_OWNERS) > MAX_REGISTERED_RUNS:
            _trim(_OWNERS)

    def _ignore(self, run_id: UUID) -> None:
        """Another handler records this run: remember it only so that its children and its
        end event are ignored too (not registered: the registry names the recording handler)."""
        runs = self._runs
        runs[run_id] = _FOREIGN
        if len(runs) > self.max_open_runs:
            self._evict()

    def _disown(self, run_id: UUID) -> None:
        """Another handler adopted a run this handler opened: drop it unsubmitted, ignore its tree."""
        runs = self._runs
        if runs.get(run_id) is not None:
            runs[run_id] = _FOREIGN  # same key: keeps the run's place in the eviction order

    def _route(self, run_id: UUID, parent_run_id: UUID | None) -> tuple[Span | None, _Skipped | None, int]:
        """Where a starting run belongs: (nearest parent span, parent placeholder, how).

        ``how`` is ``_CHILD`` (its parent is ours), ``_ROOT``, ``_ADOPT`` (another of our
        handlers records the parent: this handler is the innermost one attached for the run,
        so it records it under that handler's span) or ``_IGNORE`` (recorded elsewhere; the
        run is already remembered as foreign).
        """
        if parent_run_id is None:
            return None, None, _ROOT
        entry = self._runs.get(parent_run_id)
        if entry is None:
            owner = _OWNERS.get(parent_run_id)
            if owner is None or owner is self:
                return None, None, _ROOT
            # LangChain called the outer handlers for this event first; whichever of them
            # opened this run drops it. Then the run is ours (registered by _open/_skip).
            previous = _OWNERS.get(run_id)
            if previous is not None and previous is not self:
                previous._disown(run_id)
            _ADOPTED[run_id] = self
            if len(_ADOPTED) > MAX_REGISTERED_RUNS:
                _trim(_ADOPTED)
            return owner._nearest(parent_run_id), None, _ADOPT
        if entry is _FOREIGN:
            self._ignore(run_id)
            return None, None, _IGNORE
        if _ADOPTED:
            # A handler called before this one for the same event adopted the run (local
            # handlers come first when a config's callbacks are a manager merged with a list).
            adopter = _ADOPTED.get(run_id)
            if adopter is not None and adopter is not self:
                self._ignore(run_id)
                return None, None, _IGNORE
        if entry.__class__ is _Skipped:
            return entry.anchor, entry, _CHILD  # type: ignore[union-attr,return-value]
        return entry, None, _CHILD  # type: ignore[return-value]

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
            if entry is _FOREIGN:
                continue
            if _OWNERS.get(run_id) is self:
                _OWNERS.pop(run_id, None)
            if _ADOPTED and _ADOPTED.get(run_id) is self:
                _ADOPTED.pop(run_id, None)
            if entry.__class__ is Span:
                span: Span = entry  # type: ignore[assignment]
                span.record_error(
                    f"open-run limit ({limit}) reached before this run's end event arrived",
                    "RunEvicted",
                )
                span.attributes["callback.evicted"] = True
                span.finish(now if now > span.start_ns else span.start_ns)
                self._submit(span)
        mono = monotonic()
        if mono - self._last_eviction_log >= _EVICTION_LOG_INTERVAL_S:
            # Rate-limited: this runs on the agent's thread, and a leak evicts on every event.
            logger.warning(
                "observability callback handler for %s evicted %d open run(s) (limit %d, %d since last report); "
                "their end events never arrived",
                self.agent_name,
                self.evicted,
                limit,
                self.evicted - self._evicted_logged,
            )
            self._last_eviction_log = mono
            self._evicted_logged = self.evicted

    def _promote(self, run_id: UUID, skipped: _Skipped) -> Span:
        """A skipped chain that turned out to be a compiled subgraph becomes a span, in place."""
        promoted = skipped.promoted
        if not promoted:
            name = skipped.name or "subgraph"
            promoted.append(self._new_span(skipped.anchor, name, {RUN_TYPE: "subgraph"}, skipped.start_ns))
        span = promoted[0]
        self._runs[run_id] = span  # same key: keeps the run's place in the eviction order
        return span

    def _close(self, run_id: UUID) -> Span | _Skipped | None:
        """Forget a run that ended; its registry entries go too (unless another handler records it)."""
        entry = self._runs.pop(run_id, None)
        if entry is None or entry is _FOREIGN:
            return None
        _OWNERS.pop(run_id, None)
        if _ADOPTED:
            _ADOPTED.pop(run_id, None)
        return entry  # type: ignore[return-value]

    def _end(self, run_id: UUID, output: Any = None) -> Span | None:
        entry = self._close(run_id)
        if entry is None or entry.__class__ is not Span:
            return None
        span: Span = entry  # type: ignore[assignment]
        if self.capture_inputs and output is not None:
            span.output_data = output
        return span

    def _finish(self, span: Span) -> None:
        end = time_ns()
        span.finish(end if end > span.start_ns else span.start_ns)
        self._submit(span)

    def _fail(self, run_id: UUID, error: BaseException) -> None:
        entry = self._close(run_id)
        if entry is None or entry.__class__ is not Span:
            return
        span: Span = entry  # type: ignore[assignment]
        if isinstance(error, GraphBubbleUp):
            # interrupt() pauses for a human and Command(graph=PARENT) hands control to the
            # parent graph: control flow, not failure.
            span.attributes["langgraph.bubble_up"] = type(error).__name__
            if isinstance(error, GraphInterrupt):
                span.attributes["langgraph.interrupted"] = True
        elif isinstance(error, GeneratorExit):
            # The consumer of astream()/stream() stopped reading early; the run did not fail.
            span.attributes["langchain.stream_closed_early"] = True
        else:
            span.record_error(error)
        self._finish(span)

    # -- chains: the graph, its nodes, subgraphs --------------------------------------------

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        parent, parent_skipped, how = self._route(run_id, parent_run_id)
        if how == _IGNORE:
            return
        name = kwargs.get("name")
        if tags and HIDDEN_TAG in tags:
            self._skip(run_id, parent, name, True)
            return
        if how != _CHILD:
            # The graph itself (or any chain run whose parent this handler never saw); an
            # adopted one is an agent invoked from another agent's node and nests under it.
            attributes: dict[str, Any] = {RUN_TYPE: "graph"}
            if metadata:
                thread_id = metadata.get("thread_id")
                if thread_id is not None:
                    attributes[THREAD_ID] = thread_id
            span = self._open(
                run_id,
                _adopted_parent(parent) if how == _ADOPT else None,
                name or _serialized_name(serialized) or "chain",
                attributes,
            )
            if self.capture_inputs:
                span.input_data = inputs
            return
        node = metadata.get("langgraph_node") if metadata else None
        if node is not None and tags and _has_step_tag(tags):
            if parent_skipped is not None and not parent_skipped.hidden and parent_run_id is not None:
                parent = self._promote(parent_run_id, parent_skipped)
            attributes = {RUN_TYPE: "node", NODE: node}
            step = metadata.get("langgraph_step")  # type: ignore[union-attr]
            if step is not None:
                attributes[STEP] = step
            triggers = metadata.get("langgraph_triggers")  # type: ignore[union-attr]
            if triggers:
                attributes[TRIGGERS] = triggers
            span = self._open(run_id, parent, str(node), attributes)
            if self.capture_inputs:
                span.input_data = inputs
            return
        self._skip(run_id, parent, name, False)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        span = self._end(run_id, outputs)
        if span is not None:
            self._finish(span)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._fail(run_id, error)

    # -- LLM calls --------------------------------------------------------------------------

    def _llm_start(
        self,
        serialized: dict[str, Any] | None,
        payload: Any,
        run_id: UUID,
        parent_run_id: UUID | None,
        tags: list[str] | None,
        metadata: dict[str, Any] | None,
        kwargs: dict[str, Any],
    ) -> None:
        anchor, _, how = self._route(run_id, parent_run_id)
        if how == _IGNORE:
            return
        parent = _adopted_parent(anchor) if how == _ADOPT else anchor
        invocation_params = kwargs.get("invocation_params")
        model = _model_name(serialized, metadata, invocation_params)
        attributes: dict[str, Any] = {RUN_TYPE: "llm"}
        if tags and HIDDEN_TAG in tags:
            attributes[HIDDEN] = True
        class_name = _serialized_name(serialized)
        if class_name:
            attributes["llm.class"] = class_name
        if metadata:
            provider = metadata.get("ls_provider")
            if provider:
                attributes["llm.provider"] = provider
            temperature = metadata.get("ls_temperature")
            if temperature is not None:
                attributes["llm.temperature"] = temperature
            max_tokens = metadata.get("ls_max_tokens")
            if max_tokens is not None:
                attributes["llm.max_tokens"] = max_tokens
        if "llm.temperature" not in attributes and invocation_params:
            temperature = invocation_params.get("temperature")
            if temperature is not None:
                attributes["llm.temperature"] = temperature
        span = self._open(run_id, parent, f"llm.{model}" if model else "llm", attributes)
        span.llm_model = model
        if self.capture_inputs:
            span.input_data = payload

    def on_chat_model_start(
        self,
        serialized: dict[str, Any] | None,
        messages: list[list[Any]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._llm_start(serialized, messages, run_id, parent_run_id, tags, metadata, kwargs)

    def on_llm_start(
        self,
        serialized: dict[str, Any] | None,
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._llm_start(serialized, prompts, run_id, parent_run_id, tags, metadata, kwargs)

    def on_llm_new_token(self, token: Any, *, run_id: UUID, **kwargs: Any) -> None:
        # Streaming only: remember time to first token, the latency users actually feel.
        span = self._runs.get(run_id)
        if span is not None and span.__class__ is Span:
            attrs = span.attributes
            if "llm.time_to_first_token_ms" not in attrs:
                attrs["llm.time_to_first_token_ms"] = (time_ns() - span.start_ns) / 1e6  # type: ignore[union-attr]

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        span = self._end(run_id)
        if span is None:
            return
        _record_llm_result(span, response)
        if self.capture_inputs:
            span.output_data = response
        self._finish(span)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        span = self._runs.get(run_id)
        partial = kwargs.get("response")
        if partial is not None and span is not None and span.__class__ is Span:
            _record_llm_result(span, partial)  # type: ignore[arg-type]
        self._fail(run_id, error)

    # -- tools and retrievers ---------------------------------------------------------------

    def on_tool_start(
        self,
        serialized: dict[str, Any] | None,
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        anchor, _, how = self._route(run_id, parent_run_id)
        if how == _IGNORE:
            return
        parent = _adopted_parent(anchor) if how == _ADOPT else anchor
        name = _serialized_name(serialized) or kwargs.get("name") or "tool"
        attributes: dict[str, Any] = {RUN_TYPE: "tool", "tool.name": name}
        if tags and HIDDEN_TAG in tags:
            attributes[HIDDEN] = True
        tool_call_id = kwargs.get("tool_call_id")
        if tool_call_id:
            attributes["tool.call_id"] = tool_call_id
        span = self._open(run_id, parent, f"tool.{name}", attributes)
        if self.capture_inputs:
            span.input_data = inputs if inputs is not None else input_str

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        span = self._end(run_id, output)
        if span is not None:
            self._finish(span)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._fail(run_id, error)

    def on_retriever_start(
        self,
        serialized: dict[str, Any] | None,
        query: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        anchor, _, how = self._route(run_id, parent_run_id)
        if how == _IGNORE:
            return
        parent = _adopted_parent(anchor) if how == _ADOPT else anchor
        name = kwargs.get("name") or _serialized_name(serialized) or "retriever"
        attributes: dict[str, Any] = {RUN_TYPE: "retriever"}
        if tags and HIDDEN_TAG in tags:
            attributes[HIDDEN] = True
        span = self._open(run_id, parent, f"retriever.{name}", attributes)
        if self.capture_inputs:
            span.input_data = query

    def on_retriever_end(self, documents: Sequence[Any], *, run_id: UUID, **kwargs: Any) -> None:
        span = self._end(run_id, documents)
        if span is not None:
            if isinstance(documents, Sized):
                span.attributes["retriever.documents"] = len(documents)
            self._finish(span)

    def on_retriever_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._fail(run_id, error)

    # -- annotations on the nearest span ---------------------------------------------------

    def _nearest(self, run_id: UUID) -> Span | None:
        """The span recording ``run_id``, or the nearest recorded ancestor of a skipped run."""
        entry = self._runs.get(run_id)
        if entry is None or entry is _FOREIGN:
            return None
        if entry.__class__ is _Skipped:
            return entry.anchor  # type: ignore[union-attr]
        return entry  # type: ignore[return-value]

    def on_retry(self, retry_state: Any, *, run_id: UUID, **kwargs: Any) -> None:
        span = self._nearest(run_id)
        if span is not None:
            span.add_event("retry", {"attempt": getattr(retry_state, "attempt_number", None)})

    def on_custom_event(
        self,
        name: str,
        data: Any,
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        span = self._nearest(run_id)
        if span is not None:
            span.add_event(name, data if self.capture_inputs and isinstance(data, dict) else None)
