"""``obs-connector report --html``: the page in a real headless Chromium, and the report's reads on
SQLite and on a real Postgres.

The browser test writes the page with the CLI, asks ``obs-connector metrics --json`` the same
question, and opens the page in Debian's Chromium through Playwright (the system browser, no
download): no console error, something drawn (ink pixels on the screenshot), and every figure of
the tables and the overview equal to the metrics answer, read from the DOM's ``data-value``.
The per-backend tests (SQLite, Postgres, and Supabase REST through the PostgREST emulator, where
the report reads through the public store API) check what the metrics answer does not cover — histogram, timeline, the
slowest and failed traces, the thread filter — against a Python reference over the same rows.
"""

from __future__ import annotations

import asyncio
import bisect
import io
import json
import os
import random
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from src.agents.ml_foundation.observability_connector.cli import app
from src.agents.ml_foundation.observability_connector.config import ObservabilitySettings, load_registry
from src.agents.ml_foundation.observability_connector.models import ObservabilitySpan
from src.agents.ml_foundation.observability_connector.nodes.metrics_aggregator import (
    compute_metrics,
    metrics_from_store,
)
from src.agents.ml_foundation.observability_connector.render import fmt_ms
from src.agents.ml_foundation.observability_connector.report_data import MAX_TRACE_SPANS, gather_report
from src.agents.ml_foundation.observability_connector.report_html import NOT_PRICED, render_report
from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext
from src.repositories.base import SpanStore
from src.repositories.observability_span import ObservabilitySpanRepository
from src.repositories.postgres import PostgresSpanRepository
from src.repositories.report_queries import EDGES_MS, TIME_BUCKETS
from src.repositories.sqlite import SQLiteSpanRepository
from tests.fixtures.span_rows import make_span, random_spans
from tests.fixtures.supabase_store import make_supabase_store

CHROMIUM = Path("/usr/bin/chromium")
HOSTILE = "<script>window.__pwned = 1</script> & \"quoted\" 'x'"
runner = CliRunner()


def _spans(now: datetime) -> list[ObservabilitySpan]:
    """Random traffic plus one nested trace with an LLM call and a failure whose message is HTML."""
    spans = random_spans(random.Random(18), now, 300, max_age=timedelta(hours=20))
    trace = "f" * 32
    start = now - timedelta(hours=2)
    root = make_span(trace_id=trace, span_id="1" * 16, agent="orchestrator", start=start, duration_ms=900.0)
    llm = make_span(
        trace_id=trace,
        span_id="2" * 16,
        parent_span_id=root.span_id,
        agent="gap_analyzer",
        operation_name="llm_call",
        start=start + timedelta(milliseconds=100),
        duration_ms=400.0,
        llm_model="claude-sonnet-4",
        input_tokens=1200,
        output_tokens=300,
        total_tokens=1500,
    )
    failed = make_span(
        trace_id=trace,
        span_id="3" * 16,
        parent_span_id=llm.span_id,
        agent="<img src=x onerror=alert(1)>",
        start=start + timedelta(milliseconds=600),
        duration_ms=250.0,
        status="error",
        error_type="ToolError",
        error_message=HOSTILE,
    )
    return [*spans, root, llm, failed]


async def _fill(store: SpanStore, spans: list[ObservabilitySpan]) -> None:
    result = await store.insert_spans_batch(spans)
    assert result.inserted == len(spans), result.errors[:3]


# --------------------------------------------------------------------------- the browser


def _browser_or_skip() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("OBS_REQUIRE_CHROMIUM") == "1" or os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing (scripts/test.sh installs Debian's chromium)", pytrace=False)
    pytest.skip(f"{CHROMIUM} is missing; install Debian's chromium (scripts/test.sh does)")


def _open_in_chromium(page_path: Path) -> dict[str, Any]:
    """Load the page, return its console errors, a screenshot, the DOM's figures and its text."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            errors: list[str] = []
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            # Any request beyond the file itself would mean the page is not self-contained.
            requests: list[str] = []
            page.on("request", lambda req: requests.append(req.url))
            page.goto(page_path.as_uri())
            page.wait_for_load_state("load")
            return {
                "errors": errors,
                "requests": requests,
                "png": page.screenshot(full_page=True),
                "cells": page.eval_on_selector_all(
                    "[data-metric]",
                    "els => els.map(e => [e.dataset.key || '', e.dataset.metric, e.dataset.value, e.innerText])",
                ),
                "text": page.inner_text("body"),
                "pwned": page.evaluate("() => window.__pwned === undefined ? null : window.__pwned"),
                "images": page.eval_on_selector_all("img", "els => els.length"),
                # Printed as a reader would print it (@media print applies to the PDF).
                "pdf": page.pdf(format="A4", print_background=False),
            }
        finally:
            browser.close()


def _ink_fraction(png: bytes) -> float:
    """Share of pixels darker than the page's light backgrounds: a blank page has none."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("L")
    histogram = image.histogram()
    return sum(histogram[:200]) / (image.width * image.height)


def _invoke(*args: str) -> str:
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_report_in_chromium_matches_the_metrics_answer(tmp_path: Path) -> None:
    _browser_or_skip()
    db = tmp_path / "spans.db"
    store = ObservabilitySpanRepository(SQLiteSpanRepository(db))

    async def fill() -> None:
        try:
            await _fill(store, _spans(datetime.now(UTC)))
        finally:
            await store.close()

    asyncio.run(fill())
    page_path = tmp_path / "report.html"
    out = _invoke("--store", str(db), "report", "--html", str(page_path), "--window", "24h")
    assert "303 spans" in out
    metrics = json.loads(_invoke("--store", str(db), "metrics", "--window", "24h", "--json"))

    seen = _open_in_chromium(page_path)
    assert seen["errors"] == []
    assert seen["requests"] == [page_path.as_uri()]
    assert _ink_fraction(seen["png"]) > 0.02, "the page looks blank"
    assert seen["pdf"].startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page\b", seen["pdf"])) >= 3, "the printed report should run over pages"

    cells = {(key, metric): (value, text) for key, metric, value, text in seen["cells"]}
    expected: dict[tuple[str, str], Any] = {}
    for group in ("agent", "tier"):
        for key, stats in metrics[f"latency_by_{group}"].items():
            for metric in ("count", "p50", "p95", "p99"):
                expected[(f"{group}:{key}", metric)] = stats[metric]
        for key, rate in metrics[f"error_rate_by_{group}"].items():
            expected[(f"{group}:{key}", "error_rate")] = rate
            expected[(f"{group}:{key}", "cost")] = None  # issue 19 adds cost to the metrics answer
    for agent in metrics["error_rate_by_agent"]:
        expected[(f"agent:{agent}", "tokens")] = (metrics["token_usage_by_agent"].get(agent) or {}).get("total", 0)
    for key in ("total_spans_analyzed", "overall_success_rate", "overall_p95_latency_ms", "overall_p99_latency_ms"):
        expected[("", key)] = metrics[key]
    expected[("", "quality_score")] = metrics["quality_score"]
    expected[("", "errors")] = metrics["status_distribution"]["error"]

    for where, want in expected.items():
        assert where in cells, f"{where} is not on the page"
        value, text = cells[where]
        if want is None:
            assert value == "" and text == NOT_PRICED, (where, value, text)
        else:
            assert float(value) == pytest.approx(float(want), rel=0, abs=0), (where, value, want)
        if where[1] in ("p50", "p95", "p99"):
            assert text == fmt_ms(want)  # what a reader sees is the same figure, formatted
    shown_agents = {k for k, m in cells if m == "count" and k.startswith("agent:")}
    assert shown_agents == {f"agent:{a}" for a in metrics["error_rate_by_agent"]}

    # The hostile strings are shown as text and never run or become markup.
    assert seen["pwned"] is None
    assert seen["images"] == 0
    assert HOSTILE in seen["text"]
    assert "<img src=x onerror=alert(1)>" in seen["text"]
    for heading in ("Per tier", "Per agent", "Latency distribution per tier", "Slowest traces", "Failed traces"):
        assert heading in seen["text"]


def test_empty_store_gives_a_clear_page_in_chromium(tmp_path: Path) -> None:
    _browser_or_skip()
    db = tmp_path / "empty.db"

    async def create() -> None:
        store = SQLiteSpanRepository(db)
        await store.open()
        await store.close()

    asyncio.run(create())
    page_path = tmp_path / "empty.html"
    out = _invoke("--store", str(db), "report", "--html", str(page_path), "--window", "1h")
    assert "no spans in this window" in out
    seen = _open_in_chromium(page_path)
    assert seen["errors"] == []
    assert "No spans in this window" in seen["text"]
    assert "sqlite" in seen["text"] and "last 1h" in seen["text"]
    assert "Per agent" not in seen["text"]
    assert _ink_fraction(seen["png"]) > 0.005


# --------------------------------------------------------------------------- every backend


class _Figures(HTMLParser):
    """``data-value`` of every figure on the page, by (key, metric)."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[tuple[str, str], str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("data-metric"):
            self.values[(a.get("data-key") or "", a["data-metric"] or "")] = a.get("data-value") or ""


@pytest.fixture(params=["sqlite", "postgres", "supabase"])
async def backend_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObservabilitySpanRepository]:
    inner: SpanStore
    if request.param == "sqlite":
        inner = SQLiteSpanRepository(tmp_path / "spans.db")
    elif request.param == "postgres":
        inner = PostgresSpanRepository(request.getfixturevalue("postgres_dsn"))
    else:  # PostgREST answered by the suite's emulator over a real Postgres; read through the public API
        inner = make_supabase_store(request.getfixturevalue("postgres_dsn"))
    store = ObservabilitySpanRepository(inner)
    yield store
    await store.close()


def _context(store: ObservabilitySpanRepository) -> ConnectorContext:
    return ConnectorContext(store=store, settings=ObservabilitySettings(), registry=load_registry())


async def test_reads_match_a_python_reference(backend_store: ObservabilitySpanRepository) -> None:
    now = datetime.now(UTC)
    spans = _spans(now)
    await _fill(backend_store, spans)
    context = _context(backend_store)
    data = await gather_report(context, "24h", now=now)
    reads = data.reads

    histogram: dict[int, list[int]] = {}
    for s in spans:
        if s.duration_ms is not None:
            histogram.setdefault(s.agent_tier, [0] * (len(EDGES_MS) + 1))[
                bisect.bisect_left(EDGES_MS, s.duration_ms)
            ] += 1
    assert reads.histogram == histogram

    assert reads.bucket_s == 24 * 3600 / TIME_BUCKETS
    timeline = [[0, 0, 0] for _ in range(TIME_BUCKETS)]
    for s in spans:
        i = int((s.start_time - data.since).total_seconds() // reads.bucket_s)
        timeline[i][{"error": 1, "timeout": 2}.get(s.status, 0)] += 1
    assert [list(b) for b in reads.over_time] == timeline

    timed = sorted((s for s in spans if s.duration_ms is not None), key=lambda s: -(s.duration_ms or 0))
    assert reads.slowest[0] == (timed[0].trace_id, timed[0].duration_ms)
    assert [ms for _, ms in reads.slowest] == sorted((ms for _, ms in reads.slowest), reverse=True)
    latest_failure: dict[str, datetime] = {}
    for s in spans:
        if s.status in ("error", "timeout"):
            latest_failure[s.trace_id] = max(s.start_time, latest_failure.get(s.trace_id, s.start_time))
    assert reads.failed == sorted(latest_failure, key=lambda t: latest_failure[t], reverse=True)[:5]
    assert not reads.sampled

    # Every trace shown is read whole, and the page's figures are the metrics answer's.
    for trace_id in {*reads.failed, *(t for t, _ in reads.slowest)}:
        assert len(data.traces[trace_id]) == sum(s.trace_id == trace_id for s in spans)
    parser = _Figures()
    parser.feed(render_report(data))
    fresh = await metrics_from_store(context, "24h")
    for agent, stats in fresh["latency_by_agent"].items():
        assert float(parser.values[(f"agent:{agent}", "p95")]) == stats["p95"]
    for tier, rate in fresh["error_rate_by_tier"].items():
        assert float(parser.values[(f"tier:{tier}", "error_rate")]) == rate
    assert int(parser.values[("", "total_spans_analyzed")]) == len(spans)


async def test_agent_filter_and_thread_filter(backend_store: ObservabilitySpanRepository) -> None:
    now = datetime.now(UTC)
    start = now - timedelta(hours=1)
    spans = [
        make_span(
            trace_id="a" * 32,
            agent="orchestrator",
            start=start,
            duration_ms=10.0,
            attributes={"langgraph.thread_id": "conv-1"},
            thread_id="conv-1",  # what the row builder promotes from the attribute
        ),
        make_span(  # a child of the thread's run: the column is inherited (the attribute is the root's)
            trace_id="a" * 32, agent="gap_analyzer", start=start, duration_ms=30.0, status="error", thread_id="conv-1"
        ),
        make_span(
            trace_id="b" * 32,
            agent="orchestrator",
            start=start + timedelta(minutes=5),
            duration_ms=20.0,
            attributes={"langgraph.thread_id": "conv-1"},
            thread_id="conv-1",  # what the row builder promotes from the attribute
        ),
        make_span(
            trace_id="c" * 32,
            agent="orchestrator",
            start=start,
            duration_ms=99.0,
            attributes={"langgraph.thread_id": "conv-2"},
            thread_id="conv-2",  # what the row builder promotes from the attribute
        ),
        make_span(
            trace_id="d" * 32,
            agent="orchestrator",
            start=now - timedelta(days=3),
            duration_ms=5.0,
            attributes={"langgraph.thread_id": "conv-1"},
            thread_id="conv-1",  # what the row builder promotes from the attribute
        ),  # the thread, but outside the window
    ]
    await _fill(backend_store, spans)
    context = _context(backend_store)

    thread = await gather_report(context, "24h", thread="conv-1", now=now)
    assert thread.thread_traces == ["a" * 32, "b" * 32]
    assert thread.fields["total_spans_analyzed"] == 3
    assert thread.fields["latency_by_agent"]["orchestrator"]["p50"] == 15.0
    assert thread.fields["error_rate_by_agent"] == {"orchestrator": 0.0, "gap_analyzer": 1.0}
    assert thread.reads.failed == ["a" * 32]
    assert thread.reads.slowest[0] == ("a" * 32, 30.0)
    assert thread.fields_note is None  # two traces: nothing cut
    direct, _, _ = await compute_metrics(context, "24h", thread_id="conv-1")  # the same answer as `metrics --thread`
    assert thread.fields["latency_by_agent"] == direct["latency_by_agent"]

    agent = await gather_report(context, "24h", agent="gap_analyzer", now=now)
    assert agent.fields["total_spans_analyzed"] == 1
    assert agent.reads.histogram == {2: [0, 0, 0, 0, 0, 1] + [0] * (len(EDGES_MS) - 5)}

    nobody = await gather_report(context, "24h", thread="no-such-thread", now=now)
    assert nobody.empty and nobody.reads.slowest == [] and sum(map(sum, nobody.reads.over_time)) == 0
    assert "No spans in this window" in render_report(nobody)


# --------------------------------------------------------------------------- the command's failures


def test_report_command_failures_are_one_line(tmp_path: Path) -> None:
    db = tmp_path / "spans.db"

    async def create() -> None:
        store = SQLiteSpanRepository(db)
        await store.open()
        await store.close()

    asyncio.run(create())
    cases = [
        (["--store", str(tmp_path / "missing.db"), "report", "--html", str(tmp_path / "r.html")], 1, "no store at"),
        (["--store", str(db), "report", "--html", str(tmp_path / "r.html"), "--window", "9y"], 2, "--window"),
        (["--store", str(db), "report", "--html", str(tmp_path / "no-dir" / "r.html")], 2, "cannot write"),
    ]
    for args, code, words in cases:
        result = runner.invoke(app, args, env={"COLUMNS": "1000"})
        assert result.exit_code == code, (args, result.output)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], result.stderr
    assert not (tmp_path / "missing.db").exists() and not (tmp_path / "r.html").exists()


async def test_a_long_trace_is_drawn_up_to_its_bound(backend_store: ObservabilitySpanRepository) -> None:
    now = datetime.now(UTC)
    start = now - timedelta(hours=1)
    trace = "e" * 32
    spans = [
        make_span(trace_id=trace, span_id=f"{i + 1:016x}", start=start + timedelta(milliseconds=i), duration_ms=1.0)
        for i in range(MAX_TRACE_SPANS + 10)
    ]
    spans[0] = make_span(trace_id=trace, span_id=f"{1:016x}", start=start, duration_ms=5_000.0)
    await _fill(backend_store, spans)
    data = await gather_report(_context(backend_store), "24h", now=now)
    assert data.reads.slowest == [(trace, 5_000.0)]
    drawn = data.traces[trace]
    assert [s.span_id for s in drawn] == [s.span_id for s in spans[:MAX_TRACE_SPANS]]
    assert data.spans_left_out == {trace: 10}
    assert "10 more spans not drawn" in render_report(data)
