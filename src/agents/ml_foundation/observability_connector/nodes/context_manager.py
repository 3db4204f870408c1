"""The ``context`` node and the host codebase's context functions.

``create_context`` / ``extract_context`` / ``inject_context`` keep the host's names, keys and
return shapes (its agents and tests call them directly with plain dicts); the graph's node,
``manage_context``, uses the same pieces. Every function here returns a dict of updates and
never raises: a failure comes back as ``error`` / ``error_type`` / ``error_details``.

Request metadata travels in ``tracestate`` as ``request_id``, ``experiment_id``, ``user_id``,
``sampled`` and ``sample_rate`` members, as the host's services expect. Our own W3C
propagation (``trace_context.inject`` / ``extract``, used by the agent API) carries it in
``baggage`` instead; ``extract_context`` reads both.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from random import getrandbits
from typing import Any

from langgraph.runtime import Runtime

from ..policies import build_sampler
from ..redaction import redact_text
from ..runtime import ConnectorContext, resolve_context
from ..sampling import check_sample_rate
from ..state import ObservabilityConnectorState
from ..trace_context import extract, format_traceparent, format_tracestate, new_span_id, new_trace_id

__all__ = ["create_context", "extract_context", "inject_context", "manage_context"]

_CONNECTOR = "observability_connector"
_REQUEST_KEYS = ("request_id", "experiment_id", "user_id")


def new_request_id() -> str:
    """A random UUID string without ``os.urandom`` (see trace_context: ids never touch the syscall)."""
    return str(uuid.UUID(int=getrandbits(128), version=4))


def _rate(value: object) -> float:
    return 1.0 if value is None else check_sample_rate(value)


def _failure(error_type: str, exc: BaseException) -> dict[str, Any]:
    message = redact_text(f"{type(exc).__name__}: {exc}")
    return {"error": message, "error_type": error_type, "error_details": {"exception": message}}


def _sampled(state: Mapping[str, Any], trace_id: str, rate: float, runtime: Runtime[ConnectorContext] | None) -> bool:
    """The sampler's decision for the new trace (the one decision for this invocation's trace).

    An explicit ``sample_rate`` decides alone (1.0 keeps every trace, 0.0 none, in between by
    trace id); without one, the configured policy for traces the connector starts applies."""
    ctx = resolve_context(runtime)
    sampler = ctx.sampler or build_sampler(ctx.settings)
    if state.get("sample_rate") is not None:
        return sampler.decide(trace_id, None, True, rate)
    return sampler.sample_root(trace_id, _CONNECTOR)


async def create_context(state: Mapping[str, Any], runtime: Runtime[ConnectorContext] | None = None) -> dict[str, Any]:
    """A new trace for this request: new ids, no parent, the request's ids and sampling."""
    try:
        rate = _rate(state.get("sample_rate"))
        trace_id = new_trace_id()
        return {
            "current_trace_id": trace_id,
            "current_span_id": new_span_id(),
            "current_parent_span_id": None,
            "request_id": state.get("request_id") or new_request_id(),
            "experiment_id": state.get("experiment_id"),
            "user_id": state.get("user_id"),
            "sampled": _sampled(state, trace_id, rate, runtime),
            "sample_rate": rate,
        }
    except Exception as exc:
        return _failure("context_creation_error", exc)


def _tracestate_fields(pairs: tuple[tuple[str, str], ...]) -> dict[str, str]:
    wanted = {*_REQUEST_KEYS, "sampled", "sample_rate"}
    return {key: value for key, value in pairs if key in wanted}


def _float_or_default(text: str | None) -> float:
    try:
        rate = float(text) if text is not None else 1.0
    except ValueError:
        return 1.0
    return rate if math.isfinite(rate) and 0.0 <= rate <= 1.0 else 1.0


async def extract_context(state: Mapping[str, Any], runtime: Runtime[ConnectorContext] | None = None) -> dict[str, Any]:
    """Continue the trace of ``state["headers"]["traceparent"]``; a missing or invalid one starts
    a new trace. Request metadata comes from ``tracestate`` (or, from our own services, baggage).

    Parsing is strict W3C (the host split any four dash-separated fields): an id that is not
    lowercase hex, or all zeros, starts a new trace instead of being propagated.
    """
    try:
        headers = state.get("headers") or {}
        parent = extract(headers)
        if parent is None:
            trace_id, parent_span_id, flag_sampled = new_trace_id(), None, True
            fields: dict[str, str] = {}
            baggage: dict[str, str] = {}
        else:
            trace_id, parent_span_id, flag_sampled = parent.trace_id, parent.span_id, parent.sampled
            fields = _tracestate_fields(parent.tracestate)
            baggage = dict(parent.baggage)
        ids = {key: fields.get(key) or baggage.get(key) for key in _REQUEST_KEYS}
        sampled = fields["sampled"] == "1" if "sampled" in fields else flag_sampled
        return {
            "current_trace_id": trace_id,
            "current_span_id": new_span_id(),
            "current_parent_span_id": parent_span_id,
            "request_id": ids["request_id"] or new_request_id(),
            "experiment_id": ids["experiment_id"],
            "user_id": ids["user_id"],
            "sampled": sampled,
            "sample_rate": _float_or_default(fields.get("sample_rate")),
        }
    except Exception as exc:
        return _failure("context_extraction_error", exc)


async def inject_context(state: Mapping[str, Any], runtime: Runtime[ConnectorContext] | None = None) -> dict[str, Any]:
    """``{"headers": {"traceparent", "tracestate"}}`` for the next hop, and nothing else.

    Members whose value ``tracestate`` cannot carry (a ``,`` or ``=``, control characters,
    over 256 characters) are left out rather than corrupting the header for every vendor.
    """
    trace_id = state.get("current_trace_id")
    span_id = state.get("current_span_id")
    if not trace_id or not span_id:
        return {"error": "Missing trace_id or span_id in state", "error_type": "missing_context"}
    try:
        sampled = bool(state.get("sampled", True))
        members = [(key, str(state[key])) for key in _REQUEST_KEYS if state.get(key)]
        members.append(("sampled", "1" if sampled else "0"))
        members.append(("sample_rate", str(float(_rate(state.get("sample_rate"))))))
        return {
            "headers": {
                "traceparent": format_traceparent(trace_id, span_id, sampled),
                "tracestate": format_tracestate(members),
            }
        }
    except Exception as exc:
        return _failure("context_injection_error", exc)


async def manage_context(
    state: ObservabilityConnectorState, runtime: Runtime[ConnectorContext] | None = None
) -> dict[str, Any]:
    """The graph's ``context`` node: continue an incoming ``traceparent`` (a state key of the
    graph's input), else start a new trace, and decide its sampling once for this invocation
    (``span_emitter`` applies that decision to the events of this trace).

    Returns only the keys it sets. The agents' own flusher batches (``skip_metrics``) get
    nothing: nobody reads a trace id, headers or a sampling decision for them (their spans carry
    their own trace's decision, made at its root). A bad ``sample_rate`` costs no event: it is
    reported in ``emission_errors`` and the call goes on at rate 1.0.
    """
    if state.get("skip_metrics"):
        return {}
    updates: dict[str, Any] = {}
    rate = state.get("sample_rate")
    try:
        _rate(rate)
    except ValueError as exc:
        message = f"{redact_text(str(exc))}; every event of this call is kept (rate 1.0)"
        updates = {"emission_errors": [*(state.get("emission_errors") or []), message], "sample_rate": 1.0}
        rate = 1.0
    request = {key: state.get(key) for key in _REQUEST_KEYS}
    traceparent = state.get("traceparent")
    if traceparent:
        headers = {"traceparent": traceparent, "tracestate": state.get("tracestate") or ""}
        found = await extract_context({"headers": headers}, runtime)
        if extract(headers) is None:
            found["error_details"] = {
                **(state.get("error_details") or {}),
                # Echoes the caller's header: redacted, as anything that may hold a token.
                "traceparent": redact_text(f"invalid traceparent {str(traceparent)[:200]!r}; started a new trace"),
            }
        for key, value in request.items():  # the call's own values win over what the headers carried
            if value:
                found[key] = value
    else:
        found = await create_context({**request, "sample_rate": rate}, runtime)
    return {**found, **updates}
