"""``obs-connector demo``: the 18-agent system under a realistic load, traced end to end.

Nothing else needs to be installed or running. An orchestrator (itself a compiled LangGraph
graph) routes N requests through pipelines of the 18 agents of the 6 tiers. Every agent is a
small compiled ``StateGraph`` whose nodes call tools and a fake chat model that reports token
usage and its model name exactly as a provider integration does, so the connector's callback
handler sees what it would see in production. Latencies are lognormal per agent, a few agent
calls fail (rate limits, tool timeouts, validation errors) and the orchestrator recovers with
a fallback that is recorded on its span.

Everything is traced only through the public surface a real deployment uses:
``obs.span("route_request", "orchestrator")`` around each request (one request = one trace),
``config={"callbacks": [obs.callback_handler(agent)]}`` on every graph invocation, and the
span attribute ``fallback_used``. The closing report is read back from the STORE, never from
memory, so it shows what was actually delivered.

Deterministic given the seed: which requests run, which agents they use, token counts and
which calls fail all come from ``random.Random(seed)``; only wall-clock timings vary. The
global ``random`` module is never seeded: span ids come from it, and seeding it would make
two runs with the same seed produce colliding ids.
"""

from __future__ import annotations

import asyncio
import functools
import math
import operator
import random
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, TypedDict

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, InjectedToolArg, tool
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from .agent import ObservabilityConnectorAgent
from .runtime import ConnectorContext

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "AGENTS",
    "ALL_AGENT_NAMES",
    "INTENTS",
    "DemoChatModel",
    "DemoResult",
    "RequestPlan",
    "build_plans",
    "run_demo",
]

#: The window the closing report covers; a demo run takes seconds, so the last hour holds it.
REPORT_WINDOW = "1h"


# --------------------------------------------------------------------------- failures


class RateLimitError(RuntimeError):
    """What a provider's 429 looks like to an agent."""


class UpstreamTimeoutError(TimeoutError):
    """A tool's backend (warehouse, registry, solver) did not answer in time."""


class DataValidationError(ValueError):
    """An agent's own check rejected its input data."""


# --------------------------------------------------------------------------- the fake model


class DemoChatModel(BaseChatModel):
    """A chat model that answers like a provider integration, without a provider.

    It publishes ``ls_model_name`` / ``ls_provider`` through ``_get_ls_params`` (what real
    integrations override, and what the callback handler reads), and every ``AIMessage``
    carries ``usage_metadata`` and ``response_metadata["model_name"]``. Output size is a
    function of the prompt, so the same request always "costs" the same tokens. Latency and
    failure are injected per call (``latency_ms``, ``fail_with``) by the demo's plan.
    """

    model: str
    provider: str

    @property
    def _llm_type(self) -> str:
        return f"{self.provider}-demo-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "provider": self.provider}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = self.provider
        params["ls_model_name"] = self.model
        return params

    def _answer(self, messages: list[BaseMessage]) -> ChatResult:
        prompt = "\n".join(str(m.content) for m in messages)
        rng = random.Random(zlib.crc32(prompt.encode()))
        input_tokens = len(prompt) // 4 + 4 * len(messages)
        output_tokens = max(12, min(1_500, int(rng.lognormvariate(math.log(140), 0.55))))
        usage = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        }
        last = str(messages[-1].content) if messages else ""
        message = AIMessage(
            content=f"Done: {last[:80]}",
            usage_metadata=usage,  # type: ignore[arg-type]
            response_metadata={"model_name": self.model, "finish_reason": "stop", "model_provider": self.provider},
        )
        return ChatResult(generations=[ChatGeneration(message=message)], llm_output={"model_name": self.model})

    @staticmethod
    def _failure(fail_with: str | None) -> Exception | None:
        if fail_with == "rate_limit":
            return RateLimitError("429 Too Many Requests: rate limit reached for requests per minute")
        if fail_with:
            return RuntimeError(f"provider error: {fail_with}")
        return None

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        *,
        latency_ms: float = 0.0,
        fail_with: str | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        time.sleep(latency_ms / 1000)
        error = self._failure(fail_with)
        if error is not None:
            raise error
        return self._answer(messages)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        *,
        latency_ms: float = 0.0,
        fail_with: str | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        await asyncio.sleep(latency_ms / 1000)
        error = self._failure(fail_with)
        if error is not None:
            raise error
        return self._answer(messages)


# --------------------------------------------------------------------------- tools


def _make_tool(name: str, description: str, unit: str) -> BaseTool:
    """One async ``@tool``; latency and failure are injected args, hidden from the model's schema."""

    async def run(
        query: str,
        latency_ms: Annotated[float, InjectedToolArg] = 0.0,
        fail: Annotated[bool, InjectedToolArg] = False,
    ) -> str:
        await asyncio.sleep(latency_ms / 1000)
        if fail:
            raise UpstreamTimeoutError(f"{name} did not answer within 30 s")
        count = zlib.crc32(f"{name}:{query}".encode()) % 5_000 + 1
        return f"{name}: {count} {unit}"

    return tool(name, description=description)(run)


TOOLS: dict[str, BaseTool] = {
    t.name: t
    for t in (
        _make_tool("query_warehouse", "Run a read-only SQL query against the analytics warehouse.", "rows"),
        _make_tool("lookup_data_catalog", "Find datasets and their owners in the data catalog.", "datasets"),
        _make_tool("run_quality_checks", "Run schema and freshness checks on a dataset.", "checks passed"),
        _make_tool("compute_statistics", "Compute summary statistics and tests on a dataset.", "statistics"),
        _make_tool("query_feature_store", "Read feature vectors from the feature store.", "features"),
        _make_tool("query_model_registry", "Look up models, versions and their metrics.", "model versions"),
        _make_tool("submit_training_job", "Submit a training job and wait for its metrics.", "epochs"),
        _make_tool("deploy_endpoint", "Roll a model version out to a serving endpoint.", "replicas"),
        _make_tool("run_causal_estimator", "Fit a causal estimator (DML, DR learner) to a dataset.", "bootstrap draws"),
        _make_tool("lookup_experiment_registry", "Find past experiments on the same population.", "experiments"),
        _make_tool("query_span_store", "Read latency and error figures from the span store.", "spans"),
        _make_tool("solve_allocation", "Solve a budget allocation as a linear program.", "constraints"),
    )
}


# --------------------------------------------------------------------------- the 18 agents


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    tool: str | None = None
    llm: bool = False
    validates: bool = False  # the node checks its data and may reject it

    @property
    def failure_kinds(self) -> tuple[str, ...]:
        kinds = []
        if self.tool:
            kinds.append("tool")
        if self.validates:
            kinds.append("validation")
        if self.llm:
            kinds.append("llm")
        return tuple(kinds)


@dataclass(frozen=True, slots=True)
class AgentSpec:
    name: str
    tier: int
    provider: str
    model: str
    median_ms: float  # median latency of one LLM or tool call
    sigma: float  # lognormal spread: the tail that makes p99 differ from p50
    failure_rate: float  # chance that one invocation of the agent fails
    nodes: tuple[NodeSpec, ...]
    purpose: str


_GPT4O = ("openai", "gpt-4o")
_GPT4O_MINI = ("openai", "gpt-4o-mini")
_SONNET = ("anthropic", "claude-3-5-sonnet")
_HAIKU = ("anthropic", "claude-3-5-haiku")

N = NodeSpec

AGENTS: tuple[AgentSpec, ...] = (
    # tier 0: ml_foundation
    AgentSpec("scope_definer", 0, *_GPT4O, 6, 0.45, 0.02,
              (N("parse_request", llm=True), N("define_scope", tool="lookup_data_catalog", llm=True)),
              "turns a business question into an analysis scope"),
    AgentSpec("data_preparer", 0, *_GPT4O_MINI, 7, 0.6, 0.05,
              (N("load_data", tool="query_warehouse"), N("validate", tool="run_quality_checks", validates=True),
               N("summarize", llm=True)),
              "loads and validates the data the scope needs"),
    AgentSpec("feature_analyzer", 0, *_GPT4O_MINI, 6, 0.5, 0.03,
              (N("compute_importance", tool="compute_statistics"), N("interpret", llm=True)),
              "ranks and explains candidate features"),
    AgentSpec("model_selector", 0, *_GPT4O, 7, 0.5, 0.03,
              (N("shortlist", tool="query_model_registry", llm=True), N("benchmark", tool="compute_statistics"),
               N("choose", llm=True)),
              "picks a model family and hyper-parameters"),
    AgentSpec("model_trainer", 0, *_GPT4O, 14, 0.7, 0.07,
              (N("prepare_run", tool="query_feature_store"), N("train", tool="submit_training_job"),
               N("evaluate", llm=True)),
              "trains and evaluates the chosen model"),
    AgentSpec("model_deployer", 0, *_GPT4O_MINI, 9, 0.55, 0.04,
              (N("package", tool="query_model_registry"), N("deploy", tool="deploy_endpoint"),
               N("verify", llm=True)),
              "rolls the model out and checks it serves"),
    AgentSpec("observability_connector", 0, *_GPT4O_MINI, 4, 0.35, 0.01,
              (N("collect_signals", tool="query_span_store"), N("assess_quality", llm=True)),
              "reports latency, error and token figures of the system"),
    # tier 1: coordination (the orchestrator's own graph is built separately below)
    AgentSpec("orchestrator", 1, *_GPT4O_MINI, 4, 0.35, 0.0,
              (N("classify_intent", llm=True), N("dispatch"), N("synthesize", llm=True)),
              "routes requests through the agents and synthesises the answer"),
    # tier 2: causal_analytics
    AgentSpec("causal_impact", 2, *_SONNET, 11, 0.6, 0.06,
              (N("build_dag", llm=True), N("estimate_effect", tool="run_causal_estimator", validates=True),
               N("interpret", llm=True)),
              "estimates the causal effect of an intervention"),
    AgentSpec("gap_analyzer", 2, *_SONNET, 8, 0.5, 0.03,
              (N("benchmark", tool="query_warehouse"), N("find_gaps", llm=True)),
              "finds performance gaps against benchmarks"),
    AgentSpec("heterogeneous_optimizer", 2, *_SONNET, 12, 0.65, 0.05,
              (N("estimate_cate", tool="run_causal_estimator"), N("segment", tool="compute_statistics"),
               N("recommend", llm=True)),
              "finds which segments respond best and how to target them"),
    # tier 3: monitoring
    AgentSpec("drift_monitor", 3, *_GPT4O_MINI, 5, 0.4, 0.02,
              (N("compute_drift", tool="compute_statistics"), N("assess", llm=True)),
              "detects data and prediction drift"),
    AgentSpec("experiment_designer", 3, *_SONNET, 9, 0.5, 0.03,
              (N("power_analysis", tool="compute_statistics"),
               N("design", tool="lookup_experiment_registry", llm=True)),
              "designs experiments with enough power"),
    AgentSpec("health_score", 3, *_GPT4O_MINI, 4, 0.4, 0.02,
              (N("collect_metrics", tool="query_span_store"), N("score", llm=True)),
              "scores system health from monitoring signals"),
    # tier 4: ml_predictions
    AgentSpec("prediction_synthesizer", 4, *_GPT4O, 8, 0.5, 0.03,
              (N("gather_predictions", tool="query_model_registry"), N("synthesize", llm=True)),
              "combines model predictions into one forecast"),
    AgentSpec("resource_optimizer", 4, *_GPT4O, 10, 0.6, 0.04,
              (N("formulate", llm=True), N("solve", tool="solve_allocation", validates=True)),
              "allocates budget across channels and regions"),
    # tier 5: self_improvement
    AgentSpec("explainer", 5, *_SONNET, 9, 0.5, 0.02,
              (N("compute_attributions", tool="compute_statistics"), N("narrate", llm=True)),
              "explains results in plain language"),
    AgentSpec("feedback_learner", 5, *_HAIKU, 6, 0.45, 0.03,
              (N("collect_feedback", tool="query_warehouse"), N("update_policy", llm=True)),
              "learns from user feedback on past answers"),
)  # fmt: skip

AGENT_SPECS: dict[str, AgentSpec] = {a.name: a for a in AGENTS}
ALL_AGENT_NAMES: tuple[str, ...] = tuple(a.name for a in AGENTS)
ORCHESTRATOR = AGENT_SPECS["orchestrator"]

#: Request types: (required agents, optional agents, relative frequency, question templates).
#: Together the required agents of all intents cover every agent, so any run with at least
#: len(INTENTS) requests exercises all 18 (the first len(INTENTS) requests take one intent each).
INTENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...], float, tuple[str, ...]]] = {
    "causal_effect": (
        ("scope_definer", "data_preparer", "causal_impact", "explainer"),
        ("heterogeneous_optimizer", "feedback_learner"),
        0.25,
        ("What was the causal impact of the {campaign} campaign on {kpi} in {region}?",
         "Did the {campaign} rep visits cause the {kpi} lift in {region}?"),
    ),
    "targeting": (
        ("scope_definer", "data_preparer", "heterogeneous_optimizer", "resource_optimizer"),
        ("causal_impact", "explainer"),
        0.15,
        ("Which {region} segments respond best to {campaign}, and where should budget go?",),
    ),
    "performance_gap": (
        ("scope_definer", "gap_analyzer", "resource_optimizer", "explainer"),
        ("data_preparer", "prediction_synthesizer"),
        0.15,
        ("Why is {kpi} in {region} below benchmark, and what closes the gap?",),
    ),
    "model_lifecycle": (
        ("scope_definer", "data_preparer", "feature_analyzer", "model_selector", "model_trainer", "model_deployer"),
        ("explainer",),
        0.15,
        ("Retrain the {kpi} forecast for {region} with the latest data and deploy it.",),
    ),
    "system_health": (
        ("drift_monitor", "health_score", "observability_connector", "feedback_learner"),
        ("explainer",),
        0.15,
        ("Is the {kpi} model in {region} drifting, and how healthy is the system?",),
    ),
    "experiment_design": (
        ("scope_definer", "experiment_designer", "prediction_synthesizer"),
        ("explainer", "feedback_learner"),
        0.15,
        ("Design an experiment to test {campaign} on {kpi} in {region}.",),
    ),
}  # fmt: skip

#: The order agents run in within a request: scope, data and models before analysis, analysis
#: before the tiers that act on it, explanation and learning last.
PIPELINE_ORDER: tuple[str, ...] = (
    "scope_definer", "data_preparer", "feature_analyzer", "model_selector", "model_trainer", "model_deployer",
    "drift_monitor", "health_score", "observability_connector", "causal_impact", "heterogeneous_optimizer",
    "gap_analyzer", "experiment_designer", "prediction_synthesizer", "resource_optimizer", "explainer",
    "feedback_learner",
)  # fmt: skip

_CAMPAIGNS = ("Q3 speaker program", "digital detailing", "sample drop", "co-pay card", "HCP webinar")
_KPIS = ("new prescriptions", "market share", "adherence", "conversion rate", "rep call ROI")
_REGIONS = ("the Northeast", "the Midwest", "Bavaria", "Ontario", "the Pacific region")

_MAX_CALL_MS = 250.0  # clip the lognormal tail: a demo should show p99, not stall on it


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True, slots=True)
class NodeStep:
    node: str
    llm_ms: float
    tool_ms: float
    fail: str | None  # "tool" | "llm" | "validation" | None


@dataclass(frozen=True, slots=True)
class AgentStep:
    agent: str
    nodes: dict[str, NodeStep]

    @property
    def fails(self) -> bool:
        return any(step.fail for step in self.nodes.values())


@dataclass(frozen=True, slots=True)
class RequestPlan:
    index: int
    request_id: str
    intent: str
    question: str
    steps: tuple[AgentStep, ...]
    orchestrator: AgentStep
    fallback_ms: float


def _latency(rng: random.Random, spec: AgentSpec, scale: float, factor: float = 1.0) -> float:
    value = rng.lognormvariate(math.log(spec.median_ms * factor), spec.sigma)
    return round(min(value, _MAX_CALL_MS) * scale, 3)


def _agent_step(rng: random.Random, spec: AgentSpec, scale: float, can_fail: bool = True) -> AgentStep:
    failing_node: str | None = None
    kind: str | None = None
    if can_fail and rng.random() < spec.failure_rate:
        candidates = [n for n in spec.nodes if n.failure_kinds]
        node = rng.choice(candidates)
        failing_node, kind = node.name, rng.choice(node.failure_kinds)
    steps = {}
    for node in spec.nodes:
        steps[node.name] = NodeStep(
            node=node.name,
            llm_ms=_latency(rng, spec, scale) if node.llm else 0.0,
            tool_ms=_latency(rng, spec, scale, 0.6) if node.tool else 0.0,
            fail=kind if node.name == failing_node else None,
        )
    return AgentStep(spec.name, steps)


def build_plans(traces: int, seed: int, time_scale: float = 1.0) -> list[RequestPlan]:
    """Every request of a run, decided up front from the seed alone.

    Deciding everything before anything runs is what makes the run deterministic although
    requests execute concurrently and finish in a timing-dependent order.
    """
    rng = random.Random(seed)
    names = list(INTENTS)
    weights = [INTENTS[n][2] for n in names]
    first = names[:]
    rng.shuffle(first)
    plans = []
    for index in range(traces):
        intent = first[index] if index < len(first) else rng.choices(names, weights)[0]
        required, optional, _weight, templates = INTENTS[intent]
        chosen = set(required) | {a for a in optional if rng.random() < 0.35}
        pipeline = [a for a in PIPELINE_ORDER if a in chosen]
        question = rng.choice(templates).format(
            campaign=rng.choice(_CAMPAIGNS), kpi=rng.choice(_KPIS), region=rng.choice(_REGIONS)
        )
        steps = tuple(_agent_step(rng, AGENT_SPECS[a], time_scale) for a in pipeline)
        plans.append(
            RequestPlan(
                index=index,
                request_id=f"req-{seed}-{index:05d}",
                intent=intent,
                question=question,
                steps=steps,
                orchestrator=_agent_step(rng, ORCHESTRATOR, time_scale, can_fail=False),
                fallback_ms=round(rng.uniform(0.5, 2.0) * time_scale, 3),
            )
        )
    return plans


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
    reply = await _ROUTER_LLM.ainvoke(messages, config, latency_ms=step.llm_ms)
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


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    trace_id: str
    plan: RequestPlan
    fallbacks: tuple[str, ...]


@dataclass
class DemoResult:
    """What a demo run did; every count except ``spans_produced`` is read from the store."""

    trace_ids: list[str]
    spans_produced: int  # finished spans the connector accepted (hot path)
    spans_stored: int  # spans of these traces found in the store afterwards
    spans_dropped: int
    requests: int
    agent_invocations: int
    fallbacks: int
    fallback_trace_ids: list[str]
    intents: dict[str, int]
    wall_time_s: float
    delivered: bool
    store: str
    sample_trace_id: str | None
    metrics: dict[str, Any] = field(default_factory=dict)
    opik: dict[str, Any] | None = None  # the Opik sink's status after the run; None: Opik not configured


async def _run_request(runtime: DemoRuntime, plan: RequestPlan) -> RequestOutcome:
    obs = runtime.obs
    attributes = {"request_id": plan.request_id, "intent": plan.intent, "agents": len(plan.steps)}
    async with obs.span("route_request", "orchestrator", attributes=attributes) as root:
        state = await orchestrator_graph().ainvoke(
            {"plan": plan},
            config={
                "callbacks": [runtime.handlers["orchestrator"]],
                "run_name": "orchestrator",
                "metadata": {"request_id": plan.request_id},
            },
            context=runtime,
        )
        fallbacks = tuple(state.get("fallbacks") or ())
        if fallbacks:
            root.set_attributes({"degraded": True, "fallback_count": len(fallbacks)})
    return RequestOutcome(root.trace_id, plan, fallbacks)


def _pick_sample(outcomes: Sequence[RequestOutcome]) -> str | None:
    """A trace worth drawing: the smallest one with a fallback (short, and shows recovery)."""
    if not outcomes:
        return None
    degraded = [o for o in outcomes if o.fallbacks]
    pool = degraded or list(outcomes)
    return min(pool, key=lambda o: (len(o.plan.steps), o.plan.index)).trace_id


async def run_demo(
    traces: int = 50,
    seed: int = 7,
    console: Console | None = None,
    *,
    context: ConnectorContext | None = None,
    concurrency: int = 4,
    time_scale: float = 1.0,
    show_progress: bool = True,
) -> DemoResult:
    """Run the workload, flush, and report from the store.

    ``context`` defaults to the configured one (``OBS_STORE__SQLITE_PATH`` etc.). The
    connector is closed at the end (its store reopens lazily if the caller reads it again).
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    if traces < 1:
        raise ValueError(f"traces must be at least 1, got {traces}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    console = console or Console()
    ctx = context or ConnectorContext.from_config()
    plans = build_plans(traces, seed, time_scale)
    obs = ObservabilityConnectorAgent(context=ctx)
    try:
        runtime = DemoRuntime(
            obs=obs,
            graphs=agent_graphs(),
            handlers={name: obs.callback_handler(name) for name in ALL_AGENT_NAMES},
        )
        orchestrator_graph()  # compile before the clock starts
        console.print(
            f"[bold]obs-connector demo[/]: {traces} request(s) through {len(ALL_AGENT_NAMES)} agents "
            f"in 6 tiers, seed {seed}, {concurrency} concurrent — spans go to [cyan]{ctx.store.describe()}[/]"
            + (f" and Opik [cyan]{ctx.opik.url}[/] (project {ctx.opik.project_name})" if ctx.opik is not None else "")
        )
        accepted_before = obs.get_status()["spans_accepted"]
        started = time.perf_counter()
        semaphore = asyncio.Semaphore(concurrency)
        with Progress(
            SpinnerColumn(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not show_progress,
            transient=False,
        ) as progress:
            task = progress.add_task("routing requests", total=traces)

            async def one(plan: RequestPlan) -> RequestOutcome:
                async with semaphore:
                    outcome = await _run_request(runtime, plan)
                progress.advance(task)
                return outcome

            outcomes = await asyncio.gather(*(one(p) for p in plans))
        delivered = await obs.flush(timeout=60)
        opik_sent = await ctx.opik.wait_until_sent(timeout=30) if ctx.opik is not None else None
        wall = time.perf_counter() - started
        status = obs.get_status()
        result = await _report(
            console, ctx, outcomes, status, status["spans_accepted"] - accepted_before, wall, delivered
        )
        if ctx.opik is not None:
            result.opik = _report_opik(console, ctx.opik.get_status(), bool(opik_sent))
    finally:
        await obs.aclose()
    return result


def _report_opik(console: Console, status: dict[str, Any], all_sent: bool) -> dict[str, Any]:
    """One line on what reached Opik (read from the sink's own counters, confirmed by the server)."""
    colour = "green" if all_sent and not status["spans_rejected"] else "yellow"
    line = (
        f"Opik: [{colour}]{status['spans_sent']:,} span(s) sent[/] to [cyan]{status['url']}[/] "
        f"(workspace {status['workspace']}, project {status['project_name']}), circuit {status['state']}"
    )
    if status["backlog_spans"]:
        line += f", [yellow]{status['backlog_spans']:,} waiting to be sent[/]"
    if status["spans_rejected"]:
        line += f", [red]{status['spans_rejected']:,} rejected (see get_status()['opik']['rejections'])[/]"
    console.print(line)
    return status


async def _report(
    console: Console,
    ctx: ConnectorContext,
    outcomes: Sequence[RequestOutcome],
    status: dict[str, Any],
    produced: int,
    wall: float,
    delivered: bool,
) -> DemoResult:
    """Everything shown here is read back from the store."""
    from .nodes.metrics_aggregator import compute_metrics
    from .render import agent_table, overall_text, tier_table, trace_tree

    store = ctx.store
    trace_ids = [o.trace_id for o in outcomes]
    stored = 0
    for trace_id in trace_ids:
        stored += len(await store.get_spans_by_trace_id(trace_id))
    fallbacks = sum(len(o.fallbacks) for o in outcomes)
    intents: dict[str, int] = {}
    for o in outcomes:
        intents[o.plan.intent] = intents.get(o.plan.intent, 0) + 1

    colour = "green" if delivered and stored == produced else "yellow"
    console.print(
        f"\n[bold]{len(outcomes)}[/] requests, [bold]{sum(len(o.plan.steps) for o in outcomes)}[/] agent calls, "
        f"[bold]{fallbacks}[/] failure(s) recovered by fallback in [bold]{wall:.2f} s[/]; "
        f"[{colour}]{produced:,} spans produced, {stored:,} stored[/]"
        + (f", [red]{status['spans_dropped']} dropped[/]" if status.get("spans_dropped") else "")
    )
    if not delivered:
        last = status.get("last_flush") or {}
        counts = ", ".join(f"{last[k]:,} {k}" for k in ("rejected", "failed", "dropped", "pending") if last.get(k))
        console.print(f"[red]the final flush did not deliver every span ({counts or 'timed out'})[/]")

    fields, _from_cache, _age = await compute_metrics(ctx, REPORT_WINDOW)
    total = int(fields.get("total_spans_analyzed") or 0)
    caption = f"read from the store, window {REPORT_WINDOW}"
    if total > stored:
        caption += f" (includes {total - stored:,} spans of earlier runs in this window)"
    console.print()
    console.print(agent_table(fields, ctx.registry, title=f"Per agent — {caption}"))
    console.print()
    console.print(tier_table(fields, title="Per tier"))
    console.print()
    console.print(overall_text(fields))

    sample = _pick_sample(outcomes)
    if sample is not None:
        spans = await store.get_spans_by_trace_id(sample)
        console.print()
        console.print("[bold]One request, as stored[/] (the smallest trace with a fallback, if any):")
        console.print(trace_tree(spans, sample))

    where = store.describe()
    console.print()
    console.print(f"Spans are stored in [cyan]{where}[/]")
    console.print("Next: [bold]obs-connector metrics --window 1h[/]   per-agent / per-tier figures")
    if sample is not None:
        console.print(f"      [bold]obs-connector trace {sample}[/]   this request's tree")
    return DemoResult(
        trace_ids=trace_ids,
        spans_produced=produced,
        spans_stored=stored,
        spans_dropped=int(status.get("spans_dropped") or 0),
        requests=len(outcomes),
        agent_invocations=sum(len(o.plan.steps) for o in outcomes),
        fallbacks=fallbacks,
        fallback_trace_ids=[o.trace_id for o in outcomes if o.fallbacks],
        intents=intents,
        wall_time_s=wall,
        delivered=delivered,
        store=where,
        sample_trace_id=sample,
        metrics=fields,
    )
