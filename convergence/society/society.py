"""The society: proposers work concurrently, each on its share of the slots;
their proposals are merged in a fixed order and de-duplicated against
everything the study has already seen."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import numpy as np

from convergence.config.models import OptimizationConfig
from convergence.core.space import SearchSpace, config_hash
from convergence.core.types import Config, TrialRecord
from convergence.society.bandit import BanditProposer, RandomProposer
from convergence.society.base import Proposal, ProposalContext, Proposer
from convergence.society.evolutionary import EvolutionaryProposer
from convergence.tracing import traced


def allot(n: int, shares: Sequence[float]) -> list[int]:
    """Split ``n`` slots by ``shares`` (largest remainder; deterministic)."""
    total = sum(shares)
    if n <= 0 or total <= 0:
        return [0] * len(shares)
    exact = [n * s / total for s in shares]
    base = [int(x) for x in exact]
    order = sorted(range(len(shares)), key=lambda i: (-(exact[i] - base[i]), i))
    for i in order[: n - sum(base)]:
        base[i] += 1
    return base


@traced(
    lambda proposer, ctx, k: f"convergence.propose.{proposer.name}",
    inputs=lambda proposer, ctx, k: {"agent": proposer.name, "generation": ctx.generation, "slots": k},
    output=lambda configs: {"n": len(configs), "configs": configs},
)
async def agent_step(proposer: Proposer, ctx: ProposalContext, k: int) -> list[Config]:
    """One agent's turn: a traced unit so Weave shows who proposed what."""
    return await proposer.propose(ctx, k)


class Society:
    def __init__(self, members: list[tuple[Proposer, float]], space: SearchSpace):
        self.members = members
        self.space = space

    @classmethod
    def from_config(cls, cfg: OptimizationConfig, space: SearchSpace) -> Society:
        evo = EvolutionaryProposer(cfg.evolution)
        bandit = BanditProposer(cfg.mab, space)
        by_algorithm: dict[str, list[tuple[Proposer, float]]] = {
            "mab_evolution": [(evo, 0.5), (bandit, 0.5)],
            "genetic": [(evo, 1.0)],
            "mab_only": [(bandit, 1.0)],
            "random": [(RandomProposer(), 1.0)],
        }
        members = by_algorithm[cfg.algorithm]
        return cls(members, space)

    def set_shares(self, shares: dict[str, float]) -> None:
        """Learners (synergy, PPO) re-weight who proposes what through this."""
        self.members = [(p, shares.get(p.name, s)) for p, s in self.members]

    async def propose(self, ctx: ProposalContext, n: int, *, max_rounds: int = 5) -> list[Proposal]:
        """Up to ``n`` new, distinct, in-space proposals. Duplicates are asked
        for again (a few rounds), then filled by random sampling; fewer than
        ``n`` only when the space is exhausted."""
        out: list[Proposal] = []
        seen = set(ctx.seen)
        for round_ in range(max_rounds):
            need = n - len(out)
            if need <= 0:
                break
            counts = allot(need, [s for _, s in self.members])
            results: list[list[Config]] = [[] for _ in self.members]

            async def run(
                results: list[list[Config]], i: int, proposer: Proposer, k: int, rng: np.random.Generator
            ) -> None:
                if k:
                    results[i] = await agent_step(
                        proposer, ProposalContext(ctx.space, ctx.generation, ctx.population, ctx.history, rng, seen), k
                    )

            # one child generator per member and round: results do not depend on scheduling
            rngs = ctx.rng.spawn(len(self.members))
            async with anyio.create_task_group() as tg:
                for i, ((proposer, _), k) in enumerate(zip(self.members, counts, strict=True)):
                    tg.start_soon(run, results, i, proposer, k, rngs[i])
            for (proposer, _), configs in zip(self.members, results, strict=True):
                for c in configs:
                    self._take(c, proposer.name, seen, out, n)
            if round_ == max_rounds - 1 or len(out) >= n:
                break
        attempts = 0
        while len(out) < n and attempts < 50 * n and len(seen) < self.space.size():
            self._take(self.space.sample(ctx.rng), "random", seen, out, n)
            attempts += 1
        return out

    def _take(self, config: Config, proposer: str, seen: set[str], out: list[Proposal], n: int) -> None:
        if len(out) >= n or not self.space.contains(config):
            return
        c = self.space.canonical(config)
        h = config_hash(c)
        if h in seen:
            return
        seen.add(h)
        out.append(Proposal(c, h, proposer))

    def observe(self, trials: Sequence[TrialRecord]) -> None:
        for proposer, _ in self.members:
            proposer.observe(trials)
