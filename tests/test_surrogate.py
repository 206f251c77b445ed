"""The ``surrogate`` agent (Thompson sampling on a Bayesian linear model of configuration effects), as a
user sees it: it finds a good pair of values (an interaction) that random search rarely finds, what it
learns moves its proposals, an abandoned trial's corrected value counts, a seed repeats it, and it runs
in the loop as a society agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_loop import SPACE as LOOP_SPACE, make_config

from convergence.config.models import SearchSpaceConfig
from convergence.core.space import SearchSpace, config_hash
from convergence.core.types import Config, TrialRecord
from convergence.engine.loop import Optimizer
from convergence.society.bandit import RandomProposer
from convergence.society.base import ProposalContext
from convergence.society.society import build_agent
from convergence.society.surrogate import Features, Posterior, SurrogateProposer
from convergence.storage.store import Store

pytestmark = pytest.mark.anyio

PROMPTS = [f"p{i}" for i in range(12)]
MODELS = [f"m{i}" for i in range(12)]
SPACE = SearchSpace.from_config(SearchSpaceConfig.model_validate({"parameters": {
    "prompt": {"type": "categorical", "values": PROMPTS},
    "model": {"type": "categorical", "values": MODELS},
    "style": {"type": "categorical", "values": ["plain", "bullets", "json"]},  # irrelevant
    "temperature": {"type": "continuous", "min": 0.0, "max": 1.0, "step": 0.05},  # irrelevant
}}))
N_CASES = 30


def true_value(c: Config) -> float:
    """Prompt p3 and model m7 are a little better on their own; only together are they good."""
    a, b = c["prompt"] == "p3", c["model"] == "m7"
    return 0.3 + 0.1 * a + 0.1 * b + 0.4 * (a and b)


def evaluated(c: Config, rng: np.random.Generator, gen: int = 0) -> TrialRecord:
    """``N_CASES`` Bernoulli outcomes of the configuration's true value."""
    score = float(rng.binomial(N_CASES, true_value(c))) / N_CASES
    return TrialRecord(c, config_hash(c), gen, "surrogate", score=score, n_cases=N_CASES)


def ctx(seen: set[str], seed: int, gen: int = 1) -> ProposalContext:
    return ProposalContext(SPACE, gen, [], [], np.random.default_rng(seed), seen)


async def search(agent: Any, seed: int, generations: int = 10, per_generation: int = 4) -> list[Config]:
    """A small run: ``generations`` x ``per_generation`` proposals, each evaluated and observed."""
    seen: set[str] = set()
    noise = np.random.default_rng(1000 + seed)
    found: list[Config] = []
    for gen in range(generations):
        batch = await agent.propose(ctx(seen, seed * 100 + gen, gen), per_generation)
        seen |= {config_hash(c) for c in batch}
        agent.observe([evaluated(c, noise, gen) for c in batch])
        found += batch
    return found


def good(c: Config) -> bool:
    return c["prompt"] == "p3" and c["model"] == "m7"


async def test_it_finds_a_planted_interaction_that_random_search_rarely_finds() -> None:
    """The good cell is 1 of 144 prompt x model cells: 40 random configurations find it in about a quarter
    of the runs; the surrogate, led there by the two small main effects, in most runs."""
    seeds = range(8)
    surrogate = [any(good(c) for c in await search(SurrogateProposer(SPACE), s)) for s in seeds]
    at_random = [any(good(c) for c in await search(RandomProposer(), s)) for s in seeds]
    assert sum(surrogate) >= 6 and sum(at_random) <= 4 and sum(surrogate) >= sum(at_random) + 3


def results_on(cell: tuple[str, str], seed: int) -> list[TrialRecord]:
    """60 results: 8 configurations in ``cell`` at 0.9, the others (random) at 0.3, all on 30 cases."""
    rng = np.random.default_rng(seed)
    out: list[TrialRecord] = []
    while len(out) < 60:
        c = SPACE.canonical(SPACE.sample(rng))
        if len(out) < 8:
            c["prompt"], c["model"] = cell
        value = 0.9 if (c["prompt"], c["model"]) == cell else 0.3
        if config_hash(c) not in {t.config_hash for t in out}:
            out.append(TrialRecord(c, config_hash(c), 0, "evolution", score=value, n_cases=N_CASES))
    return out


async def test_what_it_learns_concentrates_its_proposals_on_the_cell_that_did_well() -> None:
    def in_cell(batch: list[Config], cell: tuple[str, str]) -> int:
        return sum((c["prompt"], c["model"]) == cell for c in batch)

    fresh = await SurrogateProposer(SPACE).propose(ctx(set(), 1), 20)
    for cell in (("p3", "m7"), ("p9", "m0")):
        agent = SurrogateProposer(SPACE)
        history = results_on(cell, 2)
        agent.observe(history)
        batch = await agent.propose(ctx({t.config_hash for t in history}, 1), 20)
        assert in_cell(batch, cell) >= 10 and in_cell(fresh, cell) <= 1


async def test_an_abandoned_trials_adjusted_value_counts_by_the_cases_it_ran() -> None:
    """Cell p3 x m7 seen only on trials racing abandoned after 6 cases, whose raw mean (that of 6 hard
    cases) is low: corrected high, the surrogate proposes there; uncorrected, it does not."""
    def history(adjusted: float | None) -> list[TrialRecord]:
        out = results_on(("p9", "m0"), 3)[8:]  # 52 random configurations at 0.3
        for t in results_on(("p3", "m7"), 4)[:6]:
            t.status, t.n_cases, t.score, t.adjusted = "abandoned", 6, 0.1, adjusted
            out.append(t)
        return out

    hits = {}
    for adjusted in (0.9, None):
        agent = SurrogateProposer(SPACE)
        trials = history(adjusted)
        agent.observe(trials)
        batch = await agent.propose(ctx({t.config_hash for t in trials}, 5), 20)
        hits[adjusted] = sum(good(c) for c in batch)
    assert hits[0.9] >= 8 and hits[None] <= 1


async def test_proposals_are_distinct_unseen_canonical_and_a_seed_repeats_them() -> None:
    async def run(seed: int) -> list[Config]:
        return await search(SurrogateProposer(SPACE), seed, generations=4, per_generation=6)

    first = await run(3)
    hashes = [config_hash(c) for c in first]
    assert len(first) == 24 and len(set(hashes)) == 24
    assert all(SPACE.contains(c) and SPACE.canonical(c) == c for c in first)
    assert await run(3) == first and await run(4) != first


async def test_runs_in_the_loop_as_a_society_agent(tmp_path: Path) -> None:
    loaded = make_config(tmp_path, LOOP_SPACE + """
optimization:
  seed: 3
  evolution: {population_size: 6, generations: 4, elite_size: 2}
  execution: {mode: generational, early_stopping: {enabled: false}}
  racing: {enabled: false}
society:
  enabled: true
  agents: {surrogate: 0.5, evolution: 0.5}
""")
    assert isinstance(build_agent("surrogate", loaded.config, SearchSpace.from_config(loaded.config.search_space)),
                      SurrogateProposer)
    store = await Store.open(tmp_path / "db.sqlite")
    try:
        out = await Optimizer(loaded, store).run()
        log = await store.society_log(out.run_id)
    finally:
        await store.close()
    assert out.status == "finished" and out.generations_run == 4
    assert len([t for t in out.trials if t.proposer == "surrogate"]) >= 4
    mine = [r for r in log if r.agent == "surrogate" and r.generation >= 1]
    assert mine and all(r.status in ("ok", "idle") for r in mine) and mine[-1].detail["trials"] > 0


@pytest.mark.parametrize("n", [20, 120])  # fewer trials than features (dual) and more (primal)
def test_the_posterior_is_the_same_in_both_forms_and_its_draws_have_its_covariance(n: int) -> None:
    """One fit on synthetic data: the dual (n x n) and primal (D x D) forms give the same noise estimate and
    posterior mean, and each form's draws scatter with the posterior covariance ``sigma^2 A^{-1}``."""
    rng = np.random.default_rng(0)
    features = Features(SearchSpace.from_config(SearchSpaceConfig.model_validate({"parameters": {
        "a": {"type": "categorical", "values": ["x", "y", "z"]},
        "b": {"type": "categorical", "values": ["u", "v", "w", "t"]},
        "c": {"type": "continuous", "min": 0.0, "max": 1.0},
    }})))
    configs = [features.space.sample(rng) for _ in range(n)]
    phi = features.matrix([features.index(c) for c in configs])
    y = 0.4 + 0.2 * phi[:, 0] - 0.1 * phi[:, 4] + rng.normal(0, 0.1, n)
    w = rng.choice([6.0, 30.0], n)
    dual = Posterior.fit(phi, y, w, features.is_pair, primal=False)
    primal = Posterior.fit(phi, y, w, features.is_pair, primal=True)
    assert dual.sigma2 == pytest.approx(primal.sigma2, rel=1e-6)
    assert np.allclose(dual.mean(), primal.mean(), atol=1e-8)
    X = primal.X
    cov = primal.sigma2 * np.linalg.inv(X.T @ X + primal.sigma2 * np.diag(1.0 / primal.s0))
    for post in (dual, primal):
        draws = post.draw(np.random.default_rng(1), 20000)
        assert np.allclose(draws.mean(axis=1), post.mean(), atol=0.05 * np.sqrt(cov.diagonal()).max())
        assert np.allclose(draws.var(axis=1), cov.diagonal(), rtol=0.1)
