"""The ``context`` node: the W3C trace context of one connector invocation.

An incoming ``traceparent`` continues the caller's trace (an invalid one starts a new trace;
an invalid ``tracestate`` is dropped on its own); otherwise a new root is made. The sampling
decision is taken here once, from the trace id, so every process agrees on it.
"""

from __future__ import annotations

from typing import Any

from ..config import build_sampler
from ..redaction import redact_text
from ..runtime import resolve_context
from ..state import ObservabilityConnectorState
from ..trace_context import (
    TraceContext,
    extract,
    format_tracestate,
    inject,
    new_span_id,
    new_trace_id,
)

__all__ = ["create_context", "extract_context", "inject_context", "manage_context"]

_CONNECTOR = "observability_connector"


def _rate(state: ObservabilityConnectorState) -> float:
    rate = state.get("sample_rate", 1.0)
    if not isinstance(rate, (int, float)) or not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"sample_rate {rate!r} is not a number between 0 and 1")
    return float(rate)


def _baggage(state: ObservabilityConnectorState) -> dict[str, str]:
    bag = dict(state.get("baggage") or {})
    for key in ("request_id", "experiment_id", "user_id"):
        value = state.get(key)  # type: ignore[misc]
        if value:
            bag[key] = str(value)
    return bag


async def create_context(state: ObservabilityConnectorState, runtime: Any = None) -> ObservabilityConnectorState:
    """Start a new trace for this invocation (a root span id, no parent).

    The connector starts this trace, so its own rate applies (``sampling.agent_rates``), capped
    by the caller's ``sample_rate``.
    """
    trace_id = new_trace_id()
    ctx = resolve_context(runtime)
    sampler = ctx.sampler or build_sampler(ctx.settings)
    return {
        **state,
        "current_trace_id": trace_id,
        "current_span_id": new_span_id(),
        "current_parent_span_id": None,
        "sampled": sampler.sample_root(trace_id, _CONNECTOR, _rate(state)),
        "baggage": _baggage(state),
    }


async def extract_context(state: ObservabilityConnectorState, runtime: Any = None) -> ObservabilityConnectorState:
    """Continue the trace named by ``state["traceparent"]``; start a new one if it is invalid."""
    headers = {"traceparent": state.get("traceparent") or "", "tracestate": state.get("tracestate") or ""}
    parent = extract(headers) if state.get("traceparent") else None
    if parent is None:
        fresh = await create_context(state, runtime)
        if state.get("traceparent"):
            fresh["error_details"] = {
                **(state.get("error_details") or {}),
                # Echoes the caller's header: redacted, as anything that may hold a token.
                "traceparent": redact_text(
                    f"invalid traceparent {str(state.get('traceparent'))[:200]!r}; started a new trace"
                ),
            }
        fresh["tracestate"] = None
        return fresh
    return {
        **state,
        "current_trace_id": parent.trace_id,
        "current_span_id": new_span_id(),
        "current_parent_span_id": parent.span_id,
        # Parent-based: an upstream decision is honoured; only an unsampled parent with our
        # own rate can't resurrect the trace.
        "sampled": parent.sampled,
        "tracestate": format_tracestate(parent.tracestate) or None,
        "baggage": {**_baggage(state), **dict(parent.baggage)},
    }


async def inject_context(state: ObservabilityConnectorState, runtime: Any = None) -> ObservabilityConnectorState:
    """Write ``traceparent`` / ``tracestate`` / ``baggage`` for the next hop back into the state."""
    trace_id = state.get("current_trace_id")
    span_id = state.get("current_span_id")
    if not trace_id or not span_id:
        return state
    ctx = TraceContext(
        trace_id=trace_id,
        span_id=span_id,
        sampled=bool(state.get("sampled", True)),
        tracestate=_pairs(state.get("tracestate")),
        baggage=state.get("baggage") or {},
    )
    headers: dict[str, str] = {}
    inject(headers, ctx)
    return {
        **state,
        "traceparent": headers.get("traceparent"),
        "tracestate": headers.get("tracestate"),
        "baggage": dict(ctx.baggage),
    }


def _pairs(tracestate: str | None) -> tuple[tuple[str, str], ...]:
    from ..trace_context import parse_tracestate

    return parse_tracestate(tracestate) or () if tracestate else ()


async def manage_context(state: ObservabilityConnectorState, runtime: Any = None) -> dict[str, Any]:
    """The graph node: extract when a traceparent came in, otherwise create; then inject."""
    updates: dict[str, Any] = {}
    try:
        _rate(state)
    except ValueError as exc:
        # A bad rate must not cost the batch: keep everything and say so.
        message = f"{exc}; every event of this call is kept (rate 1.0)"
        updates = {
            "error": message,
            "error_type": "invalid_input",
            "emission_errors": [*state.get("emission_errors", []), message],
            "sample_rate": 1.0,
        }
        state = {**state, "sample_rate": 1.0}
    new_state = await (extract_context if state.get("traceparent") else create_context)(state, runtime)
    new_state = await inject_context(new_state)
    return {**_ids(new_state), **updates}


def _ids(state: ObservabilityConnectorState) -> dict[str, Any]:
    keys = (
        "current_trace_id",
        "current_span_id",
        "current_parent_span_id",
        "sampled",
        "traceparent",
        "tracestate",
        "baggage",
        "error_details",
    )
    return {k: state[k] for k in keys if k in state}  # type: ignore[literal-required]
