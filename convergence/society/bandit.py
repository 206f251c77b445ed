"""Thompson-sampling bandit over parameter values.

Each parameter value (or bin, for continuous ranges) is an arm with a Beta
posterior. A trial's score in [0, 1] is a fractional Bernoulli outcome for
every arm it used: alpha += score, beta += 1 - score. To propose, sample each
arm's posterior and take the best arm per parameter.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from convergence.config.models import MABConfig
from convergence.core.space import SearchSpace
from convergence.core.types import Config, TrialRecord
from convergence.society.base import ProposalContext


class BanditProposer:
    name = "bandit"

    def __init__(self, cfg: MABConfig, space: SearchSpace):
        self.cfg = cfg
        self.space = space
        self.arms = {name: d.arms(cfg.bins) for name, d in space.dims.items()}
        self.alpha = {name: np.ones(len(a)) for name, a in self.arms.items()}
        self.beta = {name: np.ones(len(a)) for name, a in self.arms.items()}

    async def propose(self, ctx: ProposalContext, n: int) -> list[Config]:
        out: list[Config] = []
        for _ in range(n):
            cfg: Config = {}
            for name, d in self.space.dims.items():
                arms = self.arms[name]
                if ctx.rng.random() < self.cfg.exploration_rate:
                    i = int(ctx.rng.integers(len(arms)))
                else:
                    i = int(np.argmax(ctx.rng.beta(self.alpha[name], self.beta[name])))
                cfg[name] = d.sample_in_arm(arms[i], ctx.rng)
            out.append(cfg)
        return out

    def observe(self, trials: Sequence[TrialRecord]) -> None:
        for t in trials:
            if t.status == "partial":
                continue
            s = min(max(t.score, 0.0), 1.0)
            for name, d in self.space.dims.items():
                if name not in t.config:
                    continue
                i = d.arm_of(t.config[name], self.cfg.bins)
                self.alpha[name][i] += s
                self.beta[name][i] += 1.0 - s

    def posterior_means(self) -> dict[str, dict[str, float]]:
        """For reports: the bandit's belief about each parameter value."""
        out: dict[str, dict[str, float]] = {}
        for name, arms in self.arms.items():
            means = self.alpha[name] / (self.alpha[name] + self.beta[name])
            out[name] = {str(a): float(m) for a, m in zip(arms, means)}
        return out


class RandomProposer:
    """Uniform random sampling: the baseline every other proposer must beat."""

    name = "random"

    async def propose(self, ctx: ProposalContext, n: int) -> list[Config]:
        return [ctx.space.sample(ctx.rng) for _ in range(n)]

    def observe(self, trials: Sequence[TrialRecord]) -> None:
        """Learns nothing, by design."""
