"""The Thompson-sampling bandit learns from every trial with results: an abandoned or partial trial counts
by its case-corrected value (``adjusted``) and by the share of the cases it ran."""

from __future__ import annotations

import numpy as np
import pytest

from convergence.config.models import MABConfig, SearchSpaceConfig
from convergence.core.space import SearchSpace, config_hash
from convergence.core.types import Config, TrialRecord
from convergence.society.bandit import BanditProposer
from convergence.society.base import ProposalContext

pytestmark = pytest.mark.anyio

SPACE = SearchSpace.from_config(SearchSpaceConfig.model_validate({"parameters": {
    "mode": {"type": "categorical", "values": ["a", "b", "c", "d"]},
    "x": {"type": "continuous", "min": 0.0, "max": 1.0, "step": 0.05},
}}))


def trial(mode: str, x: float, score: float, *, n_cases: int = 30, status: str = "complete",
          adjusted: float | None = None) -> TrialRecord:
    c: Config = {"mode": mode, "x": x}
    return TrialRecord(c, config_hash(c), 0, "evolution", score=score, n_cases=n_cases, status=status,
                       adjusted=adjusted)


def history(adjusted: float | None) -> list[TrialRecord]:
    """Complete trials of modes a, b, d (scores spread from 0.30 to 0.64) and four trials of mode c that
    racing abandoned after 6 cases: their raw mean is that of 6 hard cases (0.1); ``adjusted`` corrects it."""
    done = [trial(m, round(0.05 * i, 2), 0.3 + 0.02 * i) for i, m in enumerate("abdabdabdabdabdabd")]
    dropped = [trial("c", round(0.1 + 0.2 * i, 2), 0.1, n_cases=6, status="abandoned", adjusted=adjusted)
               for i in range(4)]
    return done + dropped


async def modes_proposed(trials: list[TrialRecord]) -> list[str]:
    bandit = BanditProposer(MABConfig(exploration_rate=0.0), SPACE)
    bandit.observe(trials)
    ctx = ProposalContext(SPACE, 1, [], [], np.random.default_rng(0))
    return [c["mode"] for c in await bandit.propose(ctx, 40)]


async def test_an_abandoned_trials_adjusted_value_changes_what_the_bandit_proposes() -> None:
    """Corrected to the top of the run, the abandoned mode-c trials make c the bandit's favourite; on their
    raw prefix mean (no correction yet) c is the run's worst and the bandit avoids it."""
    corrected = (await modes_proposed(history(adjusted=0.95))).count("c")
    raw = (await modes_proposed(history(adjusted=None))).count("c")
    assert corrected >= 30 and raw <= 15  # raw: c ran few cases, so the bandit still tries it now and then


def test_an_abandoned_trial_counts_by_the_share_of_the_cases_it_ran() -> None:
    bandit = BanditProposer(MABConfig(), SPACE)
    bandit.observe([trial("a", 0.0, 0.9), trial("b", 0.0, 0.2), trial("b", 0.5, 0.3), trial("b", 1.0, 0.1),
                    trial("c", 0.0, 0.0, n_cases=6, status="abandoned", adjusted=0.95),
                    trial("d", 0.0, 0.5, n_cases=15, status="partial")])
    # top quarter of 6 values: a (0.9) and c (0.95) win; c ran 6 of 30 cases, d 15
    assert bandit.alpha["mode"].tolist() == pytest.approx([2.0, 1.0, 1.2, 1.0])
    assert bandit.beta["mode"].tolist() == pytest.approx([1.0, 4.0, 1.0, 1.5])
