"""How likely a model finds a short continuation of a prompt: the RLP agent's reward signal.

The embedded model scores the continuation exactly (its tokens' log-probs
after the prompt, summed). Chat APIs seldom score a given text, but most
return the top-k log-probs of what they generate, so elsewhere one generated
token gives the continuation's first-token log-prob, or, when it is not among
the top k, an upper bound on it. Providers that return neither give ``None``
with the reason, never an exception: the caller reports it and falls back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from convergence.llm import client
from convergence.llm.local_provider import MAX_TOP_LOGPROBS, PROVIDER, acontinuation_logprob, check_model

_DETAIL_CHARS = 300
_LEADING_SPACE = re.compile(r"^[\s\u2581\u0120]+")
"""Whitespace and the word-start markers raw tokens carry: SentencePiece '▁', GPT-2 byte-level 'Ġ'."""


@dataclass(frozen=True, slots=True)
class LogProb:
    """One measurement and how it was made; values from different methods are not comparable."""

    value: float | None
    """Natural-log probability; ``None`` when the provider gives none."""
    method: str
    """``prompt``: exact, summed over the continuation's tokens. ``top_logprobs``: the
    first generated token's log-prob, read from the provider's top-k list.
    ``top_logprobs_bound``: the continuation was not in the top k; ``value`` is
    the lowest listed log-prob, an upper bound. ``none``: no measurement."""
    detail: str = ""
    """Why ``none`` (the provider's error, or that it returned no log-probs)."""
    failed: bool = False
    """``none`` because the call raised (worth a retry), not because the provider has no log-probs."""


async def logprob_of(
    model: str,
    prompt: str,
    continuation: str,
    *,
    api_base: str | None = None,
    api_key: str | None = None,
    timeout: float = 60.0,
    top_k: int = MAX_TOP_LOGPROBS,
) -> LogProb:
    """Log-probability that ``model`` continues ``prompt`` with ``continuation``.

    Exact for the embedded model. Elsewhere ``continuation`` should be one
    short word: it is matched, ignoring leading whitespace and word-start
    markers, against the top ``top_k`` first tokens of a one-token, temperature-0
    answer to ``prompt`` sent as a user message. ``timeout`` is LiteLLM's
    (the embedded model has none). An unknown ``local/...`` model raises
    LiteLLM's ``NotFoundError`` as a completion would; any other failure is a
    ``"none"`` result.
    """
    if not 1 <= top_k <= MAX_TOP_LOGPROBS:
        raise ValueError(f"top_k must be between 1 and {MAX_TOP_LOGPROBS}, got {top_k}")
    if model.startswith(f"{PROVIDER}/"):
        check_model(model)
        try:
            return LogProb(await acontinuation_logprob(prompt, continuation), "prompt")
        except ValueError as exc:  # prompt + continuation exceed the context: no measurement, as elsewhere
            return LogProb(None, "none", detail=_short(exc))
    word = _word(continuation)
    if not word:
        return LogProb(None, "none", detail="the continuation is empty once leading whitespace is removed")
    try:
        resp = await client.acompletion(
            model,
            [{"role": "user", "content": prompt}],
            api_base=api_base,
            api_key=api_key,
            timeout=timeout,
            max_tokens=1,
            temperature=0,
            logprobs=True,
            top_logprobs=top_k,
        )
    except Exception as exc:  # noqa: BLE001 - any provider failure means "no measurement", reported by the caller
        return LogProb(None, "none", detail=_short(exc), failed=True)
    top = _first_token_top_logprobs(resp)
    if not top:
        return LogProb(None, "none", detail="the provider returned no top_logprobs")
    matches = [lp for token, lp in top if _word(token) == word]
    if matches:
        return LogProb(max(matches), "top_logprobs")
    return LogProb(min(lp for _, lp in top), "top_logprobs_bound")


def _word(token: str) -> str:
    return _LEADING_SPACE.sub("", token)


def _first_token_top_logprobs(resp: Any) -> list[tuple[str, float]]:
    """``(token, logprob)`` pairs of ``choices[0].logprobs.content[0].top_logprobs``; [] if absent.

    Read field by field: LiteLLM returns pydantic objects or plain dicts
    depending on the provider.
    """
    choices = _get(resp, "choices") or []
    content = _get(_get(choices[0], "logprobs"), "content") if choices else None
    if not content:
        return []
    pairs: list[tuple[str, float]] = []
    for entry in _get(content[0], "top_logprobs") or []:
        token, logprob = _get(entry, "token"), _get(entry, "logprob")
        if isinstance(token, str) and isinstance(logprob, int | float):
            pairs.append((token, float(logprob)))
    return pairs


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _short(exc: BaseException) -> str:
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first_line}"[:_DETAIL_CHARS]
