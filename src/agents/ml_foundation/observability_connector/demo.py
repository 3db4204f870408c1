"""``obs-connector demo``: the 18-agent system under a realistic load, traced end to end.

Nothing else needs to be installed or running. An orchestrator (itself a compiled LangGraph
graph) routes N requests through pipelines of the 18 agents of the 6 tiers. Every agent is a
small compiled ``StateGraph`` whose nodes call tools and a fake chat model that reports token
usage and its model name exactly as a provider integration does, so the connector's callback
handler sees what it would see in production. Latencies are lognormal per agent, a few agent
calls fail (rate limits, tool timeouts, validation errors) and the orchestrator recovers with
a fallback that is recorded on its span.

Everything is traced only through the public surface a real deployment uses:
``obs.span("route_request", "orchestrator")`` around each request (one request = one trace),
``config={"callbacks": [obs.callback_handler(agent)]}`` on every graph invocation, and the
span attribute ``fallback_used``. The closing report is read back from the STORE, never from
memory, so it shows what was actually delivered. The orchestrator streams its final answer
(time to first token), and one conversation (:mod:`demo_conversation`) pauses with
``interrupt()`` for a human and is resumed with ``Command(resume=...)`` on the same thread.

The demo is split by job: :mod:`demo_scenario` (the agents and each request's plan, decided
up front from the seed), :mod:`demo_model` (the fake chat model and tools), :mod:`demo_graphs`
(the compiled graphs), :mod:`demo_conversation` (the interrupted conversation), this module
(the run) and :mod:`demo_report` (the output).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from .agent import ObservabilityConnectorAgent
from .demo_conversation import report_conversation, run_conversation
from .demo_graphs import DemoRuntime, agent_graphs, orchestrator_graph
from .demo_model import DemoChatModel
from .demo_report import DemoResult, RequestOutcome, report, report_opik
from .demo_scenario import AGENTS, ALL_AGENT_NAMES, INTENTS, RequestPlan, build_plans, conversation_plan
from .runtime import ConnectorContext

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "AGENTS",
    "ALL_AGENT_NAMES",
    "INTENTS",
    "DemoChatModel",
    "DemoResult",
    "RequestPlan",
    "build_plans",
    "run_demo",
]


async def _run_request(runtime: DemoRuntime, plan: RequestPlan) -> RequestOutcome:
    obs = runtime.obs
    attributes = {"request_id": plan.request_id, "intent": plan.intent, "agents": len(plan.steps)}
    async with obs.span("route_request", "orchestrator", attributes=attributes) as root:
        state = await orchestrator_graph().ainvoke(
            {"plan": plan},
            config={
                "callbacks": [runtime.handlers["orchestrator"]],
                "run_name": "orchestrator",
                "metadata": {"request_id": plan.request_id},
            },
            context=runtime,
        )
        fallbacks = tuple(state.get("fallbacks") or ())
        if fallbacks:
            root.set_attributes({"degraded": True, "fallback_count": len(fallbacks)})
    return RequestOutcome(root.trace_id, plan, fallbacks)


def _export_to(ctx: ConnectorContext, endpoint: str) -> None:
    """Give ``ctx`` an OTLP export delivery to ``endpoint`` (on the spool its store delivery uses)."""
    from dataclasses import replace

    from src.mlops.otlp_settings import OtlpConfig
    from src.mlops.otlp_sink import OtlpSink

    from .wiring import build_otlp_delivery

    if ctx.store_delivery is None:
        raise ValueError("--otlp needs the spool (batching.spool_enabled): export retries and replays from it")
    sink = OtlpSink(replace(OtlpConfig.from_settings(ctx.settings), endpoint=endpoint))
    ctx.otlp_delivery = build_otlp_delivery(ctx.settings, ctx.store_delivery.spool, sink)


def _report_otlp(console: Console, delivery: Any, sent: bool) -> None:
    status = delivery.status()
    where = delivery.sink.config.display_endpoint
    if sent and not status.get("backlog_spans"):
        console.print(f"OTLP: {status['spans_sent']:,} span(s) exported to [cyan]{where}[/]")
    else:
        console.print(
            f"[yellow]OTLP:[/] {status['spans_sent']:,} span(s) exported to {where}, "
            f"{status.get('backlog_spans', 0):,} waiting in the spool (last error: {status.get('last_error')})"
        )


async def run_demo(
    traces: int = 50,
    seed: int = 7,
    console: Console | None = None,
    *,
    context: ConnectorContext | None = None,
    concurrency: int = 4,
    time_scale: float = 1.0,
    show_progress: bool = True,
    otlp_endpoint: str | None = None,
) -> DemoResult:
    """Run the workload, flush, and report from the store.

    ``context`` defaults to the configured one (``OBS_STORE__SQLITE_PATH`` etc.). The
    connector is closed at the end (its store reopens lazily if the caller reads it again).
    ``otlp_endpoint``: also export every span there over OTLP/HTTP (e.g. Phoenix's
    ``http://127.0.0.1:6006/v1/traces``), whatever the configuration says.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    if traces < 1:
        raise ValueError(f"traces must be at least 1, got {traces}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    console = console or Console()
    ctx = context or ConnectorContext.from_config()
    if otlp_endpoint:
        _export_to(ctx, otlp_endpoint)
    plans = build_plans(traces, seed, time_scale)
    obs = ObservabilityConnectorAgent(context=ctx)
    try:
        runtime = DemoRuntime(
            obs=obs,
            graphs=agent_graphs(),
            handlers={name: obs.callback_handler(name) for name in ALL_AGENT_NAMES},
        )
        orchestrator_graph()  # compile before the clock starts
        console.print(
            f"[bold]obs-connector demo[/]: {traces} request(s) through {len(ALL_AGENT_NAMES)} agents "
            f"in 6 tiers, seed {seed}, {concurrency} concurrent — spans go to [cyan]{ctx.store.describe()}[/]"
            + (f" and Opik [cyan]{ctx.opik.url}[/] (project {ctx.opik.project_name})" if ctx.opik is not None else "")
        )
        accepted_before = obs.get_status()["spans_accepted"]
        started = time.perf_counter()
        semaphore = asyncio.Semaphore(concurrency)
        with Progress(
            SpinnerColumn(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not show_progress,
            transient=False,
        ) as progress:
            task = progress.add_task("routing requests", total=traces)

            async def one(plan: RequestPlan) -> RequestOutcome:
                async with semaphore:
                    outcome = await _run_request(runtime, plan)
                progress.advance(task)
                return outcome

            outcomes = await asyncio.gather(*(one(p) for p in plans))
        conversation = await run_conversation(obs, conversation_plan(seed, time_scale))
        delivered = await obs.flush(timeout=60)
        opik_sent = await ctx.opik.wait_until_sent(timeout=30) if ctx.opik is not None else None
        otlp_sent = await ctx.otlp_delivery.wait_idle(timeout=30) if ctx.otlp_delivery is not None else None
        wall = time.perf_counter() - started
        status = obs.get_status()
        result = await report(
            console,
            ctx,
            outcomes,
            status,
            status["spans_accepted"] - accepted_before,
            wall,
            delivered,
            extra_trace_ids=conversation.trace_ids,
        )
        result.conversation = await report_conversation(console, obs, conversation)
        if ctx.opik is not None:
            result.opik = report_opik(console, ctx.opik.get_status(), bool(opik_sent))
        if ctx.otlp_delivery is not None:
            _report_otlp(console, ctx.otlp_delivery, bool(otlp_sent))
    finally:
        await obs.aclose()
    return result
