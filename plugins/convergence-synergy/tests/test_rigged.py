"""Does each learner find the agent whose proposals pay, from rewards alone?

The rigged society (``rigged.py``): good pays 1.0 per unit of cost on 60% of its proposals,
random on 20%, poor on 5%. Every learner starts from even shares (1/3 each) and must raise the
good agent's share above LEVEL within GENERATIONS generations. The control: the same learner fed
the same kind of results with the agents' probabilities handed out at random every generation
(shuffled rewards) must not, over CONTROL_GENERATIONS (longer, so that a learner drifting on noise
has the time to): a learner that ignored rewards (or pushed one agent whatever happened) would fail
one of the two. One seed here; the same table over more seeds (and CPU time per update):
``python plugins/convergence-synergy/scripts/rigged_table.py --seeds 10``.
"""

from __future__ import annotations

import pytest
from rigged import context, run

from convergence_synergy import make_learner

LEVEL = 0.5
GENERATIONS = 20
CONTROL_GENERATIONS = 30
SEEDS = (0,)
ALGORITHMS = ("actor_critic", "double_dqn", "sac", "td3")

RESULTS: list[dict] = []
"""Collected for the table printed at the end of the session (conftest.pytest_terminal_summary)."""


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_good_agent_share_rises_with_real_rewards_and_not_with_shuffled_ones(tmp_path, algorithm):
    rows = []
    for seed in SEEDS:
        real = run(make_learner(context(tmp_path / f"real{seed}", seed, algorithm=algorithm, predictor="ema")),
                   GENERATIONS, seed)
        control = run(make_learner(context(tmp_path / f"shuffled{seed}", seed, algorithm=algorithm,
                                           predictor="ema")), CONTROL_GENERATIONS, seed, shuffle=True)
        rows.append({"algorithm": algorithm, "seed": seed, "generations_to_level": real.generations_to(LEVEL),
                     "final": real.final, "control_max_good": max(control.good), "control_final": control.final})
    RESULTS.extend(rows)
    for r in rows:
        assert r["generations_to_level"] is not None, (
            f"{algorithm} seed {r['seed']}: the good agent's share never rose above {LEVEL} in {GENERATIONS} "
            f"generations (final shares {r['final']})")
        assert r["control_max_good"] <= LEVEL, (
            f"{algorithm} seed {r['seed']}: with shuffled rewards the good agent's share still reached "
            f"{r['control_max_good']:.3f} within {CONTROL_GENERATIONS} generations (final {r['control_final']})")
