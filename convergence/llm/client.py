"""The one LLM path: every model call in Convergence goes through LiteLLM here.

LiteLLM is imported lazily (``convergence --help`` must stay fast) and only
after ``LITELLM_LOCAL_MODEL_COST_MAP`` is set, so importing it never fetches
the price map over the network. The embedded model's provider (``local/...``)
is registered before each call, so ``local/gemma-3-270m`` works everywhere a
LiteLLM model string does; so is the test provider (``fake/...``, see
:mod:`convergence.llm.testing`) when a call names it.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

log = logging.getLogger(__name__)


def litellm_module() -> ModuleType:
    """Import LiteLLM offline-safe and quiet (no "Give Feedback" banners)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    return litellm


async def acompletion(
    model: str,
    messages: list[dict[str, str]],
    *,
    api_base: str | None = None,
    api_key: str | None = None,
    timeout: float = 60.0,
    **params: Any,
) -> Any:
    """Call ``model`` once through LiteLLM and return its ``ModelResponse``.

    ``num_retries=0``: retries with backoff belong to the target runner, which
    counts attempts and honours the run budget; LiteLLM retrying underneath
    would hide calls (and cost) from it.
    """
    litellm = litellm_module()
    from convergence.llm.local_provider import ensure_registered

    ensure_registered()
    if model.startswith("fake/"):
        from convergence.llm.testing import ensure_registered as ensure_fake_registered

        ensure_fake_registered()
    kwargs: dict[str, Any] = dict(params)
    if api_base is not None:
        kwargs["api_base"] = api_base
    if api_key is not None:
        kwargs["api_key"] = api_key
    return await litellm.acompletion(
        model=model, messages=messages, timeout=timeout, num_retries=0, **kwargs
    )


def response_text(resp: Any) -> str:
    """The first choice's text ('' when the model returned none)."""
    choices = getattr(resp, "choices", None) or []
    if not choices:
        return ""
    choice = choices[0]
    message = getattr(choice, "message", None)
    content = getattr(message, "content", None) if message is not None else None
    if content is None:
        content = getattr(choice, "text", None)
    return content if isinstance(content, str) else ("" if content is None else str(content))


def response_usage(resp: Any) -> tuple[int, int]:
    """``(prompt_tokens, completion_tokens)`` as the provider reported them; (0, 0) if absent."""
    usage = getattr(resp, "usage", None)
    if usage is None:
        return 0, 0
    prompt = getattr(usage, "prompt_tokens", None) or 0
    completion = getattr(usage, "completion_tokens", None) or 0
    return int(prompt), int(completion)


def response_cost(resp: Any) -> float:
    """USD cost from LiteLLM's price map and the real token usage, as the map gives it.

    0.0 when LiteLLM has no price for the model (a self-hosted
    OpenAI-compatible server, say) or gives none: cost is a metric, and a
    missing price must not turn a successful call into a failure. A price
    entry that is itself wrong (NaN, say) gives a NaN, infinite or negative
    cost: callers check (a target's call fails with a clear error, see
    :func:`convergence.targets.base.call_number`; an agent's counts 0).
    """
    try:
        litellm = litellm_module()
        cost = litellm.completion_cost(completion_response=resp)
    except Exception as exc:  # noqa: BLE001 - unknown prices are normal, never fatal
        log.debug("no price for %s: %s", getattr(resp, "model", "?"), exc)
        return 0.0
    try:
        return float(cost or 0.0)
    except (TypeError, ValueError):
        return 0.0
