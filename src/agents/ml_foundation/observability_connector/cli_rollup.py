"""``obs-connector rollup rebuild`` and ``rollup verify``: repair and check the metrics rollups
(``rollups.py``) against the raw rows. Registered on the app by :mod:`cli` as a sub-command group."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from .cli_support import (
    EXIT_USAGE,
    close_context,
    describe_failure,
    fail,
    make_console,
    open_context,
    plain,
    run_sync,
)

__all__ = ["rollup_app"]

rollup_app = typer.Typer(
    name="rollup",
    help="Check or rebuild the metrics rollups from the raw span rows.",
    no_args_is_help=True,
    add_completion=False,
)

_SINCE_HELP = "Only the UTC days from this one on: a date (2026-12-01) or a window back from now (7d, 24h)."


def _since(value: str | None) -> datetime | None:
    """``--since`` as the start of a UTC day (rebuild and verify work in whole days)."""
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


@rollup_app.command()
def rebuild(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option("--since", help=_SINCE_HELP)] = None,
) -> None:
    """Recompute the rollups from the raw rows, one UTC day per short transaction, with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    start = _since(since)
    context = open_context(ctx.obj, "write")
    store = context.store

    async def run(progress: Progress) -> int:
        try:
            first = await store.get_spans_by_time_window("3650d", limit=1)
            origin = start or (first[0].start_time if first else datetime.now(UTC))
            total = max(1, (datetime.now(UTC) - origin.astimezone(UTC)) // timedelta(days=1) + 1)
            task = progress.add_task("rebuild", total=total)
            return await store.rebuild_rollups(start, progress=lambda days: progress.update(task, completed=days))
        finally:
            await close_context(context)

    columns = (
        TextColumn("rebuilding rollups"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("days"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=make_console(stderr=True), transient=True) as progress:
            days = run_sync(lambda: run(progress))
    except NotImplementedError as exc:
        fail(str(exc), EXIT_USAGE)
    except Exception as exc:
        fail(f"rebuilding the rollups of {store.describe()} failed: {describe_failure(exc)}")
    scope = f"from {start:%Y-%m-%d}" if start else "for every stored day"
    make_console().print(plain(f"Rebuilt the rollups of {store.describe()} {scope}: {days:,} day(s)."))


@rollup_app.command()
def verify(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option("--since", help=_SINCE_HELP)] = None,
) -> None:
    """Compare every rollup level with the raw rows, per UTC day and agent; exit 1 on any mismatch."""
    start = _since(since)
    context = open_context(ctx.obj)
    store = context.store

    async def run() -> list[str]:
        try:
            return await store.verify_rollups(start)
        finally:
            await close_context(context)

    try:
        problems = run_sync(run)
    except NotImplementedError as exc:
        fail(str(exc), EXIT_USAGE)
    except Exception as exc:
        fail(f"verifying the rollups of {store.describe()} failed: {describe_failure(exc)}")
    console = make_console()
    for line in problems[:50]:
        console.print(plain(line), soft_wrap=True)
    if problems:
        more = f" ({len(problems) - 50:,} more not shown)" if len(problems) > 50 else ""
        fail(f"{len(problems):,} rollup bucket(s) differ from the raw rows{more}; run `obs-connector rollup rebuild`")
    console.print(plain(f"Rollups of {store.describe()} match the raw rows."))
