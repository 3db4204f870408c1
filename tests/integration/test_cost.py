"""Cost end to end (issue 19): a real LangGraph graph with the callback handler, priced by the
row builder, stored, summed by the rollups on SQLite and a real Postgres, added to existing
tables by ``migrate`` / on open, shown by ``metrics`` and sent to the Opik test receiver as each
span's ``total_estimated_cost`` (validated with ``opik.rest_api`` types)."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypedDict

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langgraph.graph import END, START, StateGraph
from opik.rest_api.types import SpanWrite
from typer.testing import CliRunner

from src.agents.ml_foundation.observability_connector.cli import app
from src.agents.ml_foundation.observability_connector.cost_metrics import RAW_COST_ROWS, cost_figures, cost_groups
from src.agents.ml_foundation.observability_connector.models import ObservabilitySpan, row_id_for
from src.agents.ml_foundation.observability_connector.nodes.metrics_aggregator import compute_metrics
from src.agents.ml_foundation.observability_connector.pricing import Pricer, build_pricer
from src.agents.ml_foundation.observability_connector.settings import PricingSettings
from src.agents.ml_foundation.observability_connector.span_cost import call_cost
from src.mlops import opik_span_id
from src.repositories.base import SpanStore
from src.repositories.sqlite import SQLiteSpanRepository
from tests.fixtures.opik_rig import Rig, make_rig

__all__ = ["make_rig"]  # the fixture, used by name

_ids = itertools.count(1)


# --------------------------------------------------------------------------- a real graph


class PricedFakeChatModel(GenericFakeChatModel):
    """langchain-core's fake chat model publishing a provider and a model name the way real
    integrations do (``ls_provider`` / ``ls_model_name``), so the handler records both."""

    model: str = "gpt-4o-mini"
    provider: str = "openai"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = self.provider
        params["ls_model_name"] = self.model
        return params


def _llm(model: str, provider: str, usage: dict[str, Any]) -> PricedFakeChatModel:
    reply = AIMessage(f"reply from {model}", usage_metadata=usage)  # type: ignore[arg-type]
    return PricedFakeChatModel(messages=itertools.repeat(reply), model=model, provider=provider)


class _State(TypedDict):
    question: str


CACHED = {
    "input_tokens": 5000,
    "output_tokens": 400,
    "total_tokens": 5400,
    "input_token_details": {"cache_read": 3000, "cache_creation": 1000},
}
REASONING = {
    "input_tokens": 800,
    "output_tokens": 1200,
    "total_tokens": 2000,
    "output_token_details": {"reasoning": 900},
}
PLAIN = {"input_tokens": 1000, "output_tokens": 100, "total_tokens": 1100}


def _graph() -> Any:
    """Three LLM calls in three nodes: Anthropic with cache reads and writes, OpenAI reasoning,
    a self-hosted model priced by an override, and one model nobody prices."""
    sonnet = _llm("claude-3-5-sonnet-20241022", "anthropic", CACHED)
    o3 = _llm("o3-mini", "openai", REASONING)
    hosted = _llm("llama-internal-70b", "ollama", PLAIN)
    mystery = _llm("mystery-model-x", "openai", PLAIN)

    async def analyse(state: _State) -> dict[str, Any]:
        await sonnet.ainvoke(state["question"])
        await o3.ainvoke(state["question"])
        return {}

    async def summarise(state: _State) -> dict[str, Any]:
        await hosted.ainvoke(state["question"])
        await mystery.ainvoke(state["question"])
        return {}

    builder = StateGraph(_State)
    builder.add_node("analyse", analyse)
    builder.add_node("summarise", summarise)
    builder.add_edge(START, "analyse")
    builder.add_edge("analyse", "summarise")
    builder.add_edge("summarise", END)
    return builder.compile()


OVERRIDES = PricingSettings(overrides={"llama-internal-70b": {"input_per_mtok": 0.4, "output_per_mtok": 0.8}})


def _expected(model: str, provider: str, usage: dict[str, Any]) -> float | None:
    details_in = usage.get("input_token_details") or {}
    details_out = usage.get("output_token_details") or {}
    price = build_pricer(OVERRIDES).price_call(
        provider,
        model,
        usage["input_tokens"],
        usage["output_tokens"],
        details_in.get("cache_read", 0),
        details_in.get("cache_creation", 0),
        details_out.get("reasoning", 0),
    )
    return None if price is None else price.total_usd


async def test_a_graph_run_is_priced_stored_summed_and_sent_to_opik(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.context.pricer = build_pricer(OVERRIDES)  # what wiring builds from observability.yaml
    handler = rig.obs.callback_handler("explainer")
    await _graph().ainvoke({"question": "why did NE drop?"}, config={"callbacks": [handler]})
    assert await rig.opik.flush(10)

    spans = await rig.store.get_spans_by_time_window("1h", agent_name="explainer", limit=100)
    llm = {s.llm_model: s for s in spans if s.llm_model}
    assert set(llm) == {"claude-3-5-sonnet-20241022", "o3-mini", "llama-internal-70b", "mystery-model-x"}
    sonnet = _expected("claude-3-5-sonnet-20241022", "anthropic", CACHED)
    o3 = _expected("o3-mini", "openai", REASONING)
    hosted = _expected("llama-internal-70b", "ollama", PLAIN)
    assert sonnet and o3 and hosted == pytest.approx(1000 * 0.4e-6 + 100 * 0.8e-6)
    # Cache reads are cheaper than plain input: the same call without its cache costs more.
    plain_sonnet = Pricer().price_call("anthropic", "claude-3-5-sonnet-20241022", 5000, 400)
    assert plain_sonnet is not None and sonnet < plain_sonnet.total_usd
    assert llm["claude-3-5-sonnet-20241022"].cost_usd == pytest.approx(sonnet, rel=1e-12)
    assert llm["o3-mini"].cost_usd == pytest.approx(o3, rel=1e-12)
    assert llm["llama-internal-70b"].cost_usd == pytest.approx(hosted, rel=1e-12)
    assert llm["mystery-model-x"].cost_usd is None  # unknown: null, never 0
    assert all(s.cost_usd is None for s in spans if not s.llm_model)  # nodes and the graph cost nothing

    # Metrics: from the rollups (no filter) and from the raw rows (a trace filter) alike.
    total = sonnet + o3 + hosted
    fields, _, _ = await compute_metrics(rig.context, "1h")
    assert fields["cost_by_agent"] == {"explainer": pytest.approx(total, rel=1e-12)}
    assert fields["cost_by_tier"] == {"5": pytest.approx(total, rel=1e-12)}
    assert fields["total_cost_usd"] == pytest.approx(total, rel=1e-12)
    assert fields["unpriced_llm_calls"] == 1
    assert fields["total_spans_analyzed"] == len(spans)  # the host's keys are still there
    by_trace, _, _ = await compute_metrics(rig.context, "1h", trace_id=spans[0].trace_id)
    assert by_trace["total_cost_usd"] == pytest.approx(total, rel=1e-12) and by_trace["unpriced_llm_calls"] == 1

    # Opik: each priced LLM span carries its cost; the unpriced one carries none (Opik may
    # estimate it itself), and nothing else claims a cost. Every body is a valid SpanWrite.
    received = rig.receiver.spans
    for span in spans:
        body = received[opik_span_id(span.trace_id, span.span_id)]
        SpanWrite.model_validate(body)
        if span.cost_usd is None:
            assert "total_estimated_cost" not in body
        else:
            assert body["total_estimated_cost"] == pytest.approx(span.cost_usd, rel=1e-12)
            assert SpanWrite.model_validate(body).total_estimated_cost == pytest.approx(span.cost_usd, rel=1e-12)


def test_metrics_command_shows_cost(tmp_path: Path) -> None:
    """``obs-connector metrics`` (tables and --json) on a store holding priced and unpriced calls."""
    db = tmp_path / "cli.db"
    now = datetime.now(UTC) - timedelta(minutes=5)
    rows = [
        _row(now, "explainer", "gpt-4o-mini", 0.25),
        _row(now, "explainer", "mystery-model", None),
        _row(now, "gap_analyzer", "gpt-4o", 1.5),
        _row(now, "gap_analyzer", None, None),
    ]

    async def fill() -> None:
        repo = SQLiteSpanRepository(db)
        try:
            await repo.insert_spans_batch(rows)
        finally:
            await repo.close()

    asyncio.run(fill())
    runner = CliRunner()
    env = {"OBS_STORE__SQLITE_PATH": str(db), "COLUMNS": "160"}
    shown = runner.invoke(app, ["metrics", "--window", "1h"], env=env)
    assert shown.exit_code == 0, shown.output
    assert "cost $" in shown.output and "$1.7500" in shown.output and "1 unpriced LLM call" in shown.output
    assert "0.250000" in shown.output and "1.5000" in shown.output  # per agent
    answer = runner.invoke(app, ["metrics", "--window", "1h", "--json"], env=env)
    assert answer.exit_code == 0, answer.output
    payload = json.loads(answer.output)
    assert payload["cost_by_agent"] == {"explainer": 0.25, "gap_analyzer": 1.5}
    assert payload["cost_by_tier"] == {"2": 1.5, "5": 0.25}
    assert (payload["total_cost_usd"], payload["unpriced_llm_calls"]) == (1.75, 1)


async def test_demo_shows_cost_per_agent_and_tier(connector_context: Any) -> None:
    """The demo's agents call gpt-4o, gpt-4o-mini, claude-3-5-sonnet and claude-3-5-haiku: every
    one the library prices, so the closing tables carry a cost per agent and per tier, read back
    from the store like the rest of the report."""
    import io

    from rich.console import Console

    from src.agents.ml_foundation.observability_connector.demo import run_demo

    out = io.StringIO()
    result = await run_demo(6, 11, Console(file=out, width=160), context=connector_context, time_scale=0.1,
                            show_progress=False)  # fmt: skip
    metrics = result.metrics
    assert metrics["total_cost_usd"] > 0
    assert set(metrics["cost_by_agent"]) <= set(metrics["error_rate_by_agent"])
    assert "orchestrator" in metrics["cost_by_agent"] and metrics["cost_by_agent"]["orchestrator"] > 0
    assert sum(v or 0 for v in metrics["cost_by_tier"].values()) == pytest.approx(metrics["total_cost_usd"])
    text = " ".join(out.getvalue().split())  # rich wraps the overall line
    assert "cost $" in text and f"cost ${metrics['total_cost_usd']:.6f}" in text
    stored = [s for t in result.trace_ids for s in await connector_context.store.get_spans_by_trace_id(t)]
    priced = [s for s in stored if s.cost_usd is not None]
    assert priced and all(s.llm_model and s.input_tokens is not None for s in priced)
    # Only calls that failed before reporting usage are unpriced: every model here has a price.
    unpriced = [s for s in stored if s.llm_model and s.cost_usd is None]
    assert all(s.input_tokens is None and s.output_tokens is None for s in unpriced)
    assert metrics["unpriced_llm_calls"] == len(unpriced)


# --------------------------------------------------------------------------- stores and rollups

AGENTS = {"explainer": 5, "gap_analyzer": 2, "orchestrator": 1}


def _row(start: datetime, agent: str, model: str | None, cost: float | None) -> ObservabilitySpan:
    n = next(_ids)
    trace_id, span_id = f"{n:032x}", f"{n:016x}"
    return ObservabilitySpan(
        id=row_id_for(trace_id, span_id),
        span_id=span_id,
        trace_id=trace_id,
        operation_name="llm_call" if model else "execute",
        agent_name=agent,
        agent_tier=AGENTS[agent],
        start_time=start,
        duration_ms=12.5,
        status="ok",
        llm_model=model,
        input_tokens=100 if model else None,
        output_tokens=10 if model else None,
        cost_usd=cost,
    )


def _history(now: datetime) -> list[ObservabilitySpan]:
    """Priced, unpriced and non-LLM rows spread over minutes, hours and days (every rollup level
    and the raw edge of a window)."""
    rows = []
    for i in range(120):
        age = timedelta(seconds=7.5 + 37 * i + (i % 7) * 3600 + (i % 5) * 86400)
        agent = sorted(AGENTS)[i % 3]
        kind = i % 4
        model = None if kind == 3 else ("mystery-model" if kind == 2 else "gpt-4o-mini")
        cost = (i + 1) * 0.000125 if kind in (0, 1) else None
        rows.append(_row(now - age, agent, model, cost))
    return rows


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SpanStore]:
    if request.param == "sqlite":
        repo: SpanStore = SQLiteSpanRepository(tmp_path / "spans.db")
    else:
        from src.repositories.postgres import PostgresSpanRepository

        repo = PostgresSpanRepository(request.getfixturevalue("postgres_dsn"))
    try:
        yield repo
    finally:
        await repo.close()


def _assert_usd(got: float | None, want: float | None, where: str) -> None:
    """Equal up to summation order; None (nothing priced) only where the raw rows say None."""
    if want is None:
        assert got is None, where
    else:
        assert got == pytest.approx(want, rel=1e-12, abs=1e-15), where


async def _assert_rollups_match_raw(store: SpanStore) -> None:
    for window in ("1m", "30m", "1h", "6h", "24h", "3d", "7d"):
        for agent in (None, "gap_analyzer"):
            groups = await store.rollup_groups(window, agent_name=agent)
            assert groups is not None
            raw = await store.get_spans_by_time_window(window, agent_name=agent, limit=RAW_COST_ROWS)
            rolled, exact = cost_figures(groups), cost_figures(cost_groups(raw))
            where = f"{window}/{agent}"
            # The store's own raw sum (the trace filter's path) agrees with both.
            summed = cost_figures(await store.raw_cost_groups(window, agent_name=agent))
            assert summed["unpriced_llm_calls"] == exact["unpriced_llm_calls"], where
            _assert_usd(summed["total_cost_usd"], exact["total_cost_usd"], f"{where} raw sum")
            assert rolled["unpriced_llm_calls"] == exact["unpriced_llm_calls"], where
            for key in ("cost_by_agent", "cost_by_tier"):
                assert rolled[key].keys() == exact[key].keys(), where
                for name, usd in exact[key].items():
                    _assert_usd(rolled[key][name], usd, f"{where} {key}[{name}]")
            _assert_usd(rolled["total_cost_usd"], exact["total_cost_usd"], f"{where} total")
    assert await store.verify_rollups() == []


async def test_cost_round_trips_and_rollups_sum_it(store: SpanStore) -> None:
    now = datetime.now(UTC)
    rows = _history(now)
    result = await store.insert_spans_batch(rows)
    assert result.inserted == len(rows)
    await store.insert_spans_batch(rows[:30])  # a replay: duplicates add nothing
    back = {s.span_id: s for s in await store.get_spans_by_time_window("30d", limit=1000)}
    assert {k: s.cost_usd for k, s in back.items()} == {r.span_id: r.cost_usd for r in rows}
    await _assert_rollups_match_raw(store)
    week = cost_figures(await store.rollup_groups("7d") or [])
    assert week["unpriced_llm_calls"] == 30
    assert week["total_cost_usd"] == pytest.approx(sum(r.cost_usd or 0 for r in rows), rel=1e-12)
    # Retention subtracts what it deletes; a rebuild recomputes the same figures.
    await store.delete_old_spans(2)
    await _assert_rollups_match_raw(store)
    await store.rebuild_rollups()
    await _assert_rollups_match_raw(store)


def _llm_row(start: datetime, model: str | None, cost: float | None, **attributes: Any) -> ObservabilitySpan:
    row = _row(start, "explainer", model, cost)
    return row.model_copy(update={"attributes": {"llm.provider": "openai", **attributes}})


async def test_reprice_prices_stored_rows_and_keeps_the_rollups_exact(store: SpanStore) -> None:
    """Rows stored without a cost (before the column, or before an override named their model):
    ``price_unpriced`` sets what the row builder would have, in batches, leaves a priced row and
    an unknown model alone, and the rollups move with it."""
    now = datetime.now(UTC)
    rows = []
    for i in range(40):
        start = now - timedelta(hours=7 * i + 0.2)
        kind = i % 5
        if kind == 0:
            rows.append(_llm_row(start, "gpt-4o", None))
        elif kind == 1:
            rows.append(_llm_row(start, "gpt-4o", None, **{"llm.usage.input_token_details.cache_read": 60}))
        elif kind == 2:
            rows.append(_llm_row(start, "llama-internal-70b", None))  # priced only by the override
        elif kind == 3:
            rows.append(_llm_row(start, "mystery-model-x", None))  # nobody's price
        else:
            rows.append(_llm_row(start, "gpt-4o", 9.99))  # already priced: kept
    rows.append(_row(now, "orchestrator", None, None))  # not an LLM call
    assert (await store.insert_spans_batch(rows)).inserted == len(rows)
    pricer = build_pricer(OVERRIDES)
    counts: list[int] = []

    recent = now - timedelta(days=3)
    examined, priced = await store.price_unpriced(pricer, recent, batch_size=3, progress=counts.append)
    young = [r for r in rows if r.start_time >= recent and r.llm_model and r.cost_usd is None]
    assert examined == len(young) and priced == len([r for r in young if r.llm_model != "mystery-model-x"])
    assert counts and counts[-1] == priced
    examined, priced = await store.price_unpriced(pricer, batch_size=7)
    assert examined == 32 - len(young) + len([r for r in young if r.llm_model == "mystery-model-x"])

    back = {s.span_id: s for s in await store.get_spans_by_time_window("30d", limit=1000)}
    for row in rows:
        got = back[row.span_id].cost_usd
        if row.cost_usd is not None:
            assert got == row.cost_usd
        elif row.llm_model is None or row.llm_model == "mystery-model-x":
            assert got is None
        else:
            want = call_cost(pricer, row.llm_model, row.input_tokens, row.output_tokens, dict(row.attributes))
            assert want is not None and got == pytest.approx(want, rel=1e-12)
    await _assert_rollups_match_raw(store)
    figures = cost_figures(await store.rollup_groups("30d") or [])
    assert figures["unpriced_llm_calls"] == 8
    assert await store.price_unpriced(pricer) == (8, 0)  # again: only the unknown model is left


def test_cost_reprice_command(tmp_path: Path) -> None:
    """``obs-connector cost reprice`` with an override from observability.yaml."""
    db = tmp_path / "reprice.db"
    now = datetime.now(UTC) - timedelta(minutes=5)
    rows = [_llm_row(now, "gpt-4o", None), _llm_row(now, "llama-internal-70b", None), _llm_row(now, "nobody", None)]

    async def fill() -> None:
        repo = SQLiteSpanRepository(db)
        try:
            await repo.insert_spans_batch(rows)
        finally:
            await repo.close()

    asyncio.run(fill())
    config = tmp_path / "config"
    config.mkdir()
    shutil.copy(Path(__file__).resolve().parents[2] / "config" / "agent_config.yaml", config)
    (config / "observability.yaml").write_text(
        "pricing:\n  overrides:\n    llama-internal-70b: {input_per_mtok: 0.4, output_per_mtok: 0.8}\n"
    )
    runner = CliRunner()
    env = {"OBS_STORE__SQLITE_PATH": str(db), "OBS_CONFIG_DIR": str(config), "COLUMNS": "200"}
    done = runner.invoke(app, ["cost", "reprice"], env=env)
    assert done.exit_code == 0, done.output
    assert "Priced 2 of 3 unpriced LLM call(s)" in done.output and "1 still have no known price" in done.output
    answer = runner.invoke(app, ["metrics", "--window", "1h", "--json"], env=env)
    payload = json.loads(answer.output)
    assert payload["unpriced_llm_calls"] == 1
    assert payload["total_cost_usd"] == pytest.approx(
        (call_cost(None, "gpt-4o", 100, 10, {"llm.provider": "openai"}) or 0) + 100 * 0.4e-6 + 10 * 0.8e-6
    )
    bad = runner.invoke(app, ["cost", "reprice", "--since", "yesterday-ish"], env=env)
    assert bad.exit_code == 2 and "--since" in bad.output


async def test_a_negative_cost_is_refused_by_the_model_and_the_table() -> None:
    with pytest.raises(ValueError, match="cost_usd"):
        _row(datetime.now(UTC), "explainer", "gpt-4o", -1.0)


# --------------------------------------------------------------------------- existing tables

_OLD_SQLITE_ROLLUPS = """CREATE TABLE ml_span_rollups (
    level INTEGER NOT NULL, bucket TEXT NOT NULL, agent_name TEXT NOT NULL, agent_tier INTEGER NOT NULL,
    n_all INTEGER NOT NULL, n_ok INTEGER NOT NULL, n_error INTEGER NOT NULL, n_timeout INTEGER NOT NULL,
    n_started INTEGER NOT NULL, n_fallback INTEGER NOT NULL,
    tok_in INTEGER NOT NULL, tok_out INTEGER NOT NULL, tok_total INTEGER NOT NULL,
    dur_n INTEGER NOT NULL, dur_sum REAL NOT NULL,
    PRIMARY KEY (level, bucket, agent_name, agent_tier)
) WITHOUT ROWID"""


async def test_an_existing_sqlite_file_gains_the_column_and_cost_rollups(tmp_path: Path) -> None:
    """A store written before cost existed: its table has no ``cost_usd`` and its rollups no cost
    figures. Opening it adds the column in place (rows kept, read as null: unpriced LLM calls),
    rebuilds the rollups once, and new rows are priced and summed beside the old."""
    path = tmp_path / "old.db"
    now = datetime.now(UTC) - timedelta(minutes=3)
    repo = SQLiteSpanRepository(path)
    old_rows = [_row(now, "explainer", "gpt-4o", None) for _ in range(3)] + [_row(now, "orchestrator", None, None)]
    await repo.insert_spans_batch(old_rows)
    await repo.close()
    with sqlite3.connect(path) as conn:  # make it the old shape: no column, old rollups
        conn.execute("ALTER TABLE ml_observability_spans DROP COLUMN cost_usd")
        conn.execute("DROP TABLE ml_span_rollups")
        conn.execute(_OLD_SQLITE_ROLLUPS)
        conn.execute("DROP TABLE ml_span_rollup_pending")
        conn.execute(
            "CREATE TABLE ml_span_rollup_pending (minute TEXT NOT NULL, agent_name TEXT NOT NULL, "
            "agent_tier INTEGER NOT NULL, n_all INTEGER NOT NULL, n_ok INTEGER NOT NULL, n_error INTEGER NOT NULL, "
            "n_timeout INTEGER NOT NULL, n_started INTEGER NOT NULL, n_fallback INTEGER NOT NULL, "
            "tok_in INTEGER NOT NULL, tok_out INTEGER NOT NULL, tok_total INTEGER NOT NULL, dur_n INTEGER NOT NULL, "
            "dur_sum REAL NOT NULL)"
        )
    conn.close()

    # Read before any writer upgraded it (the CLI's read commands open read-only): the column
    # reads as null, the metrics answer from the raw rows, and the file is left as it was.
    reader = SQLiteSpanRepository(path, read_only=True)
    try:
        spans = await reader.get_spans_by_time_window("1h", limit=100)
        assert [s.cost_usd for s in spans] == [None] * 4
        assert [s.span_id for s in spans] == [r.span_id for r in old_rows]
        assert (await reader.get_spans_by_trace_id(old_rows[0].trace_id))[0].cost_usd is None
        assert await reader.rollup_groups("1h") is None
        figures = cost_figures(await reader.raw_cost_groups("1h"))
        assert (figures["total_cost_usd"], figures["unpriced_llm_calls"]) == (None, 3)
    finally:
        await reader.close()
    runner = CliRunner()
    shown = await asyncio.to_thread(runner.invoke, app, ["--store", str(path), "metrics", "--window", "1h", "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["unpriced_llm_calls"] == 3
    with sqlite3.connect(path) as conn:
        assert "cost_usd" not in {row[1] for row in conn.execute("PRAGMA table_info(ml_observability_spans)")}
    conn.close()

    for _ in range(2):  # a second open changes nothing
        repo = SQLiteSpanRepository(path)
        try:
            assert [s.cost_usd for s in await repo.get_spans_by_time_window("1h", limit=100)] == [None] * 4
            groups = await repo.rollup_groups("1h")
            assert groups is not None and cost_figures(groups)["unpriced_llm_calls"] == 3
            assert await repo.verify_rollups() == []
        finally:
            await repo.close()
    repo = SQLiteSpanRepository(path)
    try:
        await repo.insert_spans_batch([_row(now, "explainer", "gpt-4o", 0.5)])
        figures = cost_figures(await repo.rollup_groups("1h") or [])
        assert (figures["total_cost_usd"], figures["unpriced_llm_calls"]) == (0.5, 3)
        await _assert_rollups_match_raw(repo)
    finally:
        await repo.close()
    with sqlite3.connect(path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(ml_observability_spans)")]
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            conn.execute("UPDATE ml_observability_spans SET cost_usd = -1")
    conn.close()
    assert columns[-1] == "cost_usd" and columns.count("cost_usd") == 1


async def test_postgres_migrate_adds_the_column_to_a_table_with_data(postgres_dsn: str) -> None:
    """A database migrated before cost existed, holding rows: ``migrate`` adds ``cost_usd`` (null
    for the rows there), replaces the rollups by ones with cost figures, back-filled from the
    rows, and a second run changes nothing."""
    import psycopg

    from src.repositories.postgres import PostgresSpanRepository, migrate

    now = datetime.now(UTC) - timedelta(minutes=3)
    old_rows = [_row(now - timedelta(hours=i), "explainer", "gpt-4o", None) for i in range(5)]
    old_rows += [_row(now, "orchestrator", None, None)]
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        # The old shape: no cost column, rollups without cost figures, the old metrics function.
        conn.execute("DROP FUNCTION obs_rollup_metrics(timestamptz, text)")
        conn.execute("ALTER TABLE ml_span_rollups DROP COLUMN cost_sum, DROP COLUMN n_unpriced")
        for op in ("insert", "delete", "update", "truncate"):
            conn.execute(f"DROP TRIGGER ml_observability_spans_rollup_{op} ON ml_observability_spans")
        conn.execute("ALTER TABLE ml_observability_spans DROP COLUMN cost_usd")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO ml_observability_spans (id, span_id, trace_id, operation_name, agent_name, "
                "agent_tier, start_time, duration_ms, status, llm_model, input_tokens, output_tokens) "
                "VALUES (%s, %s, %s, 'llm_call', %s, %s, %s, 12.5, 'ok', %s, 100, 10)",
                [
                    (r.id, r.span_id, r.trace_id, r.agent_name, r.agent_tier, r.start_time, r.llm_model)
                    for r in old_rows
                ],
            )
    # The new code against a database not migrated yet: a clear refusal naming the fix (the
    # delivery layer spools such a batch until it can be written).
    from src.repositories.base import StoreSchemaError

    stale = PostgresSpanRepository(postgres_dsn)
    try:
        with pytest.raises(StoreSchemaError) as refused:
            await stale.insert_spans_batch([_row(now, "explainer", "gpt-4o", 0.5)])
        assert "cost_usd" in str(refused.value) and "migrate" in (refused.value.hint or "")
    finally:
        await stale.close()
    for _ in range(2):
        report = await asyncio.to_thread(migrate, postgres_dsn)
        repo = PostgresSpanRepository(postgres_dsn)
        try:
            assert [s.cost_usd for s in await repo.get_spans_by_time_window("1d", limit=100)] == [None] * 6
            figures = cost_figures(await repo.rollup_groups("1d") or [])
            assert figures["unpriced_llm_calls"] == 5 and figures["total_cost_usd"] is None
            assert await repo.verify_rollups() == []
        finally:
            await repo.close()
    assert not report.changed  # the second run found everything in place
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        # The rebuilt rollups keep the lock-down: RLS on, read-only for service_role, nothing for
        # the public API roles (Supabase's default privileges grant them every new table).
        checks = conn.execute(
            "SELECT relrowsecurity, has_table_privilege('anon', oid, 'SELECT'), "
            "has_table_privilege('authenticated', oid, 'SELECT'), has_table_privilege('service_role', oid, 'SELECT'), "
            "has_table_privilege('service_role', oid, 'INSERT') FROM pg_class "
            "WHERE relname IN ('ml_span_rollups', 'ml_span_rollup_sketch') ORDER BY relname"
        ).fetchall()
        assert checks == [(True, False, False, True, False)] * 2
        policies = conn.execute(
            "SELECT tablename FROM pg_policies WHERE tablename LIKE 'ml_span_rollup%' ORDER BY 1"
        ).fetchall()
        assert policies == [("ml_span_rollup_prefix",), ("ml_span_rollup_sketch",), ("ml_span_rollups",)]
        column = conn.execute(
            "SELECT data_type, is_nullable FROM information_schema.columns "
            "WHERE table_name = 'ml_observability_spans' AND column_name = 'cost_usd'"
        ).fetchone()
        assert column == ("double precision", "YES")
    repo = PostgresSpanRepository(postgres_dsn)
    try:
        await repo.insert_spans_batch([_row(now, "explainer", "gpt-4o", 0.5)])
        figures = cost_figures(await repo.rollup_groups("1d") or [])
        assert (figures["total_cost_usd"], figures["unpriced_llm_calls"]) == (0.5, 5)
        await _assert_rollups_match_raw(repo)
    finally:
        await repo.close()
