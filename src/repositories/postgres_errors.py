"""How the Postgres backend names what went wrong: the database's own words, the backend-neutral
error types (retryable or not), and connection strings without their password."""

from __future__ import annotations

from typing import Final

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import PoolTimeout

from src.repositories.base import (
    StoreAuthError,
    StoreError,
    StorePermissionError,
    StoreSchemaError,
    StoreUnavailableError,
)

__all__ = ["ROW_ERRORS", "describe_dsn", "reason", "span_label", "store_error"]

#: Errors that belong to a row rather than to the batch or the connection: SQLSTATE class 22
#: (data exception) and 23 (integrity), and values psycopg cannot encode on our side.
ROW_ERRORS: Final = (
    psycopg.DataError,
    psycopg.IntegrityError,
    UnicodeError,
    OverflowError,
    ValueError,
    TypeError,
)


def span_label(span: object) -> str:
    try:
        return str(getattr(span, "span_id", None) or "<no span_id>")
    except Exception:
        return "<unprintable span_id>"


def reason(exc: BaseException) -> str:
    """The database's own message (first line, plus DETAIL when it names the value)."""
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        text = exc.diag.message_primary
        if exc.diag.message_detail:
            text += f" ({exc.diag.message_detail})"
        if exc.sqlstate:
            text += f" [SQLSTATE {exc.sqlstate}]"
        return f"{type(exc).__name__}: {text}"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"


def describe_dsn(dsn: str) -> str:
    """``postgresql://user@host:port/dbname`` — never the password, whatever form the DSN had."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "postgresql://<unparseable connection string>"
    user = str(params.get("user") or "")
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or "5432")
    dbname = str(params.get("dbname") or user)
    return f"postgresql://{user + '@' if user else ''}{host}:{port}/{dbname}"


def store_error(exc: BaseException, where: str) -> StoreError:
    """Map a driver / pool failure onto the backend-neutral error types (retryable or not)."""
    sqlstate = getattr(exc, "sqlstate", None) or ""
    message = f"{where}: {reason(exc)}"
    if isinstance(exc, PoolTimeout):
        return StoreUnavailableError(f"{where}: no database connection within the timeout ({exc})")
    if sqlstate in ("28P01", "28000") or "password authentication failed" in str(exc):
        return StoreAuthError(message, code=sqlstate or None)
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return StorePermissionError(message, code=sqlstate)
    if isinstance(exc, pg_errors.UndefinedTable | pg_errors.UndefinedFunction | pg_errors.UndefinedColumn):
        return StoreSchemaError(
            message, code=sqlstate, hint="apply database/ml/mlops_tables.sql with `obs-connector migrate`"
        )
    if isinstance(exc, psycopg.OperationalError | pg_errors.AdminShutdown | pg_errors.CannotConnectNow):
        return StoreUnavailableError(message, code=sqlstate or None)
    if isinstance(exc, pg_errors.QueryCanceled | pg_errors.SerializationFailure | pg_errors.DeadlockDetected):
        return StoreUnavailableError(message, code=sqlstate)
    if isinstance(exc, OSError | TimeoutError):
        return StoreUnavailableError(message)
    return StoreError(message, code=sqlstate or None)
