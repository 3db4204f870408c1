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
from typing import Any

from .cache import MetricsCache
from .config_errors import ConfigError
from .config_file import load_settings
from .delivery import RetryPolicy, SinkDelivery
from .registry import AgentRegistry, load_registry
from .runtime import ConnectorContext
from .settings import ObservabilitySettings
from .sinks import StoreSink
from .spool import Spool, SpoolError

__all__ = [
    "build_context",
    "build_opik",
    "build_store",
    "build_store_delivery",
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


def build_store_delivery(store: Any, settings: ObservabilitySettings | None = None) -> Any:
    """The store behind its on-disk spool (``SinkDelivery``), or None when the spool is off."""
    settings = settings or load_settings()
    batching = settings.batching
    if not batching.spool_enabled or store is None:
        return None
    spool = Spool(spool_path(settings), max_bytes=int(batching.spool_max_mb * 1024 * 1024))
    policy = RetryPolicy(batching.retry_initial_s, batching.retry_max_s, batching.sink_timeout_s)
    try:
        return SinkDelivery(StoreSink(store), spool, policy)  # reads the spool's backlog
    except SpoolError as exc:
        # Building the context must not fail (it happens inside graph nodes and the agent's
        # flusher): the store is written directly, and a batch it cannot take is reported lost.
        log.error(
            "%s; spans go to the store without a spool, so a batch the store cannot take is lost "
            "(set batching.spool_path / OBS_BATCHING__SPOOL_PATH to a writable file)",
            exc,
        )
        return None


def spool_path(settings: ObservabilitySettings) -> Path:
    """Where the spool lives: ``batching.spool_path``, else ``spool.db`` beside the SQLite store."""
    return Path(settings.batching.spool_path or Path(settings.store.sqlite_path).parent / "spool.db")


def build_opik(settings: ObservabilitySettings | None = None, registry: AgentRegistry | None = None) -> Any:
    """The process's Opik sink when Opik is configured (see ``opik.enabled``), else None."""
    from src.mlops.opik_connector import get_opik_connector, opik_configured

    settings = settings or load_settings()
    if not opik_configured(settings):
        return None
    return get_opik_connector(settings, tier_names=(registry or load_registry()).tier_names)


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
    store_delivery = build_store_delivery(store, settings)
    opik = build_opik(settings)
    if opik is not None and store_delivery is not None:
        opik.attach_spool(store_delivery.spool)  # Opik's overflow waits on disk too
    return ConnectorContext(
        store=store,
        store_delivery=store_delivery,
        settings=settings,
        registry=load_registry(),
        cache=MetricsCache(settings.cache),
        opik=opik,
    )
