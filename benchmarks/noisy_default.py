"""The ``default`` rows of ``search_quality.py --noisy``: Convergence as a user would run it, and one-change ablations.

``default`` is the YAML a user writes: the target, the search space, the 30 inline cases, the metric,
``storage`` and ``optimization: {seed, budget: {max_calls: B * 30}}``, nothing else. Every other setting
(algorithm, society, racing, selection, evolution, execution mode) is the library's default in the code being
measured, so the row follows the defaults as they change. The default execution mode is ``async``, which is
not seed-deterministic (the order in which calls finish changes what the proposers see): two runs of the same
seed may differ.

Each ablation row is ``default`` with one change. A row needs something the measured Convergence may not
have (a config key, an agent, a learner plugin): :func:`unavailable` says what is missing and the benchmark
skips the row with that line, instead of failing on a config it cannot parse.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import noisy_problems as npb

HEAD = "default"
"""The headline row: the verdicts and the "default > peer (paired)" column use it."""
REACH_BUDGETS = [30, 40, 60]
"""``default`` also runs at these budgets (when 100 is run): the smallest budget at which it reaches the best
peer's quality at 100."""


@dataclass(frozen=True)
class Row:
    """``default`` plus one change: extra ``optimization`` keys and/or a ``society`` section."""

    label: str
    optimization: dict[str, Any] = field(default_factory=dict)
    society: dict[str, Any] | None = None
    needs: Callable[[], str | None] = lambda: None
    """Why the measured Convergence cannot run this row (None when it can)."""


def config_has(*path: str) -> bool:
    """Whether ``optimization.<path>`` is a field of the measured Convergence's config models."""
    from convergence.config.models import OptimizationConfig

    model: Any = OptimizationConfig
    for key in path:
        fields = getattr(model, "model_fields", None)
        if fields is None or key not in fields:
            return False
        model = fields[key].annotation
    return True


def _needs_key(*path: str) -> Callable[[], str | None]:
    return lambda: None if config_has(*path) else f"optimization.{'.'.join(path)} is not in this Convergence"


def _needs_agent(name: str) -> Callable[[], str | None]:
    def check() -> str | None:
        from convergence.config.society import AGENT_NAMES, agent_names

        if name in AGENT_NAMES or name in agent_names():
            return None
        return f"this Convergence has no society agent {name!r} (agents: {', '.join(agent_names())})"
    return check


def _needs_learner(name: str) -> Callable[[], str | None]:
    def check() -> str | None:
        from convergence.registry import registry

        if registry().find("learner", name) is not None:
            return None
        return (f"learner plugin {name!r} is not installed (pip install -e plugins/convergence-{name}; "
                f"learners here: {', '.join(registry().names('learner')) or 'none'})")
    return check


def _only(agent: str) -> Row:
    return Row(f"society of {agent} alone", society={"enabled": True, "agents": {agent: 1.0}},
               needs=_needs_agent(agent))


def _learner(plugin: str) -> Row:
    # the default roster without its LLM agent (rlp calls the embedded model: minutes per run, and it reasons
    # over text the Bernoulli target does not have)
    return Row(f"default society (no LLM agent) + the {plugin} learner",
               society={"enabled": True, "learning": {"rlp_enabled": False}, "learner": {"plugin": plugin}},
               needs=_needs_learner(plugin))


ROWS: dict[str, Row] = {
    HEAD: Row("library defaults (seed and budget only)"),
    "default-no_racing": Row("defaults, racing off", {"racing": {"enabled": False}}, needs=_needs_key("racing")),
    "default-no_confirm": Row("defaults, no confirmation of the top", {"selection": {"confirm_top": 0}},
                              needs=_needs_key("selection", "confirm_top")),
    "default+stochastic": Row("defaults, stochastic selection", {"selection": {"stochastic": True}},
                              needs=_needs_key("selection", "stochastic")),
    **{f"only_{a}": _only(a) for a in ("evolution", "bandit", "tpe", "surrogate")},
    "default+synergy": _learner("synergy"),
    "default+ppo": _learner("ppo"),
}


def unavailable(method: str) -> str | None:
    """Why the row ``method`` cannot run on the measured Convergence (None when it can)."""
    return ROWS[method].needs()


def label(method: str) -> str:
    return f"{method}: {ROWS[method].label}"


def yaml(problem: str, method: str, budget: int, seed: int, param_yaml: Callable[[tuple[Any, ...]], str]) -> str:
    """The row's YAML: ``default``'s (seed and budget only) plus the row's one change. JSON is flow-style YAML."""
    row = ROWS[method]
    params = "\n".join(f"    {k}: {param_yaml(v)}" for k, v in npb.PROBLEMS[problem].space.items())
    cases = "\n".join(f"      - {{input: {j}}}" for j in range(npb.N_CASES))
    optimization = {"seed": seed, "budget": {"max_calls": budget * npb.N_CASES}, **row.optimization}
    text = (
        f"study: sqd-{problem}\n"
        f'target: {{type: python, function: "noisy_problems:target_{problem}"}}\n'
        "storage: {path: db.sqlite}\n"
        "search_space:\n  parameters:\n" + params + "\n"
        "evaluation:\n  test_cases:\n    inline:\n" + cases + "\n"
        '  metrics:\n    success: {function: "noisy_problems:score"}\n'
        f"optimization: {json.dumps(optimization)}\n"
    )
    if row.society is not None:
        text += f"society: {json.dumps(row.society)}\n"
    return text
