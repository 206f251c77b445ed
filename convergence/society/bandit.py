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

A trial's value is what society/observed.py says an agent learns from
(``adjusted``, the case-corrected estimate, else ``score``), abandoned and
partial trials included, each weighted by the share of cases it ran:
``w_i = n_i / max_j n_j``, ``alpha = 1 + sum_i w_i win_i``,
``beta = 1 + sum_i w_i (1 - win_i)``. A configuration racing dropped after 6
of 30 cases counts a fifth of a complete one, on its corrected value, not
on the raw mean of its first (easy or hard) cases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from convergence.config.models import MABConfig
from convergence.core.space import SearchSpace
from convergence.core.types import Config, TrialRecord
from convergence.society.base import ProposalContext
from convergence.society.observed import learned_value, weight


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
        self._trials: list[TrialRecord] = []
        """Every trial learnt from; re-read at each update, as the case model refreshes ``adjusted``."""
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
            if learned_value(t) is None or any(name not in t.config for name in self.space.dims):
                continue
            for name, d in self.space.dims.items():
                self._arm_idx[name].append(d.arm_of(t.config[name], self.cfg.bins, self.arms[name]))
            self._trials.append(t)
            added = True
        if not added:
            return
        values = [learned_value(t) for t in self._trials]  # None if the case model dropped it since: the raw score
        scores = np.clip([t.score if v is None else v for v, t in zip(values, self._trials, strict=True)], 0.0, 1.0)
        cases = np.asarray([weight(t) for t in self._trials])
        share = cases / cases.max()
        wins = (scores >= np.quantile(scores, 1.0 - self.TOP_FRACTION)).astype(float)
        for name, arms in self.arms.items():
            idx = np.asarray(self._arm_idx[name], dtype=np.intp)
            w = np.bincount(idx, weights=share * wins, minlength=len(arms))
            n = np.bincount(idx, weights=share, minlength=len(arms))
            self.alpha[name] = 1.0 + w
            self.beta[name] = 1.0 + n - w


class RandomProposer:
    """Uniform random sampling: the baseline every other proposer must beat."""

    name = "random"

    async def propose(self, ctx: ProposalContext, n: int) -> list[Config]:
        return [ctx.space.sample(ctx.rng) for _ in range(n)]

    def observe(self, trials: Sequence[TrialRecord]) -> None:
        """Learns nothing, by design."""
