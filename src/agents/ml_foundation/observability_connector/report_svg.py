"""The report's charts as plain SVG text: a latency histogram, statuses over time, a trace waterfall.

Why SVG written here rather than a plotting library: the page must open with no network and no
console errors, print cleanly and stay small enough to attach to a ticket. Inline SVG is vector
(sharp on paper and on any screen), needs no script at all, adds no dependency and costs a few
kilobytes per chart; a Plotly page carries megabytes of JavaScript and draws nothing without it.
What an interactive chart adds (hover) is covered by ``<title>`` tooltips on every bar.

Every string that came from a caller (agent and operation names, models, error messages) goes
through :func:`esc` before it is placed in the markup.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .models import ObservabilitySpan

__all__ = ["STATUS_COLOURS", "esc", "histogram_svg", "timeline_svg", "waterfall_svg"]

STATUS_COLOURS: Final = {"ok": "#4c9a6a", "error": "#d1453b", "timeout": "#e39a2d", "started": "#8a94a6"}
_FONT: Final = 'font-family="system-ui, sans-serif" font-size="11"'


def esc(text: object) -> str:
    """Text safe in HTML content and in double- or single-quoted attributes."""
    return html.escape(str(text), quote=True)


def _fmt_ms(ms: float) -> str:
    if ms >= 1000:
        return f"{ms / 1000:,.2f} s"
    return f"{ms:,.1f} ms" if ms < 100 else f"{ms:,.0f} ms"


def _edge_label(ms: float) -> str:
    return f"{ms / 1000:g}s" if ms >= 1000 else f"{ms:g}ms"


def histogram_svg(counts: Sequence[int], edges: Sequence[float], title: str) -> str:
    """Bars per latency bucket (log-spaced edges), the count on top of each non-empty bar."""
    width, height, left, bottom, top = 460, 150, 8, 30, 16
    n = len(counts)
    bar_w = (width - 2 * left) / n
    peak = max(counts) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{esc(title)}"><title>{esc(title)}</title>'
    ]
    labels = [f"≤{_edge_label(e)}" for e in edges] + [f">{_edge_label(edges[-1])}"]
    for i, count in enumerate(counts):
        h = (height - bottom - top) * count / peak
        x = left + i * bar_w
        y = height - bottom - h
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" fill="#3d6fb6">'
            f"<title>{esc(labels[i])}: {count:,} spans</title></rect>"
        )
        if count:
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{y - 3:.1f}" text-anchor="middle" {_FONT}>{count:,}</text>')
        if i % 2 == 0:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{height - bottom + 13}" text-anchor="middle" '
                f'{_FONT} fill="#555">{esc(labels[i])}</text>'
            )
    parts.append(
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - left}" y2="{height - bottom}" stroke="#999"/></svg>'
    )
    return "".join(parts)


def timeline_svg(buckets: Sequence[tuple[int, int, int]], since: datetime, bucket_s: float) -> str:
    """Stacked bars per time bucket: ok, timeout, error (errors on top, in red)."""
    width, height, left, bottom, top = 940, 170, 40, 30, 10
    n = len(buckets) or 1
    bar_w = (width - left - 10) / n
    peak = max((sum(b) for b in buckets), default=0) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart wide" viewBox="0 0 {width} {height}" '
        'role="img" aria-label="Spans and errors over time"><title>Spans and errors over time</title>'
    ]
    plot_h = height - bottom - top
    for frac in (0.0, 0.5, 1.0):
        y = height - bottom - plot_h * frac
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" {_FONT}>{round(peak * frac):,}</text>')
    for i, (ok, error, timeout) in enumerate(buckets):
        x = left + i * bar_w
        y = height - bottom
        start = since + timedelta(seconds=bucket_s * i)
        tip = f"{start:%Y-%m-%d %H:%M} UTC: {ok:,} ok, {error:,} error, {timeout:,} timeout"
        for count, colour in ((ok, STATUS_COLOURS["ok"]), (timeout, STATUS_COLOURS["timeout"]), (error, "#d1453b")):
            if not count:
                continue
            h = plot_h * count / peak
            y -= h
            parts.append(
                f'<rect x="{x + 0.5:.1f}" y="{y:.1f}" width="{max(bar_w - 1, 0.5):.1f}" height="{h:.1f}" '
                f'fill="{colour}"><title>{esc(tip)}</title></rect>'
            )
        if i % max(n // 6, 1) == 0:
            parts.append(f'<text x="{x:.1f}" y="{height - bottom + 14}" {_FONT} fill="#555">{start:%m-%d %H:%M}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _tree_order(spans: Sequence[ObservabilitySpan]) -> list[tuple[ObservabilitySpan, int]]:
    """Spans depth-first under their parents (start order among siblings), with their depth.

    A span whose parent is not in the trace (not stored, or cut off) is drawn as a root, so
    nothing stored is hidden; a parent cycle cannot loop (each span is visited once).
    """
    ids = {s.span_id for s in spans}
    children: dict[str | None, list[ObservabilitySpan]] = {}
    for span in sorted(spans, key=lambda s: s.start_time):
        parent = span.parent_span_id if span.parent_span_id in ids and span.parent_span_id != span.span_id else None
        children.setdefault(parent, []).append(span)
    out: list[tuple[ObservabilitySpan, int]] = []
    seen: set[str] = set()
    stack = [(s, 0) for s in reversed(children.get(None, []))]
    while stack:
        span, depth = stack.pop()
        if span.span_id in seen:
            continue
        seen.add(span.span_id)
        out.append((span, depth))
        stack.extend((c, depth + 1) for c in reversed(children.get(span.span_id, [])))
    out.extend((s, 0) for s in spans if s.span_id not in seen)  # only in a cycle without a root
    return out


def waterfall_svg(spans: Sequence[ObservabilitySpan]) -> str:
    """One row per span on the trace's time axis: name, bar (status colour), duration, model and tokens."""
    rows = _tree_order(spans)
    t0 = min(s.start_time for s in spans)
    ends = [s.end_time or (s.start_time + timedelta(milliseconds=s.duration_ms or 0)) for s in spans]
    total_ms = max(max((e - t0).total_seconds() * 1000 for e in ends), 0.001)
    width, row_h, label_w, info_w, head = 940, 18, 250, 270, 18
    plot_w = width - label_w - info_w
    height = head + row_h * len(rows) + 4
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="waterfall" viewBox="0 0 {width} {height}" '
        f'width="{width}" role="img" aria-label="trace waterfall">'
    ]
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = label_w + plot_w * frac
        parts.append(f'<line x1="{x:.1f}" y1="{head - 4}" x2="{x:.1f}" y2="{height}" stroke="#eee"/>')
        anchor = "end" if frac == 1.0 else "middle" if frac else "start"
        parts.append(
            f'<text x="{x:.1f}" y="{head - 7}" text-anchor="{anchor}" {_FONT} fill="#555">'
            f"{esc(_fmt_ms(total_ms * frac))}</text>"
        )
    for i, (span, depth) in enumerate(rows):
        y = head + i * row_h
        offset = (span.start_time - t0).total_seconds() * 1000
        dur = span.duration_ms or 0.0
        x = label_w + plot_w * offset / total_ms
        w = max(plot_w * dur / total_ms, 1.5)
        colour = STATUS_COLOURS.get(span.status, "#8a94a6")
        name = f"{span.agent_name} · {span.operation_name}"
        label = ("\u2003" * min(depth, 8)) + (name if len(name) <= 38 - 2 * min(depth, 8) else name[:36] + "…")
        info = _fmt_ms(dur) if span.duration_ms is not None else span.status
        if span.llm_model or span.total_tokens:
            if not span.llm_model or span.llm_model not in label:  # "llm.<model>" shows it already
                info += f" · {span.llm_model or 'llm'}"
            if span.total_tokens:
                info += f" · {span.total_tokens:,} tok"
            if span.cost_usd is not None:  # issue 19: the call's price, as stored
                info += f" · ${span.cost_usd:.6f}"
        tip = f"{name} — {span.status}, {info}"
        if span.error_message:
            tip += f" — {span.error_type or 'error'}: {span.error_message}"
        parts.append(
            f'<g><title>{esc(tip)}</title><text x="2" y="{y + 12}" {_FONT}>{esc(label)}</text>'
            f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" rx="2" fill="{colour}"/>'
            f'<text x="{width - info_w + 6}" y="{y + 12}" {_FONT} fill="#333">{esc(info[:46])}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)
