"""Every decision the policy can make changes what the society proposes (so what is evaluated):
each choice of each head, against the default decision, on the same seeded state."""

from __future__ import annotations

import copy

import anyio
import numpy as np
import pytest

from convergence.config.models import EvolutionConfig, MABConfig, SearchSpaceConfig
from convergence.core.space import SearchSpace, config_hash
from convergence.core.types import TrialRecord
from convergence.society.bandit import BanditProposer, RandomProposer
from convergence.society.base import ProposalContext
from convergence.society.evolutionary import EvolutionaryProposer
from convergence.society.society import Society
from convergence_ppo.encoding import ActionSpace

SPACE = SearchSpace.from_config(SearchSpaceConfig.model_validate({"parameters": {
    "x": {"type": "continuous", "min": 0.0, "max": 1.0},
    "n": {"type": "discrete", "min": 0, "max": 100, "step": 1},
    "model": {"type": "categorical", "values": ["a", "b", "c", "d"]}}}))


def _society() -> Society:
    rng = np.random.default_rng(0)
    history = []
    for i in range(30):
        c = SPACE.sample(rng)
        history.append(TrialRecord(c, config_hash(c), 0, "random", score=float(c["x"]) * (c["model"] == "b"),
                                   trial_id=i))
    bandit = BanditProposer(MABConfig(), SPACE)
    bandit.observe(history)
    soc = Society([(EvolutionaryProposer(EvolutionConfig()), 0.4), (bandit, 0.3), (RandomProposer(), 0.3)], SPACE)
    soc.history = history  # type: ignore[attr-defined]
    return soc


def _proposals(soc: Society, shares: dict[str, float], controls: dict[str, dict[str, str]]) -> list[tuple[str, str]]:
    soc = copy.deepcopy(soc)
    soc.set_shares(shares)
    soc.set_controls(controls)
    history = soc.history  # type: ignore[attr-defined]
    pop = sorted(history, key=lambda t: -t.score)[:8]
    ctx = ProposalContext(SPACE, 1, pop, history, np.random.default_rng(42), {t.config_hash for t in history})
    return [(p.proposer, p.config_hash) for p in anyio.run(soc.propose, ctx, 20)]


def test_every_choice_of_every_decision_changes_the_proposals() -> None:
    soc = _society()
    actions = ActionSpace(list(soc.shares), soc.controls())
    assert [h.name for h in actions.heads] == ["boost", "evolution.operator", "evolution.strength",
                                               "bandit.exploration"]
    default = [0] * len(actions.heads)
    base = _proposals(soc, *actions.decide(default, soc.shares, 0.4))
    for i, head in enumerate(actions.heads):
        for choice in range(1, len(head.choices)):
            action = list(default)
            action[i] = choice
            got = _proposals(soc, *actions.decide(action, soc.shares, 0.4))
            assert got != base, f"{head.name}={head.choices[choice]} proposed exactly what the default did"


def test_boost_gives_the_chosen_agent_more_slots() -> None:
    soc = _society()
    actions = ActionSpace(list(soc.shares), soc.controls(), only=["boost"])
    shares, _ = actions.decide([actions.heads[0].choices.index("random")], soc.shares, 0.4)
    assert shares["random"] == pytest.approx(0.6 * 0.3 + 0.4)
    by = [a for a, _ in _proposals(soc, shares, {})]
    assert by.count("random") > by.count("evolution")


def test_the_society_refuses_a_control_an_agent_does_not_have() -> None:
    soc = _society()
    with pytest.raises(ValueError, match="not one of"):
        soc.set_controls({"evolution": {"operator": "teleport"}})
    with pytest.raises(ValueError, match="has none"):
        soc.set_controls({"random": {"operator": "local"}})
    with pytest.raises(ValueError, match="unknown decision"):
        ActionSpace(list(soc.shares), soc.controls(), only=["evolution.speed"])


def test_a_choice_that_would_change_nothing_is_not_offered() -> None:
    """No mutation strength for a space without a numeric range (categorical mutation has no scale), and no
    bandit rate equal to the configured one (``configured`` already proposes that way)."""
    from convergence.config.models import OptimizationConfig
    from convergence.society.builtin_agents import AgentContext, evolution

    categorical = SearchSpace.from_config(SearchSpaceConfig.model_validate({"parameters": {
        "model": {"type": "categorical", "values": ["a", "b", "c"]}, "n": {"type": "categorical", "values": [1, 5]}}}))
    opt = OptimizationConfig()
    assert evolution(AgentContext("evolution", opt, categorical)).controls() == {  # type: ignore[attr-defined]
        "operator": ("blend", "local", "reset", "crossover")}
    assert "strength" in evolution(AgentContext("evolution", opt, SPACE)).controls()  # type: ignore[attr-defined]
    assert BanditProposer(MABConfig(exploration_rate=0.0), SPACE).controls() == {
        "exploration": ("configured", "explore")}
    assert BanditProposer(MABConfig(exploration_rate=0.5), SPACE).controls() == {
        "exploration": ("configured", "exploit")}
    assert BanditProposer(MABConfig(exploration_rate=0.1), SPACE).controls() == {
        "exploration": ("configured", "exploit", "explore")}
