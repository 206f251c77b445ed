"""Evolutionary proposer: tournament selection, uniform crossover, mutation.

Elitism is the loop's job (elites survive without re-evaluation); this agent
breeds the new children from the current population.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from convergence.config.models import EvolutionConfig
from convergence.core.types import Config, TrialRecord
from convergence.society.base import ProposalContext


class EvolutionaryProposer:
    name = "evolution"

    def __init__(self, cfg: EvolutionConfig):
        self.cfg = cfg

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
        out: list[Config] = []
        for _ in range(n):
            a = self._tournament(pop, ctx.rng)
            child = dict(a.config)
            if len(pop) > 1 and ctx.rng.random() < self.cfg.crossover_rate:
                b = self._tournament(pop, ctx.rng)
                child = ctx.space.crossover(a.config, b.config, ctx.rng)
            # always mutate at least one gene if crossover produced a copy of a parent
            child = ctx.space.mutate(child, ctx.rng, self.cfg.mutation_rate)
            if child == a.config:
                name = ctx.space.names[int(ctx.rng.integers(len(ctx.space.names)))]
                child[name] = ctx.space.dims[name].mutate(child[name], ctx.rng)
            out.append(child)
        return out

    def observe(self, trials: Sequence[TrialRecord]) -> None:
        """Stateless: selection reads the population the loop passes in."""
