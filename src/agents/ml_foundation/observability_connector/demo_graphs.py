"""The demo's compiled LangGraph graphs: one small ``StateGraph`` per agent, and the orchestrator
that routes a request through its pipeline and recovers from a failing agent with a fallback.
"""

from __future__ import annotations

import asyncio
import functools
import operator
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypedDict

from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from .agent import ObservabilityConnectorAgent
from .demo_model import TOOLS, DataValidationError, DemoChatModel
from .demo_scenario import AGENTS, INTENTS, ORCHESTRATOR, AgentSpec, AgentStep, NodeSpec, RequestPlan

__all__ = ["DemoRuntime", "agent_graphs", "orchestrator_graph"]


# --------------------------------------------------------------------------- agent graphs


class AgentState(TypedDict, total=False):
    request_id: str
    question: str
    step: AgentStep
    notes: Annotated[list[str], operator.add]


def _node(spec: AgentSpec, node: NodeSpec, llm: DemoChatModel) -> Callable[..., Awaitable[dict[str, Any]]]:
    tool_ = TOOLS[node.tool] if node.tool else None

    async def run(state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        step = state["step"].nodes[node.name]
        notes: list[str] = []
        if tool_ is not None:
            payload = {"query": state["question"], "latency_ms": step.tool_ms, "fail": step.fail == "tool"}
            notes.append(str(await tool_.ainvoke(payload, config)))
        if step.fail == "validation":
            raise DataValidationError(f"{node.name}: 3.2% of rows failed the schema check (threshold 1%)")
        if node.llm:
            context = " | ".join([*(state.get("notes") or [])[-3:], *notes])
            messages = [
                SystemMessage(f"You are the {spec.name} agent; you {spec.purpose}."),
                HumanMessage(f"[{state['request_id']}] {node.name}: {state['question']}\nContext: {context}"),
            ]
            reply = await llm.ainvoke(
                messages, config, latency_ms=step.llm_ms, fail_with="rate_limit" if step.fail == "llm" else None
            )
            notes.append(str(reply.content))
        return {"notes": notes}

    run.__name__ = node.name
    return run


def _build_agent_graph(spec: AgentSpec) -> Any:
    llm = DemoChatModel(model=spec.model, provider=spec.provider)
    builder = StateGraph(AgentState)
    previous = START
    for node in spec.nodes:
        builder.add_node(node.name, _node(spec, node, llm))
        builder.add_edge(previous, node.name)
        previous = node.name
    builder.add_edge(previous, END)
    return builder.compile(name=spec.name)


@functools.cache
def agent_graphs() -> dict[str, Any]:
    """One compiled graph per agent (not the orchestrator), built once and reused by every request."""
    return {spec.name: _build_agent_graph(spec) for spec in AGENTS if spec.name != "orchestrator"}


# --------------------------------------------------------------------------- the orchestrator


@dataclass
class DemoRuntime:
    """What the orchestrator's nodes need besides the state (LangGraph ``context_schema``)."""

    obs: ObservabilityConnectorAgent
    graphs: dict[str, Any]
    handlers: dict[str, Any]


class OrchestratorState(TypedDict, total=False):
    plan: RequestPlan
    intent: str
    notes: Annotated[list[str], operator.add]
    agents_run: list[str]
    fallbacks: list[str]
    answer: str


_ROUTER_LLM = DemoChatModel(model=ORCHESTRATOR.model, provider=ORCHESTRATOR.provider)


async def _classify_intent(state: OrchestratorState, config: RunnableConfig) -> dict[str, Any]:
    plan = state["plan"]
    step = plan.orchestrator.nodes["classify_intent"]
    messages = [
        SystemMessage(f"Classify the request into one of: {', '.join(INTENTS)}."),
        HumanMessage(f"[{plan.request_id}] {plan.question}"),
    ]
    await _ROUTER_LLM.ainvoke(messages, config, latency_ms=step.llm_ms)
    return {"intent": plan.intent}


async def _dispatch(state: OrchestratorState, config: RunnableConfig, runtime: Runtime[DemoRuntime]) -> dict[str, Any]:
    """Run the pipeline; a failing agent gets a fallback answer instead of failing the request.

    Each agent call gets its own ``invoke_agent`` span under this node's span
    (``node_context``), so the agent's graph — recorded once, by the agent's own handler —
    nests under it, and a fallback is marked right where it happened.
    """
    rt = runtime.context
    plan = state["plan"]
    notes: list[str] = []
    ran: list[str] = []
    fallbacks: list[str] = []
    for step in plan.steps:
        agent = step.agent
        async with rt.obs.span(
            "invoke_agent",
            "orchestrator",
            rt.obs.node_context(config),
            attributes={"target_agent": agent, "request_id": plan.request_id},
        ) as call:
            try:
                result = await rt.graphs[agent].ainvoke(
                    {"request_id": plan.request_id, "question": plan.question, "step": step, "notes": notes[-3:]},
                    {
                        "callbacks": [rt.handlers[agent]],
                        "run_name": agent,
                        "metadata": {"request_id": plan.request_id, "intent": plan.intent},
                    },
                )
                notes.extend(result.get("notes", [])[-2:])
                ran.append(agent)
            except Exception as exc:  # the orchestrator degrades; it never fails the request
                call.set_attributes({"fallback_used": True, "fallback.reason": f"{type(exc).__name__}: {exc}"[:200]})
                await asyncio.sleep(plan.fallback_ms / 1000)  # a cached, degraded answer
                notes.append(f"{agent}: fallback answer (cached)")
                fallbacks.append(agent)
    return {"notes": notes, "agents_run": ran, "fallbacks": fallbacks}


async def _synthesize(state: OrchestratorState, config: RunnableConfig) -> dict[str, Any]:
    plan = state["plan"]
    step = plan.orchestrator.nodes["synthesize"]
    degraded = f" (degraded: {', '.join(state.get('fallbacks') or [])})" if state.get("fallbacks") else ""
    messages = [
        SystemMessage("Write the final answer for the user from the agents' findings."),
        HumanMessage(f"[{plan.request_id}] {plan.question}{degraded}\n" + "\n".join(state.get("notes") or [])),
    ]
    # The answer the user reads is streamed, as chat front ends do: its span gets a time to first token.
    reply = await _ROUTER_LLM.ainvoke(messages, config, latency_ms=step.llm_ms, stream=True)
    return {"answer": str(reply.content)}


@functools.cache
def orchestrator_graph() -> Any:
    builder = StateGraph(OrchestratorState, context_schema=DemoRuntime)
    builder.add_node("classify_intent", _classify_intent)
    builder.add_node("dispatch", _dispatch)  # type: ignore[arg-type]  # config + runtime: no stub overload
    builder.add_node("synthesize", _synthesize)
    builder.add_edge(START, "classify_intent")
    builder.add_edge("classify_intent", "dispatch")
    builder.add_edge("dispatch", "synthesize")
    builder.add_edge("synthesize", END)
    return builder.compile(name="orchestrator")
