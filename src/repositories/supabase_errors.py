"""PostgREST's answers as typed store errors, and which of them to retry or to bisect a batch for.

The repository's HTTP client turns every non-2xx answer into a :class:`~src.repositories.base.StoreError`
carrying the HTTP status (see :mod:`supabase_client` for why).
"""

from __future__ import annotations

import json
from typing import Any, Final

import httpx

from src.repositories.base import (
    TABLE,
    StoreAuthError,
    StoreConflictError,
    StoreError,
    StorePermissionError,
    StoreRequestError,
    StoreSchemaError,
    StoreUnavailableError,
)

__all__ = ["STATEMENT_TIMEOUT", "error_for_response", "raise_for_status", "retryable", "row_level"]

ENV_URL: Final = "SUPABASE_URL"
ENV_SERVICE_KEY: Final = "SUPABASE_SERVICE_KEY"

#: SQLSTATE classes / PostgREST codes that describe the request or the schema, never one row:
#: undefined column/table/function, syntax, privileges, and every PostgREST-level error.
_REQUEST_LEVEL_CODES: Final = ("PGRST", "42")
_SCHEMA_CODES: Final = frozenset({"PGRST202", "PGRST204", "PGRST205", "42P01", "42703", "42883"})
_ROW_LEVEL_STATUSES: Final = frozenset({400, 409, 413, 422})
STATEMENT_TIMEOUT: Final = "57014"


def _text(value: object) -> str | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _proxy_status_code(response: httpx.Response) -> str | None:
    """PostgREST names its error code in ``Proxy-Status: PostgREST; error=CODE`` too."""
    header = response.headers.get("proxy-status", "")
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == "error" and value:
            return value.strip('"')
    return None


def error_for_response(response: httpx.Response) -> StoreError:
    """The typed error for one failed HTTP answer, with PostgREST's own diagnosis when present."""
    status = response.status_code
    payload: dict[str, Any] = {}
    try:
        parsed = json.loads(response.content) if response.content else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        payload = parsed
    code = _text(payload.get("code")) or _proxy_status_code(response)
    message = _text(payload.get("message")) or _text(payload.get("msg")) or _text(payload.get("error"))
    if message is None:
        body = response.text.strip()
        message = (body[:200] + "…") if len(body) > 200 else (body or response.reason_phrase or "no message")
    details = _text(payload.get("details"))
    hint = _text(payload.get("hint"))
    where = f"{response.request.method} {response.request.url.path}"
    said = message + (f" ({code})" if code else "")
    said += (f"; {details}" if details else "") + (f"; hint: {hint}" if hint else "")
    facts: dict[str, Any] = {"status": status, "code": code, "details": details, "hint": hint}

    if status == 401:
        return StoreAuthError(f"{where}: service key rejected (401) — check {ENV_SERVICE_KEY}: {said}", **facts)
    if status == 403:
        return StorePermissionError(
            f"{where}: permission denied (403) — the key is not the service_role key, or grants/RLS on "
            f"{TABLE} do not allow it: {said}",
            **facts,
        )
    if status == 409:
        return StoreConflictError(f"{where}: conflict with stored data (409): {said}", **facts)
    if status >= 500:
        return StoreUnavailableError(f"{where}: Supabase is failing or unreachable ({status}): {said}", **facts)
    if status == 404 or (code in _SCHEMA_CODES):
        return StoreSchemaError(
            f"{where}: not found ({status}) — is database/ml/mlops_tables.sql applied to this project? {said}",
            **facts,
        )
    return StoreRequestError(f"{where}: request rejected ({status}): {said}", **facts)


async def raise_for_status(response: httpx.Response) -> None:
    """httpx response hook: a non-2xx answer becomes a typed StoreError before postgrest-py sees it."""
    if response.is_success:
        return
    await response.aread()
    raise error_for_response(response)


def row_level(exc: StoreError) -> bool:
    """Could this failure belong to one row of the batch (so splitting the batch isolates it)?"""
    if isinstance(exc, StoreSchemaError) or exc.status not in _ROW_LEVEL_STATUSES:
        return False
    return not (exc.code or "").startswith(_REQUEST_LEVEL_CODES)


def retryable(exc: BaseException) -> bool:
    # A statement timeout (57014) would time out again at once; callers that can shrink the work do.
    return isinstance(exc, StoreError) and exc.retryable and exc.code != STATEMENT_TIMEOUT
