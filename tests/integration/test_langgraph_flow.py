"""LangGraph's control flow end to end: real graphs → the callback handler → the pipeline → the store.

Every graph here is a compiled ``StateGraph`` run by LangGraph itself, with a checkpointer where
a conversation needs one; the models are langchain-core's ``GenericFakeChatModel``, given a real
``_stream`` / ``_astream`` (an empty opening chunk as providers send, a delay before the first
token, usage on the last chunk) so LangChain's own streaming path calls the handler. Spans go
through the connector's pipeline (collector, flusher, graph, delivery) into SQLite and the
suite's Postgres, and every assertion reads the rows back from the store: the tree, the thread
on each span, statuses, time to first token on streamed calls and its absence elsewhere, and
the link from a resumed run to the run it resumes. The Opik test is at the end.
"""

from __future__ import annotations

import asyncio
import itertools
import operator
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, Send, interrupt

from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
from src.agents.ml_foundation.observability_connector.config import ObservabilitySettings, load_registry
from src.agents.ml_foundation.observability_connector.models import ObservabilitySpan
from src.agents.ml_foundation.observability_connector.runtime import ConnectorContext
from src.mlops import opik_span_id, opik_trace_id
from src.repositories.observability_span import ObservabilitySpanRepository
from src.repositories.sqlite import SQLiteSpanRepository
from tests.fixtures.opik_rig import Rig, make_rig

__all__ = ["make_rig"]  # the fixture, used by name

AGENT = "causal_impact"
USAGE = {"input_tokens": 40, "output_tokens": 9, "total_tokens": 49}
FIRST_TOKEN_S = 0.03  # the model's delay before its first token: TTFT is at least this


# --------------------------------------------------------------------------- a streaming model


class StreamingFakeChatModel(GenericFakeChatModel):
    """``GenericFakeChatModel`` that streams like a provider integration.

    It publishes a model name (``ls_model_name``), opens every stream with an empty chunk at
    once (OpenAI's role-only delta: not the first token), waits ``first_token_s``, streams the
    words, and puts usage on the last chunk. ``streaming=True`` makes ``invoke`` stream, as it
    does for real integrations; otherwise a call streams only under ``stream_mode="messages"``
    or ``.stream()``.
    """

    model: str = "fake-stream-1"
    streaming: bool = False
    first_token_s: float = FIRST_TOKEN_S

    def _chunks(self, messages: list[BaseMessage], **kwargs: Any) -> Iterator[tuple[float, ChatGenerationChunk]]:
        message = self._generate(messages, **kwargs).generations[0].message
        yield 0.0, ChatGenerationChunk(message=AIMessageChunk(content="", id=message.id))
        for index, word in enumerate(re.split(r"(\s)", str(message.content))):
            yield (self.first_token_s if index == 0 else 0.0), ChatGenerationChunk(message=AIMessageChunk(content=word))
        yield (
            0.0,
            ChatGenerationChunk(
                message=AIMessageChunk(
                    content="",
                    usage_metadata=USAGE,  # type: ignore[arg-type]
                    response_metadata={"model_name": self.model, "finish_reason": "stop"},
                    chunk_position="last",
                )
            ),
        )

    def _stream(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Any:
        for delay, chunk in self._chunks(messages, **kwargs):
            time.sleep(delay)
            yield chunk

    async def _astream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> AsyncIterator[ChatGenerationChunk]:
        for delay, chunk in self._chunks(messages, **kwargs):
            await asyncio.sleep(delay)
            yield chunk


def make_llm(model: str, *, streaming: bool = False) -> StreamingFakeChatModel:
    reply = AIMessage(f"reply from {model}", usage_metadata=USAGE)  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {"streaming": True} if streaming else {}
    return StreamingFakeChatModel(messages=itertools.repeat(reply), model=model, **kwargs)


class State(TypedDict, total=False):
    topic: str
    log: Annotated[list[str], operator.add]


@tool
def search_papers(query: str) -> str:
    """Search the literature."""
    return f"3 papers on {query}"


# --------------------------------------------------------------------------- the store and reading it back


@pytest.fixture(params=["sqlite", "postgres"])
async def obs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObservabilityConnectorAgent]:
    """An agent whose pipeline writes to SQLite, or to a fresh database of the suite's Postgres."""
    if request.param == "sqlite":
        backend: Any = SQLiteSpanRepository(tmp_path / "flow.db")
    else:
        from src.repositories.postgres import PostgresSpanRepository

        backend = PostgresSpanRepository(request.getfixturevalue("postgres_dsn"))
    store = ObservabilitySpanRepository(backend)
    settings = ObservabilitySettings(batching={"max_batch_size": 100, "max_batch_wait_s": 0.05})
    agent = ObservabilityConnectorAgent(
        context=ConnectorContext(store=store, settings=settings, registry=load_registry())
    )
    yield agent
    await agent.aclose()
    await store.close()


async def stored(obs: ObservabilityConnectorAgent, trace_id: str) -> list[ObservabilitySpan]:
    assert await obs.flush(timeout=30), "the pipeline did not deliver in time"
    rows = await obs.context.store.get_spans_by_trace_id(trace_id)
    assert rows, f"nothing stored for trace {trace_id}"
    return rows


Tree = tuple[str, tuple[Any, ...]]


def node(name: str, *children: Tree) -> Tree:
    """One span of an expected tree: its name and its children (order-free)."""
    return name, tuple(sorted(children))


def tree_of(rows: list[ObservabilitySpan]) -> Tree:
    """The stored spans as a tree of names (children sorted), checking there is exactly one root."""
    ids = {r.span_id for r in rows}
    roots = [r for r in rows if r.parent_span_id not in ids]
    assert len(roots) == 1, f"expected one root, got {[r.operation_name for r in roots]}"

    def build(row: ObservabilitySpan) -> Tree:
        return node(row.operation_name, *(build(c) for c in rows if c.parent_span_id == row.span_id))

    return build(roots[0])


def by_name(rows: list[ObservabilitySpan], name: str) -> list[ObservabilitySpan]:
    return [r for r in rows if r.operation_name == name]


def one(rows: list[ObservabilitySpan], name: str) -> ObservabilitySpan:
    found = by_name(rows, name)
    assert len(found) == 1, f"expected one {name!r}, got {[r.operation_name for r in rows]}"
    return found[0]


def thread_of(row: ObservabilitySpan) -> Any:
    """The span's thread: its column where the store has one, else the attribute the handler wrote."""
    return getattr(row, "thread_id", None) or row.attributes.get("langgraph.thread_id")


def ttft_of(row: ObservabilitySpan) -> Any:
    value = getattr(row, "ttft_ms", None)
    return value if value is not None else row.attributes.get("llm.time_to_first_token_ms")


def assert_streamed(row: ObservabilitySpan) -> None:
    """A streamed LLM call: TTFT after the model's first-token delay (the empty opening chunk is
    not a token), within the call, and the usage of the last chunk recorded."""
    ttft = ttft_of(row)
    assert ttft is not None, f"{row.operation_name} streamed but has no time to first token"
    assert FIRST_TOKEN_S * 1000 <= ttft <= (row.duration_ms or 0.0)
    assert (row.input_tokens, row.output_tokens) == (USAGE["input_tokens"], USAGE["output_tokens"])


def assert_not_streamed(row: ObservabilitySpan) -> None:
    assert ttft_of(row) is None, f"{row.operation_name} did not stream but has a time to first token"
    assert "llm.time_to_first_token_ms" not in row.attributes


def assert_every_span(rows: list[ObservabilitySpan], *, thread: str | None, status: str = "ok") -> None:
    for row in rows:
        assert row.status == status, f"{row.operation_name}: {row.status} {row.error_type} {row.error_message}"
        assert row.error_type is None
        assert thread_of(row) == thread, f"{row.operation_name} has thread {thread_of(row)!r}"
        assert row.agent_name == AGENT


# --------------------------------------------------------------------------- 1. a conversation: interrupt, resume


def build_conversation(draft_llm: Any, publish_llm: Any) -> Any:
    async def draft(state: State) -> dict[str, Any]:
        return {"log": [str((await draft_llm.ainvoke(f"draft on {state['topic']}")).content)]}

    async def review(state: State) -> dict[str, Any]:
        return {"log": [f"reviewer: {interrupt({'question': 'publish this draft?', 'draft': state['log'][-1]})}"]}

    async def publish(state: State) -> dict[str, Any]:
        return {"log": [str((await publish_llm.ainvoke("final version")).content)]}

    builder = StateGraph(State)
    builder.add_node("draft", draft)
    builder.add_node("review", review)
    builder.add_node("publish", publish)
    builder.add_edge(START, "draft")
    builder.add_edge("draft", "review")
    builder.add_edge("review", "publish")
    builder.add_edge("publish", END)
    return builder.compile(checkpointer=InMemorySaver(), name="conversation")


async def test_two_turn_conversation_with_interrupt_and_resume(obs: ObservabilityConnectorAgent) -> None:
    graph = build_conversation(make_llm("drafter"), make_llm("publisher"))
    thread = f"conv-{uuid.uuid4().hex[:8]}"
    config: Any = {"callbacks": [obs.callback_handler(AGENT)], "configurable": {"thread_id": thread}}

    # Turn 1 streams tokens to the user (stream_mode="messages") and pauses for review.
    streamed = [
        chunk async for chunk, _meta in graph.astream({"topic": "uplift", "log": []}, config, stream_mode="messages")
    ]
    assert "".join(str(c.content) for c in streamed) == "reply from drafter"
    assert (await graph.aget_state(config)).next == ("review",)

    # Turn 2 answers the interrupt with a new handler (as a server making one per request would).
    config["callbacks"] = [obs.callback_handler(AGENT)]
    result = await graph.ainvoke(Command(resume="yes"), config)
    assert result["log"] == ["reply from drafter", "reviewer: yes", "reply from publisher"]

    first_id, second_id = await trace_ids_of(obs, thread)
    first, second = await stored(obs, first_id), await stored(obs, second_id)
    turn1_root, turn2_root = one(first, "conversation"), one(second, "conversation")

    assert tree_of(first) == node("conversation", node("draft", node("llm.drafter")), node("review"))
    assert tree_of(second) == node("conversation", node("review"), node("publish", node("llm.publisher")))
    assert_every_span(first, thread=thread)
    assert_every_span(second, thread=thread)
    # Paused, not failed: the node that asked and the run's root say so.
    assert one(first, "review").attributes["langgraph.interrupted"] is True
    assert one(first, "review").attributes["langgraph.bubble_up"] == "GraphInterrupt"
    assert first_id != second_id
    assert turn1_root.attributes["langgraph.interrupted"] is True
    assert "langgraph.resumes_trace_id" not in turn1_root.attributes
    # The resumed run names the trace it resumes; nothing else carries the link.
    assert turn2_root.attributes["langgraph.resumes_trace_id"] == turn1_root.trace_id
    assert [r.operation_name for r in second if "langgraph.resumes_trace_id" in r.attributes] == ["conversation"]
    assert "langgraph.interrupted" not in one(second, "review").attributes
    assert "langgraph.interrupted" not in turn2_root.attributes
    # Streamed under stream_mode="messages": TTFT; the resumed turn's plain ainvoke: none.
    assert_streamed(one(first, "llm.drafter"))
    assert_not_streamed(one(second, "llm.publisher"))


async def trace_ids_of(obs: ObservabilityConnectorAgent, thread: str) -> list[str]:
    """The traces of a thread, oldest first, read from the store (every span carries the thread)."""
    assert await obs.flush(timeout=30)
    rows = await obs.context.store.get_spans_by_agent(AGENT, hours=1, limit=500)
    roots = sorted((r for r in rows if r.parent_span_id is None and thread_of(r) == thread), key=lambda r: r.started_at)
    return [r.trace_id for r in roots]


async def test_a_new_turn_on_the_thread_is_not_a_resume(obs: ObservabilityConnectorAgent) -> None:
    """Only a Command (or None) continues a thread; a fresh input starts a turn of its own."""
    graph = build_conversation(make_llm("drafter"), make_llm("publisher"))
    thread = f"conv-{uuid.uuid4().hex[:8]}"
    config: Any = {"callbacks": [obs.callback_handler(AGENT)], "configurable": {"thread_id": thread}}
    await graph.ainvoke({"topic": "uplift", "log": []}, config)
    await graph.ainvoke({"topic": "churn", "log": []}, config)  # abandons the pending review

    traces = await trace_ids_of(obs, thread)
    assert len(traces) == 2
    for trace_id in traces:
        rows = await stored(obs, trace_id)
        assert_every_span(rows, thread=thread)
        assert all("langgraph.resumes_trace_id" not in r.attributes for r in rows)
        assert_not_streamed(one(rows, "llm.drafter"))  # plain ainvoke, no streaming consumer


async def test_static_breakpoint_continued_with_none_links_back(obs: ObservabilityConnectorAgent) -> None:
    builder = StateGraph(State)
    builder.add_node("plan", lambda state: {"log": ["plan"]})
    builder.add_node("act", lambda state: {"log": ["act"]})
    builder.add_edge(START, "plan")
    builder.add_edge("plan", "act")
    graph = builder.compile(checkpointer=InMemorySaver(), interrupt_before=["act"], name="careful")
    thread = f"bp-{uuid.uuid4().hex[:8]}"
    config: Any = {"callbacks": [obs.callback_handler(AGENT)], "configurable": {"thread_id": thread}}

    graph.invoke({"log": []}, config)
    assert graph.invoke(None, config) == {"log": ["plan", "act"]}

    first, second = await trace_ids_of(obs, thread)
    assert tree_of(await stored(obs, first)) == node("careful", node("plan"))
    rows = await stored(obs, second)
    assert tree_of(rows) == node("careful", node("act"))
    assert_every_span(rows, thread=thread)
    assert one(rows, "careful").attributes["langgraph.resumes_trace_id"] == first


# --------------------------------------------------------------------------- 2. subgraphs and hand-offs


def build_research(summary_llm: Any, *, interrupt_inside: bool = False) -> Any:
    async def search(state: State) -> dict[str, Any]:
        return {"log": [await search_papers.ainvoke({"query": state["topic"]})]}

    async def summarize(state: State) -> dict[str, Any]:
        if interrupt_inside:
            interrupt("check the sources first")
        return {"log": [str((await summary_llm.ainvoke(state["log"][-1])).content)]}

    sub = StateGraph(State)
    sub.add_node("search", search)
    sub.add_node("summarize", summarize)
    sub.add_edge(START, "search")
    sub.add_edge("search", "summarize")
    research = sub.compile(name="research_team")

    builder = StateGraph(State)
    builder.add_node("research", research)
    builder.add_node("answer", lambda state: {"log": ["answered"]})
    builder.add_edge(START, "research")
    builder.add_edge("research", "answer")
    return builder.compile(checkpointer=InMemorySaver() if interrupt_inside else None, name="assistant")


async def test_subgraph_nests_between_its_node_and_its_nodes(obs: ObservabilityConnectorAgent) -> None:
    graph = build_research(make_llm("summarizer", streaming=True))
    thread = f"sub-{uuid.uuid4().hex[:8]}"
    async with obs.span("handle_request", AGENT) as request:  # the app's own span around the graph
        await graph.ainvoke(
            {"topic": "uplift", "log": []},
            {"callbacks": [obs.callback_handler(AGENT)], "configurable": {"thread_id": thread}},
        )

    rows = await stored(obs, request.trace_id)
    assert tree_of(rows) == node(
        "handle_request",
        node(
            "assistant",
            node(
                "research",
                node(
                    "research_team",
                    node("search", node("tool.search_papers")),
                    node("summarize", node("llm.summarizer")),
                ),
            ),
            node("answer"),
        ),
    )
    graph_rows = [r for r in rows if r.operation_name != "handle_request"]
    assert_every_span(graph_rows, thread=thread)
    assert one(rows, "research_team").attributes["langchain.run_type"] == "subgraph"
    assert_streamed(one(rows, "llm.summarizer"))  # streaming=True: invoke streams
    assert one(rows, "handle_request").status == "ok"


async def test_interrupt_inside_a_subgraph_pauses_every_level_and_resumes(obs: ObservabilityConnectorAgent) -> None:
    graph = build_research(make_llm("summarizer"), interrupt_inside=True)
    thread = f"subint-{uuid.uuid4().hex[:8]}"
    config: Any = {"callbacks": [obs.callback_handler(AGENT)], "configurable": {"thread_id": thread}}
    await graph.ainvoke({"topic": "uplift", "log": []}, config)
    result = await graph.ainvoke(Command(resume="ok"), config)
    assert result["log"][-1] == "answered"

    first_id, second_id = await trace_ids_of(obs, thread)
    first = await stored(obs, first_id)
    assert tree_of(first) == node(
        "assistant",
        node("research", node("research_team", node("search", node("tool.search_papers")), node("summarize"))),
    )
    assert_every_span(first, thread=thread)
    for name in ("summarize", "research_team", "research", "assistant"):
        assert one(first, name).attributes["langgraph.interrupted"] is True, name
    second = await stored(obs, second_id)
    assert tree_of(second) == node(
        "assistant", node("research", node("research_team", node("summarize", node("llm.summarizer")))), node("answer")
    )
    assert_every_span(second, thread=thread)
    assert one(second, "assistant").attributes["langgraph.resumes_trace_id"] == first_id


async def test_command_hand_offs_are_control_flow(obs: ObservabilityConnectorAgent) -> None:
    """``Command(goto=...)`` inside a graph and ``Command(graph=PARENT)`` out of a subgraph: no errors."""

    def escalate(state: State) -> Command[Any]:
        return Command(goto="specialist", update={"log": ["escalated"]}, graph=Command.PARENT)

    sub = StateGraph(State)
    sub.add_node("triage", escalate)
    sub.add_edge(START, "triage")
    frontline = sub.compile(name="frontline_team")

    def route(state: State) -> Command[Any]:
        return Command(goto="frontline", update={"log": ["routed"]})

    builder = StateGraph(State)
    builder.add_node("route", route, destinations=("frontline",))
    builder.add_node("frontline", frontline, destinations=("specialist",))
    builder.add_node("specialist", lambda state: {"log": ["solved"]})
    builder.add_edge(START, "route")
    graph = builder.compile(name="support")

    result = await graph.ainvoke({"log": []}, {"callbacks": [obs.callback_handler(AGENT)]})
    assert result["log"] == ["routed", "escalated", "solved"]

    assert await obs.flush(timeout=30)
    everything = await obs.context.store.get_spans_by_agent(AGENT, hours=1, limit=100)
    rows = await stored(obs, one(everything, "support").trace_id)
    assert tree_of(rows) == node(
        "support", node("route"), node("frontline", node("frontline_team", node("triage"))), node("specialist")
    )
    assert_every_span(rows, thread=None)
    for name in ("triage", "frontline_team", "frontline"):
        assert one(rows, name).attributes["langgraph.bubble_up"] == "ParentCommand", name
        assert "langgraph.interrupted" not in one(rows, name).attributes


# --------------------------------------------------------------------------- 3. Send fan-out and parallel branches


async def test_send_fan_out_gives_each_task_its_own_span_and_call(obs: ObservabilityConnectorAgent) -> None:
    llm = make_llm("worker", streaming=True)

    def plan(state: State) -> list[Send]:
        return [Send("investigate", {"topic": topic, "log": []}) for topic in ("north", "south", "east")]

    async def investigate(state: State) -> dict[str, Any]:
        return {"log": [f"{state['topic']}: {(await llm.ainvoke(state['topic'])).content}"]}

    builder = StateGraph(State)
    builder.add_node("investigate", investigate)
    builder.add_node("report", lambda state: {"log": [f"{len(state['log'])} findings"]})
    builder.add_conditional_edges(START, plan, ["investigate"])
    builder.add_edge("investigate", "report")
    graph = builder.compile(name="survey")
    thread = f"send-{uuid.uuid4().hex[:8]}"

    result = await graph.ainvoke(
        {"log": []}, {"callbacks": [obs.callback_handler(AGENT)], "configurable": {"thread_id": thread}}
    )
    assert result["log"][-1] == "3 findings"

    (trace_id,) = await trace_ids_of(obs, thread)
    rows = await stored(obs, trace_id)
    task = node("investigate", node("llm.worker"))
    assert tree_of(rows) == node("survey", task, task, task, node("report"))
    assert_every_span(rows, thread=thread)
    workers = by_name(rows, "investigate")
    root = one(rows, "survey")
    assert {w.parent_span_id for w in workers} == {root.span_id}
    assert {w.attributes["langgraph.triggers"][0] for w in workers} == {"__pregel_push"}
    calls = by_name(rows, "llm.worker")
    assert sorted(c.parent_span_id for c in calls) == sorted(w.span_id for w in workers)  # one call under each
    for call in calls:
        assert_streamed(call)


@pytest.mark.parametrize("is_async", [True, False], ids=["async", "sync-pool-threads"])
async def test_parallel_branches_each_call_under_its_own_branch(
    obs: ObservabilityConnectorAgent, is_async: bool
) -> None:
    llm_a, llm_b = make_llm("model-a", streaming=True), make_llm("model-b")
    if is_async:

        async def branch_a(state: State) -> dict[str, Any]:
            return {"log": [str((await llm_a.ainvoke("a")).content)]}

        async def branch_b(state: State) -> dict[str, Any]:
            reply = await llm_b.ainvoke("b")
            await asyncio.sleep(FIRST_TOKEN_S)  # still open while branch a streams
            return {"log": [str(reply.content)]}

    else:

        def branch_a(state: State) -> dict[str, Any]:  # type: ignore[misc]
            return {"log": [str(llm_a.invoke("a").content)]}

        def branch_b(state: State) -> dict[str, Any]:  # type: ignore[misc]
            reply = llm_b.invoke("b")
            time.sleep(FIRST_TOKEN_S)
            return {"log": [str(reply.content)]}

    builder = StateGraph(State)
    builder.add_node("branch_a", branch_a)
    builder.add_node("branch_b", branch_b)
    builder.add_node("join", lambda state: {"log": ["joined"]})
    builder.add_edge(START, "branch_a")
    builder.add_edge(START, "branch_b")
    builder.add_edge(["branch_a", "branch_b"], "join")
    graph = builder.compile(name="fan_out")
    thread = f"par-{uuid.uuid4().hex[:8]}"
    config: Any = {"callbacks": [obs.callback_handler(AGENT)], "configurable": {"thread_id": thread}}

    if is_async:
        await graph.ainvoke({"log": []}, config)
    else:
        await asyncio.to_thread(graph.invoke, {"log": []}, config)

    (trace_id,) = await trace_ids_of(obs, thread)
    rows = await stored(obs, trace_id)
    assert tree_of(rows) == node(
        "fan_out", node("branch_a", node("llm.model-a")), node("branch_b", node("llm.model-b")), node("join")
    )
    assert_every_span(rows, thread=thread)
    branch_a_row, branch_b_row = one(rows, "branch_a"), one(rows, "branch_b")
    assert branch_a_row.started_at < branch_b_row.end_time and branch_b_row.started_at < branch_a_row.end_time  # type: ignore[operator]
    assert_streamed(one(rows, "llm.model-a"))
    assert_not_streamed(one(rows, "llm.model-b"))


# --------------------------------------------------------------------------- 4. Opik


async def test_opik_receives_the_conversation_with_its_thread_link_and_ttft(make_rig: Callable[..., Rig]) -> None:
    """The two turns reach the Opik test receiver (bodies validated with ``opik.rest_api`` types
    by the receiver) with the same tree and the handler's attributes in each span's metadata."""
    rig = make_rig()
    graph = build_conversation(make_llm("drafter", streaming=True), make_llm("publisher"))
    thread = f"opik-{uuid.uuid4().hex[:8]}"
    config: Any = {"callbacks": [rig.obs.callback_handler(AGENT)], "configurable": {"thread_id": thread}}
    await graph.ainvoke({"topic": "uplift", "log": []}, config)
    await graph.ainvoke(Command(resume="yes"), config)
    assert await rig.obs.flush(timeout=30)
    assert await rig.opik.wait_until_sent(timeout=30)

    rows = await rig.store.get_spans_by_agent(AGENT, hours=1, limit=100)
    assert len(rows) == 8  # turn 1: graph, draft, its call, review; turn 2: graph, review, publish, its call
    received = {opik_span_id(r.trace_id, r.span_id): r for r in rows}
    assert set(rig.receiver.spans) == set(received)
    assert rig.receiver.rejections == []
    first_root, second_root = sorted((r for r in rows if r.parent_span_id is None), key=lambda r: r.started_at)
    assert set(rig.receiver.traces) == {opik_trace_id(first_root.trace_id), opik_trace_id(second_root.trace_id)}
    for opik_id, row in received.items():
        body = rig.receiver.spans[opik_id]
        assert body["trace_id"] == opik_trace_id(row.trace_id)
        parent = body.get("parent_span_id")
        assert parent == (opik_span_id(row.trace_id, row.parent_span_id) if row.parent_span_id else None)
        assert body["metadata"]["langgraph.thread_id"] == thread
        assert body["metadata"]["status"] == "ok"
        if row.operation_name == "llm.drafter":
            assert body["metadata"]["llm.time_to_first_token_ms"] == pytest.approx(ttft_of(row))
            assert_streamed(row)
        else:
            assert "llm.time_to_first_token_ms" not in body["metadata"]
    resumed = rig.receiver.spans[opik_span_id(second_root.trace_id, second_root.span_id)]
    assert resumed["metadata"]["langgraph.resumes_trace_id"] == first_root.trace_id
    # The resumed trace names the paused one by Opik's id (a link Opik can follow), and both
    # traces carry the thread, which Opik groups into one conversation.
    second_trace = rig.receiver.traces[opik_trace_id(second_root.trace_id)]
    assert second_trace["metadata"]["resumes_trace_id"] == opik_trace_id(first_root.trace_id)
    assert "resumes_trace_id" not in rig.receiver.traces[opik_trace_id(first_root.trace_id)]["metadata"]
    assert {t.get("thread_id") for t in rig.receiver.traces.values()} == {thread}
    paused = rig.receiver.spans[opik_span_id(first_root.trace_id, first_root.span_id)]
    assert paused["metadata"]["langgraph.interrupted"] is True
