"""The settings models: every section of ``config/observability.yaml`` with its bounds.

Core layer: plain validated values that every other layer (sinks included) may read. Reading the
file and wording its errors is ``config_file.py`` / ``config_errors.py``; building objects from
these values is ``policies.py`` (sampler, redactor) and ``wiring.py`` (stores, sinks, context).
Precedence: values passed in code > ``OBS_*`` environment variables > the YAML file > defaults.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = [
    "ENV_DELIMITER",
    "ENV_PREFIX",
    "BatchingSettings",
    "CacheSettings",
    "CircuitBreakerSettings",
    "ObservabilitySettings",
    "OpikSettings",
    "OtlpSettings",
    "PriceOverride",
    "PricingSettings",
    "RedactionSettings",
    "RetentionSettings",
    "SamplingSettings",
    "StoreSettings",
    "file_values",
]

#: ``OBS_BATCHING__MAX_BATCH_SIZE=500`` overrides ``batching.max_batch_size``.
ENV_PREFIX: Final = "OBS_"
ENV_DELIMITER: Final = "__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BatchingSettings(_Section):
    max_batch_size: int = Field(100, ge=1, le=100_000)
    max_batch_wait_s: float = Field(5.0, gt=0, le=3600)
    max_queue_size: int = Field(10_000, ge=1)
    # The same buffer bounded in (estimated) bytes: spans waiting plus those being delivered.
    max_queue_mb: float = Field(64.0, gt=0, le=1024 * 1024)
    max_drain_batch_size: int = Field(1000, ge=1, le=100_000)
    # Batches being validated or written at once (one waits on a sink while the next is converted).
    max_in_flight: int = Field(2, ge=1, le=16)
    # Raise the interpreter's young-generation GC threshold to this when the flusher starts, only
    # if it still has CPython's default (700); null leaves the collector alone (gc_tuning.py).
    gc_young_threshold: int | None = Field(10_000, ge=701, le=1_000_000)
    # gc.freeze() once the flusher delivered its first batch: full collections under a burst then
    # skip the objects of start-up (gc_tuning.py says what it costs); false leaves the collector alone.
    gc_freeze_after_start: bool = True
    # Under a burst the flusher spills the buffer, encrypted, to an overflow file beside the spool
    # (a producer never waits); this bounds that file: past it spans are dropped and counted.
    overflow_max_mb: float = Field(1024, gt=0)
    shutdown_timeout_s: float = Field(5.0, ge=0, le=600)
    # Durability: a batch a sink cannot take now waits on disk and is replayed per sink.
    spool_enabled: bool = True
    spool_path: str | None = None  # None: spool.db beside store.sqlite_path
    spool_max_mb: float = Field(1024, gt=0)
    retry_initial_s: float = Field(0.5, gt=0, le=600)
    retry_max_s: float = Field(30.0, gt=0, le=3600)
    sink_timeout_s: float = Field(10.0, gt=0, le=600)

    @model_validator(mode="before")
    @classmethod
    def _drop_retired_keys(cls, data: Any) -> Any:
        """``full_wait_s`` (producers waited for room): an existing file keeps loading, with a warning."""
        return _drop_retired(
            data,
            "batching",
            _RETIRED_BATCHING_KEYS,
            "a producer never waits for room any more: the flusher spills a full buffer to disk "
            "(batching.overflow_max_mb)",
        )


_RETIRED_BATCHING_KEYS = frozenset({"full_wait_s"})


def _drop_retired(data: Any, section: str, keys: frozenset[str], why: str) -> Any:
    """A section's raw input without its retired keys, with one DeprecationWarning naming them
    and why: a file written for an older release keeps loading."""
    if isinstance(data, dict) and (retired := sorted(set(data) & keys)):
        warnings.warn(
            f"retired setting(s) ignored: {section}.{f', {section}.'.join(retired)}; {why}",
            DeprecationWarning,
            stacklevel=3,
        )
        data = {k: v for k, v in data.items() if k not in keys}
    return data


class StoreSettings(_Section):
    backend: Literal["auto", "sqlite", "postgres", "supabase"] = "auto"
    sqlite_path: str = ".observability/spans.db"


Rate = Annotated[float, Field(ge=0.0, le=1.0)]


class SamplingSettings(_Section):
    default_rate: Rate = 1.0
    always_sample_errors: bool = True
    # Used instead of default_rate when ENVIRONMENT=production; None keeps default_rate.
    production_rate: Rate | None = None
    # Per-agent rates and always-sampled agents apply to traces whose root that agent starts.
    agent_rates: dict[str, Rate] = Field(default_factory=dict)
    always_sample_agents: list[str] = Field(default_factory=list)


class CircuitBreakerSettings(_Section):
    """One breaker per sink (store, Opik): this many consecutive failures open it; half-open after the timeout."""

    failure_threshold: int = Field(5, ge=1, le=1000)
    recovery_timeout_s: float = Field(30.0, gt=0, le=3600)


class RedactionSettings(_Section):
    """Secrets and size limits applied to every span before any sink (see redaction.py)."""

    enabled: bool = True
    # Added to the built-in sensitive key words (password, secret, token, api_key, ...);
    # matched case-insensitively as whole words of a key: "ssn" also hides "user_ssn".
    extra_sensitive_keys: list[str] = Field(default_factory=list)
    # Extra regular expressions; the whole match becomes [REDACTED].
    extra_patterns: list[str] = Field(default_factory=list)
    max_value_bytes: int = Field(32_768, ge=256, le=16 * 1024 * 1024)
    max_span_bytes: int = Field(262_144, ge=1024, le=64 * 1024 * 1024)

    @field_validator("extra_patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for index, pattern in enumerate(patterns):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"extra_patterns[{index}] {pattern!r} is not a valid regular expression: {exc}"
                ) from exc
        return patterns

    @model_validator(mode="after")
    def _span_holds_a_value(self) -> RedactionSettings:
        if self.max_span_bytes < self.max_value_bytes:
            raise ValueError(
                f"max_span_bytes ({self.max_span_bytes}) must be at least max_value_bytes ({self.max_value_bytes})"
            )
        return self


class RetentionSettings(_Section):
    days: int = Field(90, ge=1, le=36_500)  # a century: "now - days" must stay a date
    batch_size: int = Field(10_000, ge=1, le=1_000_000)


class CacheSettings(_Section):
    ttl_short_s: float = Field(60, ge=0)
    ttl_day_s: float = Field(300, ge=0)
    ttl_long_s: float = Field(600, ge=0)
    max_entries: int = Field(1024, ge=1)
    # memory: per process. redis: shared by every process pointed at the same Redis (see cache.py).
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str | None = None  # default: $REDIS_URL, else redis://127.0.0.1:6379/0
    redis_timeout_s: float = Field(0.5, gt=0, le=60)  # per Redis call; beyond it we compute instead
    redis_retry_s: float = Field(5.0, ge=0, le=3600)  # after a Redis failure, compute without it this long
    key_prefix: str = Field("obs:metrics", min_length=1)
    # Bounded staleness for callers that do not choose one (``max_staleness_s``): 0 keeps every
    # answer strict (it includes every span stored before the question). > 0 (dashboards): an answer
    # up to this many seconds old is served from the cache and refreshed in the background.
    live_staleness_s: float = Field(0.0, ge=0, le=3600)


class OpikSettings(_Section):
    """Opik sink (src/mlops/opik_sink.py); the API key comes only from ``OPIK_API_KEY``. Retries,
    backoff and the spool are the delivery layer's (``batching``), the breaker ``circuit_breaker``."""

    project_name: str = "e2i-causal-analytics"  # OPIK_PROJECT_NAME wins
    workspace: str = "default"  # OPIK_WORKSPACE wins
    # auto: on when OPIK_URL_OVERRIDE or OPIK_API_KEY is set; true: always (url below or local Opik).
    enabled: Literal["auto"] | bool = "auto"
    url: str | None = None  # OPIK_URL_OVERRIDE wins; default: Opik Cloud with a key, else http://localhost:5173/api
    request_timeout_s: float = Field(10.0, gt=0, le=600)  # per HTTP request
    wait_s: float = Field(1.0, ge=0, le=60)  # how long a graph caller waits to report "sent"; never longer
    max_items_per_request: int = Field(1000, ge=1, le=1000)  # Opik accepts at most 1000 per batch request
    max_requests_in_flight: int = Field(2, ge=1, le=16)  # requests before Opik at once, across batches

    @model_validator(mode="before")
    @classmethod
    def _drop_retired_keys(cls, data: Any) -> Any:
        """Keys of the former in-memory Opik backlog: an existing file keeps loading, with a warning."""
        return _drop_retired(
            data,
            "opik",
            _RETIRED_OPIK_KEYS,
            "Opik's retries, backoff and overflow are the delivery layer's (batching.retry_*, batching.spool_*)",
        )


_RETIRED_OPIK_KEYS = frozenset(
    {"replay_backlog_max_mb", "replay_backlog_max_spans", "retry_backoff_s", "retry_backoff_max_s"}
)


class OtlpSettings(_Section):
    """OTLP/HTTP export (src/otlp/otlp_sink.py). The standard ``OTEL_EXPORTER_OTLP_*`` variables win
    over these, as the environment does everywhere else; put API keys in ``OTEL_EXPORTER_OTLP_HEADERS``
    rather than in this file. Retries, backoff and the spool are the delivery layer's (``batching``)."""

    # auto: on when OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT is set.
    enabled: Literal["auto"] | bool = "auto"
    # The traces URL, e.g. http://127.0.0.1:6006/v1/traces (Phoenix); default http://127.0.0.1:4318/v1/traces.
    endpoint: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)  # sent with every request; values never logged
    timeout_s: float = Field(10.0, gt=0, le=600)  # per HTTP request
    compression: Literal["none", "gzip"] = "gzip"
    wait_s: float = Field(1.0, ge=0, le=60)  # how long a graph caller waits for the answer; never longer
    max_spans_per_request: int = Field(512, ge=1, le=100_000)
    max_requests_in_flight: int = Field(2, ge=1, le=16)
    service_name: str = Field("obs-connector", min_length=1)  # OTEL_SERVICE_NAME wins


# USD per million tokens: finite and never negative (a negative price would make a call earn money).
UsdPerMtok = Annotated[float, Field(ge=0, allow_inf_nan=False)]

#: An override key longer than this is not a model name (pricing.py bounds lookups the same way).
MAX_MODEL_KEY_CHARS: Final = 256


class PriceOverride(_Section):
    """One model's own prices (self-hosted, negotiated), used instead of the price library's.

    Token fields follow pricing.py's convention: cache reads and writes are part of the input
    tokens and reasoning is part of the output, so an unset cache or reasoning price bills those
    tokens at the plain input or output price, as the library does for a model without one.
    """

    input_per_mtok: UsdPerMtok
    output_per_mtok: UsdPerMtok
    cache_read_per_mtok: UsdPerMtok | None = None
    cache_write_per_mtok: UsdPerMtok | None = None
    reasoning_per_mtok: UsdPerMtok | None = None


class PricingSettings(_Section):
    """Cost of each LLM call (pricing.py): the pinned price library, with per-model overrides.

    Overrides are keyed by model name or ``provider/model`` (the provider as spans carry it, e.g.
    ``openai``, ``google_genai``), matched without regard to case; a ``provider/model`` key wins
    over a bare model key, and both win over the library.
    """

    enabled: bool = True
    overrides: dict[str, PriceOverride] = Field(default_factory=dict)

    @field_validator("overrides")
    @classmethod
    def _keys_are_model_names(cls, overrides: dict[str, PriceOverride]) -> dict[str, PriceOverride]:
        seen: dict[str, str] = {}
        for key in overrides:
            normal = key.strip().lower()
            if not normal or len(normal) > MAX_MODEL_KEY_CHARS:
                raise ValueError(
                    f"override key {key!r} is not a model name (1 to {MAX_MODEL_KEY_CHARS} characters, "
                    "'model' or 'provider/model')"
                )
            if normal in seen:
                raise ValueError(f"override keys {seen[normal]!r} and {key!r} name the same model (case is ignored)")
            seen[normal] = key
        return overrides


class ObservabilitySettings(BaseSettings):
    """Validated settings; build with ``config_file.load_settings`` (file, environment, errors)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_DELIMITER, extra="forbid")

    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    opik: OpikSettings = Field(default_factory=OpikSettings)
    otlp: OtlpSettings = Field(default_factory=OtlpSettings)
    circuit_breaker: CircuitBreakerSettings = Field(default_factory=CircuitBreakerSettings)
    redaction: RedactionSettings = Field(default_factory=RedactionSettings)
    pricing: PricingSettings = Field(default_factory=PricingSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: values passed in code > environment > the YAML file > defaults.
        return init_settings, env_settings, _YamlSource(settings_cls)


_YAML_DATA: ContextVar[dict[str, Any] | None] = ContextVar("obs_yaml_settings", default=None)


class _YamlSource(PydanticBaseSettingsSource):
    """The parsed ``observability.yaml`` that ``config_file.load_settings`` is currently loading."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return (_YAML_DATA.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_YAML_DATA.get() or {})


@contextmanager
def file_values(data: dict[str, Any]) -> Iterator[None]:
    """Within the block, building :class:`ObservabilitySettings` reads ``data`` as the YAML file.

    A context variable rather than a class attribute: two threads (or tasks) loading different
    files at once each see their own.
    """
    token = _YAML_DATA.set(data)
    try:
        yield
    finally:
        _YAML_DATA.reset(token)
