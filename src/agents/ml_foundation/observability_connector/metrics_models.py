"""The metrics answers: latency per group, the quality picture of a window, token usage, the output contract."""

from __future__ import annotations

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

from .constants import OPIK_PROJECT, OPIK_WORKSPACE


def error_rate(errors: int, total: int) -> float:
    """Errors over *every* span of the group, as the host computes it; 0.0 without spans.

    Timeouts and started spans are in the denominator but are not errors: a timeout has its own
    count (``status_distribution``), and the success rate leaves both errors and timeouts out.
    """
    return errors / total if total else 0.0


class LatencyStats(BaseModel):
    """Latency percentiles of one group (an agent, a tier, or everything).

    ``count`` covers every status; the latency figures only spans with a duration (all None when
    the group has none); ``error_rate`` is :func:`error_rate` over ``count``.
    """

    key: str
    count: int = 0
    avg_ms: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    error_count: int = 0
    error_rate: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


class QualityMetrics(BaseModel):
    """The system-wide quality picture for one window.

    The counts are per stored status (``ok_count`` + ``error_count`` + ``timeout_count`` +
    ``started_count`` = ``total_spans``); the rates follow the host's definitions, see
    :meth:`from_counts`.
    """

    time_window: str
    total_spans: int
    ok_count: int
    error_count: int
    timeout_count: int
    started_count: int
    success_rate: float
    error_rate: float
    timeout_rate: float
    p50_latency_ms: float | None
    p95_latency_ms: float | None
    p99_latency_ms: float | None
    avg_latency_ms: float | None
    fallback_count: int
    fallback_rate: float
    quality_score: float

    @classmethod
    def from_counts(
        cls,
        window: str,
        *,
        total: int,
        ok: int,
        error: int,
        timeout: int,
        started: int,
        fallback: int,
        p50: float | None,
        p95: float | None,
        p99: float | None,
        avg: float | None,
    ) -> QualityMetrics:
        """The one place rates and the score are derived from a store's counts (every backend).

        Every rate is over all spans of the window, as the host defines them: success is every
        span that neither failed nor timed out (a span still ``started`` counts as a success,
        there being no evidence against it), so success + error + timeout rates sum to 1; with
        no spans, success is 1.0 and the other rates 0.0.
        """
        succeeded = total - error - timeout
        success_rate = succeeded / total if total else 1.0
        fallback_rate = fallback / total if total else 0.0
        return cls(
            time_window=window,
            total_spans=total,
            ok_count=ok,
            error_count=error,
            timeout_count=timeout,
            started_count=started,
            success_rate=success_rate,
            error_rate=error_rate(error, total),
            timeout_rate=timeout / total if total else 0.0,
            p50_latency_ms=p50,
            p95_latency_ms=p95,
            p99_latency_ms=p99,
            avg_latency_ms=avg,
            fallback_count=fallback,
            fallback_rate=fallback_rate,
            quality_score=quality_score(success_rate, p95, fallback_rate),
        )


def quality_score(success_rate: float, p95_ms: float | None, fallback_rate: float) -> float:
    """0.6 × success + 0.3 × latency score (1 at p95 ≤ 10 s → 0 at 30 s) + 0.1 × (1 − fallback)."""
    if p95_ms is None or p95_ms <= 10_000:
        latency_score = 1.0
    elif p95_ms >= 30_000:
        latency_score = 0.0
    else:
        latency_score = 1.0 - (p95_ms - 10_000) / 20_000
    return round(0.6 * success_rate + 0.3 * latency_score + 0.1 * (1.0 - fallback_rate), 6)


class ObservabilityConnectorOutput(BaseModel):
    """What the orchestrator gets back from the connector."""

    span_ids_logged: list[str] = Field(default_factory=list)
    trace_ids_logged: list[str] = Field(default_factory=list)
    events_logged: int = 0
    opik_project: str = OPIK_PROJECT
    opik_workspace: str = OPIK_WORKSPACE
    quality_metrics_computed: bool = False
    quality_score: float | None = None


class TokenUsage(BaseModel):
    """Tokens of one LLM call or an aggregate; ``total_tokens`` is input + output unless given.

    A total of 0 next to non-zero parts is taken as "not given" (the host's models send that).
    A total below input + output is refused: some providers count extra tokens (reasoning,
    cache) into the total, none count fewer.
    """

    model_config = ConfigDict(extra="forbid")

    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    total_tokens: int = Field(default=0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _fill_total(cls, data: object) -> object:
        if isinstance(data, dict) and not data.get("total_tokens"):
            parts = (data.get("input_tokens") or 0, data.get("output_tokens") or 0)
            if all(isinstance(p, int) and not isinstance(p, bool) for p in parts):
                return {**data, "total_tokens": parts[0] + parts[1]}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TokenUsage:
        if self.total_tokens < self.input_tokens + self.output_tokens:
            raise ValueError(
                f"total_tokens {self.total_tokens} is less than input_tokens + output_tokens "
                f"({self.input_tokens} + {self.output_tokens})"
            )
        return self
