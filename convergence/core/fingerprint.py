"""What a run is: the parts of a config that must not change under ``--resume``.

A resumed run replays its stored proposals and reuses stored case results by
configuration hash and test-case id. That is only correct while the target,
the search space, the test cases, the metrics and the search settings are the
ones the run started with; budgets, concurrency, timeouts, retries, the
execution backend, outputs and tracing may change freely. Each part is hashed on its own so a refusal can
say which part changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from convergence.config.models import ConvergenceConfig
from convergence.core.types import TestCase

_FREE_EXECUTION_KEYS = ("concurrency", "max_retries", "retry_delay_seconds", "timeout_seconds", "backend", "ray")
"""Where calls run (``backend``, ``ray``) may change too: a run started on Ray resumes locally and back."""
_FREE_TARGET_KEYS = ("retry", "timeout_seconds", "rate_limit_per_second")

SECTION_NAMES = {
    "target": "the target",
    "search_space": "the search space",
    "metrics": "the metrics",
    "test_cases": "the test cases",
    "optimization": "the optimization settings (algorithm, seed, evolution, bandit, early stopping)",
    "society": "the society (agents, shares, LLM model, RLP settings)",
}
_FREE_SOCIETY_LLM_KEYS = ("api_key_env", "api_base", "timeout_seconds", "max_retries")


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_fingerprint(cfg: ConvergenceConfig, written: dict[str, Any], cases: Sequence[TestCase]) -> dict[str, str]:
    """Section name -> digest. The target is taken as written (``${VAR}``
    references, not their values) so rotating a key does not block a resume,
    and without its retry, timeout and rate-limit settings. The other parts
    are taken as validated (defaults filled in), so spelling out a default
    is not a change."""
    target_written = written.get("target", written.get("api"))
    if isinstance(target_written, dict):  # how a call is made may change; what is called may not
        target_written = {k: v for k, v in target_written.items() if k not in _FREE_TARGET_KEYS}
        if isinstance(target_written.get("request"), dict):
            target_written["request"] = {k: v for k, v in target_written["request"].items()
                                         if k != "timeout_seconds"}
    opt = cfg.optimization.model_dump(mode="json", exclude={"budget", "selection"})
    for key in _FREE_EXECUTION_KEYS:
        opt.get("execution", {}).pop(key, None)
    evaluation = cfg.evaluation.model_dump(mode="json", exclude={"test_cases"})
    return {
        "target": _digest(target_written),
        "search_space": _digest(cfg.search_space.model_dump(mode="json")),
        "metrics": _digest(evaluation),
        "test_cases": _digest([[c.id, c.input, c.expected] for c in cases]),
        "optimization": _digest(opt),
        "society": _digest(_society(cfg)),
    }


def _society(cfg: ConvergenceConfig) -> dict[str, Any]:
    """Who proposes and how; where the LLM is served, its key, timeouts and
    retries may change (like the target's)."""
    if not cfg.society.enabled:
        return {"enabled": False}  # settings of a society that is off change nothing
    soc = cfg.society.model_dump(mode="json", exclude={"agent_timeout_seconds"})
    for key in _FREE_SOCIETY_LLM_KEYS:
        soc["llm"].pop(key, None)
    if not cfg.society.uses_llm(cfg.optimization.algorithm):
        soc.pop("llm")
        soc.pop("rlp")
    return soc


def changed_sections(stored: str | None, current: dict[str, str]) -> list[str]:
    """Human names of the parts that differ from a stored fingerprint (JSON)."""
    if not stored:
        return []
    try:
        before = json.loads(stored)
    except ValueError:
        return []
    return [SECTION_NAMES.get(k, k) for k, v in current.items() if k in before and before[k] != v]


def dumps(fp: dict[str, str]) -> str:
    return json.dumps(fp, sort_keys=True)
