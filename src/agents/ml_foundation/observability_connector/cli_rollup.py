"""``obs-connector rollup rebuild`` and ``rollup verify``: repair and check the metrics rollups
(``rollups.py``) against the raw rows. Registered on the app by :mod:`cli` as a sub-command group."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from .cli_support import SINCE_HELP, fail, make_console, open_context, plain, since_day, store_job

__all__ = ["rollup_app"]

rollup_app = typer.Typer(
    name="rollup",
    help="Check or rebuild the metrics rollups from the raw span rows.",
    no_args_is_help=True,
    add_completion=False,
)


@rollup_app.command()
def rebuild(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option("--since", help=SINCE_HELP)] = None,
) -> None:
    """Recompute the rollups from the raw rows, one UTC day per short transaction, with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    start = since_day(since)
    context = open_context(ctx.obj, "write")
    store = context.store

    async def run(progress: Progress) -> int:
        first = await store.get_spans_by_time_window("3650d", limit=1)
        origin = start or (first[0].start_time if first else datetime.now(UTC))
        total = max(1, (datetime.now(UTC) - origin.astimezone(UTC)) // timedelta(days=1) + 1)
        task = progress.add_task("rebuild", total=total)
        return await store.rebuild_rollups(start, progress=lambda days: progress.update(task, completed=days))

    columns = (
        TextColumn("rebuilding rollups"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("days"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=make_console(stderr=True), transient=True) as progress:
        days = store_job(
            context, "rebuilding the rollups of {store}", lambda: run(progress), usage=(NotImplementedError,)
        )
    scope = f"from {start:%Y-%m-%d}" if start else "for every stored day"
    make_console().print(plain(f"Rebuilt the rollups of {store.describe()} {scope}: {days:,} day(s)."))


@rollup_app.command()
def verify(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option("--since", help=SINCE_HELP)] = None,
) -> None:
    """Compare every rollup level with the raw rows, per UTC day and agent; exit 1 on any mismatch."""
    start = since_day(since)
    context = open_context(ctx.obj)
    store = context.store

    problems = store_job(
        context, "verifying the rollups of {store}", lambda: store.verify_rollups(start), usage=(NotImplementedError,)
    )
    console = make_console()
    for line in problems[:50]:
        console.print(plain(line), soft_wrap=True)
    if problems:
        more = f" ({len(problems) - 50:,} more not shown)" if len(problems) > 50 else ""
        fail(f"{len(problems):,} rollup bucket(s) differ from the raw rows{more}; run `obs-connector rollup rebuild`")
    console.print(plain(f"Rollups of {store.describe()} match the raw rows."))
