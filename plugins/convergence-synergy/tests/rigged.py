"""A rigged society, in pure Python: three agents whose proposals pay off with known probabilities.

Each generation every agent gets ``max(1, round(share * slots))`` of the 20 slots; each proposal
costs ``cases`` (10) calls and, with the agent's probability p (good 0.6, poor 0.05, random 0.2),
brings an improvement of 1.0 per unit of its cost and lands in the top k; otherwise nothing. So an
agent's credit in a generation is (its successful proposals) / (its proposals).

``per="generation"`` is a harsher variant: one draw per agent and generation decides whether all
of its proposals pay or none does (a single, very noisy bit of evidence per agent and generation).

``shuffle=True`` is the control: each generation the three probabilities are handed to the agents
in a random order, so on average no agent is better than another and nothing can be learned
about who is good.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convergence.society.learner import AgentResult, GenerationResult, LearnerContext

PROBS = {"good": 0.6, "poor": 0.05, "random": 0.2}
AGENTS = list(PROBS)


def context(state_dir: Path, seed: int, **options: Any) -> LearnerContext:
    return LearnerContext(agents=AGENTS, shares=dict.fromkeys(AGENTS, 1 / 3), options=options, seed=seed,
                          study="rigged", state_dir=state_dir, min_improvement=0.0)


@dataclass
class Trace:
    good: list[float] = field(default_factory=list)
    """The good agent's share after each generation."""
    shares: list[dict[str, float]] = field(default_factory=list)

    def generations_to(self, level: float) -> int | None:
        return next((g for g, s in enumerate(self.good, start=1) if s > level), None)

    @property
    def final(self) -> dict[str, float]:
        return self.shares[-1]


def generation(g: int, total: int, shares: dict[str, float], rng: random.Random, *, shuffle: bool,
               per: str = "proposal", slots: int = 20, cases: int = 10) -> GenerationResult:
    probs = dict(PROBS)
    if shuffle:
        values = list(probs.values())
        rng.shuffle(values)
        probs = dict(zip(AGENTS, values, strict=True))
    agents = {}
    for a in AGENTS:
        proposed = max(1, round(shares[a] * slots))
        if per == "proposal":
            hits = sum(rng.random() < probs[a] for _ in range(proposed))
        else:
            hits = proposed if rng.random() < probs[a] else 0
        cost = float(proposed * cases)
        agents[a] = AgentResult(share=shares[a], proposed=proposed, improvement=1.0 * hits * cases, in_top=hits,
                                cost=cost, best_score=0.5 + 0.01 * g if hits else 0.3)
    improvement = 0.01 if any(r.in_top for r in agents.values()) else 0.0
    return GenerationResult(generation=g, progress=g / total, best_score=0.5 + 0.01 * g, improvement=improvement,
                            cost_unit="calls", agents=agents)


def run(learner: Any, generations: int = 30, seed: int = 0, *, shuffle: bool = False, per: str = "proposal") -> Trace:
    rng = random.Random(1000 + seed)
    shares = dict(learner.initial_shares())
    trace = Trace()
    for g in range(1, generations + 1):
        shares = dict(learner.update(generation(g, generations, shares, rng, shuffle=shuffle, per=per)))
        trace.good.append(shares["good"])
        trace.shares.append(shares)
    return trace
