"""Rich renderings of what the store answers: metrics tables and a trace tree.

Shared by ``obs-connector demo`` and the ``metrics`` / ``trace`` commands so that the demo's
closing tables look exactly like what the operator gets from the CLI afterwards. Everything
here takes data already read from the store; nothing here reads it, so it stays testable and
cheap to import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich import box
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

if TYPE_CHECKING:
    from .config import AgentRegistry
    from .models import ObservabilitySpan

__all__ = ["agent_table", "feedback_table", "fmt_ms", "fmt_rate", "fmt_usd", "overall_text", "tier_table", "trace_tree"]

_ERROR_WARN = 0.05
_ERROR_BAD = 0.15


def fmt_ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}"


def fmt_usd(value: float | None) -> str:
    """USD with the digits a per-call price needs (fractions of a cent) and no more for totals."""
    if value is None:
        return "—"
    return f"{value:,.2f}" if value >= 100 else f"{value:.4f}" if value >= 1 else f"{value:.6f}"


def fmt_rate(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _rate_style(rate: float) -> str:
    if rate >= _ERROR_BAD:
        return "red"
    if rate >= _ERROR_WARN:
        return "yellow"
    return "green"


def _tier_sort_key(tier: int) -> int:
    # Unknown agents (tier -1) go last: they are the exception a reader should notice, not lead with.
    return tier if tier >= 0 else 1_000


def _table(title: str) -> Table:
    # No vertical rules and no edge padding: the agent table then fits an 80-column terminal.
    return Table(
        title=title,
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1, 0, 0),
    )


def _stat_columns(table: Table) -> None:
    table.add_column("spans", justify="right", no_wrap=True)
    table.add_column("p50 ms", justify="right", no_wrap=True)
    table.add_column("p95 ms", justify="right", no_wrap=True)
    table.add_column("p99 ms", justify="right", no_wrap=True)
    table.add_column("errors", justify="right", no_wrap=True)


def agent_table(fields: Mapping[str, Any], registry: AgentRegistry, title: str = "Per agent") -> Table:
    """One row per agent with spans, ordered by tier then name.

    ``latency_by_agent`` holds only agents whose spans have durations; ``error_rate_by_agent``
    holds every agent with spans, so an agent without durations still gets its row (no figures).
    """
    latency: Mapping[str, Mapping[str, Any]] = fields.get("latency_by_agent") or {}
    errors: Mapping[str, float] = fields.get("error_rate_by_agent") or {}
    tokens: Mapping[str, Mapping[str, int]] = fields.get("token_usage_by_agent") or {}
    table = _table(title)
    table.add_column("agent", no_wrap=True)
    table.add_column("tier", justify="right", no_wrap=True)
    _stat_columns(table)
    table.add_column("tokens", justify="right", no_wrap=True)
    costs: Mapping[str, float] = fields.get("cost_by_agent") or {}
    if costs:
        table.add_column("cost $", justify="right", no_wrap=True)
    rows = sorted({*latency, *errors}, key=lambda name: (_tier_sort_key(registry.tier_of(name)), name))
    for i, name in enumerate(rows):
        stats = latency.get(name) or {}
        tier = registry.tier_of(name)
        rate = float(errors.get(name, 0.0))
        total_tokens = int((tokens.get(name) or {}).get("total", 0) or 0)
        last_of_tier = i + 1 == len(rows) or registry.tier_of(rows[i + 1]) != tier
        cells: list[Any] = [
            escape(name),
            str(tier),
            f"{int(stats['count']):,}" if "count" in stats else "—",
            fmt_ms(stats.get("p50")),
            fmt_ms(stats.get("p95")),
            fmt_ms(stats.get("p99")),
            Text(fmt_rate(rate), style=_rate_style(rate)),
            f"{total_tokens:,}" if total_tokens else "—",
        ]
        if costs:
            cells.append(fmt_usd(costs.get(name)))
        table.add_row(*cells, end_section=last_of_tier)
    return table


def tier_table(fields: Mapping[str, Any], title: str = "Per tier") -> Table:
    """One row per tier with spans (keys are tier numbers as strings), like :func:`agent_table`."""
    latency: Mapping[str, Mapping[str, Any]] = fields.get("latency_by_tier") or {}
    errors: Mapping[str, float] = fields.get("error_rate_by_tier") or {}
    table = _table(title)
    table.add_column("tier", no_wrap=True)
    _stat_columns(table)
    costs: Mapping[str, float] = fields.get("cost_by_tier") or {}
    if costs:
        table.add_column("cost $", justify="right", no_wrap=True)

    def key(tier: str) -> int:
        try:
            return _tier_sort_key(int(tier))
        except ValueError:
            return 2_000

    for tier in sorted({*latency, *errors}, key=key):
        stats = latency.get(tier) or {}
        rate = float(errors.get(tier, 0.0))
        cells: list[Any] = [
            f"{tier} {escape(str(stats.get('tier_name') or ''))}".strip(),
            f"{int(stats['count']):,}" if "count" in stats else "—",
            fmt_ms(stats.get("p50")),
            fmt_ms(stats.get("p95")),
            fmt_ms(stats.get("p99")),
            Text(fmt_rate(rate), style=_rate_style(rate)),
        ]
        if costs:
            cells.append(fmt_usd(costs.get(tier)))
        table.add_row(*cells)
    return table


def overall_text(fields: Mapping[str, Any]) -> Text:
    """The one line an operator reads first: quality score and what it is made of."""
    score = fields.get("quality_score")
    success = fields.get("overall_success_rate")
    text = Text()
    text.append("overall  ", style="bold")
    text.append("quality score ")
    if score is None:
        text.append("—")
    else:
        text.append(f"{score:.3f}", style="green" if score >= 0.9 else "yellow" if score >= 0.7 else "red")
    text.append(f"  ·  success rate {fmt_rate(success)}")
    text.append(f"  ·  p95 {fmt_ms(fields.get('overall_p95_latency_ms'))} ms")
    text.append(f"  ·  p99 {fmt_ms(fields.get('overall_p99_latency_ms'))} ms")
    text.append(f"  ·  fallback rate {fmt_rate(fields.get('fallback_invocation_rate'))}")
    text.append(f"  ·  {int(fields.get('total_spans_analyzed') or 0):,} spans")
    statuses: Mapping[str, int] = fields.get("status_distribution") or {}
    if statuses:  # timeouts show nowhere else: they are not errors
        text.append(" (" + ", ".join(f"{int(n):,} {status}" for status, n in statuses.items()) + ")")
    if "total_cost_usd" in fields:
        total = fields.get("total_cost_usd")
        text.append(f"  ·  cost {'—' if total is None else '$' + fmt_usd(float(total))}")
        unpriced = int(fields.get("unpriced_llm_calls") or 0)
        if unpriced:  # not free: nobody knows their price (unknown model, no token counts)
            text.append(f" + {unpriced:,} unpriced LLM call(s)", style="yellow")
    return text


def _span_label(span: ObservabilitySpan, parent_agent: str | None) -> Text:
    label = Text()
    # The agent name only changes at graph boundaries; dimming repeats keeps those boundaries visible.
    label.append(span.agent_name, style="dim" if span.agent_name == parent_agent else "bold cyan")
    label.append(".")
    label.append(span.operation_name, style="bold")
    target = span.attributes.get("target_agent")
    if target:
        label.append(f" → {target}", style="cyan")
    label.append(f"  {fmt_ms(span.duration_ms)} ms", style="magenta")
    if span.status == "ok":
        label.append("  ok", style="green")
    elif span.status == "error":
        label.append("  error", style="bold red")
        if span.error_type or span.error_message:
            detail = f" {span.error_type or ''}: {span.error_message or ''}".rstrip(": ")
            label.append(detail[:120], style="red")
    else:
        label.append(f"  {span.status}", style="yellow")
    if span.llm_model or span.total_tokens:
        tokens = ""
        if span.input_tokens is not None or span.output_tokens is not None:
            tokens = f" {span.input_tokens or 0}→{span.output_tokens or 0} tok"
        elif span.total_tokens is not None:
            tokens = f" {span.total_tokens} tok"
        cost = f" ${fmt_usd(span.cost_usd)}" if span.cost_usd is not None else ""
        label.append(f"  [{span.llm_model or 'llm'}{tokens}{cost}]", style="blue")
    if span.attributes.get("fallback_used"):
        label.append("  fallback used", style="bold yellow")
    _flow_marks(label, span.attributes, span.ttft_ms)
    return label


def _flow_marks(label: Text, attrs: Mapping[str, Any], ttft_ms: float | None = None) -> None:
    """LangGraph's control flow and streaming as the callback handler recorded them: a run that
    paused for a human, the trace a run resumes, and a streamed call's time to first token."""
    if attrs.get("langgraph.interrupted") is True:
        label.append("  paused (interrupt)", style="yellow")
    resumed = attrs.get("langgraph.resumes_trace_id")
    if resumed:
        label.append(f"  resumes {resumed}", style="cyan")
    ttft = ttft_ms if ttft_ms is not None else attrs.get("llm.time_to_first_token_ms")  # the column first
    if isinstance(ttft, (int, float)) and not isinstance(ttft, bool):
        label.append(f"  first token {fmt_ms(ttft)} ms", style="blue")


def ttft_table(fields: Mapping[str, Any], title: str = "Time to first token (streaming LLM calls)") -> Table | None:
    """p50 / p95 of the time to first token per agent and per model; None when no call streamed."""
    rows = [("agent", name, entry) for name, entry in (fields.get("ttft_by_agent") or {}).items()]
    rows += [("model", name, entry) for name, entry in (fields.get("ttft_by_model") or {}).items()]
    if not rows:
        return None
    table = _table(title)
    table.add_column("by")
    table.add_column("name")
    table.add_column("calls", justify="right")
    table.add_column("p50 ms", justify="right")
    table.add_column("p95 ms", justify="right")
    for kind, name, entry in rows:
        table.add_row(kind, escape(str(name)), f"{int(entry.get('count') or 0):,}", fmt_ms(entry.get("p50_ms")),
                      fmt_ms(entry.get("p95_ms")))  # fmt: skip
    return table


def conversation_trees(spans: Sequence[ObservabilitySpan], thread_id: str) -> list[Any]:
    """A thread's traces in the order they started, each as its tree under a one-line heading
    (turn number, start, user, and the trace a resumed run continues)."""
    traces: dict[str, list[ObservabilitySpan]] = {}
    for span in spans:  # oldest first: traces come out in the order they began
        traces.setdefault(span.trace_id, []).append(span)
    head = Text()
    head.append("thread ", style="bold")
    head.append(thread_id, style="bold yellow")
    head.append(f"  {len(traces)} trace(s), {len(spans)} spans")
    out: list[Any] = [head]
    for turn, (trace_id, members) in enumerate(traces.items(), 1):
        line = Text()
        line.append(f"turn {turn}", style="bold")
        line.append(f"  {members[0].start_time.isoformat(timespec='seconds')}")
        users = sorted({s.user_id for s in members if s.user_id})
        if users:
            line.append(f"  user {', '.join(users)}", style="cyan")
        resumed = next((s.attributes.get("langgraph.resumes_trace_id") for s in members
                        if s.attributes.get("langgraph.resumes_trace_id")), None)  # fmt: skip
        if resumed:
            line.append(f"  resumes trace {resumed}", style="magenta")
        out.append(line)
        out.append(trace_tree(members, trace_id))
    return out


def _descendants(
    span: ObservabilitySpan, children: Mapping[str | None, list[ObservabilitySpan]], seen: set[int]
) -> int:
    """Marks every span below ``span`` as seen (iteratively: any depth, loops included); returns how many."""
    count = 0
    stack = list(children.get(span.span_id, []))
    while stack:
        child = stack.pop()
        if id(child) in seen:
            continue
        seen.add(id(child))
        count += 1
        stack.extend(children.get(child.span_id, []))
    return count


def trace_tree(spans: Sequence[ObservabilitySpan], trace_id: str | None = None) -> Tree:
    """The stored spans of one trace as a tree, children in start order.

    A span whose parent is not in the trace is shown as a root marked "(parent not stored)":
    the tree must show what the store holds, including a broken link, rather than hide it.
    """
    trace_id = trace_id or (spans[0].trace_id if spans else "?")
    by_id = {s.span_id: s for s in spans}
    children: dict[str | None, list[ObservabilitySpan]] = {}
    for span in spans:
        parent = span.parent_span_id if span.parent_span_id in by_id else None
        children.setdefault(parent, []).append(span)
    for group in children.values():
        group.sort(key=lambda s: (s.start_time, s.span_id))
    roots = children.get(None, [])
    durations = [s.duration_ms for s in roots if s.duration_ms is not None]
    errors = sum(1 for s in spans if s.status == "error")
    head = Text()
    head.append("trace ", style="bold")
    head.append(trace_id, style="bold yellow")
    head.append(f"  {len(spans)} spans")
    if durations:
        head.append(f"  {fmt_ms(max(durations))} ms")
    if errors:
        head.append(f"  {errors} error span(s)", style="red")
    tree = Tree(head)

    shown: set[int] = set()

    def add(node: Tree, span: ObservabilitySpan, parent_agent: str | None, depth: int) -> None:
        shown.add(id(span))
        label = _span_label(span, parent_agent)
        if span.parent_span_id and span.parent_span_id not in by_id:
            label.append("  (parent not stored)", style="bold red")
        branch = node.add(label)
        if depth > 64:  # a terminal cannot show deeper; a cycle in corrupt data must not recurse forever
            hidden = _descendants(span, children, shown)
            if hidden:
                branch.add(Text(f"… {hidden:,} deeper span(s) not drawn", style="dim"))
            return
        for child in children.get(span.span_id, []):
            add(branch, child, span.agent_name, depth + 1)

    for root in roots:
        add(tree, root, None, 0)
    # Spans whose parents form a loop (A under B under A) reach no root: shown, not hidden.
    for span in spans:
        if id(span) not in shown:
            label = _span_label(span, None)
            label.append("  (in a loop of parent ids)", style="bold red")
            shown.add(id(span))
            tree.add(label)
    return tree


def feedback_table(fields: Mapping[str, Any], title: str = "Feedback per agent") -> Table | None:
    """``feedback_by_agent`` as a table (agent, score name, average, count); None without scores."""
    scores: Mapping[str, Mapping[str, Mapping[str, Any]]] = fields.get("feedback_by_agent") or {}
    if not scores:
        return None
    table = _table(title)
    table.add_column("agent", no_wrap=True)
    table.add_column("feedback", no_wrap=True)
    table.add_column("avg", justify="right", no_wrap=True)
    table.add_column("scores", justify="right", no_wrap=True)
    for agent in sorted(scores):
        for name in sorted(scores[agent]):
            entry = scores[agent][name]
            table.add_row(escape(agent), escape(name), f"{float(entry['avg']):.3g}", f"{int(entry['count']):,}")
    return table
