"""The sampling and redaction policies, built from their settings sections.

Core layer: both are pure policy objects (no I/O) that the pipeline's nodes build from the
context's settings when the context carries none, so replacing the settings replaces them too.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from .config_file import load_settings
from .registry import AgentRegistry
from .sampling import Sampler
from .settings import ObservabilitySettings

if TYPE_CHECKING:
    from .pricing import Pricer
    from .redaction import Redactor

__all__ = ["build_redactor", "build_sampler", "cached_pricer"]

log = logging.getLogger(__name__)


def _environment(environ: dict[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    return env.get("ENVIRONMENT")


_WARNED_UNKNOWN_AGENTS: set[tuple[str, ...]] = set()


def build_sampler(
    settings: ObservabilitySettings | None = None,
    registry: AgentRegistry | None = None,
    environ: dict[str, str] | None = None,
) -> Sampler:
    """The sampling policy; ``ENVIRONMENT=production`` selects ``sampling.production_rate``.

    An override naming an agent the registry does not know is most likely a typo that would
    silently never apply, so it is logged (not fatal: unregistered agents are legitimate).
    """
    settings = settings or load_settings()
    sampling = settings.sampling
    if registry is not None and registry.agents:
        named = [*sampling.agent_rates, *sampling.always_sample_agents]
        unknown = tuple(sorted({name for name in named if name not in registry.agents}))
        if unknown and unknown not in _WARNED_UNKNOWN_AGENTS:
            _WARNED_UNKNOWN_AGENTS.add(unknown)
            log.warning("sampling overrides name agents missing from the registry (typo?): %s", ", ".join(unknown))
    return Sampler(
        sampling.default_rate,
        always_sample_errors=sampling.always_sample_errors,
        agent_rates=sampling.agent_rates,
        always_sample_agents=sampling.always_sample_agents,
        production_rate=sampling.production_rate,
        environment=_environment(environ),
    )


_REDACTORS: dict[tuple[Any, ...], Redactor] = {}


def build_redactor(settings: ObservabilitySettings | None = None) -> Redactor:
    """The redaction policy every span passes through before any sink.

    One instance per distinct redaction policy, reused across batches and contexts: its
    caches (key decisions, already-redacted strings) are what keep it cheap per span.
    """
    from .redaction import Redactor  # here: redaction compiles its patterns on import

    settings = settings or load_settings()
    red = settings.redaction
    key = (
        red.enabled,
        tuple(red.extra_sensitive_keys),
        tuple(red.extra_patterns),
        red.max_value_bytes,
        red.max_span_bytes,
    )
    found = _REDACTORS.get(key)
    if found is None:
        if len(_REDACTORS) >= 16:
            _REDACTORS.clear()
        found = _REDACTORS[key] = Redactor(
            extra_keys=red.extra_sensitive_keys,
            extra_patterns=red.extra_patterns,
            max_value_bytes=red.max_value_bytes,
            max_span_bytes=red.max_span_bytes,
            enabled=red.enabled,
        )
    return found


_PRICERS: dict[str, Pricer] = {}


def cached_pricer(settings: ObservabilitySettings | None = None) -> Pricer:
    """The pricer for ``settings.pricing``, one per distinct section: building one turns every
    override into per-token rates with the price library, too slow to repeat per batch."""
    from .pricing import build_pricer

    settings = settings or load_settings()
    key = settings.pricing.model_dump_json()
    found = _PRICERS.get(key)
    if found is None:
        if len(_PRICERS) >= 16:
            _PRICERS.clear()
        found = _PRICERS[key] = build_pricer(settings.pricing)
    return found
