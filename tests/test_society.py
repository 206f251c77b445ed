"""The society as a user sees it: shares split the slots, an agent that raises
or hangs yields its slots and the run goes on (reported), the society log
is stored, and the advantage formulas match hand-computed values."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from test_loop import SPACE, make_config

from convergence.cli.traces import build_tree
from convergence.core.types import Config, TrialRecord
from convergence.engine.loop import Optimizer
from convergence.society.base import ProposalContext
from convergence.society.rlp.gae import RunningNorm, gae, group_advantages
from convergence.society.society import Society, build_agent
from convergence.storage.store import Store

pytestmark = pytest.mark.anyio


class Broken:
    name = "broken"

    async def propose(self, ctx: ProposalContext, n: int) -> list[Config]:
        raise RuntimeError("agent bug")

    def observe(self, trials: Sequence[TrialRecord]) -> None:
        pass


class Hangs:
    name = "hangs"
    uses_llm = True

    async def propose(self, ctx: ProposalContext, n: int) -> list[Config]:
        await anyio.sleep(3600)
        return []

    def observe(self, trials: Sequence[TrialRecord]) -> None:
        pass


async def test_an_agent_that_raises_or_hangs_yields_its_slots_and_the_run_goes_on(tmp_path: Path) -> None:
    loaded = make_config(tmp_path, SPACE + """
optimization:
  seed: 4
  evolution: {population_size: 6, generations: 3, elite_size: 2}
  execution: {mode: generational, early_stopping: {enabled: false}}
""")
    cfg = loaded.config
    space_members: list[Any] = [(build_agent("evolution", cfg, _space(cfg)), 0.4), (Broken(), 0.3), (Hangs(), 0.3)]
    society = Society(space_members, _space(cfg), timeout_seconds=0.5)
    store = await Store.open(tmp_path / "db.sqlite")
    try:
        with anyio.fail_after(30):
            out = await Optimizer(loaded, store, society=society).run()
        log = await store.society_log(out.run_id)
        tree = await build_tree(store, out.run_id)
    finally:
        await store.close()
    assert out.status == "finished" and out.generations_run == 3
    # `convergence traces RUN` shows what each agent did per generation
    gen2 = {a["agent"]: a for a in tree["generations"][1]["society"]}
    assert gen2["broken"]["status"] == "failed" and gen2["hangs"]["status"] == "timeout"
    # every generation still got its full set of proposals, all from the working agent (or random fill)
    for g in range(3):
        assert len([t for t in out.trials if t.generation == g]) == (6 if g == 0 else 4)
    assert {t.proposer for t in out.trials} <= {"evolution", "random"}
    by = {(r.generation, r.agent): r for r in log}
    assert by[(1, "broken")].status == "failed" and "agent bug" in by[(1, "broken")].detail["error"]
    assert by[(1, "hangs")].status == "timeout" and by[(1, "hangs")].seconds < 5
    assert by[(1, "evolution")].status == "ok" and by[(1, "evolution")].proposed == 4


def _space(cfg: Any) -> Any:
    from convergence.core.space import SearchSpace

    return SearchSpace.from_config(cfg.search_space)


async def test_shares_decide_who_proposes(tmp_path: Path) -> None:
    loaded = make_config(tmp_path, SPACE + """
optimization:
  seed: 5
  evolution: {population_size: 10, generations: 2, elite_size: 2}
  execution: {mode: generational, early_stopping: {enabled: false}}
society:
  enabled: true
  agents: {evolution: 0.75, bandit: 0.25}
""")
    store = await Store.open(tmp_path / "db.sqlite")
    try:
        out = await Optimizer(loaded, store).run()
        log = await store.society_log(out.run_id)
    finally:
        await store.close()
    gen1 = {r.agent: r for r in log if r.generation == 1}
    assert gen1["evolution"].asked == 6 and gen1["bandit"].asked == 2
    assert gen1["evolution"].share == pytest.approx(0.75)


def test_group_advantage_matches_the_rlp_formula() -> None:
    # A_i = G/(G-1) (r_i - mean r): G = 4, mean 1.0
    assert group_advantages([0.0, 1.0, 2.0, 1.0]) == pytest.approx([-4 / 3, 0.0, 4 / 3, 0.0])
    assert group_advantages([5.0]) == [0.0]


def test_gae_matches_hand_computed_values() -> None:
    r, v, nv, g, lam = [1.0, 0.0, 2.0], [0.5, 0.2, 0.1], 0.3, 0.99, 0.95
    d2 = 2.0 + g * 0.3 - 0.1            # 2.197
    d1 = 0.0 + g * 0.1 - 0.2            # -0.101
    d0 = 1.0 + g * 0.2 - 0.5            # 0.698
    a2 = d2
    a1 = d1 + g * lam * a2
    a0 = d0 + g * lam * a1
    assert gae(r, v, nv, g, lam) == pytest.approx([a0, a1, a2])
    assert gae(r, v, nv, g, lam) == pytest.approx([2.5463, 1.9653, 2.197], abs=1e-3)


def test_running_norm_is_welford_and_round_trips() -> None:
    n = RunningNorm()
    n.update([1.0, 2.0, 3.0, 4.0])
    assert n.mean == pytest.approx(2.5) and n.std == pytest.approx(1.2909944)
    assert RunningNorm.from_dict(n.to_dict()) == n
    assert n.normalize(2.5) == 0.0


def test_validate_and_optimize_refuse_a_society_llm_without_its_key_or_an_unknown_local_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from convergence.engine.preflight import preflight

    monkeypatch.delenv("SOCIETY_KEY_FOR_TEST", raising=False)
    loaded = make_config(tmp_path, SPACE + """
society:
  enabled: true
  llm: {model: openai/gpt-4o-mini, api_key_env: SOCIETY_KEY_FOR_TEST}
  rlp: {model_name: local/llama-9000}
""")
    problems = {p.field: p.message for p in preflight(loaded).problems}
    assert "SOCIETY_KEY_FOR_TEST is not set" in problems["society.llm.api_key_env"]
    assert "unknown local model 'local/llama-9000'" in problems["society.rlp.model_name"]
    # the society off: its LLM is not needed, nothing to report
    off = make_config(tmp_path, SPACE + "society:\n  llm: {model: x/y, api_key_env: SOCIETY_KEY_FOR_TEST}\n")
    assert not preflight(off).problems


def test_an_answer_that_repeats_a_seen_configuration_moves_to_its_nearest_unseen_neighbour() -> None:
    import numpy as np

    from convergence.config.models import SearchSpaceConfig
    from convergence.core.space import SearchSpace, config_hash
    from convergence.society.strategies import nearest_unseen

    space = SearchSpace.from_config(SearchSpaceConfig.model_validate({"parameters": {
        "x": {"type": "continuous", "min": 0, "max": 1, "step": 0.1},
        "mode": {"type": "categorical", "values": ["a", "b"]}}}))
    answer = {"x": 0.5, "mode": "a"}
    seen = {config_hash(answer), config_hash({"x": 0.4, "mode": "a"})}
    moved = nearest_unseen(space, answer, {}, seen, np.random.default_rng(0))
    assert moved is not None and config_hash(moved) not in seen
    # one parameter changed, to the nearest unseen value
    assert moved in ({"x": 0.6, "mode": "a"}, {"x": 0.5, "mode": "b"})
    # inside the strategy's region only; nothing left there -> None (the slot is not forced elsewhere)
    assert nearest_unseen(space, answer, {"x": [0.4, 0.5], "mode": ["a"]}, seen, np.random.default_rng(0)) is None


class Referee:
    """Not named "sao": measures configurations itself (mode ``a`` is preferred) through ``TrialMeasure``."""

    name = "referee"

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []
        self.seen: dict[str, Config] = {}

    async def propose(self, ctx: ProposalContext, n: int) -> list[Config]:
        return []

    def observe(self, trials: Sequence[TrialRecord]) -> None:
        self.seen.update((t.config_hash, t.config) for t in trials)

    def measures(self) -> frozenset[str]:
        return frozenset({"sao_preference"})

    def trial_value(self, function: str, config_hash: str) -> float:
        self.asked.append((function, config_hash))
        return 1.0 if self.seen.get(config_hash, {}).get("mode") == "a" else 0.0


@pytest.mark.parametrize("with_referee", [True, False])
async def test_a_trial_level_metric_comes_from_whichever_agent_measures_it(tmp_path: Path,
                                                                           with_referee: bool) -> None:
    """The engine asks the society, not an agent by name: any agent that measures ``sao_preference`` feeds
    that metric (scores are refreshed once it has seen the trials); with none, every trial gets 0.5."""
    loaded = make_config(tmp_path, SPACE.replace("acc: {function: exact_match}",
                                                 "acc: {function: exact_match, weight: 0.5}\n"
                                                 "    pref: {function: sao_preference, weight: 0.5}") + """
optimization:
  seed: 3
  evolution: {population_size: 6, generations: 2, elite_size: 2}
  execution: {mode: generational, early_stopping: {enabled: false}}
""")
    cfg = loaded.config
    referee = Referee()
    members: list[Any] = [(build_agent("evolution", cfg, _space(cfg)), 0.5)]
    if with_referee:
        members.append((referee, 0.5))
    store = await Store.open(tmp_path / "db.sqlite")
    try:
        out = await Optimizer(loaded, store, society=Society(members, _space(cfg))).run()
    finally:
        await store.close()
    usable = [t for t in out.trials if t.usable]
    assert {t.config["mode"] for t in usable} >= {"a", "b"}
    for t in usable:
        expected = (1.0 if t.config["mode"] == "a" else 0.0) if with_referee else 0.5
        assert t.metrics["pref"] == expected, (t.config, t.metrics)
    assert bool(referee.asked) is with_referee
