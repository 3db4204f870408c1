"""``obs-connector``: run the demo and ask the span store questions from a shell.

Commands: ``demo``, ``metrics``, ``trace``, ``status``, ``migrate``, ``cleanup``, ``replay``. More
plug in the same way: a function decorated with ``@app.command()`` here or in its
own module (registered with ``app.command()(func)``), opening the store with
:func:`open_context` and reporting failures with :func:`fail`, so every command shares the
``--store`` option, the error style and the exit codes:

* 0: done; 1: the answer is "no" or the store failed (e.g. trace not found);
* 2: bad usage or configuration (an invalid ``--window``, an invalid settings file).

Every expected failure is one ``error:`` line on stderr naming the file, server or value and
the problem, never a traceback (``--verbose`` adds the connector's log lines). The read
commands (``metrics``, ``trace``, ``status``) open the store read-only: a mistyped path is
reported as "no store at ...", and nothing is created.

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
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn, TypeVar

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from .config import ObservabilitySettings
    from .runtime import ConnectorContext

__all__ = ["app", "describe_failure", "fail", "main", "open_context"]

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


def _plain(text: object) -> str:
    """``text`` shown as it is: paths, ids and driver messages hold brackets ("[Errno 2]", a
    trace id "[/x]") that rich would otherwise take for markup, dropping them or failing."""
    from rich.markup import escape

    return escape(str(text))


def fail(message: str, code: int = EXIT_NOT_FOUND) -> NoReturn:
    """Print a one-line error to stderr and exit; never a traceback for an expected failure."""
    _console(stderr=True).print(f"[bold red]error:[/] {_plain(message)}", soft_wrap=True)
    raise typer.Exit(code)


def _validate_window(value: str) -> str:
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


def _settings(options: CliOptions | None) -> ObservabilitySettings:
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

    settings = _settings(options)
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
                _run(check)
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
            # No dir_okay=False: a directory is reported like every other bad path, in one line.
            help="SQLite file to use (default: store.sqlite_path, env OBS_STORE__SQLITE_PATH).",
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
    if not verbose:
        # The Postgres pool logs each failed connection attempt; the command's own error line says
        # the same once (its reason included).
        logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
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

    context = open_context(ctx.obj, "read")

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
        fail(f"reading metrics from {context.store.describe()} failed: {describe_failure(exc)}")

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
    console.print(f"[bold]Metrics[/] — {_plain(scope)} — {_plain(context.store.describe())} ({source})")
    if agent and agent not in context.registry.agents:
        console.print(f"[yellow]note:[/] {_plain(repr(agent))} is not in the agent registry; it is reported as tier -1")
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

    context = open_context(ctx.obj, "read")

    async def query() -> list[Any]:
        try:
            return await context.store.get_spans_by_trace_id(trace_id)
        finally:
            await _close(context)

    try:
        spans = _run(query)
    except Exception as exc:
        fail(f"reading trace {trace_id!r} from {context.store.describe()} failed: {describe_failure(exc)}")
    if not spans:
        fail(
            f"no spans stored for trace {trace_id!r} in {context.store.describe()}. "
            "Trace ids are printed by `obs-connector demo`; check --store / OBS_STORE__SQLITE_PATH."
        )
    _console().print(trace_tree(spans, trace_id))


@app.command()
def status(ctx: typer.Context) -> None:
    """Where spans are stored, how many there are, and the connector's settings.

    Exits 1 with one error line when the store or the spool cannot be read (missing, corrupt,
    unreachable); the table is printed first either way. Creates nothing.
    """
    from rich.table import Table

    from .config import config_dir, store_backend

    context = open_context(ctx.obj, "read", probe=False)

    async def query() -> int:
        try:
            await context.store.open()
            return await context.store.count_spans()
        finally:
            await _close(context)

    problems: list[str] = []
    try:
        count: int | str = _run(query)
    except Exception as exc:
        problem = describe_failure(exc)
        problems.append(problem)
        count = f"unavailable: {problem}"
    spool_text, spool_problem = _spool_line(context.settings)
    if spool_problem:
        problems.append(spool_problem)
    s = context.settings
    registry = context.registry
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("store", _plain(f"{context.store.describe()} (backend {store_backend(s)})"))
    table.add_row("spans stored", f"{count:,}" if isinstance(count, int) else _plain(count))
    table.add_row("config", _plain(config_dir()))
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
    table.add_row("opik", _plain(_opik_line(s)))
    table.add_row("spool", _plain(spool_text))
    _console().print(table)
    if problems:
        fail("; ".join(problems))


def _opik_line(settings: ObservabilitySettings) -> str:
    """Whether spans go to Opik, where (a password in the URL hidden), and the breaker's settings;
    what waits for Opik is on the spool line (``opik owes N``)."""
    from src.mlops.opik_settings import OpikConfig, opik_configured

    from .redaction import redact_url

    breaker = settings.circuit_breaker
    guard = f"breaker opens after {breaker.failure_threshold} failures, probes after {breaker.recovery_timeout_s:g} s"
    if not opik_configured(settings):
        return f"off (opik.enabled: {settings.opik.enabled}; auto turns on with OPIK_URL_OVERRIDE or OPIK_API_KEY)"
    config = OpikConfig.from_settings(settings)
    key = "key set" if config.api_key else "no key"
    return f"{redact_url(config.url)}, project {config.project_name!r}, workspace {config.workspace!r}, {key}; {guard}"


def _spool_line(settings: ObservabilitySettings) -> tuple[str, str | None]:
    """What waits on disk for a sink (batches a running or crashed process could not deliver),
    and the problem when the spool cannot be read. Read-only: a missing spool stays missing."""
    from .config import spool_path
    from .spool import Spool, SpoolError, SpoolMissingError

    if not settings.batching.spool_enabled:
        return "off (batching.spool_enabled: false)", None
    spool = Spool(spool_path(settings), read_only=True)
    try:
        st = spool.stats()
    except SpoolMissingError as exc:
        return f"{exc} yet (created when a batch first has to wait)", None
    except SpoolError as exc:
        return f"unreadable: {exc}", str(exc)
    finally:
        spool.close()
    age = "" if st.oldest_age_s is None else f", oldest {st.oldest_age_s:,.0f} s old"
    owed = ", ".join(f"{sink} owes {n}" for sink, n in sorted(st.pending_by_sink.items())) or "nothing owed"
    text = (
        f"{spool.path}: {st.batches:,} batch(es), {st.spans:,} span(s), {st.bytes / 1e6:.1f} MB{age}; "
        f"{owed}; dropped {st.dropped_spans:,}; dead letters {st.dead_letters:,}"
    )
    return text, None


@app.command()
def replay(ctx: typer.Context) -> None:
    """Deliver what waits in the on-disk spool to the store now, with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .config import spool_path
    from .spool import Spool, SpoolError, SpoolMissingError

    settings = _settings(ctx.obj)
    if not settings.batching.spool_enabled:
        fail("the spool is off (batching.spool_enabled: false): nothing to replay", EXIT_USAGE)
    where = spool_path(settings)
    probe = Spool(where, read_only=True)
    try:
        probe.stats()
    except SpoolMissingError as exc:  # a mistyped --store must not create a spool and a store
        _console().print(_plain(f"nothing to replay: {exc}"))
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
        _console().print(_plain(f"nothing to replay: the spool at {delivery.spool.path} owes the store no batch"))
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
    _console().print(_plain(f"replayed {sent:,} span(s) to {context.store.describe()}; {left:,} batch(es) still owed"))
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
        fail(f"preparing {context.store.describe()} failed: {describe_failure(exc)}")
    _console().print(
        _plain(f"{context.store.describe()}: schema ready (the embedded store creates it itself); {count:,} spans")
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
    """Delete spans older than the retention period, in short batches, with a progress bar."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    context = open_context(ctx.obj, "write")
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
        fail(f"cleanup of {context.store.describe()} failed: {describe_failure(exc)}")
    console.print(_plain(f"Deleted {deleted:,} spans older than {keep} days from {context.store.describe()}."))


def main() -> None:
    """Console-script entry point (``obs-connector``).

    Expected failures are reported by the commands themselves; anything else is a bug, still
    reported as one line (``--verbose`` shows the traceback for a report).
    """
    try:
        app()
    except Exception as exc:
        if "--verbose" in sys.argv or "-v" in sys.argv:
            raise
        message = f"unexpected {describe_failure(exc)} (rerun with --verbose for the traceback)"
        _console(stderr=True).print(f"[bold red]error:[/] {_plain(message)}", soft_wrap=True)
        raise SystemExit(EXIT_NOT_FOUND) from None


if __name__ == "__main__":
    main()
