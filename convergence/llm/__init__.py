"""LLM access through LiteLLM, plus the embedded local model.

Re-exports are lazy so importing :mod:`convergence.llm` never imports
LiteLLM or llama.cpp.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "LOCAL_MODEL",
    "acompletion",
    "acontinuation_logprob",
    "continuation_logprob",
    "response_cost",
    "response_text",
    "response_usage",
]

_CLIENT = {"acompletion", "response_cost", "response_text", "response_usage"}
_LOCAL = {"LOCAL_MODEL", "continuation_logprob", "acontinuation_logprob"}


def __getattr__(name: str) -> Any:
    if name in _CLIENT:
        from convergence.llm import client

        return getattr(client, name)
    if name in _LOCAL:
        from convergence.llm import local_provider

        return getattr(local_provider, name)
    raise AttributeError(f"module 'convergence.llm' has no attribute {name!r}")
