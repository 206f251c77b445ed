"""Target for any LiteLLM model string (hosted providers, OpenAI-compatible
servers, and the embedded ``local/gemma-3-270m``)."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from convergence.config.models import LiteLLMTargetConfig
from convergence.core.types import CallResult, Config, TestCase
from convergence.llm.client import acompletion, litellm_module, response_cost, response_text
from convergence.targets.base import TargetError, call_number, retry_after_from_headers
from convergence.targets.templating import TemplateError, render, variables_for

COMPLETION_KWARGS: frozenset[str] = frozenset(
    {
        "model",
        "temperature",
        "top_p",
        "top_k",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "repeat_penalty",
        "response_format",
        "n",
    }
)
"""Search-space parameters sent to the call when ``call_params`` is not given;
any other parameter is only a template variable."""

_RETRYABLE_NAMES = (
    "RateLimitError",
    "Timeout",
    "APIConnectionError",
    "ServiceUnavailableError",
    "InternalServerError",
)
_FATAL_NAMES = (
    "ContextWindowExceededError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "BadRequestError",
    "UnprocessableEntityError",
)
_MAX_MESSAGE = 600


class LiteLLMTarget:
    """One chat/completion call per (configuration, test case) through LiteLLM."""

    def __init__(self, cfg: LiteLLMTargetConfig, name: str | None = None) -> None:
        self.cfg = cfg
        self.name = name or cfg.model
        self._call_names = frozenset(cfg.call_params) if cfg.call_params is not None else COMPLETION_KWARGS

    def messages_for(self, params: Config, case: TestCase) -> list[dict[str, str]]:
        """The rendered messages for one call (also used for dry runs and traces)."""
        variables = variables_for(params, case)
        if self.cfg.messages is not None:
            return [
                {**m, "content": render(m.get("content", ""), variables)} for m in self.cfg.messages
            ]
        return [{"role": "user", "content": render(self.cfg.prompt or "", variables)}]

    def call_kwargs(self, params: Config) -> dict[str, Any]:
        """Fixed ``cfg.params`` overridden by the configuration's call parameters."""
        kwargs = dict(self.cfg.params)
        kwargs.update({k: v for k, v in params.items() if k in self._call_names})
        return kwargs

    def _api_key(self) -> str | None:
        env = self.cfg.api_key_env
        if env is None:
            return None
        value = os.environ.get(env)
        if not value:
            raise TargetError(
                f"environment variable {env} is not set (api_key_env for model {self.cfg.model}); "
                f"export {env}=<your key> and run again",
                retryable=False,
            )
        return value

    async def call(self, params: Config, case: TestCase) -> CallResult:
        try:
            messages = self.messages_for(params, case)
        except TemplateError as exc:
            raise TargetError(str(exc), retryable=False) from exc
        kwargs = self.call_kwargs(params)
        model = str(kwargs.pop("model", self.cfg.model))
        api_key = self._api_key()
        start = time.perf_counter()
        try:
            resp = await acompletion(
                model,
                messages,
                api_base=self.cfg.api_base,
                api_key=api_key,
                timeout=self.cfg.timeout_seconds,
                **kwargs,
            )
        except TargetError:
            raise
        except Exception as exc:  # every provider error becomes a TargetError
            raise map_litellm_error(exc, model) from exc
        latency_ms = (time.perf_counter() - start) * 1000.0
        usage = getattr(resp, "usage", None)
        prompt_tokens, completion_tokens = (
            int(call_number(getattr(usage, name, None), name, integer=True, source=f"{model}'s usage"))
            for name in ("prompt_tokens", "completion_tokens")
        )
        choices = getattr(resp, "choices", None) or []
        return CallResult(
            output=response_text(resp),
            latency_ms=latency_ms,
            cost_usd=call_number(
                response_cost(resp), "cost_usd", source=f"LiteLLM's price for {getattr(resp, 'model', None) or model}"
            ),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            raw={
                "model": getattr(resp, "model", model),
                "finish_reason": getattr(choices[0], "finish_reason", None) if choices else None,
            },
        )

    async def aclose(self) -> None:
        """Nothing to release: LiteLLM manages its own HTTP clients."""


def map_litellm_error(exc: BaseException, model: str) -> TargetError:
    """Classify a LiteLLM exception: transient ones are retried by the runner,
    client errors (bad key, bad request, unknown model, context too long) are not."""
    litellm = litellm_module()
    status = getattr(exc, "status_code", None)
    status = status if isinstance(status, int) else None
    message = f"{model}: {type(exc).__name__}: {str(exc)[:_MAX_MESSAGE]}"
    for name in _FATAL_NAMES:
        cls = getattr(litellm, name, None)
        if cls is not None and isinstance(exc, cls):
            return TargetError(message, retryable=False, status_code=status)
    for name in _RETRYABLE_NAMES:
        cls = getattr(litellm, name, None)
        if cls is not None and isinstance(exc, cls):
            return TargetError(message, retryable=True, status_code=status, retry_after=_retry_after(exc))
    # Unknown failure: retry unless the status says the request itself is wrong.
    retryable = status is None or status >= 500 or status in (408, 409, 429)
    return TargetError(
        message, retryable=retryable, status_code=status, retry_after=_retry_after(exc) if retryable else None
    )


def _retry_after(exc: BaseException) -> float | None:
    """The provider's Retry-After, in seconds. LiteLLM keeps the provider's
    response headers on ``litellm_response_headers`` (its ``RateLimitError``
    rebuilds ``response`` without them); ``response.headers`` and ``headers``
    (set by a LiteLLM proxy) are the fallbacks."""
    candidates: list[object] = [getattr(exc, "litellm_response_headers", None)]
    with contextlib.suppress(Exception):  # some SDK errors raise on .response when there is none
        candidates.append(getattr(getattr(exc, "response", None), "headers", None))
    candidates.append(getattr(exc, "headers", None))
    for headers in candidates:
        seconds = retry_after_from_headers(headers)
        if seconds is not None:
            return seconds
    return None
