"""What the callback handler reads from LangChain's payloads, and the attribute keys it writes.

Pure functions of LangChain's data (serialized runnables, metadata, ``LLMResult``): run names,
model names, token usage, finish reasons.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .spans import Span

HIDDEN_TAG = "langsmith:hidden"
_STEP_TAG_PREFIX = "graph:step:"

# Attribute keys, kept in one place so the emitter, queries and tests agree on them.
RUN_TYPE = "langchain.run_type"
NODE = "langgraph.node"
STEP = "langgraph.step"
TRIGGERS = "langgraph.triggers"
THREAD_ID = "langgraph.thread_id"
HIDDEN = "langchain.hidden"
RESUMES_TRACE_ID = "langgraph.resumes_trace_id"
INTERRUPTED = "langgraph.interrupted"
TTFT_MS = "llm.time_to_first_token_ms"


def has_step_tag(tags: Sequence[str]) -> bool:
    # A LangGraph task's own run carries the non-inheritable tag "graph:step:N"; runs nested
    # inside a node share its ``langgraph_node`` metadata but not this tag. A plain loop: a
    # generator in any() costs more, and this runs on every chain start.
    for tag in tags:  # noqa: SIM110
        if tag.startswith(_STEP_TAG_PREFIX):
            return True
    return False


def thread_of(metadata: Mapping[str, Any] | None, parent: object) -> str | None:
    """The LangGraph thread a run belongs to: ``configurable.thread_id`` or its parent span's.

    LangChain copies scalar ``configurable`` values into every run's metadata, so inside a
    graph invoked with a thread every run carries it; the parent's attribute covers runs whose
    metadata lacks it (a nested agent invoked without the config). Always a string: it is an
    identifier, and the stores keep it as text.
    """
    if metadata:
        thread = metadata.get("thread_id")
        if thread is not None:
            return thread if thread.__class__ is str else str(thread)
    if parent is not None and parent.__class__ is Span:
        return parent.attributes.get(THREAD_ID)  # type: ignore[attr-defined,no-any-return]
    return None


def is_first_token(token: Any, chunk: Any) -> bool:
    """Whether a streamed chunk carries output, so time to first token is measured at it.

    Providers often open a stream with an empty chunk (OpenAI's role-only delta) before the
    model has produced anything; that is not the first token. A chunk whose text is empty but
    that carries tool-call fragments or content blocks (reasoning, Anthropic's list content) is.
    """
    if token:
        return True
    message = getattr(chunk, "message", None)
    if message is None:
        return bool(getattr(chunk, "text", None))
    return bool(getattr(message, "content", None) or getattr(message, "tool_call_chunks", None))


def serialized_name(serialized: Mapping[str, Any] | None) -> str | None:
    if not serialized:
        return None
    name = serialized.get("name")
    if name:
        return str(name)
    ids = serialized.get("id")
    if isinstance(ids, list) and ids:
        return str(ids[-1])
    return None


def model_name(
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


def record_llm_result(span: Span, response: Any) -> None:
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
