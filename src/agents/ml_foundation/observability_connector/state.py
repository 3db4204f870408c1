"""The graph's state: the orchestrator's input contract, the output contract and metrics."""

from __future__ import annotations

from typing import Any, TypedDict

from .models import ObservabilitySpan

__all__ = ["InputState", "ObservabilityConnectorState"]


class InputState(TypedDict, total=False):
    """What callers send; everything is optional (an empty input asks for metrics only)."""

    events_to_log: list[Any]  # ObservabilityEvent payloads (dicts), or in-process Spans
    time_window: str
    agent_name_filter: str | None
    trace_id_filter: str | None
    sample_rate: float
    # Conversations: metrics of one thread (LangGraph's thread_id) and/or one user only.
    thread_id_filter: str | None
    user_id_filter: str | None
    # Seconds of staleness the caller accepts in the metrics answer (None: cache.live_staleness_s,
    # 0 by default = strict: every span stored before the question is counted).
    max_staleness_s: float | None
    # Set by the agents' own flusher only: it reads nothing back, so the graph ends after
    # ``batch`` instead of answering the metrics question every other caller gets.
    skip_metrics: bool
    traceparent: str | None
    tracestate: str | None
    request_id: str | None
    experiment_id: str | None
    user_id: str | None
    # How long the batch node may wait for Opik to confirm (default opik.wait_s; the agents'
    # own flusher sends 0: nobody reads its state, and the Opik sender then joins batches).
    opik_wait_s: float


class ObservabilityConnectorState(InputState, total=False):
    # W3C context of this invocation
    current_trace_id: str
    current_span_id: str
    current_parent_span_id: str | None
    sampled: bool
    baggage: dict[str, str]

    # span_emitter
    validated_spans: list[ObservabilitySpan]
    emission_errors: list[str]
    spans_sampled_out: int
    # Events refused for good: by validation (span_emitter) and, once the batch node ran, by the
    # store too. Whenever the store or the spool took the batch,
    # events_logged + events_rejected + spans_sampled_out = the events sent.
    events_rejected: int
    # One per event validation refused: {"reason", "row"} (the row: event index, ids, the event as
    # redacted, size-limited JSON). The batch node dead-letters them in the spool, when there is one.
    rejected_events: list[dict[str, Any]]

    # batch
    emission_successful: bool
    opik_url: str
    warnings: list[str]
    span_ids_logged: list[str]
    trace_ids_logged: list[str]
    events_logged: int
    db_writes_successful: bool
    db_write_count: int
    db_duplicate_count: int
    spans_spooled: int
    events_dead_lettered: int  # rejected events kept in the spool's dead letters (validation and store)
    opik_project: str
    opik_workspace: str
    # Opik sink, beside the store write (absent when Opik is not configured)
    opik_spans_sent: int  # confirmed by Opik within opik.wait_s
    opik_spans_queued: int  # handed to the Opik sender, sent later in order
    opik_error: str | None

    # metrics_aggregator
    quality_metrics_computed: bool
    quality_score: float | None
    latency_by_agent: dict[str, dict[str, Any]]
    latency_by_tier: dict[str, dict[str, Any]]
    error_rate_by_agent: dict[str, float]
    error_rate_by_tier: dict[str, float]
    token_usage_by_agent: dict[str, dict[str, int]]
    overall_success_rate: float
    overall_p95_latency_ms: float
    overall_p99_latency_ms: float
    total_spans_analyzed: int
    fallback_invocation_rate: float
    status_distribution: dict[str, int]
    metrics_from_cache: bool
    metrics_age_s: float
    feedback_by_agent: dict[str, dict[str, dict[str, Any]]]  # beside the host's keys: {agent: {name: {avg, count}}}
    # Extra keys beside the host's (issue 19): time to first token p50 / p95 / count per agent and model.
    ttft_by_agent: dict[str, dict[str, Any]]
    ttft_by_model: dict[str, dict[str, Any]]

    # failures of the connector itself (never raised to the caller)
    error: str | None
    error_type: str | None
    error_details: dict[str, Any] | None
