"""The demo's one conversation: a budget proposal that pauses for a human's approval and resumes.

``resource_optimizer`` proposes an allocation, streaming the proposal to the user
(``stream_mode="messages"``, so its LLM call records a time to first token), then asks for
approval with LangGraph's ``interrupt()``; the answer comes back as ``Command(resume=...)`` on
the same ``thread_id``, which applies the allocation. Two runs, so two traces: the handler marks
the first paused (``langgraph.interrupted``), the second as resuming it
(``langgraph.resumes_trace_id``), and every span of both carries the thread
(``langgraph.thread_id``). The report is read back from the store, like the rest of the demo.

Each node learns its trace from ``node_context(config)`` and adds it to the state: that is how
an application gets the trace ids of a conversation (to show them, or to attach feedback).
"""

from __future__ import annotations

import asyncio
import operator
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypedDict

from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

from .callback_registry import node_context
from .demo_model import TOOLS, DemoChatModel
from .demo_scenario import AGENT_SPECS, ConversationPlan
from .render import fmt_ms, trace_tree

if TYPE_CHECKING:
    from rich.console import Console

    from .agent import ObservabilityConnectorAgent
    from .models import ObservabilitySpan

__all__ = ["CONVERSATION_AGENT", "ConversationOutcome", "report_conversation", "run_conversation"]

CONVERSATION_AGENT = "resource_optimizer"


class ReviewState(TypedDict, total=False):
    # The plan stays out of the state: the checkpointer would serialise it, and LangGraph warns
    # about (and will refuse) deserialising a type it was not told about.
    proposal: str
    decision: str
    applied: str
    trace_ids: Annotated[list[str], operator.add]


def _trace_of(config: RunnableConfig) -> list[str]:
    context = node_context(config)
    return [context.trace_id] if context is not None else []


def _build_graph(plan: ConversationPlan) -> Any:
    spec = AGENT_SPECS[CONVERSATION_AGENT]
    llm = DemoChatModel(model=spec.model, provider=spec.provider)
    solve = TOOLS["solve_allocation"]

    async def propose(state: ReviewState, config: RunnableConfig) -> dict[str, Any]:
        solved = await solve.ainvoke({"query": plan.question, "latency_ms": plan.tool_ms}, config)
        messages = [
            SystemMessage(f"You are the {spec.name} agent; you {spec.purpose}."),
            HumanMessage(f"{plan.question}\nSolver: {solved}\nPropose the allocation for approval."),
        ]
        reply = await llm.ainvoke(messages, config, latency_ms=plan.propose_ms)
        return {"proposal": str(reply.content), "trace_ids": _trace_of(config)}

    async def approve(state: ReviewState, config: RunnableConfig) -> dict[str, Any]:
        decision = interrupt({"question": "Apply this allocation?", "proposal": state["proposal"]})
        return {"decision": str(decision), "trace_ids": _trace_of(config)}

    async def apply(state: ReviewState, config: RunnableConfig) -> dict[str, Any]:
        messages = [
            SystemMessage("Confirm the applied allocation in one sentence."),
            HumanMessage(f"Approved ({state['decision']}): {state['proposal']}"),
        ]
        reply = await llm.ainvoke(messages, config, latency_ms=plan.apply_ms)
        return {"applied": str(reply.content), "trace_ids": _trace_of(config)}

    builder = StateGraph(ReviewState)
    builder.add_node("propose", propose)
    builder.add_node("approve", approve)
    builder.add_node("apply", apply)
    builder.add_edge(START, "propose")
    builder.add_edge("propose", "approve")
    builder.add_edge("approve", "apply")
    builder.add_edge("apply", END)
    return builder.compile(checkpointer=InMemorySaver(), name="budget_review")


@dataclass(frozen=True, slots=True)
class ConversationOutcome:
    thread_id: str
    trace_ids: tuple[str, ...]  # one per turn, in order
    streamed_text: str  # what the user saw arrive token by token in turn 1
    question: str  # what the interrupt asked
    answer: str  # what the human answered
    applied: str


async def run_conversation(obs: ObservabilityConnectorAgent, plan: ConversationPlan) -> ConversationOutcome:
    """Turn 1 streams the proposal and pauses; turn 2 resumes it with the human's answer."""
    graph = _build_graph(plan)
    # Unique per run: demo runs sharing a store must not merge into one conversation.
    thread_id = f"{plan.thread_prefix}-{uuid.uuid4().hex[:8]}"
    config: Any = {
        "callbacks": [obs.callback_handler(CONVERSATION_AGENT)],
        "configurable": {"thread_id": thread_id},
    }
    shown: list[str] = []
    async for chunk, _meta in graph.astream({"trace_ids": []}, config, stream_mode="messages"):
        shown.append(str(chunk.content))  # a chat UI would print these as they arrive
    paused = await graph.aget_state(config)
    question = str(paused.interrupts[0].value["question"]) if paused.interrupts else ""
    await asyncio.sleep(plan.human_ms / 1000)  # the human reads and answers
    config["callbacks"] = [obs.callback_handler(CONVERSATION_AGENT)]  # a new request, a new handler
    final = await graph.ainvoke(Command(resume=plan.answer), config)
    trace_ids = tuple(dict.fromkeys(final.get("trace_ids") or ()))
    applied = str(final.get("applied", ""))
    return ConversationOutcome(thread_id, trace_ids, "".join(shown), question, plan.answer, applied)


def _llm_note(spans: list[ObservabilitySpan]) -> str:
    notes = []
    for span in spans:
        if span.attributes.get("langchain.run_type") != "llm":
            continue
        ttft = span.attributes.get("llm.time_to_first_token_ms")
        if isinstance(ttft, (int, float)):
            notes.append(
                f"{span.operation_name} streamed, first token after {fmt_ms(ttft)} of {fmt_ms(span.duration_ms)} ms"
            )
        else:
            notes.append(f"{span.operation_name} not streamed")
    return "; ".join(notes)


async def report_conversation(
    console: Console, obs: ObservabilityConnectorAgent, outcome: ConversationOutcome
) -> dict[str, Any]:
    """The conversation as the store holds it: each turn's trace, pause, link and time to first token."""
    store = obs.context.store
    turns: list[dict[str, Any]] = []
    console.print()
    console.print(
        f"[bold]One conversation, as stored[/]: thread [cyan]{outcome.thread_id}[/] ({CONVERSATION_AGENT}), "
        f"paused by interrupt() for a human and resumed"
    )
    for number, trace_id in enumerate(outcome.trace_ids, 1):
        spans = await store.get_spans_by_trace_id(trace_id)
        root = next((s for s in spans if s.parent_span_id is None), None)
        attrs = root.attributes if root is not None else {}
        threads = {s.attributes.get("langgraph.thread_id") for s in spans}
        turn = {
            "trace_id": trace_id,
            "spans": len(spans),
            "interrupted": bool(attrs.get("langgraph.interrupted")),
            "resumes_trace_id": attrs.get("langgraph.resumes_trace_id"),
            "thread_ids": sorted(str(t) for t in threads),
            "errors": sum(1 for s in spans if s.status == "error"),
            "llm": _llm_note(spans),
        }
        turns.append(turn)
        what = "paused (interrupt)" if turn["interrupted"] else "completed"
        if turn["resumes_trace_id"]:
            what += f", resumes {turn['resumes_trace_id']}"
        console.print(f"  turn {number}: trace [yellow]{trace_id}[/]  {len(spans)} spans, {what}; {turn['llm']}")
    if outcome.question:
        console.print(f"  the interrupt asked: [italic]{outcome.question}[/]  and got: [italic]{outcome.answer}[/]")
    for trace_id in outcome.trace_ids:
        console.print(trace_tree(await store.get_spans_by_trace_id(trace_id), trace_id))
    if outcome.trace_ids:
        hint = f"obs-connector trace --thread {outcome.thread_id}"
        console.print(f"      [bold]{hint}[/]   the whole conversation, turn by turn")
    return {"thread_id": outcome.thread_id, "turns": turns}
