"""Our span rows in the OpenTelemetry GenAI semantic conventions, and back (OTLP export and the collector).

One place for the attribute names both directions use. The names are the current GenAI
conventions (``gen_ai.provider.name`` replaced ``gen_ai.system``; cache tokens are
``gen_ai.usage.cache_read.input_tokens`` / ``gen_ai.usage.cache_creation.input_tokens``); the
collector also reads the older names a service may still send. Our own values that have no
convention (tier, status, the original ids when they were not W3C ids) go under ``obs.``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "AGENT_NAME",
    "CACHE_CREATION_TOKENS",
    "CACHE_READ_TOKENS",
    "CONVERSATION_ID",
    "COST_TOTAL",
    "ERROR_TYPE",
    "INPUT_TOKENS",
    "OBS_AGENT_TIER",
    "OBS_PARENT_SPAN_ID",
    "OBS_SPAN_ID",
    "OBS_STATUS",
    "OBS_TRACE_ID",
    "OPERATION_NAME",
    "OUTPUT_TOKENS",
    "PROVIDER_NAME",
    "REQUEST_MODEL",
    "RESPONSE_MODEL",
    "THREAD_ATTRIBUTE",
    "TOOL_NAME",
    "USER_ID",
    "operation_of",
    "row_attributes",
]

OPERATION_NAME: Final = "gen_ai.operation.name"
PROVIDER_NAME: Final = "gen_ai.provider.name"
REQUEST_MODEL: Final = "gen_ai.request.model"
RESPONSE_MODEL: Final = "gen_ai.response.model"
INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
CACHE_READ_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
CACHE_CREATION_TOKENS: Final = "gen_ai.usage.cache_creation.input_tokens"
AGENT_NAME: Final = "gen_ai.agent.name"
CONVERSATION_ID: Final = "gen_ai.conversation.id"
#: OpenTelemetry's general convention for the end user a span acts for (the ``user_id`` column).
USER_ID: Final = "user.id"
TOOL_NAME: Final = "gen_ai.tool.name"
ERROR_TYPE: Final = "error.type"
OBS_AGENT_TIER: Final = "obs.agent.tier"
OBS_STATUS: Final = "obs.status"
OBS_TRACE_ID: Final = "obs.trace_id"
OBS_SPAN_ID: Final = "obs.span_id"
OBS_PARENT_SPAN_ID: Final = "obs.parent_span_id"
#: Phoenix (OpenInference) shows a span's kind from this; the GenAI conventions have no such key.
OPENINFERENCE_KIND: Final = "openinference.span.kind"
#: The attribute a received conversation id is also kept under (rows stored before the
#: ``thread_id`` column existed carry only this one).
THREAD_ATTRIBUTE: Final = "thread_id"
#: OpenInference's USD cost of an LLM call (Phoenix shows it); the GenAI conventions have none.
COST_TOTAL: Final = "llm.cost.total"

#: Row attributes that name a thread, in the order they are looked for.
_THREAD_KEYS = (CONVERSATION_ID, "langgraph.thread_id", THREAD_ATTRIBUTE)
#: Row attributes folded into convention keys (not repeated under their own name).
_FOLDED = frozenset(
    {
        "llm.provider",
        "llm.response_model",
        "llm.usage.input_token_details.cache_read",
        "llm.usage.input_token_details.cache_creation",
        "input",
        "output",
    }
)
_KIND = {"chat": "LLM", "execute_tool": "TOOL", "invoke_agent": "AGENT"}


def operation_of(row: Any, attrs: Mapping[str, Any]) -> str:
    """``chat`` for a model call, ``execute_tool`` for a tool, ``invoke_agent`` for everything else."""
    given = attrs.get(OPERATION_NAME)
    if isinstance(given, str) and given:
        return given
    run_type = attrs.get("langchain.run_type")
    if row.llm_model or run_type in ("llm", "chat_model") or row.total_tokens is not None:
        return "chat"
    if run_type == "tool" or "tool.name" in attrs:
        return "execute_tool"
    return "invoke_agent"


def row_attributes(row: Any) -> dict[str, Any]:
    """The span attributes of one stored row: the conventions' keys first, then the row's own.

    Values stay Python values (the encoder types them); a row attribute whose name a convention
    key already took is not repeated.
    """
    attrs: Mapping[str, Any] = row.attributes or {}
    operation = operation_of(row, attrs)
    out: dict[str, Any] = {OPERATION_NAME: operation, OPENINFERENCE_KIND: _KIND.get(operation, "CHAIN")}
    out[AGENT_NAME] = row.agent_name
    provider = attrs.get("llm.provider") or attrs.get(PROVIDER_NAME)
    if provider:
        out[PROVIDER_NAME] = str(provider)
    if row.llm_model:
        out[REQUEST_MODEL] = row.llm_model
        out[RESPONSE_MODEL] = str(attrs.get("llm.response_model") or row.llm_model)
    if row.input_tokens is not None:
        out[INPUT_TOKENS] = int(row.input_tokens)
    if row.output_tokens is not None:
        out[OUTPUT_TOKENS] = int(row.output_tokens)
    for key, ours in (
        (CACHE_READ_TOKENS, "llm.usage.input_token_details.cache_read"),
        (CACHE_CREATION_TOKENS, "llm.usage.input_token_details.cache_creation"),
    ):
        value = attrs.get(key, attrs.get(ours))
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = int(value)
    thread = getattr(row, "thread_id", None) or next(
        (attrs[k] for k in _THREAD_KEYS if attrs.get(k) not in (None, "")), None
    )
    if thread is not None:
        out[CONVERSATION_ID] = str(thread)
    user = getattr(row, "user_id", None)
    if user is not None:
        out[USER_ID] = user
    tool = attrs.get("tool.name")
    if operation == "execute_tool" and tool:
        out[TOOL_NAME] = str(tool)
    if row.status in ("error", "timeout"):
        out[ERROR_TYPE] = row.error_type or ("Timeout" if row.status == "timeout" else "Error")
    out[OBS_AGENT_TIER] = int(row.agent_tier)
    out[OBS_STATUS] = row.status
    cost = getattr(row, "cost_usd", None)
    if cost is not None:
        out[COST_TOTAL] = float(cost)
    if "input" in attrs:
        out["input.value"] = attrs["input"]
    if "output" in attrs:
        out["output.value"] = attrs["output"]
    for key, value in attrs.items():
        if key not in _FOLDED and key not in out:
            out[key] = value
    return out
