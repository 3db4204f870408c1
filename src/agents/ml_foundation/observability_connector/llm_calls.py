"""LLM calls as spans: the host's ``track_llm_call`` (awaited, answers with a dict) and ``record_llm_call``.

:class:`LLMCalls` is the part of ``ObservabilityConnectorAgent`` that records them; the span is
opened and finished like any other (``span_opening``), never awaited on a sink.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from .conversation import ttft_or_none
from .span_opening import SpanContext, SpanRecording
from .spans import Span, duration_ns
from .trace_context import _CURRENT

_time_ns = time.time_ns


class LLMCalls(SpanRecording):
    """Finished LLM calls (model, tokens, duration, error) recorded as spans."""

    async def track_llm_call(
        self,
        agent_name: str,
        operation: str,
        model: str,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        context: SpanContext | None = None,
        attributes: dict[str, Any] | None = None,
        error: BaseException | str | None = None,
        error_type: str | None = None,
        *,
        duration_ms: float | None = None,
        provider: str | None = None,
        ttft_ms: float | None = None,
    ) -> dict[str, Any]:
        """Record a finished LLM call (model and tokens) and describe it as the host did.

        Returns ``span_id``, ``trace_id``, ``agent_name``, ``operation``, ``model_used``,
        ``input_tokens``, ``output_tokens``, ``tokens_used``, ``status`` and ``attributes``, plus
        ``error`` / ``error_type`` when an error was given. The span itself is recorded like
        any other (see :meth:`record_llm_call`), never awaited. Token counts are the ones
        recorded: an invalid one reads None here (see :meth:`record_llm_call`).
        """
        record = self.record_llm_call(
            agent_name,
            model,
            input_tokens,
            output_tokens,
            operation=operation,
            duration_ms=duration_ms,
            error=error,
            error_type=error_type,
            context=context,
            attributes=attributes,
            provider=provider,
            ttft_ms=ttft_ms,
        )
        result: dict[str, Any] = {
            "span_id": record.span_id,
            "trace_id": record.trace_id,
            "agent_name": agent_name,
            "operation": operation,
            "model_used": model,
            "input_tokens": record.input_tokens,
            "output_tokens": record.output_tokens,
            "tokens_used": record.total_tokens or 0,
            "status": "error" if error is not None else "ok",
            "attributes": attributes if attributes is not None else {},
        }
        if error is not None:
            result["error"] = error if isinstance(error, str) else str(error)
            result["error_type"] = error_type or (None if isinstance(error, str) else type(error).__name__)
        return result

    def record_llm_call(
        self,
        agent_name: str,
        model: str,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        *,
        operation: str = "llm_call",
        duration_ms: float | None = None,
        error: BaseException | str | None = None,
        error_type: str | None = None,
        context: SpanContext | None = None,
        attributes: dict[str, Any] | None = None,
        provider: str | None = None,
        ttft_ms: float | None = None,
    ) -> Span:
        """The synchronous form of :meth:`track_llm_call` for code without an event loop; returns the span.

        The call ended now and took ``duration_ms``. It is a child of the current span; with a
        context dict, of the span that context names once that span is open (before, of its
        parent: the LLM call is not the span the context names).

        Bad numbers never raise here: the call happened and is recorded. A token count that is
        not a whole number from 0 to 2**31-1 (``"10"``, ``10.5``, NaN, ±inf, -1) leaves its
        field None; a duration that is not a finite, non-negative number of milliseconds
        starting after 1970 records the call as instantaneous. Each such value is kept, with
        the reason, in ``attributes["invalid.<argument>"]`` (``invalid.duration_ms``,
        ``invalid.input_tokens`` ...), so the span says what the caller passed.
        ``ttft_ms``: the streamed call's time to first token (the ``ttft_ms`` column).
        """
        end = _time_ns()
        took, bad_duration = duration_ns(duration_ms, end)
        start = end - took
        if isinstance(context, Mapping):
            record = self._record_under_mapping(operation, agent_name, context, attributes, start)
        else:
            parent = context if context is not None else _CURRENT.get()
            record = self._new_record(operation, agent_name, parent, attributes, start)
        record.set_llm(model, input_tokens, output_tokens)
        if bad_duration is not None:
            record.attributes["invalid.duration_ms"] = bad_duration
        if provider:
            record.attributes["llm.provider"] = provider
        if ttft_ms is not None:
            try:
                ms = ttft_or_none(ttft_ms)
            except ValueError as exc:
                record.attributes["invalid.ttft_ms"] = str(exc)
            else:
                if ms is not None:
                    record.set_time_to_first_token(ms)
        record.end_ns = end
        if error is not None:
            record.record_error(error, error_type)
        else:
            record.status = "ok"
        self._finish(record)
        return record
