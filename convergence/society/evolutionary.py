"""Evolutionary proposer: tournament selection, uniform crossover, mutation.

Elitism is the loop's job (elites survive without re-evaluation); this agent
breeds the new children from the current population.

Two controls let a society learner (PPO) steer it between generations:

* ``operator``: ``blend`` (the configured behaviour: crossover at
  ``crossover_rate``, each gene mutated at ``mutation_rate``), ``local`` (one
  gene of a tournament winner nudged: hill climbing, no crossover), ``reset``
  (each gene redrawn uniformly at ``mutation_rate``, at least one: restarts
  near the population), ``crossover`` (always cross two winners, then mutate
  one gene).
* ``strength``: the numeric mutation's standard deviation as a share of the
  parameter's range: ``medium`` 0.15 (the configured default), ``small`` 0.05,
  ``large`` 0.4. Offered only when the space has a numeric range (categorical
  and value-list mutations have no scale: the choice would change nothing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from convergence.config.models import EvolutionConfig
from convergence.core.types import Config, TrialRecord
from convergence.society.base import ProposalContext

OPERATORS = ("blend", "local", "reset", "crossover")
STRENGTHS = {"medium": 0.15, "small": 0.05, "large": 0.4}


class EvolutionaryProposer:
    name = "evolution"

    def __init__(self, cfg: EvolutionConfig, *, numeric: bool = True):
        self.cfg = cfg
        self.operator = OPERATORS[0]
        self.strength = next(iter(STRENGTHS))
        self.numeric = numeric
        """The space has a numeric range (else ``strength`` changes nothing and is not offered)."""

    def controls(self) -> dict[str, tuple[str, ...]]:
        if not self.numeric:
            return {"operator": OPERATORS}
        return {"operator": OPERATORS, "strength": tuple(STRENGTHS)}

    def set_controls(self, values: Mapping[str, str]) -> None:
        self.operator = values.get("operator", self.operator)
        self.strength = values.get("strength", self.strength)

    def _tournament(self, pop: list[TrialRecord], rng: np.random.Generator) -> TrialRecord:
        # k distinct contestants; redrawing on a repeat is far cheaper than rng.choice(replace=False)
        k = min(self.cfg.tournament_size, len(pop))
        picked: set[int] = set()
        while len(picked) < k:
            picked.add(int(rng.integers(len(pop))))
        return max((pop[i] for i in sorted(picked)), key=lambda t: t.score)

    async def propose(self, ctx: ProposalContext, n: int) -> list[Config]:
        pop = ctx.population or ctx.history
        if not pop:
            return [ctx.space.sample(ctx.rng) for _ in range(n)]
        return [self._child(pop, ctx) for _ in range(n)]

    def _child(self, pop: list[TrialRecord], ctx: ProposalContext) -> Config:
        rng, space, op = ctx.rng, ctx.space, self.operator
        scale = STRENGTHS[self.strength]
        a = self._tournament(pop, rng)
        child = dict(a.config)
        cross = self.cfg.crossover_rate if op == "blend" else 1.0 if op == "crossover" else 0.0
        if len(pop) > 1 and rng.random() < cross:
            child = space.crossover(a.config, self._tournament(pop, rng).config, rng)
        if op in ("blend", "reset"):
            for name, d in space.dims.items():
                if rng.random() < self.cfg.mutation_rate:
                    child[name] = d.sample(rng) if op == "reset" else d.mutate(child[name], rng, scale)
        if op != "blend" or child == a.config:
            # local and crossover change one gene; the others, at least one (never a copy of the parent)
            name = space.names[int(rng.integers(len(space.names)))]
            d = space.dims[name]
            child[name] = d.sample(rng) if op == "reset" else d.mutate(child[name], rng, scale)
        return child

    def observe(self, trials: Sequence[TrialRecord]) -> None:
        """Stateless: selection reads the population the loop passes in."""
