"""One "best": every place that shows or uses a run's best configuration agrees, ties included.

The target is deterministic and its configurations differ by case (a strong configuration x case
interaction, little spread of means), so the noise model finds no spread of true scores and every
estimate is the same: the estimates tie. The mean then decides; when the means tie too, the trial
evaluated first does (``engine/selection.py: rank``). The table printed after ``convergence
optimize``, ``convergence runs``, ``convergence show``, the report, ``best_config.yaml``,
``convergence export``, ``RunOutcome.best`` and the next run's warm start all name the same one.
"""

from __future__ import annotations

import json
import math
import random
import sqlite3
import textwrap
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from typer.testing import CliRunner

import convergence.cli.app as cli_app
from convergence.core.types import TrialRecord
from convergence.engine import selection
from convergence.storage.store import Store

runner = CliRunner()
CASES = 6

MEANS_DIFFER = {"A": "111000", "B": "101110", "C": "000111", "D": "110001"}
"""Per case, 1 = right. B has the highest mean (4/6); the others 3/6."""
MEANS_TIE = {"A": "111000", "B": "101110", "C": "000111", "D": "110101"}
"""B and D share the highest mean (4/6)."""


def project(tmp_path: Path, table: dict[str, str], warm_start: int = 0) -> Path:
    """A study of four arms, one generation that evaluates each once, in a seeded order."""
    name = f"arms_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(f"""
        TABLE = {table!r}

        async def arm(params, input):
            return "yes" if TABLE[params["arm"]][int(input[1:])] == "1" else "no"
    """))
    cases = json.dumps([{"input": f"c{i}", "expected": "yes"} for i in range(CASES)])
    path = tmp_path / "optimization.yaml"
    path.write_text(textwrap.dedent(f"""
        study: one-best
        target: {{type: python, function: "{name}:arm", retry: {{max_retries: 0}}}}
        storage: {{path: db.sqlite}}
        search_space:
          parameters:
            arm: {{type: categorical, values: [A, B, C, D]}}
        evaluation:
          test_cases: {{inline: {cases}}}
          metrics:
            acc: {{function: exact_match}}
        optimization:
          seed: 1
          warm_start: {warm_start}
          evolution: {{population_size: 4, generations: 1, elite_size: 1}}
          execution: {{concurrency: 1, early_stopping: {{enabled: false}}}}
          racing: {{enabled: false}}
        output: {{save_path: results, formats: [json, markdown], visualizations: []}}
    """))
    return path


def invoke(*args: str) -> Any:
    result = runner.invoke(cli_app.app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def table_rows(text: str, after: str = "") -> list[list[str]]:
    """The body rows of the first rich table printed after the line holding ``after``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if after in line)
    rows = []
    for line in lines[start:]:
        if "│" in line:
            rows.append([c.strip() for c in line.split("│")[1:-1]])
        elif rows:
            break
    return rows


def optimize(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str]:
    """``convergence optimize PATH``: the ``RunOutcome`` it printed, and what it printed."""
    seen: dict[str, Any] = {}
    printed = cli_app._print_outcome

    def spy(outcome: Any, optimizer: Any) -> None:
        seen["outcome"] = outcome
        printed(outcome, optimizer)

    monkeypatch.setattr(cli_app, "_print_outcome", spy)
    out = invoke("optimize", str(path), "-q").stdout
    return seen["outcome"], out


async def _read(db: Path, run_id: int) -> tuple[list[TrialRecord], Any, list[Any]]:
    store = await Store.open(db)
    try:
        return await store.trials(run_id), await store.selection(run_id), await store.generations(run_id)
    finally:
        await store.close()


def read(db: Path, run_id: int) -> tuple[list[TrialRecord], Any, list[Any]]:
    return anyio.run(_read, db, run_id)


def arm_of(cell: str) -> str:
    assert cell.startswith("arm="), cell
    return cell.removeprefix("arm=")


def assert_one_best(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: dict[str, str]) -> str:
    """Run the study; check every place names the same best; return its arm."""
    path = project(tmp_path, table)
    db = tmp_path / "db.sqlite"
    outcome, printed = optimize(path, monkeypatch)
    trials, chosen, _ = read(db, outcome.run_id)
    assert len(trials) == 4 and all(t.usable for t in trials)
    top_mean = max(t.score for t in trials)
    assert len({t.estimate for t in trials}) == 1, "the estimates tie (no detectable spread of true scores)"
    expected = min((t for t in trials if t.score == top_mean), key=lambda t: (t.generation, t.trial_id or 0))
    assert trials[0].config_hash != expected.config_hash, "the first trial evaluated is not the best: a real test"
    best = expected.config["arm"]

    assert outcome.best is not None and outcome.best.config == {"arm": best}, "RunOutcome.best"
    assert chosen["best"] == expected.config_hash == chosen["ranking"][0], "the stored selection"

    terminal = table_rows(printed, "Top configurations")
    assert terminal[0][0] == "1" and arm_of(terminal[0][-1]) == best, "the table after optimize"
    assert float(terminal[0][2]) == pytest.approx(top_mean, abs=1e-4)

    runs = table_rows(invoke("runs", "--db", str(db)).stdout)
    assert runs[0][0] == str(outcome.run_id)
    assert runs[0][6] == str(expected.trial_id), "convergence runs' best trial"
    assert float(runs[0][5]) == pytest.approx(top_mean, abs=1e-4)

    shown = table_rows(invoke("show", str(outcome.run_id), "--db", str(db)).stdout, "Top 10 trials")
    assert shown[0][1] == str(expected.trial_id) and arm_of(shown[0][-1]) == best, "convergence show's #1"

    run_dir = tmp_path / "results" / f"run-{outcome.run_id}"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["best"]["config"] == {"arm": best}, "the report's best"
    assert f"(trial {expected.trial_id}," in (run_dir / "report.md").read_text()
    assert yaml.safe_load((run_dir / "best_config.yaml").read_text()) == {"arm": best}, "best_config.yaml"
    exported = invoke("export", str(outcome.run_id), "--db", str(db)).stdout
    assert yaml.safe_load(exported) == {"arm": best}, "convergence export"

    # the next run of the study warm-starts from that same configuration first
    project(tmp_path, table, warm_start=3)
    nxt, _ = optimize(path, monkeypatch)
    _, _, gens = read(db, nxt.run_id)
    first = gens[0].proposals[0]
    assert first["proposer"] == "warm_start" and first["config"] == {"arm": best}, "warm start's first"
    return best


def test_when_the_estimates_tie_every_place_names_the_higher_mean_as_best(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert assert_one_best(tmp_path, monkeypatch, MEANS_DIFFER) == "B"


def test_when_estimates_and_means_tie_every_place_names_the_trial_evaluated_first_as_best(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert assert_one_best(tmp_path, monkeypatch, MEANS_TIE) in ("B", "D")


def test_a_run_stored_before_rankings_were_kept_still_lists_and_warm_starts_from_its_best(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = project(tmp_path, MEANS_DIFFER)
    db = tmp_path / "db.sqlite"
    outcome, _ = optimize(path, monkeypatch)
    with sqlite3.connect(db) as con:  # what a run finished before this change stored: no ranking, no best
        (raw,) = con.execute("SELECT selection_json FROM runs WHERE id = ?", (outcome.run_id,)).fetchone()
        old = {k: v for k, v in json.loads(raw).items() if k not in ("ranking", "best")}
        con.execute("UPDATE runs SET selection_json = ? WHERE id = ?", (json.dumps(old), outcome.run_id))
    runs = table_rows(invoke("runs", "--db", str(db)).stdout)
    assert runs[0][6] == str(outcome.best.trial_id)

    async def warm() -> list[Any]:
        store = await Store.open(db)
        try:
            return await store.best_configs("one-best", 3)
        finally:
            await store.close()

    assert anyio.run(warm)[0] == {"arm": "B"} == outcome.best.config


def _trial(h: str, merit: float | None, score: float, generation: int, trial_id: int | None) -> TrialRecord:
    return TrialRecord(config={"h": h}, config_hash=h, generation=generation, proposer="t", score=score,
                       estimate=merit, trial_id=trial_id)


def test_the_ranking_is_merit_then_mean_then_generation_then_stored_order_whatever_order_it_is_given() -> None:
    expected = [
        _trial("high-merit", 0.9, 0.1, 5, 50),
        _trial("tie-higher-mean", 0.5, 0.8, 3, 30),
        _trial("tie-earlier-generation", 0.5, 0.7, 1, 40),
        _trial("tie-stored-first", 0.5, 0.7, 2, 10),
        _trial("tie-stored-later", 0.5, 0.7, 2, 20),
        _trial("tie-not-stored", 0.5, 0.7, 2, None),
        _trial("no-estimate-ranks-by-mean", None, 0.45, 0, 1),
        _trial("nan-merit-last", math.nan, 0.99, 0, 2),
    ]
    for seed in range(5):
        shuffled = expected[:]
        random.Random(seed).shuffle(shuffled)
        assert [t.config_hash for t in selection.rank(shuffled)] == [t.config_hash for t in expected]


def test_the_best_is_the_first_usable_trial_of_the_ranking() -> None:
    partial = _trial("partial", 0.99, 0.99, 0, 1)
    partial.status = "partial"
    failed = _trial("failed", 0.98, 0.98, 0, 2)
    failed.status = "failed"
    nan = _trial("nan-score", None, math.nan, 0, 3)
    ok = _trial("complete", 0.5, 0.5, 0, 4)
    trials = [partial, failed, nan, ok]
    assert selection.best(trials) is ok
    assert selection.ranking(trials) == [ok]
    assert selection.best([partial]) is None
