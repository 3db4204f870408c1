"""``obs-connector``: run the demo and ask the span store questions from a shell.

Commands: ``demo``, ``metrics``, ``trace``, ``status``, ``migrate``, ``cleanup``, ``replay``. More
plug in the same way: a function decorated with ``@app.command()`` here or in its
own module (registered with ``app.command()(func)``), opening the store with
:func:`open_context` and reporting failures with :func:`fail`, so every command shares the
``--store`` option, the error style and the exit codes:

* 0: done; 1: the answer is "no" or the store failed (e.g. trace not found);
* 2: bad usage or configuration (an invalid ``--window``, an invalid settings file).

Only ``typer`` and the standard library load at import, so ``--help`` answers quickly; the
connector, LangGraph and the store load inside the command that needs them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from .runtime import ConnectorContext

__all__ = ["app", "fail", "main", "open_context"]

T = TypeVar("T")

EXIT_NOT_FOUND = 1
EXIT_USAGE = 2

app = typer.Typer(
    name="obs-connector",
    help="Tier-0 observability connector: spans of the 18 agents, their latency, errors and tokens.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@dataclass
class CliOptions:
    """Options of the top-level callback, shared by every command through ``ctx.obj``."""

    store: Path | None = None


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def fail(message: str, code: int = EXIT_NOT_FOUND) -> NoReturn:
    """Print a one-line error to stderr and exit; never a traceback for an expected failure."""
    _console(stderr=True).print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code)


def _validate_window(value: str) -> str:
    """Reject a bad window before anything touches the store, naming the accepted forms."""
    from src.repositories.base import parse_window

    try:
        parse_window(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def open_context(options: CliOptions | None) -> ConnectorContext:
    """The configured context (settings, registry, store), with ``--store`` applied."""
    from .config import ConfigError, load_settings
    from .runtime import ConnectorContext

    try:
        settings = load_settings()
        if options is not None and options.store is not None:
            settings.store = settings.store.model_copy(update={"sqlite_path": str(options.store)})
        return ConnectorContext.from_config(settings)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)


def _run(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        return asyncio.run(make())
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


async def _close(ctx: ConnectorContext) -> None:
    try:
        await ctx.store.close()
    except Exception as exc:  # closing must not turn a good answer into a failure
        logging.getLogger(__name__).warning("closing the store failed: %s", exc)
    await ctx.cache.aclose()  # Redis connections of this loop; never raises


@app.callback()
def _root(
    ctx: typer.Context,
    store: Annotated[
        Path | None,
        typer.Option(
            "--store",
            help="SQLite file to use (default: store.sqlite_path, env OBS_STORE__SQLITE_PATH).",
            dir_okay=False,
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log the connector's warnings and info.")] = False,
) -> None:
    """Tier-0 observability connector: spans of the 18 agents, their latency, errors and tokens."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    ctx.obj = CliOptions(store=store)


@app.command()
def demo(
    ctx: typer.Context,
    traces: Annotated[int, typer.Option("--traces", "-n", min=1, max=10_000, help="Requests to route.")] = 50,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same requests, agents and failures.")] = 7,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, max=256, help="Requests in flight.")] = 4,
) -> None:
    """Route requests through the 18 agents (fake LLMs and tools), trace them, report from the store."""
    from .demo import run_demo

    context = open_context(ctx.obj)
    console = _console()
    result = _run(lambda: run_demo(traces, seed, console, context=context, concurrency=concurrency))
    if not result.delivered or result.spans_stored < result.spans_produced:
        fail(
            f"only {result.spans_stored:,} of {result.spans_produced:,} spans reached {result.store}; "
            "rerun with --verbose to see why"
        )


@app.command()
def metrics(
    ctx: typer.Context,
    window: Annotated[
        str,
        typer.Option("--window", "-w", callback=_validate_window, help="Time window: 30m, 1h, 24h, 7d, 2w ..."),
    ] = "24h",
    agent: Annotated[str | None, typer.Option("--agent", "-a", help="Only this agent's spans.")] = None,
    trace: Annotated[str | None, typer.Option("--trace", "-t", help="Only this trace's spans.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics fields as JSON.")] = False,
) -> None:
    """Latency, error rate and tokens per agent and per tier, and the overall quality score."""
    from .nodes.metrics_aggregator import compute_metrics

    context = open_context(ctx.obj)

    async def query() -> tuple[dict[str, Any], bool, float]:
        try:
            return await compute_metrics(context, window, agent, trace)
        finally:
            await _close(context)

    try:
        fields, from_cache, age = _run(query)
    except ValueError as exc:  # validated above; kept so a store-side rejection is still clean
        fail(str(exc), EXIT_USAGE)
    except Exception as exc:
        fail(f"reading metrics from {context.store.describe()} failed: {type(exc).__name__}: {exc}")

    if as_json:
        payload = {
            "time_window": window,
            "agent_name_filter": agent,
            "trace_id_filter": trace,
            "store": context.store.describe(),
            "metrics_from_cache": from_cache,
            "cache_age_s": round(age, 3),
            "cache_backend": context.cache.backend,
            **fields,
        }
        sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
        return

    from .render import agent_table, overall_text, tier_table

    console = _console()
    scope = f"window {window}" + (f", agent {agent}" if agent else "") + (f", trace {trace}" if trace else "")
    cache = context.cache.backend
    source = f"cached answer ({cache}), {age:.1f} s old" if from_cache else f"computed now, {cache} cache"
    console.print(f"[bold]Metrics[/] — {scope} — {context.store.describe()} ({source})")
    if agent and agent not in context.registry.agents:
        console.print(f"[yellow]note:[/] {agent!r} is not in the agent registry; it is reported as tier -1")
    if not fields.get("total_spans_analyzed"):
        console.print("No spans in this window. Produce some with [bold]obs-connector demo[/].")
        return
    console.print(agent_table(fields, context.registry))
    console.print()
    console.print(tier_table(fields))
    console.print()
    console.print(overall_text(fields))


@app.command()
def trace(
    ctx: typer.Context,
    trace_id: Annotated[str, typer.Argument(help="The trace id (32 hex digits, or any id a caller sent).")],
) -> None:
    """Draw one stored trace as a tree: operations, durations, statuses, models and tokens."""
    from .render import trace_tree

    context = open_context(ctx.obj)

    async def query() -> list[Any]:
        try:
            return await context.store.get_spans_by_trace_id(trace_id)
        finally:
            await _close(context)

    try:
        spans = _run(query)
    except Exception as exc:
        fail(f"reading trace {trace_id!r} from {context.store.describe()} failed: {type(exc).__name__}: {exc}")
    if not spans:
        fail(
            f"no spans stored for trace {trace_id!r} in {context.store.describe()}. "
            "Trace ids are printed by `obs-connector demo`; check --store / OBS_STORE__SQLITE_PATH."
        )
    _console().print(trace_tree(spans, trace_id))


@app.command()
def status(ctx: typer.Context) -> None:
    """Where spans are stored, how many there are, and the connector's settings."""
    from rich.table import Table

    from .config import config_dir, store_backend

    context = open_context(ctx.obj)

    async def query() -> int:
        try:
            return await context.store.count_spans()
        finally:
            await _close(context)

    try:
        count: int | str = _run(query)
    except Exception as exc:
        count = f"unavailable ({type(exc).__name__}: {exc})"
    s = context.settings
    registry = context.registry
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("store", f"{context.store.describe()} (backend {store_backend(s)})")
    table.add_row("spans stored", f"{count:,}" if isinstance(count, int) else count)
    table.add_row("config", str(config_dir()))
    table.add_row(
        "agents", f"{len(registry.agents)} in {len(registry.by_tier())} tiers" if registry.agents else "none registered"
    )
    table.add_row(
        "batching",
        f"{s.batching.max_batch_size} spans or {s.batching.max_batch_wait_s:g} s per batch, "
        f"queue {s.batching.max_queue_size:,}, shutdown flush {s.batching.shutdown_timeout_s:g} s",
    )
    table.add_row(
        "sampling",
        f"rate {s.sampling.default_rate:g}"
        + (", errors always kept" if s.sampling.always_sample_errors else ", errors sampled like the rest"),
    )
    table.add_row("retention", f"{s.retention.days} days (deleted in batches of {s.retention.batch_size:,})")
    table.add_row(
        "metrics cache",
        f"{context.cache.describe()}, "
        f"TTL {s.cache.ttl_short_s:g} s (≤1h) / {s.cache.ttl_day_s:g} s (≤24h) / {s.cache.ttl_long_s:g} s (longer)",
    )
    table.add_row("opik", f"project {s.opik.project_name!r}, workspace {s.opik.workspace!r}")
    table.add_row("spool", _spool_line(context))
    _console().print(table)


def _spool_line(context: ConnectorContext) -> str:
    """What waits on disk for a sink (batches a running or crashed process could not deliver)."""
    delivery = context.store_delivery
    if delivery is None:
        return "off (batching.spool_enabled: false)"
    try:
        st = delivery.spool.stats()
    except Exception as exc:
        return f"{delivery.spool.path}: unreadable ({type(exc).__name__}: {exc})"
    age = "" if st.oldest_age_s is None else f", oldest {st.oldest_age_s:,.0f} s old"
    owed = ", ".join(f"{sink} owes {n}" for sink, n in sorted(st.pending_by_sink.items())) or "nothing owed"
    return (
        f"{delivery.spool.path}: {st.batches:,} batch(es), {st.spans:,} span(s), {st.bytes / 1e6:.1f} MB{age}; "
        f"{owed}; dropped {st.dropped_spans:,}; dead letters {st.dead_letters:,}"
    )


@app.command()
def replay(ctx: typer.Context) -> None:
    """Deliver what waits in the on-disk spool to the store now, with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    context = open_context(ctx.obj)
    delivery = context.store_delivery
    if delivery is None:
        fail("the spool is off (batching.spool_enabled: false): nothing to replay", EXIT_USAGE)
    before = delivery.spool.stats()
    owed = before.pending_by_sink.get("store", 0)
    if not owed:
        _console().print(f"nothing to replay: the spool at {delivery.spool.path} owes the store no batch")
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
            await _close(context)

    columns = (TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TextColumn("batches"), TimeElapsedColumn())
    with Progress(*columns, console=_console(stderr=True), transient=True) as progress:
        task = progress.add_task("replay", total=owed)
        sent = _run(lambda: run(progress, task))
    left = delivery.spool.stats().pending_by_sink.get("store", 0)
    _console().print(f"replayed {sent:,} span(s) to {context.store.describe()}; {left:,} batch(es) still owed")
    if left:
        fail(f"the store did not take everything: {delivery.stats.last_error}", EXIT_NOT_FOUND)


@app.command()
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
        try:
            await context.store.open()
            return int(await context.store.count_spans())
        finally:
            await _close(context)

    try:
        count = _run(ensure)
    except Exception as exc:
        fail(f"preparing {context.store.describe()} failed: {type(exc).__name__}: {exc}")
    _console().print(
        f"{context.store.describe()}: schema ready (the embedded store creates it itself); {count:,} spans"
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
        hint = f" ({exc.hint})" if getattr(exc, "hint", None) else ""
        fail(f"{exc}{hint}")
    except Exception as exc:
        fail(f"applying {path} to {describe_dsn(dsn)} failed: {type(exc).__name__}: {exc}")
    console = _console()
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


@app.command()
def cleanup(
    ctx: typer.Context,
    days: Annotated[
        int | None,
        typer.Option(
            "--days", "-d", min=1, help="Delete spans that started more than N days ago (default: retention.days)."
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", min=1, help="Rows per delete transaction (default: retention.batch_size)."),
    ] = None,
) -> None:
    """Delete spans older than the retention period, in short batches, with a progress bar."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    context = open_context(ctx.obj)
    keep = days if days is not None else context.settings.retention.days
    size = batch_size if batch_size is not None else context.settings.retention.batch_size
    console = _console()
    bar = Progress(
        SpinnerColumn(),
        TextColumn(f"deleting spans older than {keep} days"),
        BarColumn(),
        TextColumn("{task.completed:,.0f} rows"),
        TimeElapsedColumn(),
        console=console,
    )

    async def run_cleanup() -> int:
        try:
            with bar:
                task = bar.add_task("cleanup", total=None)
                deleted = await context.store.delete_old_spans(
                    keep, batch_size=size, progress=lambda total: bar.update(task, completed=total)
                )
                bar.update(task, completed=deleted, total=deleted or 1)
                return int(deleted)
        finally:
            await _close(context)

    try:
        deleted = _run(run_cleanup)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    except Exception as exc:
        fail(f"cleanup of {context.store.describe()} failed: {type(exc).__name__}: {exc}")
    console.print(f"Deleted {deleted:,} spans older than {keep} days from {context.store.describe()}.")


def main() -> None:
    """Console-script entry point (``obs-connector``)."""
    app()


if __name__ == "__main__":
    main()
