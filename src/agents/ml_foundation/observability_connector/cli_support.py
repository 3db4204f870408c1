"""What every ``obs-connector`` command shares: the ``--store`` option's settings, opening the
store, one-line failures and the exit codes (see :mod:`cli`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from .config import ObservabilitySettings
    from .runtime import ConnectorContext

__all__ = [
    "EXIT_NOT_FOUND",
    "EXIT_USAGE",
    "SINCE_HELP",
    "CliOptions",
    "cli_settings",
    "close_context",
    "describe_failure",
    "fail",
    "make_console",
    "open_context",
    "plain",
    "run_sync",
    "since_day",
    "store_job",
    "validate_window",
]

T = TypeVar("T")

EXIT_NOT_FOUND = 1
EXIT_USAGE = 2

#: Bounds of ``cleanup``'s options (the settings' bounds too): a century of days is still a date,
#: and a delete transaction past a million rows would hold the write lock for too long.
MAX_RETENTION_DAYS = 36_500
MAX_DELETE_BATCH = 1_000_000

#: How a command uses the store: ``read`` opens it read-only and creates nothing; ``write``
#: changes an existing store (a missing one is an error); ``create`` makes it if needed.
StoreMode = Literal["read", "write", "create"]


@dataclass
class CliOptions:
    """Options of the top-level callback, shared by every command through ``ctx.obj``."""

    store: Path | None = None


def make_console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def plain(text: object) -> str:
    """``text`` shown as it is: paths, ids and driver messages hold brackets ("[Errno 2]", a
    trace id "[/x]") that rich would otherwise take for markup, dropping them or failing."""
    from rich.markup import escape

    return escape(str(text))


def fail(message: str, code: int = EXIT_NOT_FOUND) -> NoReturn:
    """Print a one-line error to stderr and exit; never a traceback for an expected failure."""
    make_console(stderr=True).print(f"[bold red]error:[/] {plain(message)}", soft_wrap=True)
    raise typer.Exit(code)


def validate_window(value: str) -> str:
    """Reject a bad window before anything touches the store, naming the accepted forms and the
    longest window, in one line."""
    from src.repositories.base import parse_window

    try:
        parse_window(value)
    except ValueError as exc:
        fail(f"--window: {exc}", EXIT_USAGE)
    return value


def describe_failure(exc: BaseException) -> str:
    """One line for a failed store operation: the store's own message (it names the file or
    server and the problem) and its hint; anything else with its type. Secrets are redacted."""
    from src.repositories.base import StoreError

    from .redaction import redact_text

    if isinstance(exc, StoreError):
        text = exc.message + (f" ({exc.hint})" if exc.hint else "")
    else:
        text = f"{type(exc).__name__}: {exc}"
    return redact_text(" ".join(text.split()))  # one line, whatever the driver's message looked like


def cli_settings(options: CliOptions | None) -> ObservabilitySettings:
    from .config import ConfigError, load_settings

    try:
        settings = load_settings()
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    if options is not None and options.store is not None:
        settings.store = settings.store.model_copy(update={"sqlite_path": str(options.store)})
    return settings


def open_context(options: CliOptions | None, mode: StoreMode = "create", *, probe: bool = True) -> ConnectorContext:
    """The configured context (settings, registry, store), with ``--store`` applied.

    The store (and, for the commands that write, the spool) is opened once here, so a bad
    path, a corrupt file or an unreachable server is one clear line before the command starts;
    ``probe=False`` leaves that to the command (``status`` reports it beside everything else).
    """
    from .config import ConfigError, build_store, spool_path
    from .runtime import ConnectorContext
    from .spool import Spool, SpoolError

    settings = cli_settings(options)
    try:
        if probe:
            # A store that must already exist is probed read-only, so a typo creates nothing.
            store = build_store(settings, read_only=mode != "create")

            async def check() -> None:
                try:
                    await store.open()
                finally:
                    await store.close()

            try:
                run_sync(check)
            except Exception as exc:
                fail(describe_failure(exc))
        if mode != "read" and settings.batching.spool_enabled:
            # Checked here rather than left to the connector, which would log the problem and
            # carry on without a spool: a command can say it once and stop.
            spool = Spool(spool_path(settings))
            try:
                spool.has_pending("store")  # creates it: the command writes, and the connector would
            except SpoolError as exc:
                fail(str(exc))
            finally:
                spool.close()
        return ConnectorContext.from_config(settings, read_only=mode == "read")
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)


SINCE_HELP = "Only the UTC days from this one on: a date (2026-12-01) or a window back from now (7d, 24h)."


def since_day(value: str | None) -> datetime | None:
    """``--since`` as the start of a UTC day (rollup rebuild / verify and cost reprice work in whole days)."""
    if value is None:
        return None
    from src.repositories.base import window_start

    try:
        moment = window_start(value)
    except ValueError:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            fail(f"--since {value!r} is neither a date (2026-12-01) nor a window (7d, 24h)", EXIT_USAGE)
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        return asyncio.run(make())
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def store_job(
    context: ConnectorContext,
    what: str,
    work: Callable[[], Coroutine[Any, Any, T]],
    *,
    usage: tuple[type[BaseException], ...] = (),
) -> T:
    """Run one command's work on the store, close the context whatever happens, and turn a failure
    into the one-line error every command gives.

    ``what`` names the work with ``{store}`` where the store's description goes ("reading metrics
    from {store}"). An exception of a ``usage`` type (a window the store refused, an operation the
    backend cannot do) exits 2 with its own message; anything else exits 1.
    """

    async def run() -> T:
        try:
            return await work()
        finally:
            await close_context(context)

    try:
        return run_sync(run)
    except usage as exc:
        fail(str(exc), EXIT_USAGE)
    except Exception as exc:
        # The last "{store}" is ours: an id quoted earlier in ``what`` may hold the same text.
        head, _, tail = what.rpartition("{store}")
        fail(f"{head}{context.store.describe()}{tail} failed: {describe_failure(exc)}")


async def close_context(ctx: ConnectorContext) -> None:
    try:
        await ctx.store.close()
    except Exception as exc:  # closing must not turn a good answer into a failure
        logging.getLogger(__name__).warning("closing the store failed: %s", exc)
    await ctx.cache.aclose()  # Redis connections of this loop; never raises
