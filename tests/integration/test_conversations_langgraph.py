"""A real LangGraph conversation through the callback handler into the store's conversation columns.

Two turns on one thread (``configurable.thread_id``, a MemorySaver checkpointer) of a graph whose
node streams a fake chat model: the handler writes ``langgraph.thread_id`` and
``llm.time_to_first_token_ms`` as attributes, the row builder promotes them into the
``thread_id`` / ``ttft_ms`` columns; ``trace --thread`` then prints both turns in order and the
metrics give the TTFT per agent and model, filtered by the thread.
"""

from __future__ import annotations

import asyncio
import itertools
import operator
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langgraph.checkpoint.memory import MemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command, interrupt
from typer.testing import CliRunner

from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
from src.agents.ml_foundation.observability_connector.cli import app
from src.agents.ml_foundation.observability_connector.config import ObservabilitySettings, load_registry
from src.agents.ml_foundation.observability_connector.nodes.metrics_aggregator import aggregate_metrics
from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext
from src.repositories.observability_span import ObservabilitySpanRepository
from src.repositories.sqlite import SQLiteSpanRepository


class NamedFakeChatModel(GenericFakeChatModel):
    """A fake that publishes ``ls_model_name`` like real integrations do."""

    model: str = "fake-stream-1"


class Chat(TypedDict):
    messages: Annotated[list[BaseMessage], operator.add]


def build_graph() -> Any:
    model = NamedFakeChatModel(messages=itertools.repeat(AIMessage("a streamed answer in several tokens")))

    async def respond(state: Chat) -> dict[str, Any]:
        chunks = [chunk async for chunk in model.astream(state["messages"])]  # streaming: tokens one by one
        text = "".join(str(chunk.content) for chunk in chunks)
        return {"messages": [AIMessage(text)]}

    def remember(state: Chat) -> dict[str, Any]:
        return {"messages": []}

    builder = StateGraph(Chat)
    builder.add_node("respond", respond)
    builder.add_node("remember", remember)
    builder.add_edge(START, "respond")
    builder.add_edge("respond", "remember")
    builder.add_edge("remember", END)
    return builder.compile(checkpointer=MemorySaver())


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[ObservabilityConnectorAgent, ConnectorContext]]:
    store = ObservabilitySpanRepository(SQLiteSpanRepository(tmp_path / "spans.db"))
    settings = ObservabilitySettings(batching={"max_batch_size": 100, "max_batch_wait_s": 0.05})
    ctx = ConnectorContext(store=store, settings=settings, registry=load_registry())
    obs = ObservabilityConnectorAgent(context=ctx)
    yield obs, ctx
    await obs.aclose()
    await store.close()


async def test_a_two_turn_conversation_fills_the_columns(
    setup: tuple[ObservabilityConnectorAgent, ConnectorContext], tmp_path: Path
) -> None:
    obs, ctx = setup
    graph = build_graph()
    config: Any = {"configurable": {"thread_id": "lg-thread-1"}, "callbacks": [obs.callback_handler("explainer")]}
    first = await graph.ainvoke({"messages": [HumanMessage("hello")]}, config)
    second = await graph.ainvoke({"messages": [HumanMessage("and then?")]}, config)
    assert len(second["messages"]) == len(first["messages"]) + 2  # the checkpointer kept turn one
    assert await obs.flush(timeout=10)

    spans = await ctx.store.get_conversation_spans(None, thread_id="lg-thread-1")
    traces = list(dict.fromkeys(s.trace_id for s in spans))
    assert len(traces) == 2  # one trace per turn, both in the thread
    for trace_id in traces:
        rows = await ctx.store.get_spans_by_trace_id(trace_id)
        roots = [r for r in rows if r.parent_span_id is None]
        assert len(roots) == 1 and roots[0].thread_id == "lg-thread-1"
        llm = [r for r in rows if r.llm_model == "fake-stream-1"]
        assert len(llm) == 1 and llm[0].status == "ok"
        assert llm[0].ttft_ms is not None and 0.0 <= llm[0].ttft_ms <= (llm[0].duration_ms or 0.0)
        # every span that carries the handler's thread attribute has the column
        for row in rows:
            if "langgraph.thread_id" in row.attributes:
                assert row.thread_id == "lg-thread-1"

    # The handler writes the thread on every span of a run: the column holds it on every row.
    for trace_id in traces:
        assert {r.thread_id for r in await ctx.store.get_spans_by_trace_id(trace_id)} == {"lg-thread-1"}
    in_thread = await aggregate_metrics({"time_window": "1h", "thread_id_filter": "lg-thread-1"}, Runtime(context=ctx))
    assert in_thread["total_spans_analyzed"] == len(spans)
    assert in_thread["ttft_by_model"]["fake-stream-1"]["count"] == 2
    assert in_thread["ttft_by_agent"]["explainer"]["p50_ms"] <= in_thread["ttft_by_agent"]["explainer"]["p95_ms"]

    other = await graph.ainvoke(
        {"messages": [HumanMessage("hi")]},
        {"configurable": {"thread_id": "lg-thread-2"}, "callbacks": [obs.callback_handler("explainer")]},
    )
    assert other["messages"]
    assert await obs.flush(timeout=10)
    args = ["--store", str(tmp_path / "spans.db"), "trace", "--thread", "lg-thread-1"]
    # the command runs its own event loop: on a thread of its own, as from a shell
    shown = await asyncio.to_thread(CliRunner().invoke, app, args, env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "2 trace(s)" in shown.output
    assert shown.output.index(f"trace {traces[0]}") < shown.output.index(f"trace {traces[1]}")


def build_review_graph() -> Any:
    model = NamedFakeChatModel(messages=itertools.repeat(AIMessage("a draft")))

    async def draft(state: Chat) -> dict[str, Any]:
        chunks = [chunk async for chunk in model.astream(state["messages"])]
        return {"messages": [AIMessage("".join(str(c.content) for c in chunks))]}

    def review(state: Chat) -> dict[str, Any]:
        answer = interrupt({"question": "publish?"})
        return {"messages": [HumanMessage(f"reviewer: {answer}")]}

    builder = StateGraph(Chat)
    builder.add_node("draft", draft)
    builder.add_node("review", review)
    builder.add_edge(START, "draft")
    builder.add_edge("draft", "review")
    builder.add_edge("review", END)
    return builder.compile(checkpointer=MemorySaver())


async def test_an_interrupted_and_resumed_turn_is_one_conversation(
    setup: tuple[ObservabilityConnectorAgent, ConnectorContext], tmp_path: Path
) -> None:
    obs, ctx = setup
    graph = build_review_graph()
    config: Any = {"configurable": {"thread_id": "review-1"}, "callbacks": [obs.callback_handler("explainer")]}
    paused = await graph.ainvoke({"messages": [HumanMessage("write it")]}, config)
    assert "__interrupt__" in paused
    config["callbacks"] = [obs.callback_handler("explainer")]
    done = await graph.ainvoke(Command(resume="yes"), config)
    assert done["messages"][-1].content == "reviewer: yes"
    assert await obs.flush(timeout=10)

    spans = await ctx.store.get_conversation_spans(None, thread_id="review-1")
    traces = list(dict.fromkeys(s.trace_id for s in spans))
    assert len(traces) == 2
    assert all(s.status == "ok" for s in spans)  # an interrupt is no error
    resumed_root = next(s for s in spans if s.trace_id == traces[1] and s.parent_span_id is None)
    assert resumed_root.attributes["langgraph.resumes_trace_id"] == traces[0]
    (streamed,) = [s for s in spans if s.llm_model == "fake-stream-1"]
    assert streamed.trace_id == traces[0] and streamed.ttft_ms is not None

    args = ["--store", str(tmp_path / "spans.db"), "trace", "--thread", "review-1"]
    shown = await asyncio.to_thread(CliRunner().invoke, app, args, env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "turn 2" in shown.output and f"resumes trace {traces[0]}" in shown.output
    assert "paused (interrupt)" in shown.output and "first token" in shown.output
