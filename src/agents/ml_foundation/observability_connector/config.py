"""Configuration, by the names the host codebase and this project's callers import.

The work lives in one module per job; this module only re-exports it:
``settings.py`` (the validated sections), ``config_file.py`` (reading ``config/observability.yaml``,
the process-wide settings), ``config_errors.py`` (:class:`ConfigError` and its wording),
``registry.py`` (``config/agent_config.yaml``), ``policies.py`` (sampler, redactor) and
``wiring.py`` (stores, sinks, the spool and the node context built from configuration).
Import from those in new code; the host's ``get_observability_config()`` / ``ObservabilityConfig``
stay here (HOST_CONTRACT.md §3).
"""

from __future__ import annotations

from .config_errors import ConfigError
from .config_file import (
    MAX_CONFIG_BYTES,
    config_dir,
    get_observability_config,
    load_settings,
    reset_observability_config,
)
from .policies import build_redactor, build_sampler
from .registry import AgentRegistry, load_registry
from .settings import (
    BatchingSettings,
    CacheSettings,
    CircuitBreakerSettings,
    ObservabilitySettings,
    RedactionSettings,
    SamplingSettings,
    StoreSettings,
)
from .wiring import (
    Deliveries,
    build_deliveries,
    build_store,
    database_url,
    spool_path,
    store_backend,
)

#: The host codebase's name for the settings class: one configuration, two names.
ObservabilityConfig = ObservabilitySettings

__all__ = [
    "MAX_CONFIG_BYTES",
    "AgentRegistry",
    "BatchingSettings",
    "CacheSettings",
    "CircuitBreakerSettings",
    "ConfigError",
    "Deliveries",
    "ObservabilityConfig",
    "ObservabilitySettings",
    "RedactionSettings",
    "SamplingSettings",
    "StoreSettings",
    "build_deliveries",
    "build_redactor",
    "build_sampler",
    "build_store",
    "config_dir",
    "database_url",
    "get_observability_config",
    "load_registry",
    "load_settings",
    "reset_observability_config",
    "spool_path",
    "store_backend",
]
