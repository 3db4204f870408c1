"""``obs-connector report --html``: one self-contained HTML page from a :class:`ReportData`.

No script, no external stylesheet, font or image: the styles are inlined and the charts are
inline SVG (see :mod:`report_svg` for why), so the file opens offline, attaches to a ticket and
prints (``@media print`` drops the shadows and keeps sections whole). Every table cell that
carries a figure of the metrics answer also carries it unformatted in ``data-value`` (with the
group in ``data-key`` and the figure's name in ``data-metric``), so a test or a script can check
the page against ``obs-connector metrics --json`` without parsing formatted text.

Cost: the column shows the metrics answer's ``cost_by_agent`` / ``cost_by_tier``; a group whose
LLM calls have no price says "not priced" — never 0, which would claim the calls were free.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from src.repositories.report_queries import EDGES_MS, SAMPLE_LIMIT

from .render import fmt_ms, fmt_rate
from .report_data import ReportData
from .report_svg import STATUS_COLOURS, esc, histogram_svg, timeline_svg, waterfall_svg

__all__ = ["NOT_PRICED", "render_report"]

NOT_PRICED: Final = "not priced"
_TOTAL_COST_KEYS: Final = ("total_cost_usd", "total_cost")

_CSS: Final = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2430; margin: 0;
       background: #f4f6f9; }
main { max-width: 980px; margin: 0 auto; padding: 20px 24px 40px; }
header { background: #1f3b63; color: #fff; padding: 18px 24px; }
header h1 { margin: 0 0 6px; font-size: 22px; }
header dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 0; font-size: 13px; }
header dt { opacity: .75; } header dd { margin: 0; word-break: break-all; }
section { background: #fff; border-radius: 8px; box-shadow: 0 1px 3px rgba(0,0,0,.08); padding: 14px 18px;
          margin: 16px 0; }
h2 { font-size: 17px; margin: 0 0 10px; } h3 { font-size: 14px; margin: 14px 0 4px; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 8px; border-bottom: 1px solid #e6e9ee; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { font-size: 12px; text-transform: uppercase; letter-spacing: .03em; color: #5b6472; }
td.bad { color: #b3261e; font-weight: 600; } td.warn { color: #9a5b00; } td.muted { color: #8a94a6; }
.kpis { display: flex; flex-wrap: wrap; gap: 12px; }
.kpi { flex: 1 1 140px; border: 1px solid #e6e9ee; border-radius: 6px; padding: 8px 12px; }
.kpi b { display: block; font-size: 20px; } .kpi span { color: #5b6472; font-size: 12px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(440px, 1fr)); gap: 12px; }
svg.chart { width: 100%; height: auto; } svg.waterfall { width: 100%; height: auto; }
.legend span { display: inline-block; margin-right: 14px; font-size: 12px; }
.legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; border-radius: 2px; }
.trace { border-top: 1px solid #e6e9ee; padding-top: 8px; margin-top: 10px; }
.trace code { font-size: 12px; } .errors { color: #b3261e; font-size: 13px; margin: 4px 0 0 18px; }
.note { color: #5b6472; font-size: 13px; } .empty { text-align: center; padding: 40px 10px; }
@media print {
  body { background: #fff; } header { background: none; color: #000; border-bottom: 2px solid #000; }
  section { box-shadow: none; border: 1px solid #ccc; break-inside: avoid; }
  .trace { break-inside: avoid; } main { max-width: none; padding: 0; }
}
"""


def _cell(text: str, *, key: str = "", metric: str = "", value: object = None, css: str = "") -> str:
    attrs = ""
    if metric:
        attrs += (
            f' data-key="{esc(key)}" data-metric="{esc(metric)}" data-value="{esc("" if value is None else value)}"'
        )
    if css:
        attrs += f' class="{css}"'
    return f"<td{attrs}>{esc(text)}</td>"


def _rate_css(rate: float) -> str:
    return "bad" if rate >= 0.15 else "warn" if rate >= 0.05 else ""


def _cost_cell(costs: Mapping[str, Any] | None, key: str, group: str) -> str:
    value = None if costs is None else costs.get(key)
    if value is None:
        return _cell(NOT_PRICED, key=f"{group}:{key}", metric="cost", css="muted")
    return _cell(f"${float(value):,.4f}", key=f"{group}:{key}", metric="cost", value=float(value))


def _cost_label(fields: Mapping[str, Any]) -> str:
    """LLM calls nobody prices are named beside the total, which leaves them out (never as free)."""
    unpriced = int(fields.get("unpriced_llm_calls") or 0)
    return f"cost (+{unpriced:,} unpriced LLM calls)" if unpriced else "cost"


def _tier_order(tier: str) -> tuple[int, str]:
    try:
        n = int(tier)
    except ValueError:
        return (2_000, tier)
    return (n if n >= 0 else 1_000, tier)


def _stat_cells(group: str, key: str, stats: Mapping[str, Any], rate: float) -> list[str]:
    k = f"{group}:{key}"
    cells = [
        _cell(f"{int(stats['count']):,}" if "count" in stats else "—", key=k, metric="count", value=stats.get("count"))
    ]
    for p in ("p50", "p95", "p99"):
        cells.append(_cell(fmt_ms(stats.get(p)), key=k, metric=p, value=stats.get(p)))
    cells.append(_cell(fmt_rate(rate), key=k, metric="error_rate", value=rate, css=_rate_css(rate)))
    return cells


def _tier_table(data: ReportData) -> str:
    fields = data.fields
    latency: Mapping[str, Mapping[str, Any]] = fields.get("latency_by_tier") or {}
    errors: Mapping[str, float] = fields.get("error_rate_by_tier") or {}
    costs = fields.get("cost_by_tier")
    tokens_by_agent: Mapping[str, Mapping[str, int]] = fields.get("token_usage_by_agent") or {}
    tier_tokens: dict[str, int] = {}
    for agent, usage in tokens_by_agent.items():  # the answer has tokens per agent; tiers sum them
        tier = str(_tier_of(data, agent))
        tier_tokens[tier] = tier_tokens.get(tier, 0) + int(usage.get("total", 0) or 0)
    rows = []
    for tier in sorted({*latency, *errors}, key=_tier_order):
        stats = latency.get(tier) or {}
        name = stats.get("tier_name") or data.tier_names.get(int(tier) if tier.lstrip("-").isdigit() else -1, "")
        tokens = tier_tokens.get(tier, 0)
        cells = [_cell(f"{tier} {name}".strip())]
        cells += _stat_cells("tier", tier, stats, float(errors.get(tier, 0.0)))
        cells.append(_cell(f"{tokens:,}" if tokens else "—", key=f"tier:{tier}", metric="tokens", value=tokens))
        cells.append(_cost_cell(costs, tier, "tier"))
        rows.append(f"<tr>{''.join(cells)}</tr>")
    head = "<tr><th>tier</th><th>spans</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th><th>errors</th>"
    return f'<table id="tiers">{head}<th>tokens</th><th>cost</th></tr>{"".join(rows)}</table>'


def _tier_of(data: ReportData, agent: str) -> int:
    return int(data.agent_tiers.get(agent, -1))


def _agent_table(data: ReportData) -> str:
    fields = data.fields
    latency: Mapping[str, Mapping[str, Any]] = fields.get("latency_by_agent") or {}
    errors: Mapping[str, float] = fields.get("error_rate_by_agent") or {}
    tokens: Mapping[str, Mapping[str, int]] = fields.get("token_usage_by_agent") or {}
    costs = fields.get("cost_by_agent")
    rows = []
    for name in sorted({*latency, *errors}, key=lambda a: (_tier_order(str(_tier_of(data, a))), a)):
        stats = latency.get(name) or {}
        total = int((tokens.get(name) or {}).get("total", 0) or 0)
        cells = [_cell(name), _cell(str(_tier_of(data, name)))]
        cells += _stat_cells("agent", name, stats, float(errors.get(name, 0.0)))
        cells.append(_cell(f"{total:,}" if total else "—", key=f"agent:{name}", metric="tokens", value=total))
        cells.append(_cost_cell(costs, name, "agent"))
        rows.append(f"<tr>{''.join(cells)}</tr>")
    head = "<tr><th>agent</th><th>tier</th><th>spans</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th>"
    return f'<table id="agents">{head}<th>errors</th><th>tokens</th><th>cost</th></tr>{"".join(rows)}</table>'


def _kpis(data: ReportData) -> str:
    f = data.fields
    total_cost = next((f[k] for k in _TOTAL_COST_KEYS if f.get(k) is not None), None)
    dist = f.get("status_distribution") or {}
    items = [
        ("total_spans_analyzed", f"{int(f.get('total_spans_analyzed', 0)):,}", "spans"),
        ("overall_success_rate", fmt_rate(f.get("overall_success_rate")), "success"),
        ("overall_p95_latency_ms", fmt_ms(f.get("overall_p95_latency_ms")), "p95 ms"),
        ("overall_p99_latency_ms", fmt_ms(f.get("overall_p99_latency_ms")), "p99 ms"),
        ("errors", f"{int(dist.get('error', 0)):,} / {int(dist.get('timeout', 0)):,}", "errors / timeouts"),
        ("quality_score", f"{float(f.get('quality_score', 0.0)):.3f}", "quality score"),
        ("total_cost", NOT_PRICED if total_cost is None else f"${float(total_cost):,.4f}", _cost_label(f)),
    ]
    values = {"errors": dist.get("error"), "total_cost": total_cost}
    out = []
    for key, text, label in items:
        value = values.get(key, f.get(key))
        out.append(
            f'<div class="kpi" data-metric="{esc(key)}" data-value="{esc("" if value is None else value)}">'
            f"<b>{esc(text)}</b><span>{esc(label)}</span></div>"
        )
    return f'<div class="kpis">{"".join(out)}</div>'


def _legend(statuses: tuple[str, ...] = ("ok", "error", "timeout", "started")) -> str:
    items = "".join(f'<span><i style="background:{STATUS_COLOURS[s]}"></i>{s}</span>' for s in statuses)
    return f'<p class="legend">{items}</p>'


def _traces(data: ReportData, ids: list[str], title: str, durations: Mapping[str, float]) -> str:
    if not ids:
        return f"<section><h2>{esc(title)}</h2><p class='note'>None in this window.</p></section>"
    parts = [f"<section><h2>{esc(title)}</h2>{_legend()}"]
    for trace_id in ids:
        spans = data.traces.get(trace_id) or []
        if not spans:
            continue
        root = next((s for s in spans if s.parent_span_id is None), spans[0])
        took = durations.get(trace_id, root.duration_ms)
        head = f"{root.agent_name} · {root.operation_name}" + (f" — {fmt_ms(took)} ms" if took is not None else "")
        parts.append(
            f'<div class="trace" data-trace="{esc(trace_id)}"><h3>{esc(head)}</h3>'
            f"<p class='note'>trace <code>{esc(trace_id)}</code>, {len(spans):,} spans, "
            f"started {root.start_time:%Y-%m-%d %H:%M:%S} UTC</p>{waterfall_svg(spans)}"
        )
        failures = [s for s in spans if s.error_message or s.status in ("error", "timeout")]
        if failures:
            items = "".join(
                f"<li><b>{esc(s.agent_name)} · {esc(s.operation_name)}</b> ({esc(s.status)}"
                f"{', ' + esc(s.error_type) if s.error_type else ''}): {esc(s.error_message or 'no message')}</li>"
                for s in failures[:20]
            )
            parts.append(f'<ul class="errors">{items}</ul>')
        if trace_id in data.spans_left_out:
            parts.append(f"<p class='note'>{data.spans_left_out[trace_id]:,} more spans not drawn.</p>")
        parts.append("</div>")
    parts.append("</section>")
    return "".join(parts)


def _header(data: ReportData) -> str:
    scope = [("window", f"last {data.window} (since {data.since:%Y-%m-%d %H:%M:%S} UTC)")]
    if data.agent:
        scope.append(("agent", data.agent))
    if data.thread:
        scope.append(("thread", f"{data.thread} ({len(data.thread_traces):,} traces)"))
    scope.append(("store", f"{data.backend} — {data.location}"))
    scope.append(("generated", f"{data.generated_at:%Y-%m-%d %H:%M:%S} UTC"))
    rows = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in scope)
    return f"<header><h1>Observability report</h1><dl>{rows}</dl></header>"


def render_report(data: ReportData) -> str:
    """The whole page; an empty window is a page saying so (with the header), never an error."""
    title = f"Observability report — last {data.window}"
    page = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head><body>',
        _header(data),
        "<main>",
    ]
    if data.empty:
        page.append(
            '<section class="empty" id="empty"><h2>No spans in this window</h2>'
            f"<p class='note'>Nothing was stored in the last {esc(data.window)}"
            f"{' for agent ' + esc(data.agent) if data.agent else ''}"
            f"{' for thread ' + esc(data.thread) if data.thread else ''}. "
            "Produce some with <code>obs-connector demo</code>, or widen <code>--window</code>.</p></section>"
        )
        page.append("</main></body></html>")
        return "".join(page)
    notes = []
    if data.fields_note:
        notes.append(data.fields_note)
    if data.reads.sampled:
        notes.append(
            f"Charts and trace picks come from the window's first {SAMPLE_LIMIT:,} spans: this store is "
            "read through its REST API, without the SQL the other backends answer them with. The tables are complete."
        )
    page.append(f"<section><h2>Overview</h2>{_kpis(data)}")
    page.extend(f"<p class='note'>{esc(n)}</p>" for n in notes)
    page.append("</section>")
    page.append(f"<section><h2>Per tier</h2>{_tier_table(data)}</section>")
    page.append(f"<section><h2>Per agent</h2>{_agent_table(data)}</section>")
    hist = []
    for tier, counts in sorted(data.reads.histogram.items(), key=lambda item: _tier_order(str(item[0]))):
        label = f"tier {tier} {data.tier_names.get(tier, '')}".strip()
        hist.append(
            f"<div><h3>{esc(label)}</h3>{histogram_svg(counts, EDGES_MS, 'latency distribution, ' + label)}</div>"
        )
    page.append(f"<section><h2>Latency distribution per tier</h2><div class='grid'>{''.join(hist)}</div></section>")
    page.append(
        "<section><h2>Spans and errors over time</h2>"
        f"{_legend(('ok', 'error', 'timeout'))}<p class='note'>A span still running counts as ok, as in the metrics."
        f"</p>{timeline_svg(data.reads.over_time, data.since, data.reads.bucket_s)}</section>"
    )
    page.append(_traces(data, [t for t, _ in data.reads.slowest], "Slowest traces", dict(data.reads.slowest)))
    page.append(_traces(data, data.reads.failed, "Failed traces", {}))
    page.append("</main></body></html>")
    return "".join(page)
