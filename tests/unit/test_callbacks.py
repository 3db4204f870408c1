"""The LangChain callback handler against real LangGraph graphs.

Nothing here mocks LangGraph or LangChain: graphs are compiled ``StateGraph``s, tools are
``@tool`` functions and the models are langchain-core's own fake chat models, subclassed
only to publish a model name (as real integrations do through ``ls_model_name``), to report
token usage, or to take time so that parallel branches really overlap. Every handler runs
with ``raise_error = True`` so that a bug in it fails the test instead of being logged and
swallowed by LangChain's callback manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import operator
import time
import tracemalloc
import uuid
from collections import Counter as Tally
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult, LLMResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

from src.agents.ml_foundation.observability_connector.agent import SpanScope
from src.agents.ml_foundation.observability_connector.callbacks import (
    HIDDEN_TAG,
    ObservabilityCallbackHandler,
    node_context,
    registered_runs,
)
from src.agents.ml_foundation.observability_connector.spans import Span
from src.agents.ml_foundation.observability_connector.trace_context import TraceContext, attach

USAGE = {"input_tokens": 12, "output_tokens": 7, "total_tokens": 19}


# --- fake models -----------------------------------------------------------------------------


class NamedFakeChatModel(GenericFakeChatModel):
    """GenericFakeChatModel with a ``model`` field, so LangChain publishes ``ls_model_name``
    exactly as it does for real integrations; ``delay`` makes calls overlap in time."""

    model: str = "fake-model-1"
    delay: float = 0.0

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Any:
        if self.delay:
            time.sleep(self.delay)
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)

    async def _agenerate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        if self.delay:
            await asyncio.sleep(self.delay)
        return super()._generate(messages, stop=stop, **kwargs)


class LlmOutputFakeChatModel(GenericFakeChatModel):
    """A model that reports usage the older way, in ``llm_output["token_usage"]`` (OpenAI style)."""

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Any:
        return ChatResult(
            generations=[ChatGeneration(message=AIMessage("old style"))],
            llm_output={
                "token_usage": {
                    "prompt_tokens": 30,
                    "completion_tokens": 9,
                    "total_tokens": 39,
                    "prompt_tokens_details": {"cached_tokens": 16},
                },
                "model_name": "legacy-model-7",
            },
        )


def make_llm(model: str = "fake-model-1", usage: dict[str, Any] | None = None, delay: float = 0.0) -> Any:
    reply = AIMessage(f"reply from {model}", usage_metadata=usage or USAGE)
    return NamedFakeChatModel(messages=itertools.repeat(reply), model=model, delay=delay)


# --- helpers ---------------------------------------------------------------------------------


class State(TypedDict):
    log: Annotated[list[str], operator.add]


class Counter:
    """A submit that keeps nothing, for the memory tests."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, span: Span) -> None:
        self.count += 1


def make_handler(submit: Any, **kwargs: Any) -> ObservabilityCallbackHandler:
    handler = ObservabilityCallbackHandler(submit, "test_agent", **kwargs)
    handler.raise_error = True  # surface handler bugs instead of LangChain's logged warning
    return handler


def only(spans: list[Span], operation: str) -> Span:
    found = [s for s in spans if s.operation_name == operation]
    assert len(found) == 1, f"expected one {operation!r} span, got {[s.operation_name for s in spans]}"
    return found[0]


def children(spans: list[Span], parent: Span) -> list[str]:
    return sorted(s.operation_name for s in spans if s.parent_span_id == parent.span_id)


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


# --- 1. the tree of a sequential graph -------------------------------------------------------


def test_sequential_graph_gives_graph_node_llm_tool_tree() -> None:
    llm = make_llm("fake-model-1")

    def plan(state: State) -> dict[str, Any]:
        return {"log": ["planned"]}

    def think(state: State) -> dict[str, Any]:
        return {"log": [llm.invoke("what next?").content]}

    def act(state: State) -> dict[str, Any]:
        return {"log": [str(add.invoke({"a": 2, "b": 3}))]}

    builder = StateGraph(State)
    builder.add_node("plan", plan)
    builder.add_node("think", think)
    builder.add_node("act", act)
    builder.add_edge(START, "plan")
    builder.add_edge("plan", "think")
    builder.add_edge("think", "act")
    builder.add_edge("act", END)
    graph = builder.compile(name="planner_graph")

    spans: list[Span] = []
    handler = make_handler(spans.append)
    result = graph.invoke({"log": []}, config={"callbacks": [handler]})

    assert result == {"log": ["planned", "reply from fake-model-1", "5"]}
    assert handler.open_runs == 0
    assert len(spans) == 6

    root = only(spans, "planner_graph")
    assert root.parent_span_id is None
    assert root.attributes["langchain.run_type"] == "graph"
    assert children(spans, root) == ["act", "plan", "think"]

    for name, step in (("plan", 1), ("think", 2), ("act", 3)):
        node = only(spans, name)
        assert node.parent_span_id == root.span_id
        assert node.attributes["langgraph.node"] == name
        assert node.attributes["langgraph.step"] == step
        assert node.attributes["langgraph.triggers"] == (f"branch:to:{name}",)

    llm_span = only(spans, "llm.fake-model-1")
    assert llm_span.parent_span_id == only(spans, "think").span_id
    assert llm_span.llm_model == "fake-model-1"
    assert (llm_span.input_tokens, llm_span.output_tokens, llm_span.total_tokens) == (12, 7, 19)
    assert llm_span.attributes["llm.provider"] == "namedfakechatmodel"

    tool_span = only(spans, "tool.add")
    assert tool_span.parent_span_id == only(spans, "act").span_id
    assert tool_span.attributes["tool.name"] == "add"
    assert children(spans, only(spans, "plan")) == []

    assert {s.trace_id for s in spans} == {root.trace_id}
    assert len(root.trace_id) == 32 and root.trace_id[12] == "7"  # UUIDv7 from trace_context
    assert len({s.span_id for s in spans}) == 6
    for span in spans:
        assert span.agent_name == "test_agent"
        assert span.status == "ok"
        assert span.error_type is None
        assert span.duration_ms is not None and span.duration_ms >= 0
        assert span.input_data is None and span.output_data is None  # capture_inputs is off
        parent = next((p for p in spans if p.span_id == span.parent_span_id), None)
        if parent is not None:  # a child lies within its parent
            assert parent.start_ns <= span.start_ns and span.end_ns <= parent.end_ns  # type: ignore[operator]


def test_internal_and_hidden_runs_are_skipped_and_their_children_reattached() -> None:
    """Prompt | model sequences, routers and hidden runnables make no spans; what they call
    attaches to the nearest tracked ancestor, and nothing is left open afterwards. An LLM call
    inside a hidden runnable inherits the tag but stays a span: its tokens must be counted."""
    llm = make_llm("fake-model-1")
    hidden_llm = make_llm("fake-model-hidden-parent")
    chain = ChatPromptTemplate.from_messages([("human", "hello")]) | llm
    hidden = RunnableLambda(lambda _: hidden_llm.invoke("x")).with_config(tags=[HIDDEN_TAG])

    def work(state: State) -> dict[str, Any]:
        return {"log": [chain.invoke({}).content, hidden.invoke(None).content]}

    builder = StateGraph(State)
    builder.add_node("start", lambda state: {"log": ["s"]})
    builder.add_node("work", work)
    builder.add_edge(START, "start")
    builder.add_conditional_edges("start", lambda state: "work", ["work"])  # a router chain run
    builder.add_edge("work", END)
    graph = builder.compile()

    spans: list[Span] = []
    handler = make_handler(spans.append)
    graph.invoke({"log": []}, config={"callbacks": [handler]})

    assert sorted(s.operation_name for s in spans) == [
        "LangGraph",
        "llm.fake-model-1",
        "llm.fake-model-hidden-parent",
        "start",
        "work",
    ]
    work_span = only(spans, "work")
    assert children(spans, work_span) == ["llm.fake-model-1", "llm.fake-model-hidden-parent"]
    assert only(spans, "llm.fake-model-hidden-parent").attributes["langchain.hidden"] is True
    assert "langchain.hidden" not in only(spans, "llm.fake-model-1").attributes
    assert handler.open_runs == 0


def test_subgraph_becomes_a_span_between_its_node_and_its_nodes() -> None:
    llm = make_llm("fake-model-sub")
    inner = StateGraph(State)
    inner.add_node("inner_a", lambda state: {"log": [llm.invoke("q").content]})
    inner.add_node("inner_b", lambda state: {"log": ["b"]})
    inner.add_edge(START, "inner_a")
    inner.add_edge(START, "inner_b")  # two parallel first nodes: both may promote at once
    subgraph = inner.compile(name="research_subgraph")

    outer = StateGraph(State)
    outer.add_node("delegate", subgraph)
    outer.add_node("call_inside", lambda state: subgraph.invoke(state))
    outer.add_edge(START, "delegate")
    outer.add_edge("delegate", "call_inside")
    graph = outer.compile(name="outer_graph")

    spans: list[Span] = []
    handler = make_handler(spans.append)
    graph.invoke({"log": []}, config={"callbacks": [handler]})

    root = only(spans, "outer_graph")
    subgraph_spans = [s for s in spans if s.operation_name == "research_subgraph"]
    assert len(subgraph_spans) == 2
    for node_name in ("delegate", "call_inside"):
        node = only(spans, node_name)
        assert node.parent_span_id == root.span_id
        (sub,) = [s for s in subgraph_spans if s.parent_span_id == node.span_id]
        assert sub.attributes["langchain.run_type"] == "subgraph"
        assert children(spans, sub) == ["inner_a", "inner_b"]
        assert sub.start_ns <= node.end_ns  # type: ignore[operator]
    assert {s.trace_id for s in spans} == {root.trace_id}
    assert handler.open_runs == 0


def test_capture_inputs_keeps_references_to_inputs_and_outputs() -> None:
    llm = make_llm()
    builder = StateGraph(State)
    builder.add_node("think", lambda state: {"log": [llm.invoke("question?").content]})
    builder.add_edge(START, "think")
    graph = builder.compile()

    spans: list[Span] = []
    graph.invoke({"log": ["in"]}, config={"callbacks": [make_handler(spans.append, capture_inputs=True)]})

    root = only(spans, "LangGraph")
    assert root.input_data == {"log": ["in"]}
    assert root.output_data == {"log": ["in", "reply from fake-model-1"]}
    llm_span = only(spans, "llm.fake-model-1")
    assert llm_span.input_data[0][0].content == "question?"
    assert llm_span.output_data.generations[0][0].text == "reply from fake-model-1"


# --- 2. errors -------------------------------------------------------------------------------


class QuotaExceededError(RuntimeError):
    pass


def test_node_error_marks_node_and_graph_and_propagates_unchanged() -> None:
    raised: list[BaseException] = []

    def fails(state: State) -> dict[str, Any]:
        error = QuotaExceededError("quota for gap_analyzer exceeded")
        raised.append(error)
        raise error

    builder = StateGraph(State)
    builder.add_node("ok_first", lambda state: {"log": ["fine"]})
    builder.add_node("fails", fails)
    builder.add_edge(START, "ok_first")
    builder.add_edge("ok_first", "fails")
    graph = builder.compile(name="fragile")

    spans: list[Span] = []
    handler = make_handler(spans.append)
    with pytest.raises(QuotaExceededError) as caught:
        graph.invoke({"log": []}, config={"callbacks": [handler]})

    assert caught.value is raised[0]
    assert handler.open_runs == 0
    assert only(spans, "ok_first").status == "ok"
    for name in ("fails", "fragile"):
        span = only(spans, name)
        assert span.status == "error"
        assert span.error_type == "QuotaExceededError"
        assert span.error_message == "quota for gap_analyzer exceeded"
        assert span.end_ns is not None and span.duration_ms >= 0  # type: ignore[operator]
    assert only(spans, "fails").parent_span_id == only(spans, "fragile").span_id


def test_tool_error_handled_by_node_fails_only_the_tool_span() -> None:
    @tool
    def flaky(x: int) -> int:
        """Always fails."""
        raise ValueError(f"bad input {x}")

    def act(state: State) -> dict[str, Any]:
        try:
            flaky.invoke({"x": 4})
        except ValueError:
            return {"log": ["recovered"]}
        return {"log": []}

    builder = StateGraph(State)
    builder.add_node("act", act)
    builder.add_edge(START, "act")
    graph = builder.compile()

    spans: list[Span] = []
    graph.invoke({"log": []}, config={"callbacks": [make_handler(spans.append)]})

    tool_span = only(spans, "tool.flaky")
    assert (tool_span.status, tool_span.error_type, tool_span.error_message) == ("error", "ValueError", "bad input 4")
    assert tool_span.parent_span_id == only(spans, "act").span_id
    assert only(spans, "act").status == "ok"
    assert only(spans, "LangGraph").status == "ok"


def test_llm_error_marks_the_llm_span() -> None:
    class BrokenModel(NamedFakeChatModel):
        def _generate(self, *args: Any, **kwargs: Any) -> Any:
            raise TimeoutError("provider timed out")

    llm = BrokenModel(messages=iter(()), model="broken-model")
    builder = StateGraph(State)
    builder.add_node("think", lambda state: {"log": [llm.invoke("q").content]})
    builder.add_edge(START, "think")
    graph = builder.compile()

    spans: list[Span] = []
    handler = make_handler(spans.append)
    with pytest.raises(TimeoutError):
        graph.invoke({"log": []}, config={"callbacks": [handler]})

    llm_span = only(spans, "llm.broken-model")
    assert (llm_span.status, llm_span.error_type) == ("error", "TimeoutError")
    assert llm_span.parent_span_id == only(spans, "think").span_id
    assert handler.open_runs == 0


def test_interrupt_is_control_flow_not_an_error() -> None:
    def ask(state: State) -> dict[str, Any]:
        return {"log": [interrupt("approve?")]}

    builder = StateGraph(State)
    builder.add_node("ask", ask)
    builder.add_edge(START, "ask")
    graph = builder.compile(checkpointer=InMemorySaver())
    spans: list[Span] = []
    handler = make_handler(spans.append)
    config: Any = {"callbacks": [handler], "configurable": {"thread_id": "review-1"}}

    graph.invoke({"log": []}, config=config)
    paused = only(spans, "ask")
    assert paused.status == "ok"
    assert paused.attributes["langgraph.interrupted"] is True
    assert only(spans, "LangGraph").attributes["langgraph.thread_id"] == "review-1"

    paused_trace = paused.trace_id
    assert only(spans, "LangGraph").attributes["langgraph.interrupted"] is True  # the run paused, too

    spans.clear()
    assert graph.invoke(Command(resume="yes"), config=config) == {"log": ["yes"]}
    assert only(spans, "ask").status == "ok"
    assert handler.open_runs == 0
    resumed = only(spans, "LangGraph")
    assert resumed.trace_id != paused_trace
    assert resumed.attributes["langgraph.resumes_trace_id"] == paused_trace
    assert {s.attributes["langgraph.thread_id"] for s in spans} == {"review-1"}
    assert not handler._paused  # nothing kept once the paused run's graph span ended


def test_thread_links_are_bounded_and_least_recently_used_go_first(monkeypatch: pytest.MonkeyPatch) -> None:
    from src.agents.ml_foundation.observability_connector import callback_threads

    monkeypatch.setattr(callback_threads, "MAX_THREADS", 10)
    callback_threads.forget_threads()
    builder = StateGraph(State)
    builder.add_node("step", lambda state: {"log": ["x"]})
    builder.add_edge(START, "step")
    graph = builder.compile(checkpointer=InMemorySaver())
    spans: list[Span] = []
    handler = make_handler(spans.append)

    def run(thread: str, inputs: Any) -> Span:
        spans.clear()
        graph.invoke(inputs, config={"callbacks": [handler], "configurable": {"thread_id": thread}})
        return only(spans, "LangGraph")

    first = run("kept", {"log": []})
    for n in range(30):
        run(f"t{n}", {"log": []})
        if n % 5 == 0:
            run("kept", None)  # used again: stays among the most recent
    assert callback_threads.known_threads() == 10
    assert run("kept", None).attributes["langgraph.resumes_trace_id"] != first.trace_id  # the latest one
    assert "langgraph.resumes_trace_id" not in run("t0", None).attributes  # forgotten long ago
    callback_threads.forget_threads()


def test_many_paused_runs_leave_nothing_behind() -> None:
    def ask(state: State) -> dict[str, Any]:
        return {"log": [interrupt("approve?")]}

    builder = StateGraph(State)
    builder.add_node("ask", ask)
    builder.add_edge(START, "ask")
    graph = builder.compile(checkpointer=InMemorySaver())
    counter = Counter()
    handler = make_handler(counter)
    for n in range(200):
        config: Any = {"callbacks": [handler], "configurable": {"thread_id": f"paused-{n}"}}
        graph.invoke({"log": []}, config=config)
        if n % 2:
            graph.invoke(Command(resume="ok"), config=config)
    assert counter.count == 200 * 2 + 100 * 2
    assert handler.open_runs == 0 and not handler._paused


def test_a_run_that_fails_after_a_branch_paused_leaves_nothing_behind() -> None:
    def ask(state: State) -> dict[str, Any]:
        return {"log": [interrupt("approve?")]}

    def broken(state: State) -> dict[str, Any]:
        time.sleep(0.01)  # after the other branch has paused
        raise QuotaExceededError("quota")

    builder = StateGraph(State)
    builder.add_node("ask", ask)
    builder.add_node("broken", broken)
    builder.add_edge(START, "ask")
    builder.add_edge(START, "broken")
    graph = builder.compile(checkpointer=InMemorySaver())
    spans: list[Span] = []
    handler = make_handler(spans.append)
    with pytest.raises(QuotaExceededError):
        graph.invoke({"log": []}, config={"callbacks": [handler], "configurable": {"thread_id": "mixed"}})
    assert only(spans, "ask").attributes["langgraph.interrupted"] is True  # it had paused first
    assert only(spans, "broken").status == "error"
    assert only(spans, "LangGraph").status == "error"
    assert handler.open_runs == 0 and not handler._paused


def test_first_token_skips_an_empty_opening_chunk() -> None:
    from langchain_core.messages import AIMessageChunk
    from langchain_core.outputs import ChatGenerationChunk, GenerationChunk

    from src.agents.ml_foundation.observability_connector.callback_payloads import is_first_token

    empty = ChatGenerationChunk(message=AIMessageChunk(content=""))
    assert not is_first_token("", empty)
    assert is_first_token("Hel", ChatGenerationChunk(message=AIMessageChunk(content="Hel")))
    tool_call = AIMessageChunk(content="", tool_call_chunks=[{"name": "add", "args": "{", "id": "1", "index": 0}])
    assert is_first_token("", ChatGenerationChunk(message=tool_call))
    reasoning = AIMessageChunk(content=[{"type": "thinking", "thinking": "Let me"}])
    assert is_first_token("", ChatGenerationChunk(message=reasoning))
    assert is_first_token("", GenerationChunk(text="a")) and not is_first_token("", GenerationChunk(text=""))
    assert not is_first_token("", None)


# --- 3. parallel branches --------------------------------------------------------------------


def build_fan_out(llm_a: Any, llm_b: Any, *, is_async: bool) -> Any:
    # The short sleeps are the overlap under test: the branches' runs (and their LLM calls) are
    # open at the same time, one before its call and one after. No assertion waits on them.
    if is_async:

        async def branch_a(state: State) -> dict[str, Any]:
            await asyncio.sleep(0.01)
            return {"log": [(await llm_a.ainvoke("a")).content]}

        async def branch_b(state: State) -> dict[str, Any]:
            reply = await llm_b.ainvoke("b")
            await asyncio.sleep(0.01)
            return {"log": [reply.content]}

    else:

        def branch_a(state: State) -> dict[str, Any]:  # type: ignore[misc]
            time.sleep(0.01)
            return {"log": [llm_a.invoke("a").content]}

        def branch_b(state: State) -> dict[str, Any]:  # type: ignore[misc]
            reply = llm_b.invoke("b")
            time.sleep(0.01)
            return {"log": [reply.content]}

    builder = StateGraph(State)
    builder.add_node("branch_a", branch_a)
    builder.add_node("branch_b", branch_b)
    builder.add_node("join", lambda state: {"log": ["joined"]})
    builder.add_edge(START, "branch_a")
    builder.add_edge(START, "branch_b")
    builder.add_edge(["branch_a", "branch_b"], "join")
    builder.add_edge("join", END)
    return builder.compile(name="fan_out")


def assert_branches_nest_correctly(spans: list[Span]) -> None:
    root = only(spans, "fan_out")
    node_a, node_b, join = only(spans, "branch_a"), only(spans, "branch_b"), only(spans, "join")
    llm_a, llm_b = only(spans, "llm.model-a"), only(spans, "llm.model-b")
    # The two LLM calls really overlapped, so a contextvar-based parent would have been wrong.
    assert llm_a.start_ns < llm_b.end_ns and llm_b.start_ns < llm_a.end_ns  # type: ignore[operator]
    assert node_a.start_ns < node_b.end_ns and node_b.start_ns < node_a.end_ns  # type: ignore[operator]
    assert llm_a.parent_span_id == node_a.span_id
    assert llm_b.parent_span_id == node_b.span_id
    assert {node_a.parent_span_id, node_b.parent_span_id, join.parent_span_id} == {root.span_id}
    assert {s.trace_id for s in spans} == {root.trace_id}
    assert all(s.status == "ok" for s in spans)
    assert len(spans) == 6


async def test_async_parallel_branches_each_llm_under_its_own_node() -> None:
    graph = build_fan_out(make_llm("model-a", delay=0.05), make_llm("model-b", delay=0.05), is_async=True)
    spans: list[Span] = []
    handler = make_handler(spans.append)

    result = await graph.ainvoke({"log": []}, config={"callbacks": [handler]})

    assert sorted(result["log"]) == ["joined", "reply from model-a", "reply from model-b"]
    assert_branches_nest_correctly(spans)
    assert handler.open_runs == 0


async def test_async_astream_and_concurrent_invocations_share_one_handler() -> None:
    graph = build_fan_out(make_llm("model-a", delay=0.02), make_llm("model-b", delay=0.02), is_async=True)
    spans: list[Span] = []
    handler = make_handler(spans.append)

    async def stream_once() -> None:
        async for _ in graph.astream({"log": []}, config={"callbacks": [handler]}):
            pass

    await asyncio.gather(stream_once(), stream_once(), graph.ainvoke({"log": []}, config={"callbacks": [handler]}))

    assert handler.open_runs == 0
    assert len(spans) == 18
    for trace_id in {s.trace_id for s in spans}:
        assert_branches_nest_correctly([s for s in spans if s.trace_id == trace_id])
    assert len({s.trace_id for s in spans}) == 3


def test_sync_parallel_branches_on_pool_threads_nest_correctly() -> None:
    graph = build_fan_out(make_llm("model-a", delay=0.05), make_llm("model-b", delay=0.05), is_async=False)
    spans: list[Span] = []
    handler = make_handler(spans.append)

    graph.invoke({"log": []}, config={"callbacks": [handler]})

    assert_branches_nest_correctly(spans)
    assert handler.open_runs == 0


async def test_astream_closed_early_ends_every_run() -> None:
    graph = build_fan_out(make_llm("model-a"), make_llm("model-b"), is_async=True)
    spans: list[Span] = []
    handler = make_handler(spans.append)

    stream = graph.astream({"log": []}, config={"callbacks": [handler]})
    async for _ in stream:
        break
    await stream.aclose()

    assert handler.open_runs == 0
    root = only(spans, "fan_out")
    assert root.status == "ok"
    assert root.attributes["langchain.stream_closed_early"] is True


# --- 4. token details ------------------------------------------------------------------------


def test_token_details_are_attributes_and_not_added_to_totals() -> None:
    usage = {
        "input_tokens": 100,
        "output_tokens": 50,
        "total_tokens": 150,
        "input_token_details": {"cache_read": 40, "cache_creation": 10, "audio": 5},
        "output_token_details": {"reasoning": 20},
    }
    llm = make_llm("fake-reasoner", usage=usage)
    builder = StateGraph(State)
    builder.add_node("think", lambda state: {"log": [llm.invoke("q").content]})
    builder.add_edge(START, "think")
    graph = builder.compile()

    spans: list[Span] = []
    graph.invoke({"log": []}, config={"callbacks": [make_handler(spans.append)]})

    span = only(spans, "llm.fake-reasoner")
    assert (span.input_tokens, span.output_tokens, span.total_tokens) == (100, 50, 150)
    assert span.attributes["llm.usage.input_token_details.cache_read"] == 40
    assert span.attributes["llm.usage.input_token_details.cache_creation"] == 10
    assert span.attributes["llm.usage.input_token_details.audio"] == 5
    assert span.attributes["llm.usage.output_token_details.reasoning"] == 20
    event = span.to_event()
    assert (event["input_tokens"], event["output_tokens"], event["tokens_used"]) == (100, 50, 150)


def test_token_usage_falls_back_to_llm_output() -> None:
    llm = LlmOutputFakeChatModel(messages=iter(()))
    builder = StateGraph(State)
    builder.add_node("think", lambda state: {"log": [llm.invoke("q").content]})
    builder.add_edge(START, "think")
    graph = builder.compile()

    spans: list[Span] = []
    graph.invoke({"log": []}, config={"callbacks": [make_handler(spans.append)]})

    # No ls_model_name at start: the model comes from the response and renames the span.
    span = only(spans, "llm.legacy-model-7")
    assert span.llm_model == "legacy-model-7"
    assert (span.input_tokens, span.output_tokens, span.total_tokens) == (30, 9, 39)
    assert span.attributes["llm.usage.input_token_details.cached_tokens"] == 16


# --- 5. nesting under the caller's current span ----------------------------------------------


def tiny_graph() -> Any:
    builder = StateGraph(State)
    builder.add_node("only", lambda state: {"log": ["x"]})
    builder.add_edge(START, "only")
    return builder.compile(name="tiny")


def test_graph_nests_under_the_callers_current_span() -> None:
    graph = tiny_graph()
    spans: list[Span] = []
    handler = make_handler(spans.append)
    outer = TraceContext.new_root()

    with attach(outer):
        graph.invoke({"log": []}, config={"callbacks": [handler]})

    root = only(spans, "tiny")
    assert root.parent_span_id == outer.span_id
    assert {s.trace_id for s in spans} == {outer.trace_id}
    assert only(spans, "only").parent_span_id == root.span_id

    spans.clear()
    graph.invoke({"log": []}, config={"callbacks": [handler]})  # outside: a fresh trace
    root = only(spans, "tiny")
    assert root.parent_span_id is None and root.trace_id != outer.trace_id


async def test_async_graph_nests_under_the_callers_current_span() -> None:
    graph = tiny_graph()
    spans: list[Span] = []
    outer = TraceContext.new_root(sampled=False)

    with attach(outer):
        await graph.ainvoke({"log": []}, config={"callbacks": [make_handler(spans.append)]})

    root = only(spans, "tiny")
    assert root.parent_span_id == outer.span_id
    assert {s.trace_id for s in spans} == {outer.trace_id}
    assert all(s.sampled is False for s in spans)  # the caller's sampling decision travels down


# --- 6. memory over many runs ----------------------------------------------------------------


def _our_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> int:
    """Bytes still held that were allocated in the handler's or the span's source files."""
    ours = [tracemalloc.Filter(True, "*observability_connector/callback*.py"), tracemalloc.Filter(True, "*spans.py")]
    stats = after.filter_traces(ours).compare_to(before.filter_traces(ours), "filename")
    return sum(stat.size_diff for stat in stats)


def test_thousand_real_graph_runs_hold_memory_flat() -> None:
    llm = make_llm("fake-model-1")
    builder = StateGraph(State)
    builder.add_node("think", lambda state: {"log": [llm.invoke("q").content]})
    builder.add_edge(START, "think")
    graph = builder.compile()
    counter = Counter()
    handler = make_handler(counter)
    config: Any = {"callbacks": [handler]}

    for _ in range(100):  # warm LangGraph's and LangChain's own caches first
        graph.invoke({"log": []}, config=config)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        base_current, _ = tracemalloc.get_traced_memory()
        for _ in range(1_000):
            graph.invoke({"log": []}, config=config)
            assert handler.open_runs == 0
        gc.collect()
        after = tracemalloc.take_snapshot()
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert counter.count == 1_100 * 3  # graph + node + llm per run
    assert _our_growth(before, after) < 4_096
    assert current - base_current < 1_000_000


def _synthetic_run(handler: ObservabilityCallbackHandler, result: LLMResult) -> None:
    """The events LangGraph emits for a graph with one node calling a chat model (probed from
    langgraph 1.2), with fresh run ids; used where ten thousand real invocations would be slow."""
    graph_id, node_id, seq_id, llm_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    node_md = {"langgraph_step": 1, "langgraph_node": "n", "langgraph_triggers": ("branch:to:n",)}
    handler.on_chain_start(None, {}, run_id=graph_id, parent_run_id=None, tags=[], metadata={}, name="LangGraph")
    handler.on_chain_start(None, {}, run_id=node_id, parent_run_id=graph_id, tags=["graph:step:1"], metadata=node_md)
    handler.on_chain_start(None, {}, run_id=seq_id, parent_run_id=node_id, tags=["seq:step:1"], metadata=node_md)
    handler.on_chat_model_start(
        {"name": "Fake"},
        [[]],
        run_id=llm_id,
        parent_run_id=seq_id,
        tags=["seq:step:2"],
        metadata={**node_md, "ls_model_name": "m", "ls_provider": "fake"},
        invocation_params={},
    )
    handler.on_llm_end(result, run_id=llm_id, parent_run_id=seq_id)
    handler.on_chain_end({}, run_id=seq_id, parent_run_id=node_id)
    handler.on_chain_end({}, run_id=node_id, parent_run_id=graph_id)
    handler.on_chain_end({}, run_id=graph_id, parent_run_id=None)


def test_ten_thousand_runs_leave_no_state() -> None:
    counter = Counter()
    handler = make_handler(counter)
    result = LLMResult(generations=[[ChatGeneration(message=AIMessage("hi", usage_metadata=USAGE))]])  # type: ignore[arg-type]
    for _ in range(100):
        _synthetic_run(handler, result)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        base_current, _ = tracemalloc.get_traced_memory()
        for _ in range(10_000):
            _synthetic_run(handler, result)
            assert handler.open_runs == 0
        gc.collect()
        after = tracemalloc.take_snapshot()
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert counter.count == 10_100 * 3  # the RunnableSequence is skipped: graph, node, llm
    assert handler.evicted == 0
    assert _our_growth(before, after) < 4_096
    assert current - base_current < 1_000_000


def test_runs_that_never_end_are_bounded_by_max_open_runs() -> None:
    counter = Counter()
    handler = make_handler(counter, max_open_runs=1_000)
    gc.collect()
    tracemalloc.start()
    try:
        for _ in range(1_000):
            handler.on_chain_start(None, {}, run_id=uuid.uuid4(), tags=[], metadata={}, name="never_ends")
        filled, _ = tracemalloc.get_traced_memory()
        for _ in range(10_000):
            handler.on_chain_start(None, {}, run_id=uuid.uuid4(), tags=[], metadata={}, name="never_ends")
            assert handler.open_runs <= 1_000
        gc.collect()
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert handler.open_runs == 1_000
    assert handler.evicted == 10_000 == counter.count
    assert current - filled < 1_000_000


# --- 7. eviction -----------------------------------------------------------------------------


def test_eviction_drops_the_oldest_runs_counts_and_submits_them(caplog: pytest.LogCaptureFixture) -> None:
    spans: list[Span] = []
    handler = make_handler(spans.append, max_open_runs=3)
    run_ids = [uuid.uuid4() for _ in range(5)]
    for index, run_id in enumerate(run_ids):
        handler.on_chain_start(None, {}, run_id=run_id, tags=[], metadata={}, name=f"run{index}")

    assert handler.open_runs == 3
    assert handler.evicted == 2
    assert [s.operation_name for s in spans] == ["run0", "run1"]  # oldest first, not lost silently
    for span in spans:
        assert (span.status, span.error_type) == ("error", "RunEvicted")
        assert span.attributes["callback.evicted"] is True
    assert "evicted" in caplog.text

    handler.on_chain_end({}, run_id=run_ids[0])  # a late end for an evicted run is ignored
    for run_id in run_ids[2:]:
        handler.on_chain_end({}, run_id=run_id)
    assert handler.open_runs == 0
    assert [s.status for s in spans[2:]] == ["ok", "ok", "ok"]


def test_eviction_in_a_real_graph_keeps_the_agent_running() -> None:
    """With a limit smaller than one run's depth the graph still completes, the tree degrades
    (orphans become roots) and memory stays within the limit."""
    llm = make_llm()
    builder = StateGraph(State)
    builder.add_node("think", lambda state: {"log": [llm.invoke("q").content]})
    builder.add_edge(START, "think")
    graph = builder.compile()
    spans: list[Span] = []
    handler = make_handler(spans.append, max_open_runs=2)

    assert graph.invoke({"log": []}, config={"callbacks": [handler]}) == {"log": ["reply from fake-model-1"]}
    assert handler.evicted == 1
    assert handler.open_runs == 0
    assert only(spans, "LangGraph").error_type == "RunEvicted"
    assert only(spans, "think").status == "ok"


def test_constructor_rejects_a_useless_limit() -> None:
    with pytest.raises(ValueError):
        ObservabilityCallbackHandler(lambda span: None, "a", max_open_runs=0)


# --- 8. nested agents: one handler per agent, one tree per request ---------------------------


def agent_handler(submit: Any, agent_name: str) -> ObservabilityCallbackHandler:
    handler = ObservabilityCallbackHandler(submit, agent_name)
    handler.raise_error = True
    return handler


def make_connector(submit: Any) -> Any:
    """A real connector (flusher not started) whose finished spans go to ``submit``."""
    from src.agents.ml_foundation.observability_connector.agent import ObservabilityConnectorAgent
    from src.agents.ml_foundation.observability_connector.runtime import default_context

    connector = ObservabilityConnectorAgent(context=default_context(), start=False)
    connector._submit = submit
    return connector


class NestedCase:
    """An orchestrator graph whose node(s) invoke the gap_analyzer and causal_impact graphs,
    each agent traced by its own handler, all handlers submitting to one list (one connector)."""

    AGENTS = ("orchestrator", "gap_analyzer", "causal_impact")

    def __init__(
        self,
        *,
        is_async: bool,
        parallel: bool = False,
        delay: float = 0.0,
        fail_score: bool = False,
        catch: bool = True,
        same_handler: bool = False,
        wrap_in_span: bool = False,
    ) -> None:
        self.spans: list[Span] = []
        if same_handler:  # one handler instance attached at both levels
            shared = agent_handler(self.spans.append, "orchestrator")
            self.handlers = dict.fromkeys(self.AGENTS, shared)
        else:
            self.handlers = {name: agent_handler(self.spans.append, name) for name in self.AGENTS}
        self.contexts: dict[str, TraceContext | None] = {}
        self.fallbacks: list[str] = []
        self.stub = make_connector(self.spans.append)
        self.fail_score, self.catch, self.wrap_in_span = fail_score, catch, wrap_in_span
        self.is_async = is_async
        self.agents = {
            "gap_analyzer": self._gap_graph(make_llm("gap-model", delay=delay)),
            "causal_impact": self._causal_graph(make_llm("causal-model", delay=delay)),
        }
        self.graph = self._orchestrator(make_llm("router-model"), parallel)

    # -- the agents -------------------------------------------------------------------------

    def _gap_graph(self, llm: Any) -> Any:
        case = self

        def fetch_span(config: RunnableConfig) -> None:
            ctx = node_context(config)
            case.contexts["analyze"] = ctx
            case.contexts["analyze/ambient"] = node_context()  # no config: the running node's
            # A skipped run inside the node resolves to the node's span (nearest recorded one).
            case.contexts["analyze/inner"] = RunnableLambda(lambda _: node_context()).invoke(None, config)
            with SpanScope(case.stub, "fetch_data", "gap_analyzer", ctx, None):  # type: ignore[arg-type]
                pass

        def check_score() -> None:
            if case.fail_score:
                raise QuotaExceededError("quota for gap_analyzer exceeded")

        if self.is_async:

            async def analyze(state: State, config: RunnableConfig) -> dict[str, Any]:
                fetch_span(config)
                return {"log": [(await llm.ainvoke("gaps?", config)).content]}

            async def score(state: State) -> dict[str, Any]:
                check_score()
                return {"log": [str(await add.ainvoke({"a": 2, "b": 3}))]}

        else:

            def analyze(state: State, config: RunnableConfig) -> dict[str, Any]:  # type: ignore[misc]
                fetch_span(config)
                return {"log": [llm.invoke("gaps?", config).content]}

            def score(state: State) -> dict[str, Any]:  # type: ignore[misc]
                check_score()
                return {"log": [str(add.invoke({"a": 2, "b": 3}))]}

        builder = StateGraph(State)
        builder.add_node("analyze", analyze)
        builder.add_node("score", score)
        builder.add_edge(START, "analyze")
        builder.add_edge("analyze", "score")
        return builder.compile(name="gap_analyzer")

    def _causal_graph(self, llm: Any) -> Any:
        if self.is_async:

            async def estimate(state: State) -> dict[str, Any]:
                return {"log": [(await llm.ainvoke("effect?")).content]}

        else:

            def estimate(state: State) -> dict[str, Any]:  # type: ignore[misc]
                return {"log": [llm.invoke("effect?").content]}

        builder = StateGraph(State)
        builder.add_node("estimate", estimate)
        builder.add_edge(START, "estimate")
        return builder.compile(name="causal_impact")

    # -- the orchestrator -------------------------------------------------------------------

    def _scope(self, node: str, config: RunnableConfig) -> Any:
        ctx = node_context(config)
        self.contexts[node] = ctx
        if self.wrap_in_span:
            return SpanScope(self.stub, "invoke_agent", "orchestrator", ctx, None)  # type: ignore[arg-type]
        return contextlib.nullcontext()

    def _call_sync(self, agent: str, config: RunnableConfig, node: str) -> list[str]:
        with self._scope(node, config):
            try:
                result = self.agents[agent].invoke({"log": []}, config={"callbacks": [self.handlers[agent]]})
            except QuotaExceededError:
                if not self.catch:
                    raise
                self.fallbacks.append(agent)
                return [f"{agent}: fallback"]
        return result["log"]

    async def _call_async(self, agent: str, config: RunnableConfig, node: str) -> list[str]:
        with self._scope(node, config):
            try:
                result = await self.agents[agent].ainvoke({"log": []}, config={"callbacks": [self.handlers[agent]]})
            except QuotaExceededError:
                if not self.catch:
                    raise
                self.fallbacks.append(agent)
                return [f"{agent}: fallback"]
        return result["log"]

    def _orchestrator(self, llm: Any, parallel: bool) -> Any:
        case = self
        builder = StateGraph(State)
        builder.add_node("plan", lambda state: {"log": ["planned"]})
        if self.is_async:

            def dispatcher(*agents: str) -> Any:
                async def dispatch(state: State, config: RunnableConfig) -> dict[str, Any]:
                    log: list[str] = []
                    for agent in agents:
                        log += await case._call_async(agent, config, f"dispatch/{agent}")
                    return {"log": log}

                return dispatch

            async def synthesize(state: State) -> dict[str, Any]:
                return {"log": [(await llm.ainvoke("answer")).content]}

        else:

            def dispatcher(*agents: str) -> Any:  # type: ignore[misc]
                def dispatch(state: State, config: RunnableConfig) -> dict[str, Any]:
                    log: list[str] = []
                    for agent in agents:
                        log += case._call_sync(agent, config, f"dispatch/{agent}")
                    return {"log": log}

                return dispatch

            def synthesize(state: State) -> dict[str, Any]:  # type: ignore[misc]
                return {"log": [llm.invoke("answer").content]}

        builder.add_node("synthesize", synthesize)
        builder.add_edge(START, "plan")
        if parallel:
            builder.add_node("dispatch_gap", dispatcher("gap_analyzer"))
            builder.add_node("dispatch_causal", dispatcher("causal_impact"))
            builder.add_edge("plan", "dispatch_gap")
            builder.add_edge("plan", "dispatch_causal")
            builder.add_edge(["dispatch_gap", "dispatch_causal"], "synthesize")
            self.dispatch_node = {"gap_analyzer": "dispatch_gap", "causal_impact": "dispatch_causal"}
        else:
            builder.add_node("dispatch", dispatcher("gap_analyzer", "causal_impact"))
            builder.add_edge("plan", "dispatch")
            builder.add_edge("dispatch", "synthesize")
            self.dispatch_node = dict.fromkeys(("gap_analyzer", "causal_impact"), "dispatch")
        builder.add_edge("synthesize", END)
        return builder.compile(name="orchestrator_graph")

    def run(self) -> Any:
        return self.graph.invoke({"log": []}, config={"callbacks": [self.handlers["orchestrator"]]})

    async def arun(self) -> Any:
        return await self.graph.ainvoke({"log": []}, config={"callbacks": [self.handlers["orchestrator"]]})

    def expected(self, *, parallel: bool) -> Tally[tuple[str, str]]:
        dispatch = ["dispatch_gap", "dispatch_causal"] if parallel else ["dispatch"]
        ops = {
            "orchestrator": ["orchestrator_graph", "plan", *dispatch, "synthesize", "llm.router-model"],
            "gap_analyzer": ["gap_analyzer", "analyze", "fetch_data", "llm.gap-model", "score", "tool.add"],
            "causal_impact": ["causal_impact", "estimate", "llm.causal-model"],
        }
        return Tally((agent, op) for agent, names in ops.items() for op in names)


def span_of(spans: list[Span], agent: str, operation: str) -> Span:
    found = [s for s in spans if s.agent_name == agent and s.operation_name == operation]
    assert len(found) == 1, f"expected one {agent}.{operation} span, got {found}"
    return found[0]


def assert_one_tree(case: NestedCase, *, parallel: bool) -> dict[str, Span]:
    """Every run recorded exactly once, by its own agent's handler, as one tree of one trace."""
    spans = case.spans
    assert Tally((s.agent_name, s.operation_name) for s in spans) == case.expected(parallel=parallel)
    assert len({(s.trace_id, s.operation_name, s.start_ns) for s in spans}) == len(spans)
    by_id = {s.span_id: s for s in spans}
    assert len(by_id) == len(spans)
    assert len({s.trace_id for s in spans}) == 1
    roots = [s for s in spans if s.parent_span_id is None]
    assert [(r.agent_name, r.operation_name) for r in roots] == [("orchestrator", "orchestrator_graph")]
    for span in spans:
        assert span.end_ns is not None
        if span.parent_span_id is not None:
            parent = by_id[span.parent_span_id]  # every parent is in the trace
            assert parent.start_ns <= span.start_ns and span.end_ns <= parent.end_ns  # type: ignore[operator]

    def parent_of(agent: str, operation: str) -> tuple[str, str]:
        parent = by_id[span_of(spans, agent, operation).parent_span_id]  # type: ignore[index]
        return parent.agent_name, parent.operation_name

    for agent in ("gap_analyzer", "causal_impact"):
        root = span_of(spans, agent, agent)
        assert root.attributes["langchain.run_type"] == "graph"
        # the agent graph's root hangs under the orchestrator node that invoked it
        assert parent_of(agent, agent) == ("orchestrator", case.dispatch_node[agent])
    assert parent_of("gap_analyzer", "analyze") == ("gap_analyzer", "gap_analyzer")
    assert parent_of("gap_analyzer", "fetch_data") == ("gap_analyzer", "analyze")
    assert parent_of("gap_analyzer", "llm.gap-model") == ("gap_analyzer", "analyze")
    assert parent_of("gap_analyzer", "score") == ("gap_analyzer", "gap_analyzer")
    assert parent_of("gap_analyzer", "tool.add") == ("gap_analyzer", "score")
    assert parent_of("causal_impact", "estimate") == ("causal_impact", "causal_impact")
    assert parent_of("causal_impact", "llm.causal-model") == ("causal_impact", "estimate")
    assert parent_of("orchestrator", "llm.router-model") == ("orchestrator", "synthesize")

    # node_context(config) gave each node its own span's ids, from any handler
    analyze = span_of(spans, "gap_analyzer", "analyze")
    for key in ("analyze", "analyze/ambient", "analyze/inner"):
        ctx = case.contexts[key]
        assert ctx is not None
        assert (ctx.trace_id, ctx.span_id, ctx.parent_span_id) == (
            analyze.trace_id,
            analyze.span_id,
            analyze.parent_span_id,
        )
        assert ctx.sampled is True
    for agent, node in case.dispatch_node.items():
        ctx = case.contexts[f"dispatch/{agent}"]
        assert ctx is not None and ctx.span_id == span_of(spans, "orchestrator", node).span_id
    return {f"{s.agent_name}.{s.operation_name}": s for s in spans}


def assert_nothing_left(case: NestedCase, registered_before: int) -> None:
    assert registered_runs() == registered_before
    for handler in case.handlers.values():
        assert handler.open_runs == 0
        assert handler.evicted == 0


def test_nested_agents_sync_each_run_recorded_once_in_one_tree() -> None:
    before = registered_runs()
    case = NestedCase(is_async=False)
    result = case.run()

    assert result["log"][-1] == "reply from router-model"
    assert_one_tree(case, parallel=False)
    assert_nothing_left(case, before)


async def test_nested_agents_async_each_run_recorded_once_in_one_tree() -> None:
    before = registered_runs()
    case = NestedCase(is_async=True)
    await case.arun()

    assert_one_tree(case, parallel=False)
    assert_nothing_left(case, before)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync-threads", "async-tasks"])
async def test_nested_agents_in_parallel_branches_each_recorded_once(is_async: bool) -> None:
    before = registered_runs()
    case = NestedCase(is_async=is_async, parallel=True, delay=0.05)
    if is_async:
        await case.arun()
    else:
        await asyncio.to_thread(case.run)  # the graph's own pool threads run the two branches

    spans = assert_one_tree(case, parallel=True)
    gap, causal = spans["gap_analyzer.gap_analyzer"], spans["causal_impact.causal_impact"]
    assert gap.start_ns < causal.end_ns and causal.start_ns < gap.end_ns  # type: ignore[operator]
    assert_nothing_left(case, before)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_nested_agent_nests_under_the_span_the_node_opened(is_async: bool) -> None:
    """``obs.span("invoke_agent", ..., node_context(config))`` around the call: the agent's
    graph nests under that span, which nests under the node."""
    before = registered_runs()
    case = NestedCase(is_async=is_async, wrap_in_span=True)
    if is_async:
        await case.arun()
    else:
        case.run()

    spans = case.spans
    by_id = {s.span_id: s for s in spans}
    dispatch = span_of(spans, "orchestrator", "dispatch")
    calls = [s for s in spans if s.operation_name == "invoke_agent"]
    assert len(calls) == 2
    assert {c.parent_span_id for c in calls} == {dispatch.span_id}
    for agent in ("gap_analyzer", "causal_impact"):
        root = span_of(spans, agent, agent)
        assert by_id[root.parent_span_id].operation_name == "invoke_agent"  # type: ignore[index]
    assert len({s.trace_id for s in spans}) == 1
    assert [s.operation_name for s in spans if s.parent_span_id is None] == ["orchestrator_graph"]
    assert all(s.parent_span_id in by_id for s in spans if s.parent_span_id is not None)
    assert len(spans) == sum(case.expected(parallel=False).values()) + 2
    assert_nothing_left(case, before)


@pytest.mark.parametrize("catch", [True, False], ids=["fallback", "propagates"])
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_nested_agent_error_is_recorded_once_and_leaves_no_registry_entry(is_async: bool, catch: bool) -> None:
    before = registered_runs()
    case = NestedCase(is_async=is_async, fail_score=True, catch=catch)
    if catch:
        await (case.arun() if is_async else asyncio.to_thread(case.run))
    else:
        with pytest.raises(QuotaExceededError):
            await (case.arun() if is_async else asyncio.to_thread(case.run))

    spans = case.spans
    expected = case.expected(parallel=False)
    expected -= Tally({("gap_analyzer", "tool.add"): 1})  # score fails before its tool call
    if not catch:  # the error stops the orchestrator before causal_impact and synthesize
        expected -= Tally(
            {(a, op) for (a, op) in expected if a == "causal_impact"}
            | {("orchestrator", "synthesize"), ("orchestrator", "llm.router-model")}
        )
    assert Tally((s.agent_name, s.operation_name) for s in spans) == expected
    failed = {(s.agent_name, s.operation_name) for s in spans if s.status == "error"}
    if catch:
        assert failed == {("gap_analyzer", "score"), ("gap_analyzer", "gap_analyzer")}
        assert case.fallbacks == ["gap_analyzer"]
    else:
        assert failed == {
            ("gap_analyzer", "score"),
            ("gap_analyzer", "gap_analyzer"),
            ("orchestrator", "dispatch"),
            ("orchestrator", "orchestrator_graph"),
        }
    assert all(s.error_type == "QuotaExceededError" for s in spans if s.status == "error")
    by_id = {s.span_id: s for s in spans}
    assert [s.operation_name for s in spans if s.parent_span_id is None] == ["orchestrator_graph"]
    assert all(s.parent_span_id in by_id for s in spans if s.parent_span_id is not None)
    assert (
        span_of(spans, "gap_analyzer", "gap_analyzer").parent_span_id
        == span_of(spans, "orchestrator", "dispatch").span_id
    )
    assert_nothing_left(case, before)


def test_same_handler_at_both_levels_records_each_run_once_as_a_subgraph() -> None:
    before = registered_runs()
    case = NestedCase(is_async=False, same_handler=True)
    case.run()

    spans = case.spans
    expected = Tally(
        {
            ("gap_analyzer" if op == "fetch_data" else "orchestrator", op): n
            for (_, op), n in case.expected(parallel=False).items()
        }
    )  # fetch_data is opened by the node's own code, with its own agent name
    assert Tally((s.agent_name, s.operation_name) for s in spans) == expected
    dispatch = span_of(spans, "orchestrator", "dispatch")
    for agent in ("gap_analyzer", "causal_impact"):
        root = span_of(spans, "orchestrator", agent)
        assert root.parent_span_id == dispatch.span_id
        assert root.attributes["langchain.run_type"] == "subgraph"
    assert len({s.trace_id for s in spans}) == 1
    assert_nothing_left(case, before)


def test_model_called_with_another_agents_handler_is_recorded_once_by_it() -> None:
    """Adoption is not only for graphs: a model or tool invoked inside a node with another
    agent's handler added to the inherited callbacks belongs to that agent, under the node's
    span. (A plain runnable given ``callbacks=[handler]`` replaces the inherited ones, so only
    graphs, which merge them, need adoption otherwise.)"""
    before = registered_runs()
    spans: list[Span] = []
    outer, inner = agent_handler(spans.append, "orchestrator"), agent_handler(spans.append, "explainer")
    llm = make_llm("explain-model")

    def explain(state: State, config: RunnableConfig) -> dict[str, Any]:
        manager = config["callbacks"].copy()  # type: ignore[union-attr]
        manager.add_handler(inner)  # after the inherited outer handler
        reply = llm.invoke("why?", config={"callbacks": manager})
        return {"log": [reply.content, str(add.invoke({"a": 1, "b": 1}, config={"callbacks": manager}))]}

    builder = StateGraph(State)
    builder.add_node("explain", explain)
    builder.add_edge(START, "explain")
    builder.compile(name="orchestrator_graph").invoke({"log": []}, config={"callbacks": [outer]})

    assert Tally((s.agent_name, s.operation_name) for s in spans) == Tally(
        {
            ("orchestrator", "orchestrator_graph"): 1,
            ("orchestrator", "explain"): 1,
            ("explainer", "llm.explain-model"): 1,
            ("explainer", "tool.add"): 1,
        }
    )
    node = span_of(spans, "orchestrator", "explain")
    assert span_of(spans, "explainer", "llm.explain-model").parent_span_id == node.span_id
    assert span_of(spans, "explainer", "tool.add").parent_span_id == node.span_id
    assert span_of(spans, "explainer", "llm.explain-model").total_tokens == 19
    assert registered_runs() == before
    assert outer.open_runs == inner.open_runs == 0


OUTER_NODE = uuid.uuid4()


class _ManagerLike:
    """What ``node_context`` reads from a config's callbacks: the run the config belongs to."""

    def __init__(self, parent_run_id: uuid.UUID) -> None:
        self.parent_run_id = parent_run_id


def _nested_events(
    first: ObservabilityCallbackHandler, second: ObservabilityCallbackHandler, run_id: uuid.UUID
) -> None:
    """The events of one run of the inner graph (its root and one node), dispatched to two
    handlers in the given order, as LangChain's callback manager does."""
    node_id = uuid.uuid4()
    md = {"langgraph_step": 1, "langgraph_node": "inner_node", "langgraph_triggers": ("branch:to:inner_node",)}
    for handler in (first, second):
        handler.on_chain_start(None, {}, run_id=run_id, parent_run_id=OUTER_NODE, tags=["seq:step:1"], metadata=md)
    for handler in (first, second):
        handler.on_chain_start(None, {}, run_id=node_id, parent_run_id=run_id, tags=["graph:step:1"], metadata=md)
    for handler in (first, second):
        handler.on_chain_end({}, run_id=node_id, parent_run_id=run_id)
    for handler in (first, second):
        handler.on_chain_end({}, run_id=run_id, parent_run_id=OUTER_NODE)


@pytest.mark.parametrize("inner_first", [False, True], ids=["inherited-first", "local-first"])
def test_adoption_does_not_depend_on_handler_order(inner_first: bool) -> None:
    """LangChain calls inherited handlers first, except when a config's callbacks are a
    manager merged into a list; either way the inner handler records the inner runs once."""
    before = registered_runs()
    spans: list[Span] = []
    outer, inner = agent_handler(spans.append, "orchestrator"), agent_handler(spans.append, "gap_analyzer")
    graph_id = uuid.uuid4()
    outer.on_chain_start(None, {}, run_id=graph_id, parent_run_id=None, tags=[], metadata={}, name="orch")
    node_md = {"langgraph_step": 1, "langgraph_node": "dispatch", "langgraph_triggers": ("branch:to:dispatch",)}
    outer.on_chain_start(None, {}, run_id=OUTER_NODE, parent_run_id=graph_id, tags=["graph:step:1"], metadata=node_md)

    ctx = node_context({"callbacks": _ManagerLike(OUTER_NODE)})  # type: ignore[typeddict-item]
    _nested_events(*((inner, outer) if inner_first else (outer, inner)), run_id=uuid.uuid4())
    outer.on_chain_end({}, run_id=OUTER_NODE, parent_run_id=graph_id)
    outer.on_chain_end({}, run_id=graph_id)

    assert Tally((s.agent_name, s.operation_name) for s in spans) == Tally(
        {
            ("orchestrator", "orch"): 1,
            ("orchestrator", "dispatch"): 1,
            ("gap_analyzer", "chain"): 1,
            ("gap_analyzer", "inner_node"): 1,
        }
    )
    dispatch = span_of(spans, "orchestrator", "dispatch")
    assert ctx is not None and ctx.span_id == dispatch.span_id
    assert span_of(spans, "gap_analyzer", "chain").parent_span_id == dispatch.span_id
    assert registered_runs() == before
    assert outer.open_runs == inner.open_runs == 0


def test_node_context_is_none_when_not_traced() -> None:
    seen: list[Any] = []

    def node(state: State, config: RunnableConfig) -> dict[str, Any]:
        seen.append(node_context(config))
        seen.append(node_context())
        return {"log": []}

    builder = StateGraph(State)
    builder.add_node("node", node)
    builder.add_edge(START, "node")
    builder.compile().invoke({"log": []})  # no handler

    assert seen == [None, None]
    assert node_context() is None  # outside any run
    assert node_context({"callbacks": [make_handler(lambda span: None)]}) is None  # a plain list: not in a run
    assert node_context({}) is None


def test_many_nested_runs_leave_the_registry_flat() -> None:
    """The registry holds only open runs: many nested invocations leave nothing behind."""
    before = registered_runs()
    case = NestedCase(is_async=False)
    for _ in range(50):
        case.spans.clear()
        case.run()
        assert registered_runs() == before
    assert_one_tree(case, parallel=False)
    assert_nothing_left(case, before)


# --- 9. threads across nested agents --------------------------------------------------------


@pytest.mark.parametrize("pass_config", [True, False], ids=["config-passed", "config-from-context"])
def test_a_nested_agent_runs_in_its_callers_thread(pass_config: bool) -> None:
    """An agent invoked from a node of a threaded graph is one tree with it, every span in the thread;
    only the top-level run takes part in resume links."""
    inner_llm = make_llm("inner-model")
    inner_builder = StateGraph(State)
    inner_builder.add_node("inner_step", lambda state: {"log": [inner_llm.invoke("q").content]})
    inner_builder.add_edge(START, "inner_step")
    inner = inner_builder.compile(name="inner_agent")
    spans: list[Span] = []
    inner_handler = make_handler(spans.append)

    def delegate(state: State, config: RunnableConfig) -> dict[str, Any]:
        call_config: Any = {"callbacks": [inner_handler]}
        if pass_config:
            call_config = {**config, "callbacks": [inner_handler]}
        return {"log": inner.invoke({"log": []}, call_config)["log"]}

    outer_builder = StateGraph(State)
    outer_builder.add_node("delegate", delegate)
    outer_builder.add_edge(START, "delegate")
    outer = outer_builder.compile(checkpointer=InMemorySaver(), name="outer_agent")
    outer_handler = make_handler(spans.append)
    config: Any = {"callbacks": [outer_handler], "configurable": {"thread_id": "nested-thread"}}

    outer.invoke({"log": []}, config)
    outer.invoke(None, config)  # continues the thread: the outer graph links back, the inner never

    for run in {s.trace_id for s in spans}:
        tree = [s for s in spans if s.trace_id == run]
        assert {s.attributes.get("langgraph.thread_id") for s in tree} == {"nested-thread"}, [
            (s.operation_name, s.attributes.get("langgraph.thread_id")) for s in tree
        ]
    first_trace = next(s.trace_id for s in spans if s.operation_name == "outer_agent")
    first_run = [s for s in spans if s.trace_id == first_trace]
    inner_graph = only(first_run, "inner_agent")
    assert inner_graph.parent_span_id == only(first_run, "delegate").span_id
    assert children(first_run, inner_graph) == ["inner_step"]
    assert all("langgraph.resumes_trace_id" not in s.attributes for s in first_run)
    (continued,) = [s for s in spans if s.operation_name == "outer_agent" and s.trace_id != first_trace]
    assert continued.attributes["langgraph.resumes_trace_id"] == first_trace
    assert outer_handler.open_runs == inner_handler.open_runs == 0
