"""Credit: the improvement each agent's proposals brought per unit of cost, normalised.

For agent ``i`` in one generation (``AgentResult``)::

    credit_i = improvement_i / cost_i          (cost in the run's budget unit)
    credit_i = improvement_i / proposed_i      when its proposals cost nothing (a free local model
                                               under a dollar budget) but it did propose
    (no credit)                                when it proposed nothing: masked, not counted as 0

Credits are normalised in units of their noise, with running statistics (Welford:
:class:`convergence.core.rl.RunningNorm`) kept per cost unit (calls, usd, seconds do not mix)
and across runs of the study::

    credit_hat_i = clip((credit_i - mean) / noise, -3, 3)      (a one-off hit counts as strong, not as ten)
    mean   the mean of all credits seen (every agent, every generation)
    noise  the standard deviation of an agent's credit around *its own* mean, pooled over agents
           (sqrt(sum_i M2_i / sum_i (n_i - 1))), at least a quarter of the overall standard deviation;
           the overall standard deviation until there are 3 such degrees of freedom

Dividing by the overall standard deviation would count the differences between agents (the very
signal) as noise: an agent that is consistently a little better would read as barely better.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from convergence.core.rl import RunningNorm
from convergence.society.learner import GenerationResult

CLIP = 3.0


@dataclass(slots=True)
class Credits:
    raw: np.ndarray
    """Improvement per unit of cost (0 where masked)."""
    mask: np.ndarray
    """Agents with a measurement this generation."""
    slots: np.ndarray
    """Each agent's fraction of the generation's proposals (its shares when nothing was proposed)."""
    hit_rate: np.ndarray
    """``in_top / proposed`` (0 where nothing was proposed)."""
    cost_fraction: np.ndarray
    """Each agent's fraction of the generation's cost."""


def credits_of(result: GenerationResult, agents: Sequence[str], shares: np.ndarray) -> Credits:
    n = len(agents)
    raw = np.zeros(n)
    mask = np.zeros(n, dtype=bool)
    proposed = np.zeros(n)
    hit = np.zeros(n)
    cost = np.zeros(n)
    for i, name in enumerate(agents):
        r = result.agents.get(name)
        if r is None:
            continue
        proposed[i] = max(0, r.proposed)
        cost[i] = max(0.0, float(r.cost)) if math.isfinite(r.cost) else 0.0
        improvement = float(r.improvement) if math.isfinite(r.improvement) else 0.0
        if cost[i] > 0:
            raw[i], mask[i] = improvement / cost[i], True
        elif proposed[i] > 0:
            raw[i], mask[i] = improvement / proposed[i], True
        if proposed[i] > 0:
            hit[i] = min(1.0, max(0, r.in_top) / proposed[i])
    slots = proposed / proposed.sum() if proposed.sum() > 0 else np.asarray(shares, dtype=np.float64)
    cost_fraction = cost / cost.sum() if cost.sum() > 0 else slots
    return Credits(raw, mask, slots, hit, cost_fraction)


def fill(credits: np.ndarray, mask: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Unmeasured agents get the weighted mean of the measured ones: moving slots to or from them
    is then worth nothing, neither good nor bad."""
    if not mask.any():
        return np.zeros_like(credits)
    w = np.where(mask, weights, 0.0)
    mean = float(np.dot(w, credits) / w.sum()) if w.sum() > 0 else float(credits[mask].mean())
    return np.where(mask, credits, mean)


@dataclass(slots=True)
class CreditNorm:
    """The overall statistics and each agent's, for one cost unit (see the module's docstring)."""

    pooled: RunningNorm
    agents: dict[str, RunningNorm]

    @classmethod
    def empty(cls) -> CreditNorm:
        return cls(RunningNorm(), {})

    def update(self, names: Sequence[str], values: np.ndarray, mask: np.ndarray) -> None:
        for name, x, m in zip(names, values, mask, strict=True):
            if m:
                self.pooled.update([x])
                self.agents.setdefault(name, RunningNorm()).update([x])

    @property
    def noise(self) -> float:
        total = self.pooled.std
        dof = sum(max(0, a.count - 1) for a in self.agents.values())
        if dof < 3:
            return total
        within = math.sqrt(sum(a.m2 for a in self.agents.values()) / dof)
        return max(within, 0.25 * total)

    def normalize(self, values: np.ndarray) -> np.ndarray:
        noise = self.noise
        if noise <= 1e-12:
            return np.zeros_like(values, dtype=np.float64)
        return np.clip((np.asarray(values, dtype=np.float64) - self.pooled.mean) / noise, -CLIP, CLIP)

    def to_dict(self) -> dict[str, Any]:
        return {"pooled": self.pooled.to_dict(), "agents": {k: v.to_dict() for k, v in self.agents.items()}}

    @classmethod
    def from_dict(cls, d: Any) -> CreditNorm:
        if not isinstance(d, dict):
            return cls.empty()
        if "pooled" not in d:  # only overall statistics
            return cls(RunningNorm.from_dict(d), {})
        agents = d.get("agents")
        if not isinstance(agents, dict):
            agents = {}
        return cls(RunningNorm.from_dict(d["pooled"]), {str(k): RunningNorm.from_dict(v) for k, v in agents.items()})
