"""Secrets kept out of log lines and printed URLs.

:func:`install_log_redaction` scrubs every record logged by the connector's packages and by the
libraries it sends through (httpx, httpcore, urllib3, opik), so an error that echoes a bad
value, or a request line with a URL's password, never prints a secret. :func:`redact_url`
hides a URL's password for status output.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .secret_text import redact_text

__all__ = ["THIRD_PARTY_LOGGERS", "RedactingFilter", "install_log_redaction", "redact_url"]


_LOG_PREFIXES = ("src.agents.ml_foundation.observability_connector", "src.mlops", "src.repositories")
#: Libraries the connector sends through, whose own records can echo what they were handed:
#: httpx logs every request's URL at INFO (with the user:password of an Opik URL that has one),
#: httpcore and urllib3 their connections at DEBUG, opik its configuration and its failures.
THIRD_PARTY_LOGGERS = ("httpx", "httpcore", "urllib3", "opik")
_installed = False


class RedactingFilter(logging.Filter):
    """Scrubs a record as it passes a logger (see :func:`install_log_redaction`); never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        _scrub(record)
        return True


def install_log_redaction(
    prefixes: Iterable[str] = _LOG_PREFIXES, third_party: Iterable[str] = THIRD_PARTY_LOGGERS
) -> None:
    """Scrub secrets from every log record of the connector's packages and of the libraries it
    sends through (idempotent).

    A record factory, because handlers belong to the application and a filter on a logger does
    not see its children's records (httpx logs on ``httpx``, but httpcore on
    ``httpcore.http11``, urllib3 on ``urllib3.connectionpool``, opik on its modules' loggers):
    the factory sees every record of those names as it is created. The third-party loggers also
    get a :class:`RedactingFilter`, so their own records stay scrubbed should something later
    replace the record factory without calling ours. Records of other libraries are left alone,
    and a record without a secret is left exactly as it was.
    """
    global _installed
    if _installed:
        return
    _installed = True
    outside = tuple(third_party)
    names = (*prefixes, *outside)
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        name = record.name  # None from logging.makeLogRecord()
        if isinstance(name, str) and name.startswith(names):
            _scrub(record)
        return record

    logging.setLogRecordFactory(factory)
    for name in outside:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())


def _scrub(record: logging.LogRecord) -> None:
    if getattr(record, "_secrets_scrubbed", False):  # the factory already did (the filter comes later)
        return
    record._secrets_scrubbed = True
    try:
        message = record.getMessage()
    except Exception:  # a bad format string is logging's problem to report, not ours
        return
    safe = redact_text(message)
    if safe != message:
        record.msg, record.args = safe, None
    if record.exc_info and not record.exc_text:
        text = logging.Formatter().formatException(record.exc_info)
        record.exc_text = redact_text(text)
    if record.stack_info:
        record.stack_info = redact_text(record.stack_info)


def redact_url(url: str) -> str:
    """The URL without its password, for logs and status output."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    netloc = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{netloc}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))
