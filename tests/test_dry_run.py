"""The dry-run forecast (``convergence optimize FILE --dry-run``): counts by hand,
prices from LiteLLM's local cost map, measured latency from earlier runs, the
budget that stops first, and a dry run that calls and writes nothing."""

from __future__ import annotations

import os
import sqlite3
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from typer.testing import CliRunner

from convergence.cli.app import app
from convergence.config.loader import LoadedConfig, load_config
from convergence.core.types import TestCase
from convergence.engine.dry_run import History, forecast, load_history, read_history
from convergence.engine.preflight import check
from convergence.storage.store import Store

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")

TARGET = textwrap.dedent(
    """
    from pathlib import Path

    LOG = Path(__file__).with_name("calls.log")


    def call(params, input):
        with LOG.open("a") as fh:
            fh.write(f"{params} {input}\\n")
        return input
    """
)


def python_project(tmp_path: Path, budget: str = "{}") -> Path:
    """A study with a Python target that logs every call it receives: 3 configurations, 3 cases."""
    (tmp_path / "dryrun_calltrack.py").write_text(TARGET)
    (tmp_path / "optimization.yaml").write_text(textwrap.dedent(
        f"""
        study: dry-run-study
        target: {{type: python, function: "dryrun_calltrack:call"}}
        search_space:
          parameters:
            x: {{type: discrete, values: [1, 2, 3]}}
        evaluation:
          test_cases: {{inline: [{{input: a, expected: a}}, {{input: b, expected: b}}, {{input: c, expected: c}}]}}
          metrics:
            acc: {{function: exact_match}}
        optimization:
          evolution: {{population_size: 2, generations: 2, elite_size: 1}}
          execution: {{concurrency: 2}}
          budget: {budget}
        """
    ))
    return tmp_path / "optimization.yaml"


def loaded_and_cases(path: Path) -> tuple[LoadedConfig, list[TestCase]]:
    loaded = load_config(path)
    return loaded, check(loaded).cases


def test_root_study_matches_a_hand_count() -> None:
    loaded, cases = loaded_and_cases(ROOT / "optimization.yaml")
    cfg = loaded.config
    evo, sao = cfg.optimization.evolution, cfg.society.sao
    assert (evo.population_size, evo.generations, evo.elite_size, len(cases)) == (6, 3, 2, 15)
    est = forecast(loaded, cases)
    assert est.per_generation == [6, 4, 4]
    assert est.evaluation_calls == 6 * 15 + 4 * 15 + 4 * 15 == 210
    # SAO duels after generations 0 and 2 (every 2): 2 target calls per pair, batch_size pairs per round
    assert est.sao_generations == [0, 2]
    assert est.sao_calls == 2 * sao.batch_size * sao.iterative_rounds * 2 == 8
    assert est.calls == est.needed_calls == 218
    assert est.cost_per_call.value == 0.0 and est.cost_usd == 0.0
    assert "in-process" in est.cost_per_call.source
    # completion tokens: max_tokens is a search-space parameter (4, 8, 16 or 32)
    assert est.completion_tokens.value is not None and 4 <= est.completion_tokens.value <= 32
    assert "max_tokens" in est.completion_tokens.source
    assert est.prompt_tokens.value is not None and est.prompt_tokens.value > 0
    # no history: a stated guess, bounded by the target's timeout
    assert est.latency_s.value == 1.0 and "guess" in est.latency_s.source and "60s" in est.latency_s.source
    assert est.seconds == pytest.approx(218.0)  # concurrency 1
    # RLP (G=2, share 0.25): 1 slot per generation -> thought + answer + 2 log-prob calls, 3 generations;
    # SAO: 2 pairs x 2 generations x (prompt + 4 likelihood-judge log-probs on the local model)
    assert est.society_llm_calls == {"rlp": 12, "sao": 20}
    assert est.stops_first.startswith("the generation limit")  # 218 s < max_seconds 270
    assert [b.name for b in est.budgets] == ["max_seconds"] and est.budgets[0].reached_at is None


def test_dry_run_calls_nothing_and_creates_no_database(tmp_path: Path) -> None:
    path = python_project(tmp_path)
    res = CliRunner().invoke(app, ["optimize", str(path), "--dry-run"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert "nothing was called" in res.output
    assert "stops first" in res.output and "the generation limit" in res.output
    assert "unknown: a python target" in res.output
    assert not (tmp_path / "calls.log").exists()  # the target function never ran
    assert not (tmp_path / ".convergence").exists()  # no database, so no run row either
    assert not (tmp_path / "results").exists()


def test_dry_run_reads_an_existing_database_without_adding_a_run(tmp_path: Path) -> None:
    path = python_project(tmp_path)
    db = tmp_path / ".convergence" / "convergence.db"
    seed_history(db, "dry-run-study", [250.0, 350.0])
    res = CliRunner().invoke(app, ["optimize", str(path), "--dry-run"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert "measured" in res.output and "2 earlier call(s)" in res.output
    assert not (tmp_path / "calls.log").exists()
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1  # only the seeded one


def test_hosted_model_gets_a_price_from_the_local_cost_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import litellm

    monkeypatch.setenv("DRY_RUN_DUMMY_KEY", "sk-not-used")
    (tmp_path / "optimization.yaml").write_text(textwrap.dedent(
        """
        target:
          type: litellm
          model: openai/gpt-4o-mini
          api_key_env: DRY_RUN_DUMMY_KEY
          prompt: "Answer briefly: {{ input }}"
          params: {max_tokens: 50}
        search_space:
          parameters:
            temperature: {type: continuous, min: 0.0, max: 1.0, step: 0.5}
        evaluation:
          test_cases: {inline: [{input: what is the capital of France, expected: Paris}]}
          metrics:
            acc: {function: contains}
        optimization:
          evolution: {population_size: 2, generations: 1}
        """
    ))
    loaded, cases = loaded_and_cases(tmp_path / "optimization.yaml")
    est = forecast(loaded, cases)
    text = "Answer briefly: what is the capital of France"
    tokens = litellm.token_counter(model="openai/gpt-4o-mini", text=text)
    assert est.prompt_tokens.value == tokens and "token_counter" in est.prompt_tokens.source
    assert est.completion_tokens.value == 50
    p, c = litellm.cost_per_token(model="openai/gpt-4o-mini", prompt_tokens=tokens, completion_tokens=50)
    assert est.cost_per_call.value is not None and est.cost_per_call.value > 0
    assert est.cost_per_call.value == pytest.approx(p + c)
    assert est.cost_usd == pytest.approx(2 * (p + c))
    assert "cost map" in est.cost_per_call.source


def test_unknown_model_costs_unknown_not_zero(tmp_path: Path) -> None:
    (tmp_path / "optimization.yaml").write_text(textwrap.dedent(
        """
        target: {type: litellm, model: openai/no-such-model-xyz, api_base: "http://127.0.0.1:9/v1"}
        search_space: {parameters: {temperature: {type: continuous, min: 0.0, max: 1.0, step: 0.5}}}
        evaluation: {test_cases: {inline: [{input: hi, expected: hi}]}, metrics: {acc: {function: contains}}}
        optimization: {evolution: {population_size: 2, generations: 1}, budget: {max_cost_usd: 1}}
        """
    ))
    loaded, cases = loaded_and_cases(tmp_path / "optimization.yaml")
    est = forecast(loaded, cases)
    assert est.cost_per_call.value is None and est.cost_usd is None
    assert "no price" in est.cost_per_call.source
    assert "assumed" in est.completion_tokens.source  # no max_tokens anywhere: a stated default
    assert est.budgets[0].needed is None
    assert any("unknown" in n for n in est.notes)


def test_earlier_runs_give_the_measured_latency(tmp_path: Path) -> None:
    path = python_project(tmp_path)
    db = tmp_path / ".convergence" / "convergence.db"
    seed_history(db, "dry-run-study", [1000.0, 3000.0, 2000.0], other_study_ms=50_000.0)
    loaded, cases = loaded_and_cases(path)
    history = anyio_run(load_history, loaded)
    assert history is not None and history.calls == 3 and history.mean_latency_ms == pytest.approx(2000.0)
    est = forecast(loaded, cases, history=history)
    assert est.latency_s.value == pytest.approx(2.0)
    assert "measured" in est.latency_s.source and "3 earlier call(s)" in est.latency_s.source
    # 2 + 1 configurations x 3 cases = 9 calls, 2 s each, concurrency 2
    assert est.calls == 9 and est.seconds == pytest.approx(9.0)
    assert est.cost_per_call.value == pytest.approx(0.001) and "measured" in est.cost_per_call.source


def test_no_database_no_history_and_nothing_created(tmp_path: Path) -> None:
    loaded, _ = loaded_and_cases(python_project(tmp_path))
    assert anyio_run(load_history, loaded) is None
    assert not (tmp_path / ".convergence").exists()
    assert anyio_run(read_history, tmp_path / "missing.db", "x") is None
    assert not (tmp_path / "missing.db").exists()


def test_a_small_max_calls_is_the_budget_that_stops_first(tmp_path: Path) -> None:
    loaded, cases = loaded_and_cases(python_project(tmp_path, "{max_calls: 5, max_seconds: 3600}"))
    est = forecast(loaded, cases, history=History("dry-run-study", 10, 100.0, None, None, 0.0))
    assert est.needed_calls == 9 and est.calls == 5
    assert est.stops_first.startswith("max_calls")
    checks = {b.name: b for b in est.budgets}
    assert checks["max_calls"].reached_at == pytest.approx(5 / 9)
    assert checks["max_seconds"].reached_at is None
    rows = {q: (v, s) for q, v, s in est.rows()}
    assert rows["target calls"][0] == "5" and "max_calls 5 cuts it" in rows["target calls"][1]


def test_a_tight_time_budget_stops_before_the_calls_budget(tmp_path: Path) -> None:
    loaded, cases = loaded_and_cases(python_project(tmp_path, "{max_calls: 6, max_seconds: 2}"))
    # 9 calls x 1 s / concurrency 2 = 4.5 s: max_seconds is reached at 44 %, max_calls at 67 %
    est = forecast(loaded, cases, history=History("dry-run-study", 4, 1000.0, None, None, None))
    assert est.stops_first.startswith("max_seconds")


# --------------------------------------------------------------------------- helpers


def anyio_run(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    return anyio.run(fn, *args)


def seed_history(db: Path, study: str, latencies_ms: list[float], other_study_ms: float | None = None) -> None:
    """A project database (real schema) holding one finished run of ``study`` with these call latencies,
    one failed call (ignored) and, optionally, another study's run (ignored too)."""
    db.parent.mkdir(parents=True, exist_ok=True)

    async def create() -> None:
        store = await Store.open(db)
        await store.close()

    anyio_run(create)
    now = time.time()
    with sqlite3.connect(db) as con:
        runs = [(study, latencies_ms)] + ([("another-study", [other_study_ms])] if other_study_ms else [])
        for i, (name, lats) in enumerate(runs, 1):
            con.execute("INSERT INTO studies(id, name, created_at) VALUES (?,?,?)", (i, name, now))
            con.execute("INSERT INTO runs(id, study_id, status, config_json, started_at) VALUES (?,?,?,?,?)",
                        (i, i, "finished", "{}", now))
            for j, ms in enumerate(lats):
                con.execute("INSERT INTO case_results(run_id, config_hash, case_id, latency_ms, wall_ms, cost_usd, "
                            "prompt_tokens, completion_tokens, attempts, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                            (i, "h", f"c{j}", ms / 2, ms, 0.001, 0, 0, 1, now))
            con.execute("INSERT INTO case_results(run_id, config_hash, case_id, error, latency_ms, wall_ms, "
                        "attempts, created_at) VALUES (?,?,?,?,?,?,?,?)", (i, "h", "failed", "boom", 1e6, 1e6, 3, now))
