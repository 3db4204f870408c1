"""The ``obs-connector`` commands that change the store or its spool: ``replay``, ``migrate`` and
``cleanup`` (registered on the app by :mod:`cli`)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Annotated, Any

import typer

from .cli_support import (
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    MAX_DELETE_BATCH,
    MAX_RETENTION_DAYS,
    cli_settings,
    close_context,
    describe_failure,
    fail,
    make_console,
    open_context,
    plain,
    run_sync,
    store_job,
)

__all__ = ["cleanup", "migrate", "replay"]


def replay(ctx: typer.Context) -> None:
    """Deliver what waits in the on-disk spool to the store now, with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .config import spool_path
    from .spool import Spool, SpoolError, SpoolMissingError

    settings = cli_settings(ctx.obj)
    if not settings.batching.spool_enabled:
        fail("the spool is off (batching.spool_enabled: false): nothing to replay", EXIT_USAGE)
    where = spool_path(settings)
    probe = Spool(where, read_only=True)
    try:
        probe.stats()
    except SpoolMissingError as exc:  # a mistyped --store must not create a spool and a store
        make_console().print(plain(f"nothing to replay: {exc}"))
        return
    except SpoolError as exc:
        fail(str(exc))
    finally:
        probe.close()
    context = open_context(ctx.obj)
    delivery = context.store_delivery
    if delivery is None:  # open_context has checked the spool; this would be a race with its removal
        fail(f"the spool {where} could not be opened", EXIT_NOT_FOUND)
    before = delivery.spool.stats()
    owed = before.pending_by_sink.get("store", 0)
    if not owed:
        make_console().print(plain(f"nothing to replay: the spool at {delivery.spool.path} owes the store no batch"))
        return

    async def run(progress: Progress, task: Any) -> int:
        sent = 0
        try:
            while delivery.backlogged:
                await asyncio.to_thread(delivery.spool.make_due, "store")
                got = await delivery.replay_once()
                if got == 0 and delivery.backlogged:
                    break
                sent += got
                progress.advance(task)
            return sent
        finally:
            await close_context(context)

    columns = (TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TextColumn("batches"), TimeElapsedColumn())
    with Progress(*columns, console=make_console(stderr=True), transient=True) as progress:
        task = progress.add_task("replay", total=owed)
        sent = run_sync(lambda: run(progress, task))
    left = delivery.spool.stats().pending_by_sink.get("store", 0)
    make_console().print(
        plain(f"replayed {sent:,} span(s) to {context.store.describe()}; {left:,} batch(es) still owed")
    )
    if left:
        lease = delivery.spool.replay_leases().get("store")
        if lease is not None and not lease.mine:  # another process replays it: nothing is wrong
            fail(
                f"the store's backlog is being replayed by pid {lease.pid} on {lease.host}; it delivers the "
                "rest (run replay again once that process has stopped)",
                EXIT_NOT_FOUND,
            )
        fail(f"the store did not take everything: {delivery.stats.last_error}", EXIT_NOT_FOUND)


def migrate(
    ctx: typer.Context,
    schema: Annotated[
        Path | None,
        typer.Option("--schema", help="SQL file to apply (default: database/ml/mlops_tables.sql).", dir_okay=False),
    ] = None,
) -> None:
    """Create or update the span table, indexes, view, functions and access rules (safe to repeat).

    Postgres / Supabase: applied to OBS_DATABASE_URL (or DATABASE_URL) in one transaction. The
    embedded SQLite store creates its own schema; this only makes sure it exists.
    """
    from .config import ConfigError, database_url, load_settings, store_backend

    try:
        backend = store_backend(load_settings())
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    dsn = database_url()
    if dsn is None and backend in ("postgres", "supabase"):
        fail(
            f"store backend {backend!r}: migrations need a Postgres connection string in OBS_DATABASE_URL "
            "(or DATABASE_URL); the Supabase REST API cannot create tables — use the project's "
            "database connection string",
            EXIT_USAGE,
        )
    if dsn is not None:
        _migrate_postgres(dsn, schema)
        return

    context = open_context(ctx.obj)

    async def ensure() -> int:
        await context.store.open()
        return int(await context.store.count_spans())

    count = store_job(context, "preparing {store}", ensure)
    make_console().print(
        plain(f"{context.store.describe()}: schema ready (the embedded store creates it itself); {count:,} spans")
    )


def _migrate_postgres(dsn: str, schema: Path | None) -> None:
    from rich.table import Table

    from src.repositories.base import StoreError
    from src.repositories.postgres import SCHEMA_PATH, describe_dsn
    from src.repositories.postgres import migrate as apply_schema

    path = schema or SCHEMA_PATH
    try:
        report = apply_schema(dsn, path)
    except StoreError as exc:
        fail(describe_failure(exc))
    except Exception as exc:
        fail(f"applying {path} to {describe_dsn(dsn)} failed: {describe_failure(exc)}")
    console = make_console()
    console.print(f"Applied [bold]{path.name}[/] to {report.database} (PostgreSQL {report.server_version})")
    table = Table(show_header=True, box=None, pad_edge=False)
    table.add_column("object")
    table.add_column("state")
    for name in report.created:
        table.add_row(name, "[green]created[/]")
    for name in report.already_present:
        table.add_row(name, "already present")
    console.print(table)
    if report.supabase_roles:
        access = ", ".join(f"{role} {state}" for role, state in report.access.items())
        console.print(f"Supabase API roles: {access}")
    else:
        console.print(
            "No Supabase API roles (anon, authenticated, service_role) here: a plain Postgres. "
            "Run migrate again after creating them to add their grants and policy."
        )
    summary = f"{len(report.created)} created, {len(report.already_present)} already present"
    console.print(f"Done: {summary}." if report.changed else f"Nothing to create: {summary}.")


def cleanup(
    ctx: typer.Context,
    days: Annotated[
        int | None,
        typer.Option(
            "--days",
            "-d",
            min=1,
            max=MAX_RETENTION_DAYS,
            help="Delete spans that started more than N days ago (default: retention.days).",
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            min=1,
            max=MAX_DELETE_BATCH,
            help="Rows per delete transaction (default: retention.batch_size).",
        ),
    ] = None,
) -> None:
    """Delete spans older than the retention period, in short batches, with a progress bar (and the
    feedback scores given before it)."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    context = open_context(ctx.obj, "write")
    keep = days if days is not None else context.settings.retention.days
    size = batch_size if batch_size is not None else context.settings.retention.batch_size
    console = make_console()
    bar = Progress(
        SpinnerColumn(),
        TextColumn(f"deleting spans older than {keep} days"),
        BarColumn(),
        TextColumn("{task.completed:,.0f} rows"),
        TimeElapsedColumn(),
        console=console,
    )

    scores = 0  # feedback scores deleted with the spans

    async def run_cleanup() -> int:
        nonlocal scores
        with bar:
            task = bar.add_task("cleanup", total=None)
            deleted = await context.store.delete_old_spans(
                keep, batch_size=size, progress=lambda total: bar.update(task, completed=total)
            )
            bar.update(task, completed=deleted, total=deleted or 1)
        with contextlib.suppress(NotImplementedError):  # a store that keeps no feedback
            scores = await context.store.delete_old_feedback(keep)
        return int(deleted)

    deleted = store_job(context, "cleanup of {store}", run_cleanup, usage=(ValueError,))
    console.print(plain(f"Deleted {deleted:,} spans older than {keep} days from {context.store.describe()}."))
    if scores:
        console.print(plain(f"Deleted {scores:,} feedback scores older than {keep} days."))
