"""The OTLP exporter's resolved settings: the ``otlp`` section, then the standard ``OTEL_*`` variables.

Kept apart from the wire code so that asking whether export is on never imports protobuf or httpx.
The variables are the ones every OpenTelemetry SDK reads, with the same meaning: a
``..._TRACES_ENDPOINT`` is used as given, a plain ``OTEL_EXPORTER_OTLP_ENDPOINT`` is a base URL
to which ``/v1/traces`` is appended, and headers are ``key=value`` pairs, comma separated, with
URL-encoded values.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = ["DEFAULT_ENDPOINT", "OTLP_ENV_VARS", "OtlpConfig", "otlp_configured", "parse_headers", "redact_url"]

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "http://127.0.0.1:4318/v1/traces"
#: Every variable read here (the tests' isolation clears them).
OTLP_ENV_VARS = (
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_SERVICE_NAME",
)


def _get(section: Any, name: str, default: Any) -> Any:
    value = getattr(section, name, None) if section is not None else None
    return default if value is None else value


def _env_endpoint(env: Mapping[str, str]) -> str | None:
    traces = (env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or "").strip()
    if traces:
        return traces
    base = (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "").strip()
    if base:
        return base.rstrip("/") + "/v1/traces"
    return None


def otlp_configured(settings: Any = None, environ: Mapping[str, str] | None = None) -> bool:
    """Export is on when ``otlp.enabled`` is true, or ``auto`` and an ``OTEL_EXPORTER_OTLP_*ENDPOINT`` is set."""
    env = os.environ if environ is None else environ
    enabled = _get(getattr(settings, "otlp", None), "enabled", "auto")
    if isinstance(enabled, bool):
        return enabled
    return _env_endpoint(env) is not None


def parse_headers(text: str) -> dict[str, str]:
    """``k1=v1,k2=v2`` (values URL-encoded) as a dict.

    A pair that is not ``key=value`` is skipped with a warning naming its position only (the text
    holds API keys), as the SDKs skip it: a typo must not stop the process that exports.
    """
    headers: dict[str, str] = {}
    for index, pair in enumerate(text.split(",")):
        if not pair.strip():
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            log.warning("OTLP header #%d is not key=value; skipped", index + 1)
            continue
        headers[unquote(key.strip()).lower()] = unquote(value.strip())
    return headers


def redact_url(url: str) -> str:
    """The URL without a password it may carry (for output only)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:[REDACTED]@{host}"))


def _seconds(env: Mapping[str, str], names: tuple[str, str], default: float) -> float:
    for name in names:
        raw = (env.get(name) or "").strip()
        if raw:
            try:
                value = float(raw) / 1000.0  # the SDKs' unit for these two is milliseconds
            except ValueError:
                continue
            if value > 0:
                return value
    return default


@dataclass(frozen=True)
class OtlpConfig:
    """Resolved export settings; the headers (API keys) are kept out of ``repr`` and every log line."""

    endpoint: str = DEFAULT_ENDPOINT
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    timeout_s: float = 10.0
    compression: str = "gzip"
    #: How long a caller invoking the graph waits for the answer before it is reported queued.
    wait_s: float = 1.0
    max_spans_per_request: int = 512
    max_requests_in_flight: int = 2
    service_name: str = "obs-connector"

    @property
    def display_endpoint(self) -> str:
        return redact_url(self.endpoint)

    @classmethod
    def from_settings(cls, settings: Any = None, environ: Mapping[str, str] | None = None) -> OtlpConfig:
        """The ``otlp`` section, then the ``OTEL_*`` variables on top (signal-specific ones first)."""
        env = os.environ if environ is None else environ
        section = getattr(settings, "otlp", None)
        headers = {str(k).lower(): str(v) for k, v in dict(_get(section, "headers", {})).items()}
        for name in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"):  # the latter wins
            raw = env.get(name)
            if raw:
                headers.update(parse_headers(raw))
        compression = (
            env.get("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION")
            or env.get("OTEL_EXPORTER_OTLP_COMPRESSION")
            or _get(section, "compression", "gzip")
        )
        compression = str(compression).strip().lower()
        return cls(
            endpoint=_env_endpoint(env) or _get(section, "endpoint", None) or DEFAULT_ENDPOINT,
            headers=headers,
            timeout_s=_seconds(
                env,
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"),
                float(_get(section, "timeout_s", 10.0)),
            ),
            compression="gzip" if compression == "gzip" else "none",
            wait_s=float(_get(section, "wait_s", 1.0)),
            max_spans_per_request=int(_get(section, "max_spans_per_request", 512)),
            max_requests_in_flight=int(_get(section, "max_requests_in_flight", 2)),
            service_name=env.get("OTEL_SERVICE_NAME") or str(_get(section, "service_name", "obs-connector")),
        )
