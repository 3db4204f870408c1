"""Wiring: the one module that builds concrete stores, sinks, deliveries and caches from configuration.

Everything below it (core, sinks, pipeline) takes its dependencies as arguments; this module
decides which concrete ones a process gets: the store backend the environment selects, the spool
in front of it, the Opik sink when Opik is configured, the metrics cache, and the
:class:`~.runtime.ConnectorContext` that carries them to the graph's nodes. Store clients are
imported when their backend is chosen, so a process pays only for the one it uses.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

from src.mlops.circuit_breaker import CircuitBreaker
from src.mlops.opik_connector import OpikConnector
from src.mlops.opik_feedback_sink import OpikFeedbackSink
from src.mlops.opik_sink import OpikSink
from src.mlops.otlp_settings import otlp_configured

from .cache import MetricsCache
from .config_errors import ConfigError
from .config_file import load_settings
from .delivery import RetryPolicy, SinkDelivery
from .feedback import Feedback
from .registry import AgentRegistry, load_registry
from .runtime import ConnectorContext
from .settings import ObservabilitySettings
from .sinks import FeedbackStoreSink, StoreSink
from .spool import Spool, SpoolError

__all__ = [
    "Deliveries",
    "build_context",
    "build_deliveries",
    "build_otlp_delivery",
    "build_store",
    "database_url",
    "spool_path",
    "store_backend",
]

log = logging.getLogger(__name__)


def store_backend(settings: ObservabilitySettings, environ: dict[str, str] | None = None) -> str:
    """Which store the environment and settings select (see README: choosing a store)."""
    env = os.environ if environ is None else environ
    if settings.store.backend != "auto":
        return settings.store.backend
    if env.get("SUPABASE_URL") and env.get("SUPABASE_SERVICE_KEY"):
        return "supabase"
    url = env.get("OBS_DATABASE_URL") or env.get("DATABASE_URL") or ""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgres"
    return "sqlite"


def database_url(environ: dict[str, str] | None = None) -> str | None:
    """The Postgres connection string (``OBS_DATABASE_URL``, else ``DATABASE_URL``), if it is one.

    Environment only: a connection string usually carries a password.
    """
    env = os.environ if environ is None else environ
    url = env.get("OBS_DATABASE_URL") or env.get("DATABASE_URL") or ""
    return url if url.startswith(("postgresql://", "postgres://")) else None


def build_store(settings: ObservabilitySettings | None = None, *, read_only: bool = False) -> Any:
    """The configured span repository (an ``ObservabilitySpanRepository``).

    ``read_only``: for commands that only look (metrics, trace, status): the embedded SQLite store
    is opened with ``mode=ro`` and never created; the server backends are unaffected (reading
    creates nothing there).
    """
    from src.repositories.observability_span import ObservabilitySpanRepository
    from src.repositories.sqlite import SQLiteSpanRepository

    settings = settings or load_settings()
    backend = store_backend(settings)
    if backend == "supabase":
        from src.repositories.supabase import SupabaseSpanRepository

        try:  # URL and service key come from the environment only, never from a config file
            return ObservabilitySpanRepository(SupabaseSpanRepository.from_env())
        except ValueError as exc:
            raise ConfigError(f"store backend 'supabase': {exc}") from exc
    if backend == "postgres":
        from src.repositories.postgres import PostgresSpanRepository

        dsn = database_url()
        if not dsn:
            raise ConfigError(
                "store backend 'postgres' needs OBS_DATABASE_URL (or DATABASE_URL) set to a postgresql:// "
                "connection string, e.g. a Supabase project's connection string"
            )
        return ObservabilitySpanRepository(PostgresSpanRepository(dsn))
    if backend != "sqlite":
        raise ConfigError(
            f"store backend {backend!r} was selected by the environment or store.backend, but only the "
            "embedded 'sqlite' backend is available in this build"
        )
    try:  # the path is checked when the store is opened, so a bad one never fails this call
        return ObservabilitySpanRepository(SQLiteSpanRepository(settings.store.sqlite_path, read_only=read_only))
    except ValueError as exc:
        raise ConfigError(f"store.sqlite_path {settings.store.sqlite_path!r}: {exc}") from exc


class Deliveries(NamedTuple):
    """The sinks behind the delivery layer, sharing one spool; None where a sink is off."""

    store: SinkDelivery | None  # the StoreSink's (None: no spool, the store is written directly)
    opik: SinkDelivery | None  # the OpikSink's (None: Opik not configured, or no spool)
    connector: OpikConnector | None  # the host's Opik facade for that sink
    otlp: SinkDelivery | None = None  # the OtlpSink's (None: OTLP export off, or no spool)
    # Feedback scores (log_feedback) behind the same layer: the store's feedback table, and Opik's
    # feedback-scores endpoints (None: no spool, or Opik off). Never in the span fan-out.
    feedback_store: SinkDelivery | None = None
    opik_feedback: SinkDelivery | None = None


def build_deliveries(
    store: Any,
    settings: ObservabilitySettings | None = None,
    registry: AgentRegistry | None = None,
    *,
    opik: Any = "auto",
    otlp: Any = "auto",
    cache: MetricsCache | None = None,
) -> Deliveries:
    """Every sink behind its ``SinkDelivery`` (retries, a breaker per sink, the shared spool).

    ``opik``: ``"auto"`` builds the Opik sink when Opik is configured (``opik.enabled``); an
    ``OpikSink`` uses that one (tests, benchmarks); None leaves Opik out. Never fails on a path:
    a spool that cannot be opened is logged, and then the store is written directly and Opik,
    which needs the spool to keep what it cannot send now, is left out. ``otlp`` likewise for the
    OTLP/HTTP export (``otlp.enabled`` / ``OTEL_EXPORTER_OTLP_*ENDPOINT``): detached like Opik.
    ``cache``: the metrics cache a stored feedback score invalidates (see ``sinks.FeedbackStoreSink``).
    """
    settings = settings or load_settings()
    batching, breaker = settings.batching, settings.circuit_breaker
    if opik == "auto":
        opik = OpikSink.from_settings(settings, tier_names=(registry or load_registry()).tier_names)
    if otlp == "auto":
        otlp = None
        if otlp_configured(settings):  # protobuf and the sink load only when export is on
            from src.mlops.otlp_sink import OtlpSink

            otlp = OtlpSink.from_settings(settings)
    if not batching.spool_enabled or store is None:
        for sink in (opik, otlp):
            if sink is not None:
                log.error(
                    "%s is configured but batching.spool_enabled is off: it needs the spool, so it is left out", sink
                )
        return Deliveries(None, None, None)

    def breaker_for(name: str) -> CircuitBreaker:
        return CircuitBreaker(breaker.failure_threshold, breaker.recovery_timeout_s, name=name)

    try:
        spool = Spool(spool_path(settings), max_bytes=int(batching.spool_max_mb * 1024 * 1024))
        policy = RetryPolicy(batching.retry_initial_s, batching.retry_max_s, batching.sink_timeout_s)
        store_delivery = SinkDelivery(StoreSink(store), spool, policy, breaker=breaker_for("store"))
        otlp_delivery = None if otlp is None else build_otlp_delivery(settings, spool, otlp)
        feedback_store = SinkDelivery(
            FeedbackStoreSink(store, cache), spool, policy, breaker=breaker_for("feedback_store"),
            row_model=Feedback, key_attr="feedback_id",
        )  # fmt: skip
        if opik is None:
            return Deliveries(store_delivery, None, None, otlp_delivery, feedback_store)
        opik_policy = RetryPolicy(batching.retry_initial_s, batching.retry_max_s, 2 * opik.config.request_timeout_s)
        opik_delivery = SinkDelivery(
            opik, spool, opik_policy, breaker=breaker_for("opik"),
            wait_s=opik.config.wait_s, max_detached=opik.config.max_requests_in_flight,
        )  # fmt: skip
    except SpoolError as exc:
        # Building the context must not fail (it happens inside graph nodes and the agent's
        # flusher): the store is written directly, and a batch it cannot take is reported lost.
        log.error(
            "%s; spans go to the store without a spool, so a batch the store cannot take is lost, and Opik is "
            "left out (set batching.spool_path / OBS_BATCHING__SPOOL_PATH to a writable file)",
            exc,
        )
        return Deliveries(None, None, None)
    opik_feedback = SinkDelivery(
        OpikFeedbackSink(opik.config, wire=opik.wire), spool, opik_policy, breaker=breaker_for("opik_feedback"),
        wait_s=opik.config.wait_s, max_detached=opik.config.max_requests_in_flight,
        row_model=Feedback, key_attr="feedback_id",
    )  # fmt: skip
    connector = OpikConnector(opik.config, delivery=opik_delivery, sink=opik)
    connector.attach_feedback_delivery(opik_feedback)
    return Deliveries(store_delivery, opik_delivery, connector, otlp_delivery, feedback_store, opik_feedback)


def build_otlp_delivery(settings: ObservabilitySettings, spool: Spool, sink: Any) -> SinkDelivery:
    """An ``OtlpSink`` behind its delivery: detached like Opik (a caller waits at most ``otlp.wait_s``),
    its own breaker, the shared spool. ``obs-connector demo --otlp URL`` adds one to a built context."""
    batching, breaker = settings.batching, settings.circuit_breaker
    policy = RetryPolicy(batching.retry_initial_s, batching.retry_max_s, 2 * sink.config.timeout_s)
    return SinkDelivery(
        sink, spool, policy, breaker=CircuitBreaker(breaker.failure_threshold, breaker.recovery_timeout_s, name="otlp"),
        wait_s=sink.config.wait_s, max_detached=sink.config.max_requests_in_flight,
    )  # fmt: skip


def spool_path(settings: ObservabilitySettings) -> Path:
    """Where the spool lives: ``batching.spool_path``, else ``spool.db`` beside the SQLite store."""
    return Path(settings.batching.spool_path or Path(settings.store.sqlite_path).parent / "spool.db")


def build_context(settings: ObservabilitySettings | None = None, *, read_only: bool = False) -> ConnectorContext:
    """The configured context; never fails on a path: a store that cannot be opened fails its
    first operation (with the reason), a spool that cannot be opened is logged and left out.

    ``read_only`` (commands that only look): the store opens read-only and never creates its
    file, and there is neither a spool nor an Opik sink (nothing is written).
    """
    settings = settings or load_settings()
    store = build_store(settings, read_only=read_only)
    if read_only:
        return ConnectorContext(
            store=store, settings=settings, registry=load_registry(), cache=MetricsCache(settings.cache)
        )
    registry = load_registry()
    cache = MetricsCache(settings.cache)
    deliveries = build_deliveries(store, settings, registry, cache=cache)
    return ConnectorContext(
        store=store,
        store_delivery=deliveries.store,
        opik_delivery=deliveries.opik,
        otlp_delivery=deliveries.otlp,
        opik=deliveries.connector,
        settings=settings,
        registry=registry,
        cache=cache,
        feedback_store_delivery=deliveries.feedback_store,
        opik_feedback_delivery=deliveries.opik_feedback,
    )
