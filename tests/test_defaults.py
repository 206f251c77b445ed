"""Defaults that need no tuning: ``selection.stochastic: auto`` finds out whether the target answers
differently when asked again (from the config, or by a few paid probes), and a config that gives only
``budget.max_calls`` spends that budget with a population sized by it."""

from __future__ import annotations

import json
import sqlite3
import textwrap
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from convergence.cli.app import app
from convergence.config.budget_plan import budget_plan
from convergence.config.loader import parse_config
from convergence.engine.dry_run import forecast
from convergence.engine.events import NoEvents
from convergence.engine.loop import Optimizer
from convergence.engine.preflight import check
from convergence.engine.stochastic import MIN_PROBES, PER_CONFIG, PROBES, from_config, probe_limit
from convergence.errors import ConvergenceError
from convergence.reporting.files import selection_markdown
from convergence.storage.store import Store

pytestmark = pytest.mark.anyio

TARGET = '''
import json, os, random

_draws = random.Random(5)


def coin(params, input):
    """A stochastic target: each call is a fresh coin with success rate x (Bernoulli per call)."""
    return "yes" if _draws.random() < params["x"] else "no"


def fixed(params, input):
    """A deterministic target (logs every call so tests can count them)."""
    log = os.environ.get("CALL_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"params": params, "input": input}) + "\\n")
    return "yes" if params["x"] > 0.5 else "no"
'''


def make(tmp_path: Path, fn: str, optimization: str, n_cases: int = 5, study: str = "defaults") -> Any:
    (tmp_path / "defaults_tgt.py").write_text(TARGET)
    cases = ", ".join(f"{{input: q{i}, expected: 'yes'}}" for i in range(n_cases))
    text = textwrap.dedent(f"""
        study: {study}
        target: {{type: python, function: "defaults_tgt:{fn}", retry: {{max_retries: 0}}}}
        storage: {{path: db.sqlite}}
        search_space:
          parameters:
            x: {{type: continuous, min: 0.0, max: 1.0, step: 0.001}}
        evaluation:
          test_cases: {{inline: [{cases}]}}
          metrics:
            acc: {{function: exact_match}}
        """) + textwrap.dedent(optimization)
    path = tmp_path / "optimization.yaml"
    path.write_text(text)
    return parse_config(text, path)


async def run(loaded: Any, **kw: Any) -> Any:
    store = await Store.open(loaded.base_dir / loaded.config.storage.path)
    try:
        return await Optimizer(loaded, store, events=kw.pop("events", None)).run(**kw)
    finally:
        await store.close()


def selection_of(tmp_path: Path, run_id: int = 1) -> dict[str, Any]:
    with sqlite3.connect(tmp_path / "db.sqlite") as db:
        row = db.execute("SELECT selection_json FROM runs WHERE id = ?", (run_id,)).fetchone()
    return json.loads(row[0])


def repeat_rows(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "db.sqlite") as db:
        return int(db.execute("SELECT COUNT(*) FROM case_results WHERE repeat > 0").fetchone()[0])


# --------------------------------------------------------------------------- stochastic: auto


async def test_auto_finds_a_target_that_draws_at_random_stochastic_and_confirms_with_fresh_draws(
        tmp_path: Path) -> None:
    loaded = make(tmp_path, "coin", """
        optimization:
          seed: 1
          evolution: {population_size: 4, generations: 3, elite_size: 1}
          execution: {mode: generational, concurrency: 1, early_stopping: {enabled: false}}
          racing: {enabled: false}
          budget: {max_calls: 120}
        """, n_cases=10)
    out = await run(loaded)
    sel = selection_of(tmp_path)
    assert sel["stochastic"] is True and sel["stochastic_how"].startswith("probed")
    assert 1 <= sel["stochastic_probes"] <= PROBES
    # the calls kept for confirmation went to fresh draws of the top configurations
    assert sel["confirm_calls"] > 0 and out.total_calls <= 120
    assert repeat_rows(tmp_path) == sel["stochastic_probes"] + sel["confirm_calls"]
    top = sel["top"][0]
    assert top["repeats"] > 0
    assert "Target: stochastic (probed: a finished case asked again answered differently" in "\n".join(
        selection_markdown(sel, {}))  # the report says what was decided and how


async def test_auto_finds_a_deterministic_target_deterministic_paying_only_the_probes(tmp_path: Path) -> None:
    loaded = make(tmp_path, "fixed", """
        optimization:
          seed: 2
          evolution: {population_size: 4, generations: 3, elite_size: 1}
          execution: {mode: generational, concurrency: 2, early_stopping: {enabled: false}}
          racing: {enabled: false}
        """)
    out = await run(loaded)
    sel = selection_of(tmp_path)
    assert sel["stochastic"] is False and "every answer identical" in sel["stochastic_how"]
    assert sel["stochastic_probes"] == PROBES
    assert out.total_calls == sum(t.n_cases for t in out.trials) + PROBES  # the probes, nothing more
    assert repeat_rows(tmp_path) == PROBES and sel["confirm_calls"] == 0
    assert "Target: deterministic (probed: 10 finished case(s) asked again, every answer identical)" in "\n".join(
        selection_markdown(sel, {}))


async def test_a_deterministic_target_hands_the_calls_kept_for_confirmation_back_to_the_search(
        tmp_path: Path) -> None:
    loaded = make(tmp_path, "fixed", """
        optimization:
          seed: 3
          evolution: {population_size: 4, generations: 50, elite_size: 1}
          execution: {mode: generational, concurrency: 2, early_stopping: {enabled: false}}
          racing: {enabled: false}
          budget: {max_calls: 100}
        """)
    out = await run(loaded)
    assert selection_of(tmp_path)["stochastic"] is False
    # 10 % of max_calls was kept while the target could be stochastic; the search spent it once it was not
    assert out.total_calls == 100 and sum(t.n_cases for t in out.trials) == 100 - probe_limit(100)


class StopAfter(NoEvents):
    def generation_finished(self, generation: int, best: Any, new: Any) -> None:
        if generation == 0:
            raise ConvergenceError("stopped after generation 0")


async def test_a_resumed_run_does_not_pay_its_probes_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("CALL_LOG", str(log))
    body = """
        optimization:
          seed: 4
          evolution: {population_size: 4, generations: 3, elite_size: 1}
          execution: {mode: generational, concurrency: 2, early_stopping: {enabled: false}}
          racing: {enabled: false}
        """
    with pytest.raises(ConvergenceError, match="stopped after generation 0"):
        await run(make(tmp_path, "fixed", body), events=StopAfter())
    # generation 0's 4 configurations were probed on 2 cases each (PER_CONFIG) before the stop
    assert repeat_rows(tmp_path) == 4 * PER_CONFIG == PROBES - 2
    before = len(log.read_text().splitlines())
    out = await run(make(tmp_path, "fixed", body), resume=True)
    sel = selection_of(tmp_path)
    assert sel["stochastic"] is False and sel["stochastic_probes"] == PROBES
    new_calls = len(log.read_text().splitlines()) - before
    new_search = sum(t.n_cases for t in out.trials if t.generation > 0)
    assert new_calls == new_search + 2, "the resumed run paid only the 2 probes it was missing"
    assert repeat_rows(tmp_path) == PROBES


def litellm_config(space: str, params: str = "{}", judge: str = "") -> Any:
    text = textwrap.dedent(f"""
        target: {{type: litellm, model: openai/test, api_base: "http://127.0.0.1:9/v1", params: {params}}}
        search_space:
          parameters:
            {space}
        evaluation:
          test_cases: {{inline: [{{input: a, expected: a}}]}}
          metrics:
            acc: {{function: exact_match}}
            {judge}
        """)
    return parse_config(text, Path("optimization.yaml")).config


def test_a_litellm_target_whose_temperature_can_be_above_zero_is_stochastic_without_probing() -> None:
    searched = from_config(litellm_config("temperature: {type: continuous, min: 0.0, max: 1.2}"))
    assert searched.stochastic is True and "temperature is searched up to 1.2" in searched.how
    fixed = from_config(litellm_config("max_tokens: {type: discrete, values: [4, 8]}", "{temperature: 0.7}"))
    assert fixed.stochastic is True and "temperature 0.7" in fixed.how
    default = from_config(litellm_config("max_tokens: {type: discrete, values: [4, 8]}"))
    assert default.stochastic is True and "provider's default" in default.how
    # temperature 0, or a fixed seed, says nothing for sure: those are probed
    assert from_config(litellm_config("max_tokens: {type: discrete, values: [4, 8]}", "{temperature: 0}")).pending
    assert from_config(litellm_config("temperature: {type: continuous, min: 0.0, max: 1.0}", "{seed: 3}")).pending
    explicit = from_config(litellm_config("temperature: {type: continuous, min: 0.0, max: 1.0}").model_copy(
        update={"optimization": parse_config(
            "target: {type: python, function: 'm:f'}\nsearch_space: {parameters: {x: {type: continuous, min: 0, "
            "max: 1}}}\nevaluation: {test_cases: {inline: [{input: a}]}, metrics: {acc: {function: exact_match}}}\n"
            "optimization: {selection: {stochastic: false}}", Path("o.yaml")).config.optimization}))
    assert explicit.stochastic is False and "in the config" in explicit.how


# --------------------------------------------------------------------------- the budget sets the run's length


BUDGET_ONLY = """
    optimization:
      seed: 5
      execution: {mode: generational, concurrency: 2}
      selection: {stochastic: false}
      budget: {max_calls: 400}
"""


async def test_a_budget_only_config_spends_the_budget_with_the_population_from_it(tmp_path: Path) -> None:
    loaded = make(tmp_path, "fixed", BUDGET_ONLY, n_cases=4)
    out = await run(loaded)
    # B = 400 / 4 = 100 configuration-equivalents: population round(1.25 * sqrt(100)) = 12
    assert sum(1 for t in out.trials if t.generation == 0) == 12
    assert out.total_calls == 400 and "max_calls" in out.stop_reason
    assert out.generations_run > 5  # not the fixed 5 generations, and no early stop on a flat score


def test_what_the_user_set_is_kept_and_without_max_calls_nothing_changes(tmp_path: Path) -> None:
    def plan(optimization: str) -> Any:
        return budget_plan(make(tmp_path, "fixed", optimization, n_cases=4).config, 4)

    assert plan(BUDGET_ONLY).notes() == ["population 12 (from the budget)", "generations: until the budget is spent",
                                         "early stopping off (the budget sets the run's length)"]
    assert not plan(BUDGET_ONLY.replace("budget: {max_calls: 400}", "budget: {max_seconds: 60}")).derived
    assert not plan(BUDGET_ONLY + "      evolution: {generations: 4}\n").derived
    kept = plan(BUDGET_ONLY.replace("concurrency: 2}", "concurrency: 2, early_stopping: {patience: 5}}")
                + "      evolution: {population_size: 7}\n")
    assert kept.population is None and kept.generations == 400 and not kept.early_stopping_off
    assert plan(BUDGET_ONLY.replace("max_calls: 400", "max_calls: 4")).population == 6  # clipped to [6, 30]
    assert plan(BUDGET_ONLY.replace("max_calls: 400", "max_calls: 400000")).population == 30


async def test_explicit_generations_are_respected_with_a_budget(tmp_path: Path) -> None:
    out = await run(make(tmp_path, "fixed", BUDGET_ONLY + "      evolution: {generations: 2}\n", n_cases=4))
    assert out.generations_run == 2 and out.total_calls < 400
    assert sum(1 for t in out.trials if t.generation == 0) == 8  # the default population


def test_validate_and_the_dry_run_show_what_the_budget_set(tmp_path: Path) -> None:
    loaded = make(tmp_path, "fixed", BUDGET_ONLY, n_cases=4)
    res = CliRunner().invoke(app, ["validate", str(loaded.path)], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert "generations until the budget is spent x population 12 (from the budget)" in res.output
    est = forecast(loaded, check(loaded).cases)
    assert est.until_budget and est.calls == 400 and est.stops_first.startswith("max_calls")
    assert any("population 12 (from the budget)" in n for n in est.notes)


def test_a_small_budget_pays_fewer_probes() -> None:
    """A user with a budget of 60 calls does not give 10 of them (17 %) to the question "is it stochastic?"."""
    assert probe_limit(None) == PROBES and probe_limit(10_000) == PROBES
    assert probe_limit(500) == PROBES and probe_limit(250) == 5
    assert probe_limit(60) == MIN_PROBES and probe_limit(1) == MIN_PROBES


@pytest.mark.parametrize("mode", ["generational", "async"])
async def test_a_budget_spent_exactly_at_a_generations_end_proposes_no_empty_generation(
        tmp_path: Path, mode: str) -> None:
    """60 calls = 2 generations of 3 configurations x 10 cases: the run stops there, saying the budget ended it,
    instead of proposing (and storing) a third generation that could make no call."""
    loaded = make(tmp_path, "fixed", f"""
        optimization:
          seed: 5
          warm_start: 0
          evolution: {{population_size: 3, elite_size: 0}}
          execution: {{mode: {mode}, concurrency: 1}}
          racing: {{enabled: false}}
          selection: {{stochastic: false, confirm_top: 0}}
          budget: {{max_calls: 60}}
        """, n_cases=10)
    out = await run(loaded)
    assert out.total_calls == 60
    assert [t.n_cases for t in out.trials if t.n_cases == 0] == []
    with sqlite3.connect(tmp_path / "db.sqlite") as db:
        gens = db.execute("SELECT COUNT(DISTINCT generation) FROM trials").fetchone()[0]
    assert gens == 2
    assert "max_calls" in out.stop_reason


def test_probes_spread_over_the_cases_of_the_configurations_they_ask() -> None:
    """Each configuration probes the next cases in the run's order: a case every configuration answers the same
    way does not take every probe (it would make a stochastic target look deterministic)."""
    from convergence.core.types import CallResult, CaseResult
    from convergence.engine.stochastic import Decision, Probe

    probe = Probe(Decision(None, "probing", limit=PROBES), evaluator=None)  # type: ignore[arg-type]
    results = [CaseResult(f"c{i}", CallResult(output="x"), {"acc": 1.0}) for i in range(10)]
    asked = [[r.case_id for r in probe.take(h, results)] for h in ("a", "b", "c")]
    assert asked == [["c0", "c1"], ["c2", "c3"], ["c4", "c5"]]
