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

LangGraph's control flow: every span of a run on a thread carries ``langgraph.thread_id``;
``interrupt()`` and ``Command`` hand-offs end spans ``ok`` (``langgraph.bubble_up``,
``langgraph.interrupted``, also on the graph span of a run that paused); a run that continues
a thread (``Command`` or ``None`` input) names the thread's previous trace in
``langgraph.resumes_trace_id`` (:mod:`callback_threads`); a streamed LLM call gets
``llm.time_to_first_token_ms`` at its first chunk with output.

Hot path: ``run_inline = True`` makes LangChain call the handler synchronously on the
caller's thread or loop, far cheaper than the default thread-pool dispatch. So every method
does in-memory work only: no I/O, no locks (single dict operations are atomic under the GIL),
no copies and no serialisation — captured inputs and outputs are references, sized and
redacted later by the graph off the caller's path. Ids come from :mod:`trace_context`
(``random.getrandbits``, never ``os.urandom``).

The handler is split by job: :mod:`callback_runs` keeps one handler's open runs (and bounds
them), :mod:`callback_registry` the process-wide map that lets nested agents' handlers share
one trace (and :func:`node_context`), :mod:`callback_payloads` reads LangChain's payloads.
"""

from __future__ import annotations

from collections.abc import Sequence, Sized
from time import time_ns
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler

from .callback_payloads import (
    HIDDEN,
    HIDDEN_TAG,
    INTERRUPTED,
    NODE,
    RESUMES_TRACE_ID,
    RUN_TYPE,
    STEP,
    THREAD_ID,
    TRIGGERS,
    TTFT_MS,
    has_step_tag,
    is_first_token,
    model_name,
    record_llm_result,
    serialized_name,
    thread_of,
)
from .callback_registry import (
    ADOPT,
    CHILD,
    IGNORE,
    MAX_REGISTERED_RUNS,
    ROOT,
    adopted_parent,
    node_context,
    registered_runs,
)
from .callback_runs import RunTree
from .callback_threads import is_resume, link_run
from .spans import Span

__all__ = [
    "HIDDEN_TAG",
    "MAX_REGISTERED_RUNS",
    "ObservabilityCallbackHandler",
    "node_context",
    "registered_runs",
]


class ObservabilityCallbackHandler(RunTree, BaseCallbackHandler):
    """Attach with ``config={"callbacks": [handler]}``; every finished span goes to ``submit``.

    ``submit`` is the connector's hot-path enqueue (an append to a bounded buffer) and is
    called on the agent's thread, once per finished span. ``capture_inputs`` stores
    references to inputs and outputs (redaction and size limits apply later, off the
    caller's path). One handler serves any number of concurrent invocations. The constructor
    and the run bookkeeping come from :class:`~callback_runs.RunTree`.
    """

    run_inline = True  # sync and inline: thread-pool dispatch costs far more per event
    raise_error = False  # a bug in observability must never break the agent

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
        if how == IGNORE:
            return
        name = kwargs.get("name")
        if tags and HIDDEN_TAG in tags:
            self._skip(run_id, parent, name, True)
            return
        if how != CHILD:
            # The graph itself (or any chain run whose parent this handler never saw); an
            # adopted one is an agent invoked from another agent's node and nests under it.
            attributes: dict[str, Any] = {RUN_TYPE: "graph"}
            anchor = adopted_parent(parent) if how == ADOPT else None
            thread_id = thread_of(metadata, parent)
            if thread_id is not None:
                attributes[THREAD_ID] = thread_id
            span = self._open(run_id, anchor, name or serialized_name(serialized) or "chain", attributes)
            if thread_id is not None and how == ROOT:
                # A top-level run of a thread: the thread's latest trace from now on; a run that
                # continues a paused thread names the trace it continues.
                resumed = link_run(thread_id, span.trace_id, is_resume(inputs))
                if resumed is not None:
                    span.attributes[RESUMES_TRACE_ID] = resumed
            if self.capture_inputs:
                span.input_data = inputs
            return
        node = metadata.get("langgraph_node") if metadata else None
        if node is not None and tags and has_step_tag(tags):
            thread_id = thread_of(metadata, parent)
            if parent_skipped is not None and not parent_skipped.hidden and parent_run_id is not None:
                parent = self._promote(parent_run_id, parent_skipped, thread_id)
            attributes = {RUN_TYPE: "node", NODE: node}
            if thread_id is not None:
                attributes[THREAD_ID] = thread_id
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
            # A graph that paused ends normally (its pending interrupts are in the output only
            # under stream_mode="values"/invoke); its span says so too, so that a paused
            # conversation's trace is findable from its top.
            if span.attributes.get(RUN_TYPE) == "graph" and (
                (self._paused and self._paused_here(span)) or (outputs.__class__ is dict and "__interrupt__" in outputs)
            ):
                span.attributes[INTERRUPTED] = True
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
        if how == IGNORE:
            return
        parent = adopted_parent(anchor) if how == ADOPT else anchor
        invocation_params = kwargs.get("invocation_params")
        model = model_name(serialized, metadata, invocation_params)
        attributes: dict[str, Any] = {RUN_TYPE: "llm"}
        if tags and HIDDEN_TAG in tags:
            attributes[HIDDEN] = True
        thread_id = thread_of(metadata, parent)
        if thread_id is not None:
            attributes[THREAD_ID] = thread_id
        class_name = serialized_name(serialized)
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

    def on_llm_new_token(self, token: Any, *, run_id: UUID, chunk: Any = None, **kwargs: Any) -> None:
        # Streaming only (a non-streaming call never gets here, so it has no such attribute):
        # time to first token, the latency a user of a streaming UI actually feels.
        span = self._runs.get(run_id)
        if span is not None and span.__class__ is Span:
            attrs = span.attributes  # type: ignore[union-attr]
            if TTFT_MS not in attrs and is_first_token(token, chunk):
                attrs[TTFT_MS] = (time_ns() - span.start_ns) / 1e6  # type: ignore[union-attr]

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        span = self._end(run_id)
        if span is None:
            return
        record_llm_result(span, response)
        if self.capture_inputs:
            span.output_data = response
        self._finish(span)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        span = self._runs.get(run_id)
        partial = kwargs.get("response")
        if partial is not None and span is not None and span.__class__ is Span:
            record_llm_result(span, partial)  # type: ignore[arg-type]
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
        if how == IGNORE:
            return
        parent = adopted_parent(anchor) if how == ADOPT else anchor
        name = serialized_name(serialized) or kwargs.get("name") or "tool"
        attributes: dict[str, Any] = {RUN_TYPE: "tool", "tool.name": name}
        if tags and HIDDEN_TAG in tags:
            attributes[HIDDEN] = True
        thread_id = thread_of(metadata, parent)
        if thread_id is not None:
            attributes[THREAD_ID] = thread_id
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
        if how == IGNORE:
            return
        parent = adopted_parent(anchor) if how == ADOPT else anchor
        name = kwargs.get("name") or serialized_name(serialized) or "retriever"
        attributes: dict[str, Any] = {RUN_TYPE: "retriever"}
        if tags and HIDDEN_TAG in tags:
            attributes[HIDDEN] = True
        thread_id = thread_of(metadata, parent)
        if thread_id is not None:
            attributes[THREAD_ID] = thread_id
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
