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
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence, Sized
from time import monotonic, time_ns
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler

# LangGraph's control-flow exceptions (interrupt(), Command(graph=PARENT)) are not failures.
from langgraph.errors import GraphBubbleUp, GraphInterrupt

from .spans import SpanRecord
from .trace_context import current_parent, new_span_id, new_trace_id

__all__ = ["ObservabilityCallbackHandler"]

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


class _Skipped:
    """Placeholder for a run that is not a span; it only forwards its children to ``anchor``."""

    __slots__ = ("anchor", "hidden", "name", "promoted", "start_ns")

    def __init__(self, anchor: SpanRecord | None, name: str | None, start_ns: int, hidden: bool) -> None:
        self.anchor = anchor  # nearest tracked ancestor (None: the run sits above every span)
        self.name = name
        self.start_ns = start_ns
        self.hidden = hidden
        # Filled by promotion. A list because list.append is atomic: when parallel nodes of a
        # subgraph start on pool threads at once, every thread appends and all use item 0, so
        # the subgraph gets exactly one span without a lock.
        self.promoted: list[SpanRecord] = []


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


def _put_details(span: SpanRecord, prefix: str, details: Any) -> None:
    # Details (cache reads, reasoning, audio...) are already part of input/output tokens, so
    # they are attributes and never added to the totals.
    if isinstance(details, Mapping):
        attrs = span.attributes
        for key, value in details.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                attrs[f"{prefix}.{key}"] = value


def _record_llm_result(span: SpanRecord, response: Any) -> None:
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
        submit: Callable[[SpanRecord], None],
        agent_name: str,
        *,
        capture_inputs: bool = False,
        max_open_runs: int = 10_000,
    ) -> None:
        super().__init__()
        if max_open_runs < 1:
            raise ValueError("max_open_runs must be at least 1")
        self._submit = submit
        self.agent_name = agent_name
        self.capture_inputs = capture_inputs
        self.max_open_runs = max_open_runs
        # run_id -> SpanRecord (tracked) or _Skipped; insertion order = age, for eviction.
        self._runs: dict[UUID, SpanRecord | _Skipped] = {}
        self.evicted = 0
        self._evicted_logged = 0
        self._last_eviction_log = -_EVICTION_LOG_INTERVAL_S

    @property
    def open_runs(self) -> int:
        """Runs started and not yet ended (spans and skipped placeholders)."""
        return len(self._runs)

    # -- run bookkeeping ------------------------------------------------------------------

    def _open(self, run_id: UUID, parent: SpanRecord | None, operation: str, attributes: dict[str, Any]) -> SpanRecord:
        span = self._new_span(parent, operation, attributes, time_ns())
        runs = self._runs
        runs[run_id] = span
        if len(runs) > self.max_open_runs:
            self._evict()
        return span

    def _new_span(
        self, parent: SpanRecord | None, operation: str, attributes: dict[str, Any], start_ns: int
    ) -> SpanRecord:
        if parent is not None:
            span = SpanRecord(
                new_span_id(),
                parent.trace_id,
                parent.span_id,
                operation,
                self.agent_name,
                start_ns,
                attributes,
                parent.sampled,
                parent.tracestate,
                parent.baggage,
            )
        else:
            # A root run: nest under the caller's open span (obs.span(...) / attach(...)) so
            # the graph joins the trace the agent is already in.
            outer = current_parent()
            if outer is None:
                span = SpanRecord(new_span_id(), new_trace_id(), None, operation, self.agent_name, start_ns, attributes)
            else:
                span = SpanRecord(
                    new_span_id(),
                    outer.trace_id,
                    outer.span_id,
                    operation,
                    self.agent_name,
                    start_ns,
                    attributes,
                    outer.sampled,
                    getattr(outer, "tracestate", ()),
                    getattr(outer, "baggage", None),
                )
        return span

    def _skip(self, run_id: UUID, anchor: SpanRecord | None, name: str | None, hidden: bool) -> None:
        runs = self._runs
        runs[run_id] = _Skipped(anchor, name, time_ns(), hidden)
        if len(runs) > self.max_open_runs:
            self._evict()

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
            if entry.__class__ is SpanRecord:
                span: SpanRecord = entry  # type: ignore[assignment]
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

    def _parent(self, parent_run_id: UUID | None) -> tuple[SpanRecord | None, _Skipped | None, bool]:
        """(nearest tracked span, the parent's placeholder if it was skipped, parent known?)."""
        if parent_run_id is None:
            return None, None, False
        entry = self._runs.get(parent_run_id)
        if entry is None:
            return None, None, False
        if entry.__class__ is _Skipped:
            return entry.anchor, entry, True  # type: ignore[union-attr,return-value]
        return entry, None, True  # type: ignore[return-value]

    def _promote(self, run_id: UUID, skipped: _Skipped) -> SpanRecord:
        """A skipped chain that turned out to be a compiled subgraph becomes a span, in place."""
        promoted = skipped.promoted
        if not promoted:
            name = skipped.name or "subgraph"
            promoted.append(self._new_span(skipped.anchor, name, {RUN_TYPE: "subgraph"}, skipped.start_ns))
        span = promoted[0]
        self._runs[run_id] = span  # same key: keeps the run's place in the eviction order
        return span

    def _end(self, run_id: UUID, output: Any = None) -> SpanRecord | None:
        entry = self._runs.pop(run_id, None)
        if entry is None or entry.__class__ is not SpanRecord:
            return None
        span: SpanRecord = entry  # type: ignore[assignment]
        if self.capture_inputs and output is not None:
            span.output_data = output
        return span

    def _finish(self, span: SpanRecord) -> None:
        end = time_ns()
        span.finish(end if end > span.start_ns else span.start_ns)
        self._submit(span)

    def _fail(self, run_id: UUID, error: BaseException) -> None:
        entry = self._runs.pop(run_id, None)
        if entry is None or entry.__class__ is not SpanRecord:
            return
        span: SpanRecord = entry  # type: ignore[assignment]
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
        name = kwargs.get("name")
        parent, parent_skipped, known = self._parent(parent_run_id)
        if tags and HIDDEN_TAG in tags:
            self._skip(run_id, parent, name, True)
            return
        if not known:
            # The graph itself (or any chain run whose parent this handler never saw).
            attributes: dict[str, Any] = {RUN_TYPE: "graph"}
            if metadata:
                thread_id = metadata.get("thread_id")
                if thread_id is not None:
                    attributes[THREAD_ID] = thread_id
            span = self._open(run_id, None, name or _serialized_name(serialized) or "chain", attributes)
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
        parent = self._parent(parent_run_id)[0]
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
        if span is not None and span.__class__ is SpanRecord:
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
        if partial is not None and span is not None and span.__class__ is SpanRecord:
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
        parent = self._parent(parent_run_id)[0]
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
        parent = self._parent(parent_run_id)[0]
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

    def _nearest(self, run_id: UUID) -> SpanRecord | None:
        entry = self._runs.get(run_id)
        if entry is None:
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
