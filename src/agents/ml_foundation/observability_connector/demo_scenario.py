"""The demo's scenario: the 18 agents of the 6 tiers, the request intents, and every request's
plan decided up front from the seed (:func:`build_plans`).

Deterministic given the seed: which requests run, which agents they use, token counts and
which calls fail all come from ``random.Random(seed)``; only wall-clock timings vary. The
global ``random`` module is never seeded: span ids come from it, and seeding it would make
two runs with the same seed produce colliding ids.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

__all__ = [
    "AGENTS",
    "AGENT_SPECS",
    "ALL_AGENT_NAMES",
    "INTENTS",
    "ORCHESTRATOR",
    "ConversationPlan",
    "RequestPlan",
    "build_plans",
    "conversation_plan",
]


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


# --------------------------------------------------------------------------- the conversation


@dataclass(frozen=True, slots=True)
class ConversationPlan:
    """The demo's one conversation (:mod:`demo_conversation`): a proposal, a human's answer, the apply."""

    thread_prefix: str  # the run adds a unique suffix
    question: str
    answer: str  # what the human answers the interrupt with
    tool_ms: float
    propose_ms: float
    apply_ms: float
    human_ms: float  # how long the human takes to answer


def conversation_plan(seed: int, time_scale: float = 1.0) -> ConversationPlan:
    """Decided from the seed alone (its own RNG: the requests' plans do not change with it)."""
    rng = random.Random(f"conversation-{seed}")
    spec = AGENT_SPECS["resource_optimizer"]
    return ConversationPlan(
        thread_prefix=f"budget-review-{seed}",
        question=f"Reallocate the {rng.choice(_CAMPAIGNS)} budget across {rng.choice(_REGIONS)} "
        f"to lift {rng.choice(_KPIS)}.",
        answer=rng.choice(("approved by the brand lead", "approved, cap any region at 40%")),
        tool_ms=_latency(rng, spec, time_scale, 0.6),
        propose_ms=_latency(rng, spec, time_scale, 2.0),
        apply_ms=_latency(rng, spec, time_scale),
        human_ms=round(rng.uniform(5.0, 20.0) * time_scale, 3),
    )
