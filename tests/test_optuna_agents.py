"""Optuna's samplers as society agents (tpe, gp, cmaes), as a user sees them:
in-space, distinct, canonical proposals; a seed repeats them; they learn from
the other agents' results; asked trials that never came back do not linger;
and each runs in the real loop next to evolution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from optuna.trial import TrialState
from test_loop import SPACE, make_config

from convergence.config.models import SearchSpaceConfig
from convergence.core.space import SearchSpace, config_hash
from convergence.core.types import Config, TrialRecord
from convergence.engine.loop import Optimizer
from convergence.society import optuna_agents
from convergence.society.bandit import RandomProposer
from convergence.society.base import ProposalContext
from convergence.society.optuna_agents import OptunaProposer
from convergence.society.society import build_agent
from convergence.storage.store import Store

pytestmark = pytest.mark.anyio

AGENTS = ["tpe", "gp", "cmaes"]

MIXED_PARAMS = {
    "mode": {"type": "categorical", "values": ["a", "b", "c"]},
    "x": {"type": "continuous", "min": 0.0, "max": 1.0, "step": 0.05},
    "n": {"type": "integer", "min": 1, "max": 10},
    "lr": {"type": "continuous", "min": 1e-4, "max": 1e-1, "log": True},
}


def space_of(params: dict[str, Any]) -> SearchSpace:
    return SearchSpace.from_config(SearchSpaceConfig.model_validate({"parameters": params}))


MIXED = space_of(MIXED_PARAMS)


def peak(c: Config) -> float:
    """1.0 in the good region (mode 'b', x near 0.7), else 0.0."""
    return 1.0 if c["mode"] == "b" and abs(c["x"] - 0.7) < 0.051 else 0.0


def record(c: Config, proposer: str, score: float | None = None, status: str = "complete", gen: int = 0
           ) -> TrialRecord:
    return TrialRecord(c, config_hash(c), gen, proposer, score=peak(c) if score is None else score, status=status)


def ctx(space: SearchSpace, seen: set[str] | None = None, seed: int = 0, gen: int = 1) -> ProposalContext:
    return ProposalContext(space, gen, [], [], np.random.default_rng(seed), set() if seen is None else seen)


def others(seed: int, n: int = 40) -> list[TrialRecord]:
    """Another agent's results: random configurations, the first 8 in the good region (score 1.0)."""
    rng = np.random.default_rng(seed)
    out: list[TrialRecord] = []
    while len(out) < n:
        c = MIXED.canonical(MIXED.sample(rng))
        if len(out) < 8:
            c["mode"], c["x"] = "b", float(rng.choice([0.65, 0.7, 0.75]))
        if config_hash(c) not in {t.config_hash for t in out}:
            out.append(record(c, "evolution"))
    return out


@pytest.mark.parametrize("name", AGENTS)
async def test_proposals_are_in_space_distinct_canonical_and_unseen(name: str) -> None:
    space = space_of({
        **MIXED_PARAMS,
        "tokens": {"type": "discrete", "values": [256, 64, 512, 128]},  # log-spaced: an ordered position
        "k": {"type": "discrete", "values": [1, 2, 5]},  # unevenly spaced: categorical
    })
    agent = OptunaProposer(name, space, seed=3)
    seen: set[str] = set()
    for _ in range(3):  # random start-up, then model-based (12 results > every sampler's 10 start-up trials)
        batch = await agent.propose(ctx(space, seen), 8)
        assert len(batch) == 8
        hashes = [config_hash(c) for c in batch]
        assert len(set(hashes)) == 8 and not set(hashes) & seen
        for c in batch:
            assert space.contains(c) and space.canonical(c) == c
            assert isinstance(c["n"], int) and isinstance(c["tokens"], int) and isinstance(c["k"], int)
        seen.update(hashes)
        agent.observe([record(c, name, score=peak(c) + c["n"] / 100) for c in batch[:6]])


@pytest.mark.filterwarnings("error")  # e.g. Optuna's "range not divisible by step" (it would cut the range)
async def test_every_evaluated_configuration_of_an_awkward_space_goes_into_its_study() -> None:
    space = space_of({
        "a": {"type": "continuous", "min": 0.0, "max": 1.0, "step": 0.3},  # 1.0 is off the grid
        "b": {"type": "continuous", "min": 0.1, "max": 1.0, "step": 0.1},
        "c": {"type": "continuous", "min": 0.001, "max": 1.0, "step": 0.001, "log": True},
        "d": {"type": "integer", "min": 3, "max": 20, "step": 4},
        "e": {"type": "discrete", "values": [0.1, 0.2, 0.3, 0.4]},
        "f": {"type": "categorical", "values": [None, "x", [1, 2], 0.5]},
        "g": {"type": "continuous", "min": 0.5, "max": 0.5},
    })
    rng = np.random.default_rng(0)
    history = [record(space.canonical(space.sample(rng)), "evolution", float(i)) for i in range(30)]
    for name in AGENTS:
        agent = OptunaProposer(name, space, seed=0)
        agent.observe(history)
        assert agent.counts["others"] == len({t.config_hash for t in history})
        batch = await agent.propose(ctx(space), 6)
        assert len(batch) == 6 and all(space.contains(c) and space.canonical(c) == c for c in batch)


@pytest.mark.parametrize("name", AGENTS)
async def test_in_a_small_space_it_asks_again_rather_than_repeat_a_seen_configuration(name: str) -> None:
    space = space_of({"mode": MIXED_PARAMS["mode"], "x": {"type": "continuous", "min": 0.0, "max": 1.0, "step": 0.25}})
    agent = OptunaProposer(name, space, seed=1)
    seen: set[str] = set()
    for gen in range(4):  # 15 configurations in all
        batch = await agent.propose(ctx(space, seen, gen=gen), 4)
        hashes = {config_hash(c) for c in batch}
        assert len(hashes) == len(batch) and not hashes & seen
        seen |= hashes
        agent.observe([record(c, name, gen=gen) for c in batch])
    assert len(seen) >= 10  # it may give up on a slot after its bounded re-asks (the society fills it)


@pytest.mark.parametrize("name", AGENTS)
async def test_same_seed_and_history_give_the_same_proposals(name: str) -> None:
    async def proposals(seed: int) -> list[Config]:
        agent = OptunaProposer(name, MIXED, seed=seed)
        agent.observe(others(1, 12))
        out: list[Config] = []
        for _ in range(2):
            batch = await agent.propose(ctx(MIXED), 4)
            agent.observe([record(c, name) for c in batch])
            out += batch
        return out

    first = await proposals(7)
    assert await proposals(7) == first
    assert await proposals(8) != first


@pytest.mark.parametrize("name", AGENTS)
async def test_learns_from_the_other_agents_results(name: str) -> None:
    """After observing another agent's results, where one region scores 1.0,
    the proposals land there far more often than before (and than at random)."""
    history = others(5)
    fresh = OptunaProposer(name, MIXED, seed=5)
    before = sum(peak(c) for c in await fresh.propose(ctx(MIXED), 20))
    informed = OptunaProposer(name, MIXED, seed=5)
    informed.observe(history)
    after = sum(peak(c) for c in await informed.propose(ctx(MIXED), 20))
    at_random = sum(peak(c) for c in await RandomProposer().propose(ctx(MIXED, seed=5), 20))
    assert before <= 2 and at_random <= 2  # the region is 1/21 of the space
    assert after >= before + 3 and after >= 3 * max(at_random, 1)  # random: P(>= 4 of 20) < 2 %
    assert informed.counts["others"] == len(history)


async def test_cmaes_updates_its_search_distribution_from_the_others_results() -> None:
    """CmaEsSampler ignores trials filed under no CMA-ES generation: the others' best must be filed under one."""
    history = others(5)
    informed = OptunaProposer("cmaes", MIXED, seed=5)
    informed.observe(history)
    ignored = OptunaProposer("cmaes", MIXED, seed=5)
    ignored.popsize = 0  # files nothing under a generation: its CMA-ES starts from the middle of the space
    ignored.observe(history)
    # where its search distribution is centred now: the mean x of its proposals (the others' best: x = 0.7)
    off = [abs(float(np.mean([c["x"] for c in await a.propose(ctx(MIXED), 40)])) - 0.7) for a in (informed, ignored)]
    assert off[0] < 0.1 and off[0] < off[1] - 0.05


async def test_asked_trials_that_never_come_back_do_not_stay_running() -> None:
    agent = OptunaProposer("tpe", MIXED, seed=2)
    agent.observe(others(2, 12))

    def running() -> int:
        return len(agent.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))

    batches = {}
    for gen in range(1, 6):
        batches[gen] = await agent.propose(ctx(MIXED, seed=gen, gen=gen), 6)
        # async mode: the next generation is proposed while this one is evaluated; the constant liar
        # counts both batches, which are really pending, and nothing older
        assert running() == (6 if gen == 1 else 12)
        if gen == 1:
            continue
        # the previous generation comes back: the society kept two of its proposals, a third came back
        # under another agent's name (it proposed the same config); the rest were dropped or cut by the budget
        b = batches[gen - 1]
        agent.observe([record(b[0], "tpe", gen=gen - 1), record(b[1], "tpe", status="partial", gen=gen - 1),
                       record(b[2], "evolution", 0.5, gen=gen - 1)])
        assert running() == 6
    agent.observe([record(batches[5][0], "tpe", gen=5)])  # the last one: only one proposal evaluated
    assert running() == 0
    assert agent.counts["own"] == 4 * 2 + 1 and agent.counts["failed"] == 4 and agent.counts["dropped"] == 4 * 3 + 5
    complete = agent.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(complete) == 12 + 9 and sum(t.value == 0.5 for t in complete if t.number >= 12) == 4


def test_gp_without_torch_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = optuna_agents.importlib.util.find_spec
    monkeypatch.setattr(optuna_agents.importlib.util, "find_spec", lambda n, *a: None if n == "torch" else real(n, *a))
    with pytest.raises(ImportError, match=r"the gp agent needs torch: pip install torch==2\.13\.0"):
        OptunaProposer("gp", MIXED)


@pytest.mark.parametrize("name", AGENTS)
async def test_runs_in_the_loop_next_to_evolution_and_a_seeded_run_repeats(tmp_path: Path, name: str) -> None:
    async def run(d: Path) -> tuple[Any, list[Any]]:
        d.mkdir()
        loaded = make_config(d, SPACE + f"""
optimization:
  seed: 3
  evolution: {{population_size: 6, generations: 4, elite_size: 2}}
  execution: {{mode: generational, early_stopping: {{enabled: false}}}}
  racing: {{enabled: false}}
society:
  enabled: true
  agents: {{{name}: 0.5, evolution: 0.5}}
""")
        assert isinstance(build_agent(name, loaded.config, SearchSpace.from_config(loaded.config.search_space)),
                          OptunaProposer)
        store = await Store.open(d / "db.sqlite")
        try:
            out = await Optimizer(loaded, store).run()
            return out, await store.society_log(out.run_id)
        finally:
            await store.close()

    out, log = await run(tmp_path / "a")
    assert out.status == "finished" and out.generations_run == 4
    assert len([t for t in out.trials if t.proposer == name]) >= 5
    hashes = [t.config_hash for t in out.trials]
    assert len(hashes) == len(set(hashes))
    mine = [r for r in log if r.agent == name and r.generation >= 1]
    # a small space: an agent whose every redraw is already seen proposes nothing that generation ("idle")
    assert mine and all(r.status in ("ok", "idle") for r in mine) and sum(r.proposed for r in mine) >= 4
    assert mine[-1].detail["own"] > 0 and mine[-1].detail["others"] > 0
    again, _ = await run(tmp_path / "b")
    assert [(t.proposer, t.config_hash, t.score) for t in again.trials] == [
        (t.proposer, t.config_hash, t.score) for t in out.trials]


def abandoned_in_the_good_region(adjusted: float | None) -> list[TrialRecord]:
    """The configurations of ``others(5)``, the 32 outside the good region complete with middling scores, the
    8 in it abandoned by racing after 6 of 30 cases: their raw mean (0.0) is that of 6 hard cases;
    ``adjusted`` is the case model's estimate."""
    out = []
    for i, t in enumerate(others(5)):
        if peak(t.config):
            t.status, t.n_cases, t.score, t.adjusted = "abandoned", 6, 0.0, adjusted
        else:
            t.n_cases, t.score = 30, 0.3 + 0.01 * i
        out.append(t)
    return out


async def test_an_abandoned_trials_adjusted_value_steers_tpe() -> None:
    """Abandoned trials are told with their case-corrected value: high in the good region, TPE proposes
    there; the same trials corrected to low (or told as FAIL, as before) teach it nothing about the region."""
    hits = {}
    for adjusted in (1.0, 0.0):
        agent = OptunaProposer("tpe", MIXED, seed=5)
        agent.observe(abandoned_in_the_good_region(adjusted))
        hits[adjusted] = sum(peak(c) for c in await agent.propose(ctx(MIXED), 20))
    at_random = sum(peak(c) for c in await RandomProposer().propose(ctx(MIXED, seed=5), 20))
    assert hits[0.0] <= 2 and at_random <= 2  # the region is 1/21 of the space
    assert hits[1.0] >= 3 * max(hits[0.0], at_random, 1)


async def test_its_own_abandoned_trial_is_told_complete_with_its_adjusted_value() -> None:
    agent = OptunaProposer("tpe", MIXED, seed=2)
    batch = await agent.propose(ctx(MIXED), 3)
    agent.observe([
        TrialRecord(batch[0], config_hash(batch[0]), 1, "tpe", score=0.1, n_cases=6, status="abandoned", adjusted=0.8),
        TrialRecord(batch[1], config_hash(batch[1]), 1, "tpe", score=0.3, n_cases=4, status="partial"),
        TrialRecord(batch[2], config_hash(batch[2]), 1, "tpe", score=0.0, n_cases=0, status="abandoned"),
    ])
    states = [(t.state, t.value) for t in agent.study.get_trials(deepcopy=False)]
    assert states == [(TrialState.COMPLETE, 0.8), (TrialState.COMPLETE, 0.3), (TrialState.FAIL, None)]
    assert agent.counts["own"] == 2 and agent.counts["failed"] == 1
