"""Opik's resolved settings: the ``opik`` section of the configuration, then Opik's own environment.

Kept apart from the wire code so that reading whether Opik is on, and where it is, never loads
the ``opik`` client (about 2,000 modules).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["OPIK_CLOUD_URL", "OPIK_ENV_VARS", "OPIK_LOCAL_URL", "OpikConfig", "opik_configured"]

OPIK_CLOUD_URL = "https://www.comet.com/opik/api"
OPIK_LOCAL_URL = "http://localhost:5173/api"
#: The environment variables this package reads (the live test and the test suite's isolation use it).
OPIK_ENV_VARS = ("OPIK_API_KEY", "OPIK_URL_OVERRIDE", "OPIK_WORKSPACE", "OPIK_PROJECT_NAME")


def _get(section: Any, name: str, default: Any) -> Any:
    value = getattr(section, name, None) if section is not None else None
    return default if value is None else value


def _enabled_setting(opik_section: Any) -> str:
    value = _get(opik_section, "enabled", "auto")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip().lower()


def opik_configured(settings: Any = None, environ: Mapping[str, str] | None = None) -> bool:
    """Opik is on when ``opik.enabled`` is true, or it is ``auto`` and ``OPIK_URL_OVERRIDE``/``OPIK_API_KEY`` is set."""
    env = os.environ if environ is None else environ
    enabled = _enabled_setting(getattr(settings, "opik", None))
    if enabled in ("false", "off", "no", "0"):
        return False
    if enabled in ("true", "on", "yes", "1"):
        return True
    return bool(env.get("OPIK_URL_OVERRIDE") or env.get("OPIK_API_KEY"))


@dataclass(frozen=True)
class OpikConfig:
    """Resolved settings of the Opik sink; the API key, and a password in the URL, are kept out of
    ``repr`` and every log line."""

    url: str = field(repr=False)
    api_key: str | None = field(default=None, repr=False)
    workspace: str = "default"
    project_name: str = "e2i-causal-analytics"
    #: Per HTTP request; the delivery layer gives a whole batch twice this before it spools it.
    request_timeout_s: float = 10.0
    #: How long a caller invoking the graph waits for Opik's answer before it is reported queued.
    wait_s: float = 1.0
    max_items_per_request: int = 1000
    #: Requests to Opik in flight at once, whichever batch or replay they belong to (per event loop).
    max_requests_in_flight: int = 2
    max_traces_tracked: int = 20_000
    #: True: span batches are encoded once and posted through the REST client's transport. False:
    #: through the generated ``create_spans`` / ``create_traces`` methods, whose per-item
    #: conversion is the SDK's own ceiling. Same endpoints, same bodies (the tests run both).
    encode_once: bool = True

    @classmethod
    def from_settings(cls, settings: Any = None, environ: Mapping[str, str] | None = None) -> OpikConfig:
        """The settings' ``opik`` section, then Opik's own environment variables on top.

        ``OPIK_URL_OVERRIDE``, ``OPIK_WORKSPACE`` and ``OPIK_PROJECT_NAME`` win over the file, as
        the environment does everywhere else; the key only ever comes from ``OPIK_API_KEY``.
        """
        env = os.environ if environ is None else environ
        section = getattr(settings, "opik", None)
        key = env.get("OPIK_API_KEY") or None
        url = env.get("OPIK_URL_OVERRIDE") or _get(section, "url", None) or (OPIK_CLOUD_URL if key else OPIK_LOCAL_URL)
        return cls(
            url=str(url).rstrip("/"),
            api_key=key,
            workspace=env.get("OPIK_WORKSPACE") or _get(section, "workspace", "default"),
            project_name=env.get("OPIK_PROJECT_NAME") or _get(section, "project_name", "e2i-causal-analytics"),
            request_timeout_s=float(_get(section, "request_timeout_s", 10.0)),
            wait_s=float(_get(section, "wait_s", 1.0)),
            max_items_per_request=int(_get(section, "max_items_per_request", 1000)),
            max_requests_in_flight=int(_get(section, "max_requests_in_flight", 2)),
        )
