"""``obs-connector``: run the demo and ask the span store questions from a shell.

Commands: ``demo``, ``metrics``, ``report``, ``trace``, ``status``, ``migrate``, ``cleanup``, ``replay``,
``serve``. More plug in the same way: a function decorated with ``@app.command()`` here or in its
own module (registered with ``app.command()(func)``, as :mod:`cli_maintenance`'s ``replay``,
``migrate`` and ``cleanup`` are), opening the store with :func:`open_context` and reporting
failures with :func:`fail` (both in :mod:`cli_support`), so every command shares the
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

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .cli_cost import cost_app
from .cli_maintenance import cleanup, migrate, replay
from .cli_rollup import rollup_app
from .cli_serve import serve
from .cli_support import (
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    CliOptions,
    close_context,
    describe_failure,
    fail,
    make_console,
    open_context,
    plain,
    run_sync,
    store_job,
    validate_window,
)

if TYPE_CHECKING:
    from .config import ObservabilitySettings

__all__ = ["app", "describe_failure", "fail", "main", "open_context"]

app = typer.Typer(
    name="obs-connector",
    help="Tier-0 observability connector: spans of the 18 agents, their latency, errors and tokens.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


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
    otlp: Annotated[
        str | None,
        typer.Option(
            "--otlp",
            metavar="URL",
            help="Also export the spans over OTLP/HTTP, e.g. Phoenix's http://127.0.0.1:6006/v1/traces.",
        ),
    ] = None,
) -> None:
    """Route requests through the 18 agents (fake LLMs and tools), trace them, report from the store."""
    from .demo import run_demo

    if otlp is not None and not otlp.startswith(("http://", "https://")):
        fail(f"--otlp {otlp!r}: expected an http:// or https:// URL ending in /v1/traces", EXIT_USAGE)
    context = open_context(ctx.obj)
    console = make_console()
    result = run_sync(
        lambda: run_demo(traces, seed, console, context=context, concurrency=concurrency, otlp_endpoint=otlp)
    )
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
        typer.Option("--window", "-w", callback=validate_window, help="Time window: 30m, 1h, 24h, 7d, 2w ..."),
    ] = "24h",
    agent: Annotated[str | None, typer.Option("--agent", "-a", help="Only this agent's spans.")] = None,
    trace: Annotated[str | None, typer.Option("--trace", "-t", help="Only this trace's spans.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics fields as JSON.")] = False,
    thread: Annotated[str | None, typer.Option("--thread", help="Only this conversation's (thread_id) spans.")] = None,
    user: Annotated[str | None, typer.Option("--user", help="Only this user's (user_id) spans.")] = None,
    max_staleness: Annotated[
        float | None,
        typer.Option(
            "--max-staleness",
            min=0,
            max=3600,
            help="Accept a cached answer up to this many seconds old (default cache.live_staleness_s; 0: strict).",
        ),
    ] = None,
) -> None:
    """Latency, error rate, tokens and cost per agent and per tier, time to first token, and the overall
    quality score."""
    from .nodes.metrics_aggregator import compute_metrics

    context = open_context(ctx.obj, "read")

    # ValueError: validated above; kept so a store-side rejection is still clean.
    fields, from_cache, age = store_job(
        context,
        "reading metrics from {store}",
        lambda: compute_metrics(context, window, agent, trace, thread, user, max_staleness_s=max_staleness),
        usage=(ValueError,),
    )

    if as_json:
        payload = {
            "time_window": window,
            "agent_name_filter": agent,
            "trace_id_filter": trace,
            "thread_id_filter": thread,
            "user_id_filter": user,
            "store": context.store.describe(),
            "metrics_from_cache": from_cache,
            "cache_age_s": round(age, 3),
            "cache_backend": context.cache.backend,
            **fields,
        }
        sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
        return

    from .render import agent_table, overall_text, tier_table, ttft_table

    console = make_console()
    scope = f"window {window}" + (f", agent {agent}" if agent else "") + (f", trace {trace}" if trace else "")
    scope += (f", thread {thread}" if thread else "") + (f", user {user}" if user else "")
    cache = context.cache.backend
    source = f"cached answer ({cache}), {age:.1f} s old" if from_cache else f"computed now, {cache} cache"
    console.print(f"[bold]Metrics[/] — {plain(scope)} — {plain(context.store.describe())} ({source})")
    if agent and agent not in context.registry.agents:
        console.print(f"[yellow]note:[/] {plain(repr(agent))} is not in the agent registry; it is reported as tier -1")
    if not fields.get("total_spans_analyzed"):
        console.print("No spans in this window. Produce some with [bold]obs-connector demo[/].")
        return
    console.print(agent_table(fields, context.registry))
    console.print()
    console.print(tier_table(fields))
    console.print()
    ttft = ttft_table(fields)
    if ttft is not None:
        console.print(ttft)
        console.print()
    console.print(overall_text(fields))
    from .render import feedback_table

    scores = feedback_table(fields)  # feedback scores (log_feedback), when the window has any
    if scores is not None:
        console.print()
        console.print(scores)


@app.command()
def report(
    ctx: typer.Context,
    html_file: Annotated[
        Path,
        typer.Option("--html", help="Write the report to this HTML file (one self-contained page)."),
    ],
    window: Annotated[
        str,
        typer.Option("--window", "-w", callback=validate_window, help="Time window: 30m, 1h, 24h, 7d, 2w ..."),
    ] = "24h",
    agent: Annotated[str | None, typer.Option("--agent", "-a", help="Only this agent's spans.")] = None,
    thread: Annotated[
        str | None, typer.Option("--thread", help="Only the traces of this conversation (the thread_id column).")
    ] = None,
) -> None:
    """Write an HTML report: tables per tier and agent, latency and error charts, slowest and failed traces."""
    from .report_data import gather_report
    from .report_html import render_report

    context = open_context(ctx.obj, "read")

    data = store_job(
        context,
        "reading the report from {store}",
        lambda: gather_report(context, window, agent, thread),
        usage=(ValueError,),
    )
    page = render_report(data)
    try:
        html_file.write_text(page, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {html_file}: {exc.strerror or exc}", EXIT_USAGE)
    spans = int(data.fields.get("total_spans_analyzed") or 0)
    summary = f"{spans:,} spans" if spans else "no spans in this window"
    make_console().print(f"wrote {plain(html_file)} ({len(page.encode()) / 1024:,.0f} KB, {summary})")


@app.command()
def trace(
    ctx: typer.Context,
    trace_id: Annotated[
        str | None, typer.Argument(help="The trace id (32 hex digits, or any id a caller sent).")
    ] = None,
    thread: Annotated[
        str | None,
        typer.Option("--thread", help="Every trace of this conversation (thread_id), in the order they began."),
    ] = None,
) -> None:
    """Draw one stored trace as a tree: operations, durations, statuses, models and tokens
    (``--thread ID``: a conversation's traces, turn by turn)."""
    from .render import trace_tree

    if (trace_id is None) == (thread is None):
        fail("give a trace id or --thread ID (one of the two)", EXIT_USAGE)
    if thread is not None:
        _conversation(ctx, thread)
        return
    assert trace_id is not None
    context = open_context(ctx.obj, "read")

    spans = store_job(
        context, f"reading trace {trace_id!r} from {{store}}", lambda: context.store.get_spans_by_trace_id(trace_id)
    )
    if not spans:
        fail(
            f"no spans stored for trace {trace_id!r} in {context.store.describe()}. "
            "Trace ids are printed by `obs-connector demo`; check --store / OBS_STORE__SQLITE_PATH."
        )
    make_console().print(trace_tree(spans, trace_id))


def _conversation(ctx: typer.Context, thread_id: str) -> None:
    """``trace --thread``: the stored column ``thread_id``, read through its index, all time."""
    from .render import conversation_trees

    context = open_context(ctx.obj, "read")

    spans = store_job(
        context,
        f"reading thread {thread_id!r} from {{store}}",
        lambda: context.store.get_conversation_spans(None, thread_id=thread_id),
    )
    if not spans:
        fail(
            f"no spans stored for thread {thread_id!r} in {context.store.describe()}. Threads come from "
            "LangGraph's configurable.thread_id or span(..., thread_id=...)."
        )
    console = make_console()
    for part in conversation_trees(spans, thread_id):
        console.print(part)


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
            await close_context(context)

    problems: list[str] = []
    try:
        count: int | str = run_sync(query)
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
    table.add_row("store", plain(f"{context.store.describe()} (backend {store_backend(s)})"))
    table.add_row("spans stored", f"{count:,}" if isinstance(count, int) else plain(count))
    table.add_row("config", plain(config_dir()))
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
    table.add_row("opik", plain(_opik_line(s)))
    table.add_row("spool", plain(spool_text))
    table.add_row("overflow", plain(_overflow_line(s)))
    make_console().print(table)
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
    replaying = ", ".join(
        f"{sink} by pid {lease.pid} on {lease.host}" for sink, lease in sorted(st.replay_leases.items())
    )
    text = (
        f"{spool.path}: {st.batches:,} batch(es), {st.spans:,} span(s), {st.bytes / 1e6:.1f} MB{age}; "
        f"{owed}; dropped {st.dropped_spans:,}; dead letters {st.dead_letters:,}"
        f"{f'; replayed now: {replaying}' if replaying else ''}"
    )
    return text, None


def _overflow_line(settings: ObservabilitySettings) -> str:
    """The encrypted overflow files beside the spool (a burst a running process is catching up
    on); only that process can read its own, and a dead process's are deleted at the next start."""
    from .config import spool_path
    from .overflow_file import overflow_files

    files = overflow_files(spool_path(settings).parent)
    bound = f"bound {settings.batching.overflow_max_mb:g} MB per process"
    if not files:
        return f"empty ({bound})"
    by_pid: dict[int, list[int]] = {}
    for _, pid, size, alive in files:
        by_pid.setdefault(pid if alive else -pid, []).append(size)
    parts = [
        f"pid {abs(pid)}{'' if pid > 0 else ' (ended: unreadable, removed at the next start)'} "
        f"{sum(sizes) / 1e6:.1f} MB in {len(sizes)} file(s)"
        for pid, sizes in sorted(by_pid.items(), key=lambda item: abs(item[0]))
    ]
    return "; ".join(parts) + f" ({bound}; the running process's get_status()['buffer'] has its counts)"


# Registered after ``status`` so that ``--help`` lists the read commands first.
app.command()(replay)
app.command()(migrate)
app.command()(cleanup)
app.command()(serve)
app.add_typer(rollup_app)
app.add_typer(cost_app)


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
        make_console(stderr=True).print(f"[bold red]error:[/] {plain(message)}", soft_wrap=True)
        raise SystemExit(EXIT_NOT_FOUND) from None


if __name__ == "__main__":
    main()
