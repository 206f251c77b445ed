"""The society's LLM client: completions and log-prob measurements for agents.

Every call goes through :func:`convergence.llm.client.acompletion` (LiteLLM),
with a timeout, retries with exponential backoff (tenacity) and a count of
calls and seconds spent, so an agent's LLM time is visible and budgeted.

Structured answers: a JSON schema goes out as ``response_format``; the
embedded model turns it into a llama.cpp grammar. A provider that refuses
``response_format`` is remembered and asked in plain text from then on (the
agent's strict parser and one repair attempt take over).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import anyio
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from convergence.errors import ConvergenceError
from convergence.llm.logprob import LogProb, logprob_of

log = logging.getLogger(__name__)


class AgentLLMError(ConvergenceError):
    """The society LLM could not be reached or refused every attempt."""


@dataclass(slots=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float


def _retryable(exc: BaseException) -> bool:
    # bad requests, auth errors and refused parameters will not get better by asking again
    if _refuses_response_format(exc) or _refuses(exc, "seed"):
        return False
    name = type(exc).__name__
    return not any(k in name for k in ("BadRequest", "Authentication", "NotFound", "PermissionDenied",
                                       "ContextWindow", "UnsupportedParams"))


_REFUSAL_WORDS = ("unsupported", "not support", "badrequest", "validation", "should be", "invalid", "unknown")
"""How providers word a refused parameter: LiteLLM's UnsupportedParamsError, a 400, or (llama_cpp.server)
a 500 carrying a pydantic validation error such as "Input should be 'text' or 'json_object'"."""


def _refuses(exc: BaseException, param: str) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return param in text and any(w in text for w in _REFUSAL_WORDS)


def _refuses_response_format(exc: BaseException) -> bool:
    return _refuses(exc, "response_format") or _refuses(exc, "json_schema")


class LLMClient:
    """One model for an agent: ``await complete(prompt, ...)`` and
    ``await logprob(prompt, continuation)``. Accepts any LiteLLM model string;
    the default is the embedded ``local/gemma-3-270m`` (no key, no network)."""

    def __init__(
        self,
        model: str = "local/gemma-3-270m",
        *,
        api_base: str | None = None,
        api_key_env: str | None = None,
        timeout_seconds: float = 60.0,
        max_retries: int = 2,
        backoff_seconds: float = 0.5,
    ) -> None:
        self.model = model
        self.api_base = api_base
        self.api_key_env = api_key_env
        self.timeout_seconds = timeout_seconds
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self.formats = ["json_schema", "json_object", "plain"]
        """How a schema is sent, best first: OpenAI's ``json_schema``; ``json_object`` with the schema
        (llama.cpp's server reads it); plain text for the strict parser. A refused form is dropped for good."""
        self.seeded = True
        """False once the provider refused ``seed`` (answers are then not reproducible; said in the docs)."""
        self.calls = 0
        self.seconds = 0.0
        self.cost_usd = 0.0
        """LiteLLM's price of the calls so far (0 for the embedded model and unpriced servers)."""

    def _api_key(self) -> str | None:
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise AgentLLMError(f"environment variable {self.api_key_env} is not set (society.llm.api_key_env "
                                f"for model {self.model})")
        return key

    async def _with_retries(self, fn: Any) -> Any:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=wait_exponential_jitter(initial=self.backoff_seconds, max=30.0),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                self.calls += 1
                with anyio.fail_after(self.timeout_seconds + 5.0):  # a guard over LiteLLM's own timeout
                    return await fn()
        raise AssertionError("unreachable")  # pragma: no cover

    async def complete(
        self,
        prompt: str,
        *,
        max_tokens: int,
        temperature: float,
        stop: list[str] | None = None,
        seed: int | None = None,
        schema: dict[str, Any] | None = None,
    ) -> Completion:
        """The model's continuation of ``prompt`` (a single user message; the
        embedded base model continues it verbatim)."""
        from convergence.llm.client import acompletion, response_cost, response_text, response_usage

        params: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature}
        if stop:
            params["stop"] = stop
        key = self._api_key()
        start = time.perf_counter()

        async def call(form: str) -> Any:
            extra = dict(params)
            if seed is not None and self.seeded:
                extra["seed"] = seed
            if schema is not None and form == "json_schema":
                extra["response_format"] = {"type": "json_schema",
                                            "json_schema": {"name": "configuration", "schema": schema}}
            elif schema is not None and form == "json_object":
                extra["response_format"] = {"type": "json_object", "schema": schema}
            return await acompletion(self.model, [{"role": "user", "content": prompt}], api_base=self.api_base,
                                     api_key=key, timeout=self.timeout_seconds, **extra)

        try:
            resp = None
            for _ in range(4):  # at most: drop seed, then each structured form
                try:
                    resp = await self._with_retries(lambda: call(self.formats[0]))
                    break
                except Exception as exc:
                    if self.seeded and seed is not None and _refuses(exc, "seed"):
                        self.seeded = False
                    elif schema is not None and len(self.formats) > 1 and _refuses_response_format(exc):
                        self.formats.pop(0)
                    else:
                        raise
            if resp is None:
                raise AgentLLMError(f"{self.model}: refused every form of the request")
        except AgentLLMError:
            raise
        except Exception as exc:
            raise AgentLLMError(f"{self.model}: {type(exc).__name__}: {str(exc)[:300]}") from exc
        finally:
            self.seconds += time.perf_counter() - start
        cost = response_cost(resp)
        if 0.0 <= cost < math.inf:
            self.cost_usd += cost
        else:  # a broken price entry: the run's cost total must stay a number
            log.warning("%s: LiteLLM's price map gives cost %s for this call; counted as 0", self.model, cost)
        prompt_tokens, completion_tokens = response_usage(resp)
        return Completion(response_text(resp), prompt_tokens, completion_tokens, time.perf_counter() - start)

    async def logprob(self, prompt: str, continuation: str) -> LogProb:
        """log p(continuation | prompt): exact on the embedded model, the first
        token's ``top_logprobs`` elsewhere, ``value=None`` when the provider has none."""
        start = time.perf_counter()
        try:
            for attempt in range(self.max_retries + 1):
                self.calls += 1
                measured = await logprob_of(self.model, prompt, continuation, api_base=self.api_base,
                                            api_key=self._api_key(), timeout=self.timeout_seconds)
                if not measured.failed or attempt == self.max_retries:
                    return measured
                await anyio.sleep(min(30.0, self.backoff_seconds * 2**attempt))  # a transient error: back off
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            self.seconds += time.perf_counter() - start


def as_client(llm: str | LLMClient | None, default_model: str = "local/gemma-3-270m") -> LLMClient:
    """``llm_provider`` as users pass it: a LiteLLM model string or a client."""
    if isinstance(llm, LLMClient):
        return llm
    return LLMClient(llm or default_model)
