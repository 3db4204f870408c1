"""What ``obs-connector demo`` prints at the end, and the :class:`DemoResult` it returns: read back
from the STORE (and the Opik sink's counters), never from memory, so it shows what was
actually delivered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .demo_scenario import RequestPlan
from .runtime import ConnectorContext

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["REPORT_WINDOW", "DemoResult", "RequestOutcome", "report", "report_opik"]


#: The window the closing report covers; a demo run takes seconds, so the last hour holds it.
REPORT_WINDOW = "1h"


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    trace_id: str
    plan: RequestPlan
    fallbacks: tuple[str, ...]


@dataclass
class DemoResult:
    """What a demo run did; every count except ``spans_produced`` is read from the store."""

    trace_ids: list[str]
    spans_produced: int  # finished spans the connector accepted (hot path)
    spans_stored: int  # spans of these traces found in the store afterwards
    spans_dropped: int
    requests: int
    agent_invocations: int
    fallbacks: int
    fallback_trace_ids: list[str]
    intents: dict[str, int]
    wall_time_s: float
    delivered: bool
    store: str
    sample_trace_id: str | None
    metrics: dict[str, Any] = field(default_factory=dict)
    opik: dict[str, Any] | None = None  # the Opik sink's status after the run; None: Opik not configured
    conversation: dict[str, Any] | None = None  # the interrupted conversation as stored (demo_conversation)


def _pick_sample(outcomes: Sequence[RequestOutcome]) -> str | None:
    """A trace worth drawing: the smallest one with a fallback (short, and shows recovery)."""
    if not outcomes:
        return None
    degraded = [o for o in outcomes if o.fallbacks]
    pool = degraded or list(outcomes)
    return min(pool, key=lambda o: (len(o.plan.steps), o.plan.index)).trace_id


def report_opik(console: Console, status: dict[str, Any], all_sent: bool) -> dict[str, Any]:
    """One line on what reached Opik (read from the sink's own counters, confirmed by the server)."""
    colour = "green" if all_sent and not status["spans_rejected"] else "yellow"
    line = (
        f"Opik: [{colour}]{status['spans_sent']:,} span(s) sent[/] to [cyan]{status['url']}[/] "
        f"(workspace {status['workspace']}, project {status['project_name']}), circuit {status['state']}"
    )
    if status["backlog_spans"]:
        line += f", [yellow]{status['backlog_spans']:,} waiting to be sent[/]"
    if status["spans_rejected"]:
        line += f", [red]{status['spans_rejected']:,} rejected (see get_status()['opik']['rejections'])[/]"
    console.print(line)
    return status


async def report(
    console: Console,
    ctx: ConnectorContext,
    outcomes: Sequence[RequestOutcome],
    status: dict[str, Any],
    produced: int,
    wall: float,
    delivered: bool,
    *,
    extra_trace_ids: Sequence[str] = (),
) -> DemoResult:
    """Everything shown here is read back from the store.

    ``extra_trace_ids``: traces the run made besides the requests (the conversation), counted
    in the spans stored so that they match the spans produced.
    """
    from .nodes.metrics_aggregator import compute_metrics
    from .render import agent_table, overall_text, tier_table, trace_tree

    store = ctx.store
    trace_ids = [o.trace_id for o in outcomes]
    stored = 0
    for trace_id in trace_ids:
        stored += len(await store.get_spans_by_trace_id(trace_id))
    for trace_id in extra_trace_ids:
        stored += len(await store.get_spans_by_trace_id(trace_id))
    fallbacks = sum(len(o.fallbacks) for o in outcomes)
    intents: dict[str, int] = {}
    for o in outcomes:
        intents[o.plan.intent] = intents.get(o.plan.intent, 0) + 1

    colour = "green" if delivered and stored == produced else "yellow"
    console.print(
        f"\n[bold]{len(outcomes)}[/] requests, [bold]{sum(len(o.plan.steps) for o in outcomes)}[/] agent calls, "
        f"[bold]{fallbacks}[/] failure(s) recovered by fallback in [bold]{wall:.2f} s[/]; "
        f"[{colour}]{produced:,} spans produced, {stored:,} stored[/]"
        + (f", [red]{status['spans_dropped']} dropped[/]" if status.get("spans_dropped") else "")
    )
    if not delivered:
        last = status.get("last_flush") or {}
        counts = ", ".join(f"{last[k]:,} {k}" for k in ("rejected", "failed", "dropped", "pending") if last.get(k))
        console.print(f"[red]the final flush did not deliver every span ({counts or 'timed out'})[/]")

    fields, _from_cache, _age = await compute_metrics(ctx, REPORT_WINDOW)
    total = int(fields.get("total_spans_analyzed") or 0)
    caption = f"read from the store, window {REPORT_WINDOW}"
    if total > stored:
        caption += f" (includes {total - stored:,} spans of earlier runs in this window)"
    console.print()
    console.print(agent_table(fields, ctx.registry, title=f"Per agent — {caption}"))
    console.print()
    console.print(tier_table(fields, title="Per tier"))
    console.print()
    console.print(overall_text(fields))

    sample = _pick_sample(outcomes)
    if sample is not None:
        spans = await store.get_spans_by_trace_id(sample)
        console.print()
        console.print("[bold]One request, as stored[/] (the smallest trace with a fallback, if any):")
        console.print(trace_tree(spans, sample))

    where = store.describe()
    console.print()
    console.print(f"Spans are stored in [cyan]{where}[/]")
    console.print("Next: [bold]obs-connector metrics --window 1h[/]   per-agent / per-tier figures")
    if sample is not None:
        console.print(f"      [bold]obs-connector trace {sample}[/]   this request's tree")
    return DemoResult(
        trace_ids=trace_ids,
        spans_produced=produced,
        spans_stored=stored,
        spans_dropped=int(status.get("spans_dropped") or 0),
        requests=len(outcomes),
        agent_invocations=sum(len(o.plan.steps) for o in outcomes),
        fallbacks=fallbacks,
        fallback_trace_ids=[o.trace_id for o in outcomes if o.fallbacks],
        intents=intents,
        wall_time_s=wall,
        delivered=delivered,
        store=where,
        sample_trace_id=sample,
        metrics=fields,
    )
