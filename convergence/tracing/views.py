"""What each traced step shows in Weave: the inputs and outputs a user reads to
understand a run (configuration, test case, output, metrics, tokens, cost,
latency, errors), never the Python objects that carry them. Each function
takes the traced function's own arguments (or its result). Everything
returned here is redacted before it is sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_OUTPUT_CHARS = 4000
"""Target outputs are cut in the trace; the full text stays in our store."""


def _short(value: Any) -> Any:
    if isinstance(value, str) and len(value) > _OUTPUT_CHARS:
        return value[:_OUTPUT_CHARS] + f" ... [{len(value) - _OUTPUT_CHARS} more chars]"
    return value


# --------------------------------------------------------------------------- target call (CallRunner.run)


def target_call_inputs(runner: Any, params: dict[str, Any], case: Any, gate: Any = None) -> dict[str, Any]:
    return {"configuration": params, "case_id": case.id, "input": case.input, "expected": case.expected}


def call_result_view(call: Any) -> dict[str, Any]:
    return {
        "output": _short(call.output),
        "error": call.error,
        "latency_ms": round(call.latency_ms, 3),
        "cost_usd": call.cost_usd,
        "prompt_tokens": call.prompt_tokens,
        "completion_tokens": call.completion_tokens,
        "attempts": call.attempts,
    }


# --------------------------------------------------------------------------- judge (LLMJudge.score)


def judge_inputs(judge: Any, output: Any, case: Any) -> dict[str, Any]:
    cfg = judge.cfg
    return {"case_id": case.id, "output": _short(output), "expected": case.expected, "model": cfg.model,
            "rubric": cfg.rubric}


def judge_output(verdict: float) -> dict[str, Any]:
    return {"verdict": float(verdict)}


# --------------------------------------------------------------------------- loop steps (Optimizer)


def propose_inputs(optimizer: Any, gen: int, ctx: Any, n: int) -> dict[str, Any]:
    return {"generation": gen, "wanted": n, "population": len(ctx.population),
            "agents": [getattr(p, "name", type(p).__name__) for p, _ in optimizer.society.members]}


def proposals_view(proposals: Sequence[Any]) -> dict[str, Any]:
    by_agent: dict[str, list[dict[str, Any]]] = {}
    for p in proposals:
        by_agent.setdefault(p.proposer, []).append({"configuration": p.config, "config_hash": p.config_hash})
    return {"n": len(proposals), "by_agent": by_agent}


def generation_inputs(optimizer: Any, g: Any) -> dict[str, Any]:
    return {"generation": g.number, "n_trials": len(g.proposals), "n_cases": len(optimizer.cases),
            "proposals": [{"configuration": p.config, "config_hash": p.config_hash, "proposer": p.proposer}
                          for p in g.proposals]}


def trial_view(t: Any) -> dict[str, Any]:
    return {"config_hash": t.config_hash, "proposer": t.proposer, "status": t.status, "score": t.score,
            "metrics": t.metrics, "cost_usd": t.cost_usd, "latency_ms": t.latency_ms, "n_cases": t.n_cases,
            "n_errors": t.n_errors}


def generation_output(trials: Sequence[Any]) -> dict[str, Any]:
    usable = [t for t in trials if t.usable]
    return {
        "best_score": max((t.score for t in usable), default=None),
        "mean_score": sum(t.score for t in usable) / len(usable) if usable else None,
        "cost_usd": sum(t.cost_usd for t in trials),
        "trials": [trial_view(t) for t in trials],
    }


def trial_inputs(optimizer: Any, slot: Any, cases: Sequence[Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    p = slot.proposal
    return {"generation": slot.generation, "configuration": p.config, "resolved": slot.params,
            "config_hash": p.config_hash, "proposer": p.proposer, "case_ids": [c.id for c in cases]}


def trial_output(trial: Any) -> dict[str, Any] | None:
    return None if trial is None else trial_view(trial)
