"""The demo's stand-ins for providers: a chat model and tools that behave like real integrations,
with latency and failure injected per call by the plan (:mod:`demo_scenario`).
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.tools import BaseTool, InjectedToolArg, tool

__all__ = [
    "FIRST_TOKEN_SHARE",
    "TOOLS",
    "DataValidationError",
    "DemoChatModel",
    "RateLimitError",
    "UpstreamTimeoutError",
]

#: Share of a streamed call's latency before its first token: providers spend most of a short
#: answer's time on the prompt, then stream the words.
FIRST_TOKEN_SHARE = 0.4
_WORDS_PER_CHUNK = 4


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

    It streams as integrations do: ``stream=True`` on a call, ``streaming=True`` on the model,
    or a streaming consumer (LangGraph's ``stream_mode="messages"``) make LangChain call
    ``_stream`` / ``_astream``, which open with an empty chunk (a provider's role-only delta),
    produce the first words after :data:`FIRST_TOKEN_SHARE` of the call's latency and the rest
    over the remainder, with the usage on the last chunk.
    """

    model: str
    provider: str
    streaming: bool = False

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

    def _chunks(self, messages: list[BaseMessage], latency_ms: float) -> Iterator[tuple[float, ChatGenerationChunk]]:
        """(seconds to wait before it, chunk) for one streamed answer: the same words and usage
        as the non-streamed answer, so streaming changes the timing and nothing else."""
        message = self._answer(messages).generations[0].message
        pieces = re.split(r"(?<=\s)", str(message.content))
        chunks = ["".join(pieces[i : i + _WORDS_PER_CHUNK]) for i in range(0, len(pieces), _WORDS_PER_CHUNK)]
        first_s = latency_ms * FIRST_TOKEN_SHARE / 1000
        gap_s = (latency_ms / 1000 - first_s) / max(1, len(chunks))
        yield 0.0, ChatGenerationChunk(message=AIMessageChunk(content=""))
        for index, text in enumerate(chunks):
            yield (first_s if index == 0 else gap_s), ChatGenerationChunk(message=AIMessageChunk(content=text))
        yield (
            gap_s,
            ChatGenerationChunk(
                message=AIMessageChunk(
                    content="",
                    usage_metadata=message.usage_metadata,  # type: ignore[attr-defined]
                    response_metadata=message.response_metadata,
                    chunk_position="last",
                )
            ),
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        *,
        latency_ms: float = 0.0,
        fail_with: str | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        error = self._failure(fail_with)
        if error is not None:
            time.sleep(latency_ms * FIRST_TOKEN_SHARE / 1000)
            raise error
        for delay, chunk in self._chunks(messages, latency_ms):
            time.sleep(delay)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        *,
        latency_ms: float = 0.0,
        fail_with: str | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        error = self._failure(fail_with)
        if error is not None:
            await asyncio.sleep(latency_ms * FIRST_TOKEN_SHARE / 1000)
            raise error
        for delay, chunk in self._chunks(messages, latency_ms):
            await asyncio.sleep(delay)
            yield chunk


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
