"""The run's case model and racing on it.

What a user sees: a configuration cut short on hard cases is judged by what it would have scored on
every case (not by its raw mean), racing drops a clearly bad configuration after a handful of cases
while one as good as the incumbent runs them all, and the agents see the abandoned configurations
with their corrected values."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from convergence.config.loader import parse_config
from convergence.core.space import SearchSpace
from convergence.core.types import TrialRecord
from convergence.engine import case_model
from convergence.engine.loop import Optimizer
from convergence.society.base import ProposalContext
from convergence.society.society import Society
from convergence.storage.store import Store

pytestmark = pytest.mark.anyio

CASES = [f"c{i}" for i in range(10)]


def test_a_configuration_that_ran_only_the_hard_cases_is_corrected_upward() -> None:
    # three complete configurations: the first four cases are hard for everyone (0.2 lower)
    hard = 4
    rows = {h: {c: [base + (-0.2 if j < hard else 0.1) + 0.01 * ((j * 7 + k) % 3)]
                for j, c in enumerate(CASES)}
            for k, (h, base) in enumerate([("a", 0.5), ("b", 0.6), ("c", 0.7)])}
    # a configuration as good as "c" cut short after the hard cases
    rows["cut"] = {c: [0.7 - 0.2 + 0.01 * ((j * 7 + 2) % 3)] for j, c in enumerate(CASES[:hard])}
    fit = case_model.fit(rows, CASES)
    assert fit is not None
    raw = sum(v[0] for v in rows["cut"].values()) / hard
    assert fit.mean["cut"] > raw + 0.15
    assert fit.mean["cut"] == pytest.approx(fit.mean["c"], abs=0.02)
    trials = [TrialRecord(config={}, config_hash=h, generation=0, proposer="x") for h in rows]
    case_model.adjust(trials, fit)
    cut = trials[-1]
    assert cut.adjusted is not None and cut.adjusted > raw
    # it ran 4 cases, "c" ran 10: its estimate is pulled further toward the run's average
    assert fit.variance("cut") > fit.variance("c")


def test_a_complete_matrix_gives_row_and_column_means() -> None:
    rows = {h: {c: [float((i * 3 + j * 5) % 7) / 7] for j, c in enumerate(CASES)} for i, h in enumerate("pqrs")}
    fit = case_model.fit(rows, CASES)
    assert fit is not None
    for h, by_case in rows.items():
        assert fit.mean[h] == pytest.approx(sum(v[0] for v in by_case.values()) / len(CASES))
    grand = sum(v[0] for by_case in rows.values() for v in by_case.values()) / (4 * len(CASES))
    for c in CASES:
        col = sum(rows[h][c][0] for h in rows) / 4
        assert fit.model.case_effect[c] == pytest.approx(col - grand)


TARGET = '''
def quality(params, input):
    """Case i is right when its difficulty u (shared by every mode but "twin", which has its own
    draw) is below the mode's success rate."""
    p = {"good": 0.9, "twin": 0.9, "fair": 0.6, "mid": 0.75, "bad": 0.1}[params["mode"]]
    i = int(input[1:])
    u = (((i * 7907 + 29) if params["mode"] == "twin" else (i * 7919 + 13)) % 101) / 101.0
    return "yes" if u < p else "no"
'''


class Scripted:
    """Proposes a fixed list of configurations per generation; keeps what it was shown."""

    name = "scripted"

    def __init__(self, plan: list[list[str]]) -> None:
        self.plan = plan
        self.seen_history: dict[int, list[TrialRecord]] = {}
        self.observed: list[TrialRecord] = []

    async def propose(self, ctx: ProposalContext, n: int) -> list[dict[str, Any]]:
        if ctx.generation in self.seen_history:  # asked again to fill the generation: nothing more
            return []
        self.seen_history[ctx.generation] = list(ctx.history)
        modes = self.plan[ctx.generation] if ctx.generation < len(self.plan) else []
        return [{"mode": m} for m in modes]

    def observe(self, trials: Any) -> None:
        self.observed.extend(trials)


def _loaded(tmp_path: Path, generations: int) -> Any:
    (tmp_path / "tgt_cm.py").write_text(TARGET)
    inline = json.dumps([{"input": f"c{i}", "expected": "yes"} for i in range(30)])
    text = textwrap.dedent(f"""
        study: case-model
        target: {{type: python, function: "tgt_cm:quality", retry: {{max_retries: 0}}}}
        storage: {{path: db.sqlite}}
        search_space:
          parameters:
            mode: {{type: categorical, values: [good, twin, fair, mid, bad]}}
        evaluation:
          test_cases: {{inline: {inline}}}
          metrics:
            acc: {{function: exact_match}}
        optimization:
          seed: 1
          warm_start: 0
          evolution: {{population_size: 3, generations: {generations}, elite_size: 0}}
          execution: {{mode: generational, concurrency: 1, early_stopping: {{enabled: false}}}}
    """)
    path = tmp_path / "optimization.yaml"
    path.write_text(text)
    return parse_config(text, path)


async def _run(tmp_path: Path, plan: list[list[str]]) -> tuple[Any, Scripted]:
    loaded = _loaded(tmp_path, len(plan) + 1)
    agent = Scripted(plan)
    store = await Store.open(loaded.db_path)
    try:
        society = Society([(agent, 1.0)], SearchSpace.from_config(loaded.config.search_space))
        return await Optimizer(loaded, store, society=society).run(), agent
    finally:
        await store.close()


async def test_racing_drops_a_clearly_bad_configuration_within_six_cases_and_keeps_one_as_good(
        tmp_path: Path) -> None:
    out, _ = await _run(tmp_path, [["good", "fair", "mid"], ["twin", "bad"]])
    by_mode = {t.config["mode"]: t for t in out.trials}
    assert all(by_mode[m].status == "complete" for m in ("good", "fair", "mid"))
    assert by_mode["bad"].status == "abandoned" and by_mode["bad"].n_cases <= 6, by_mode["bad"]
    assert by_mode["twin"].status == "complete" and by_mode["twin"].n_cases == 30


async def test_the_agents_see_abandoned_configurations_with_their_corrected_values(tmp_path: Path) -> None:
    out, agent = await _run(tmp_path, [["good", "fair", "mid"], ["twin", "bad"], []])
    bad = next(t for t in agent.observed if t.config["mode"] == "bad")
    assert bad.status == "abandoned" and bad.adjusted is not None
    # what the third generation was proposed from: every trial with results, the abandoned one included
    shown = {t.config["mode"]: t for t in agent.seen_history[2]}
    assert set(shown) == {"good", "fair", "mid", "twin", "bad"}
    assert shown["bad"].status == "abandoned" and shown["bad"].adjusted is not None
    assert shown["bad"].adjusted < shown["fair"].adjusted < shown["good"].adjusted
    # the run's best stays a complete configuration
    assert out.best is not None and out.best.status == "complete"


SEEDED = '''
def graded(params, input):
    """Right when a fixed pseudo-random draw for (configuration, case) is below the configuration's rate,
    a case's difficulty shifting every configuration alike."""
    x, i = int(params["x"]), int(input[1:])
    p = 0.1 + 0.8 * x / 20 - 0.3 * (i % 3) / 2
    u = ((x * 7919 + i * 104729 + 17) % 1009) / 1009.0
    return "yes" if u < p else "no"
'''


async def test_a_seeded_generational_run_with_racing_repeats_exactly(tmp_path: Path) -> None:
    outs = []
    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        (d / "tgt_seeded.py").write_text(SEEDED)
        inline = json.dumps([{"input": f"c{i}", "expected": "yes"} for i in range(30)])
        text = textwrap.dedent(f"""
            study: seeded
            target: {{type: python, function: "tgt_seeded:graded", retry: {{max_retries: 0}}}}
            storage: {{path: db.sqlite}}
            search_space:
              parameters:
                x: {{type: discrete, min: 0, max: 20, step: 1}}
            evaluation:
              test_cases: {{inline: {inline}}}
              metrics:
                acc: {{function: exact_match}}
            optimization:
              seed: 4
              warm_start: 0
              evolution: {{population_size: 5, generations: 4, elite_size: 1}}
              execution: {{mode: generational, concurrency: 4, early_stopping: {{enabled: false}}}}
        """)
        (d / "optimization.yaml").write_text(text)
        loaded = parse_config(text, d / "optimization.yaml")
        store = await Store.open(loaded.db_path)
        try:
            outs.append(await Optimizer(loaded, store).run())
        finally:
            await store.close()
    seq = [[(t.generation, t.config_hash, t.status, t.n_cases, t.score, t.estimate) for t in o.trials] for o in outs]
    assert seq[0] == seq[1]
    assert any(t.status == "abandoned" for t in outs[0].trials)
