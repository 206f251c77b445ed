"""Thompson-sampling bandit over parameter values.

Each parameter value (or bin, for continuous ranges) is an arm with a Beta
posterior. The reward of a trial is whether it reached the top quarter of the
run's scores so far (a success for every arm it used, else a failure), and
the posteriors are rebuilt from all observations whenever new ones arrive, as
the threshold moves. We look for the best configuration, not the best
average, so a value that is great in one combination and poor in others (an
interaction) must not be buried by its mean; a raw fractional-score update
(alpha += score) did that, and found worse best scores on every objective
and budget of benchmarks/search_quality.py. To propose, sample each arm's posterior and
take the best arm per parameter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from convergence.config.models import MABConfig
from convergence.core.space import SearchSpace
from convergence.core.types import Config, TrialRecord
from convergence.society.base import ProposalContext


class BanditProposer:
    name = "bandit"
    TOP_FRACTION = 0.25
    """A trial is a success for its arms when its score is in this top share of the run's scores."""

    def __init__(self, cfg: MABConfig, space: SearchSpace):
        self.cfg = cfg
        self.space = space
        self.arms = {name: d.arms(cfg.bins) for name, d in space.dims.items()}
        self.alpha: dict[str, np.ndarray] = {name: np.ones(len(a)) for name, a in self.arms.items()}
        self.beta: dict[str, np.ndarray] = {name: np.ones(len(a)) for name, a in self.arms.items()}
        self._arm_idx: dict[str, list[int]] = {name: [] for name in self.arms}
        self._scores: list[float] = []
        self.exploration = "configured"

    RATES: ClassVar[Mapping[str, float]] = {"exploit": 0.0, "explore": 0.5}
    """The exploration choices besides ``configured`` (the config's ``exploration_rate``)."""

    def controls(self) -> dict[str, tuple[str, ...]]:
        """``configured`` and the other rates; a rate equal to the configured one is not offered (two
        choices that propose alike)."""
        return {"exploration": ("configured", *(c for c, r in self.RATES.items() if r != self.cfg.exploration_rate))}

    def set_controls(self, values: Mapping[str, str]) -> None:
        self.exploration = values.get("exploration", self.exploration)

    @property
    def exploration_rate(self) -> float:
        return self.RATES.get(self.exploration, self.cfg.exploration_rate)

    async def propose(self, ctx: ProposalContext, n: int) -> list[Config]:
        """Thompson sampling, vectorised per parameter: one posterior draw per
        (proposal, arm), the best arm wins, ``exploration_rate`` picks at random."""
        if n <= 0:
            return []
        columns: dict[str, list[Any]] = {}
        for name, d in self.space.dims.items():
            arms = self.arms[name]
            choice = ctx.rng.beta(self.alpha[name], self.beta[name], size=(n, len(arms))).argmax(axis=1)
            explore = ctx.rng.random(n) < self.exploration_rate
            if explore.any():
                choice[explore] = ctx.rng.integers(len(arms), size=int(explore.sum()))
            columns[name] = [d.sample_in_arm(arms[int(i)], ctx.rng) for i in choice]
        return [{name: col[j] for name, col in columns.items()} for j in range(n)]

    def observe(self, trials: Sequence[TrialRecord]) -> None:
        added = False
        for t in trials:
            if t.status == "partial" or any(name not in t.config for name in self.space.dims):
                continue
            for name, d in self.space.dims.items():
                self._arm_idx[name].append(d.arm_of(t.config[name], self.cfg.bins, self.arms[name]))
            self._scores.append(min(max(t.score, 0.0), 1.0))
            added = True
        if not added:
            return
        scores = np.asarray(self._scores)
        wins = (scores >= np.quantile(scores, 1.0 - self.TOP_FRACTION)).astype(float)
        for name, arms in self.arms.items():
            idx = np.asarray(self._arm_idx[name], dtype=np.intp)
            w = np.bincount(idx, weights=wins, minlength=len(arms))
            n = np.bincount(idx, minlength=len(arms))
            self.alpha[name] = 1.0 + w
            self.beta[name] = 1.0 + n - w


class RandomProposer:
    """Uniform random sampling: the baseline every other proposer must beat."""

    name = "random"

    async def propose(self, ctx: ProposalContext, n: int) -> list[Config]:
        return [ctx.space.sample(ctx.rng) for _ in range(n)]

    def observe(self, trials: Sequence[TrialRecord]) -> None:
        """Learns nothing, by design."""
