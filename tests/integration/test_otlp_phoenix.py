"""The demo's spans in a real Arize Phoenix (``phoenix serve``), read back through Phoenix's REST API.

The README's two commands, as a test: the same span tree the store holds (every parent link),
and the GenAI attributes on the model calls, tools and agents, as Phoenix parsed them.
"""

from __future__ import annotations

import io
from collections import Counter
from typing import Any

from rich.console import Console

from src.agents.ml_foundation.observability_connector.demo import run_demo
from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext
from tests.fixtures.phoenix_server import PhoenixServer
from tests.fixtures.waiting import wait_until


def phoenix_spans(phoenix: PhoenixServer) -> list[dict[str, Any]]:
    spans: list[dict[str, Any]] = []
    cursor = ""
    for _ in range(100):  # bounded: 100 pages of 1,000
        page: Any = phoenix.get_json(f"/v1/projects/default/spans?limit=1000{cursor}")
        spans.extend(page["data"])
        if not page.get("next_cursor"):
            return spans
        cursor = f"&cursor={page['next_cursor']}"
    raise AssertionError("more pages than a demo makes")


async def test_demo_spans_read_back_from_phoenix_with_tree_and_genai_attributes(phoenix_server: PhoenixServer) -> None:
    context = ConnectorContext.from_config()
    console = Console(file=io.StringIO(), width=120)
    result = await run_demo(
        3, seed=11, console=console, context=context, show_progress=False, otlp_endpoint=phoenix_server.traces_endpoint
    )
    assert result.delivered and result.spans_stored == result.spans_produced
    assert "exported to" in console.file.getvalue()  # type: ignore[attr-defined]
    rows = await context.store.get_spans_by_time_window("1h", limit=10_000)
    await context.store.close()
    traces = {r.trace_id for r in rows}

    def in_phoenix() -> list[dict[str, Any]]:
        return [s for s in phoenix_spans(phoenix_server) if s["context"]["trace_id"] in traces]

    # Phoenix writes what it receives from a queue: poll (bounded) until all of it is readable.
    wait_until(lambda: len(in_phoenix()) >= len(rows), timeout=30, what=f"{len(rows)} spans in Phoenix")
    ours = in_phoenix()

    # The tree: every span once, under the parent the store has.
    assert Counter(s["context"]["span_id"] for s in ours) == Counter(r.span_id for r in rows)
    assert {s["context"]["span_id"]: s["parent_id"] for s in ours} == {r.span_id: r.parent_span_id for r in rows}
    assert {s["context"]["span_id"]: s["context"]["trace_id"] for s in ours} == {r.span_id: r.trace_id for r in rows}

    by_id = {s["context"]["span_id"]: s for s in ours}
    chats = [r for r in rows if r.llm_model]
    assert sum(r.input_tokens is not None for r in chats) >= 3
    for row in chats:
        attrs = by_id[row.span_id]["attributes"]
        assert attrs["gen_ai.operation.name"] == "chat"
        assert attrs["gen_ai.request.model"] == row.llm_model
        assert attrs.get("gen_ai.usage.input_tokens") == row.input_tokens  # None: a call that failed
        assert attrs.get("gen_ai.usage.output_tokens") == row.output_tokens
        assert attrs["gen_ai.agent.name"] == row.agent_name
        assert attrs["gen_ai.provider.name"] == row.attributes["llm.provider"]
        assert by_id[row.span_id]["span_kind"] == "LLM"
    tools = [r for r in rows if r.attributes.get("langchain.run_type") == "tool"]
    assert tools and all(by_id[r.span_id]["attributes"]["gen_ai.operation.name"] == "execute_tool" for r in tools)
    roots = [r for r in rows if r.parent_span_id is None and r.trace_id in result.trace_ids]
    assert len(roots) == 3
    # Besides the requests, the demo's conversation: two turns, each a trace of its own.
    assert sorted(by_id[r.span_id]["name"] for r in rows if r.parent_span_id is None and r not in roots) == [
        "budget_review",
        "budget_review",
    ]
    for row in roots:
        attrs = by_id[row.span_id]["attributes"]
        assert attrs["gen_ai.operation.name"] == "invoke_agent" and attrs["gen_ai.agent.name"] == "orchestrator"
        assert by_id[row.span_id]["name"] == "route_request"
    failed = [r for r in rows if r.status == "error"]
    assert all(by_id[r.span_id]["status_code"] == "ERROR" for r in failed)
