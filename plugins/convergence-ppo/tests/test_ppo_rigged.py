"""What the PPO learner learns changes what the society proposes: a rigged society, in a few seconds.

Three agents of a real ``Society`` ("good", "fair", "poor"); each generation the society proposes
50 configurations under the learner's last decision (its shares), and each proposal pays off with
its agent's probability (0.8, 0.1, 0.0). The generation's result (improvement and survivors in
proportion to the proposals that paid, per-agent credit as the loop reports it) goes to the real
``PPOLearner.update``, whose decision (boost one agent, or none) sets the next generation's shares.
Boosting "good" pays best (about 0.5 of the proposals, against 0.3 with no boost).

The control feeds the same learner the same kind of generations with the three probabilities
handed out at random each generation (shuffled rewards): nothing can be learned about who is good.
One seed's policy can settle on a worse choice (PPO on a few hundred decisions is noisy), so the
claims are on the mean over four seeds. The learning curve over many real runs is
``benchmarks/ppo_rigged.py``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from convergence.config.models import SearchSpaceConfig
from convergence.core.space import SearchSpace
from convergence.society.base import ProposalContext
from convergence.society.learner import AgentResult, GenerationResult, LearnerContext, LearnerMemory
from convergence.society.society import Society
from convergence_ppo import make_learner

PAYS = {"good": 0.8, "fair": 0.1, "poor": 0.0}
AGENTS = list(PAYS)
SLOTS = 50
GENERATIONS = 120
SEEDS = (0, 1, 2, 3)
LAST = 20
"""The decisions (generations) compared: the first and the last LAST of a run."""
OPTIONS = {"actions": ["boost"], "hidden": 16, "learning_rate": 1e-2}
"""A small network and a larger step than the default (3e-3), so that 120 decisions suffice."""
SPACE = SearchSpace.from_config(SearchSpaceConfig.model_validate(
    {"parameters": {"x": {"type": "discrete", "min": 0, "max": 10**6, "step": 1}}}))


class Agent:
    def __init__(self, name: str) -> None:
        self.name = name

    async def propose(self, ctx: ProposalContext, n: int) -> list[dict[str, Any]]:
        return [{"x": int(ctx.rng.integers(0, 10**6))} for _ in range(n)]

    def observe(self, trials: Any) -> None:
        pass


async def _run(seed: int, tmp: Path, shuffle: bool) -> dict[str, list[float]]:
    """One run of GENERATIONS generations; per generation, P(boost good) after the update and the good
    agent's share of the society's proposals."""
    ctx = LearnerContext(agents=AGENTS, shares=dict.fromkeys(AGENTS, 1 / 3), options=OPTIONS, seed=seed,
                         study="rigged", state_dir=tmp, min_improvement=0.0, run_id=1, generations=GENERATIONS,
                         memory=LearnerMemory())
    learner = make_learner(ctx)
    society = Society([(Agent(a), 1 / 3) for a in AGENTS], SPACE)
    rng, proposal_rng = random.Random(seed), np.random.default_rng(seed)
    out: dict[str, list[float]] = {"p_good": [], "good_proposals": []}
    for g in range(GENERATIONS):
        pays = dict(PAYS)
        if shuffle:
            values = list(pays.values())
            rng.shuffle(values)
            pays = dict(zip(AGENTS, values, strict=True))
        proposals = await society.propose(ProposalContext(SPACE, g, [], [], proposal_rng), SLOTS)
        count = {a: sum(p.proposer == a for p in proposals) for a in AGENTS}
        hits = {a: sum(rng.random() < pays[a] for _ in range(count[a])) for a in AGENTS}
        paid = sum(hits.values())
        agents = {a: AgentResult(share=society.shares[a], proposed=count[a], improvement=0.02 * hits[a] / SLOTS,
                                 in_top=hits[a], cost=float(count[a]), best_score=0.5 if hits[a] else 0.1)
                  for a in AGENTS}
        decision = learner.update(GenerationResult(
            generation=g, progress=(g + 1) / GENERATIONS, best_score=0.5, improvement=0.02 * paid / SLOTS,
            cost_unit="calls", agents=agents, survivors=paid, calls=SLOTS, decided_at=g - 1))
        society.set_shares(dict(decision.shares))  # what the next generation proposes under
        out["p_good"].append(learner.summary()["probabilities"]["boost"]["good"])
        out["good_proposals"].append(count["good"] / SLOTS)
    assert learner.updates == GENERATIONS // 8  # the default rollout: an update every 8 decisions
    return out


def run(seed: int, tmp: Path, *, shuffle: bool) -> dict[str, list[float]]:
    return anyio.run(_run, seed, tmp, shuffle)


def _mean(runs: list[dict[str, list[float]]], key: str, part: slice) -> float:
    return float(np.mean([np.mean(r[key][part]) for r in runs]))


def test_rigged_learning_moves_the_boost_to_the_good_agent_and_the_society_proposes_more_of_its_configs(
        tmp_path: Path) -> None:
    real = [run(s, tmp_path / f"real{s}", shuffle=False) for s in SEEDS]
    shuffled = [run(s, tmp_path / f"shuffled{s}", shuffle=True) for s in SEEDS]
    first, last = slice(0, LAST), slice(-LAST, None)
    p = {k: (_mean(runs, "p_good", first), _mean(runs, "p_good", last)) for k, runs in (("real", real),
                                                                                          ("shuffled", shuffled))}
    good = {k: (_mean(runs, "good_proposals", first), _mean(runs, "good_proposals", last))
            for k, runs in (("real", real), ("shuffled", shuffled))}
    table = f"P(boost good) first -> last {LAST}: {p}; good's share of the proposals: {good}"
    # untrained, the policy boosts no one with the prior 0.6 and each agent with 0.4 / 3
    assert abs(p["real"][0] - 0.4 / 3) < 0.05 and abs(p["shuffled"][0] - 0.4 / 3) < 0.05, table
    # with real rewards it learns to boost the good agent; with shuffled ones it does not
    assert p["real"][1] >= 0.5 and p["shuffled"][1] <= 0.25, table
    # what it learned changes what the society proposes: more of the good agent's configurations
    # (a third of the slots unboosted, 0.6 boosted)
    assert good["real"][1] >= good["real"][0] + 0.08, table
    assert good["real"][1] >= good["shuffled"][1] + 0.08, table
