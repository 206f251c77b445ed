"""What a user sees of a run: no "nan" for a generation without a complete trial,
no full-looking progress bar for a generation whose every call failed, intervals
inside the score's range, generations counted from 1 everywhere, no score or
estimate for a trial that ran no case, no empty plots for a failed run, and no
parameter importance from too few configurations."""

from __future__ import annotations

import csv
import json
import textwrap
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from rich.console import Console
from typer.testing import CliRunner

from convergence.cli.app import app
from convergence.cli.progress import RichEvents
from convergence.config.loader import parse_config
from convergence.config.models import OutputConfig
from convergence.core.types import CallResult, CaseResult, TrialRecord
from convergence.engine.loop import Optimizer
from convergence.reporting.files import write_reports
from convergence.reporting.model import RunReport, summarize_generations
from convergence.society.base import Proposal
from convergence.storage.store import Store


def _trial(i: int, gen: int, score: float, status: str = "complete", n_cases: int = 3, **config: Any) -> TrialRecord:
    return TrialRecord(config=dict(config), config_hash=f"h{i}", generation=gen, proposer="random", score=score,
                       metrics={"acc": score}, n_cases=n_cases, status=status, trial_id=i)


def _report(trials: list[TrialRecord], status: str = "finished") -> RunReport:
    return RunReport(run_id=1, study="s", status=status, stop_reason=None, started_at="t0", finished_at="t1",
                     seed=0, trials=trials, generations=summarize_generations(trials),
                     metric_directions={"acc": "higher_is_better"}, metric_weights={"acc": 1.0},
                     parameters=sorted({k for t in trials for k in t.config}))


def test_show_prints_a_dash_not_nan_for_a_generation_without_a_complete_trial(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"

    async def fill() -> None:
        async with await Store.open(db) as store:
            run = await store.start_run("s", {}, seed=1, config_path=None)
            store.record_trial(run, _trial(1, 0, 0.8, x=1))
            store.record_trial(run, _trial(2, 1, 0.0, status="partial", n_cases=0, x=2))  # early stopping cut it
            for g, best in ((0, 0.8), (1, None)):
                store.record_generation_start(run, g, [])
                store.record_generation_end(run, g, best, best, 1)
            await store.flush()

    anyio.run(fill)
    res = CliRunner().invoke(app, ["show", "1", "--db", str(db)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "nan" not in res.output.lower()
    row = next(line for line in res.output.splitlines() if line.strip("│ ").startswith("2 "))
    assert "-" in row


def test_a_generation_whose_every_call_failed_does_not_look_done() -> None:
    console = Console(record=True, width=160, force_terminal=False)
    events = RichEvents(console)
    failed = CaseResult("c", CallResult(error="http_503: down"), {})
    with events:
        events.generation_started(0, 2, 2, 3)
        for _ in range(6):
            events.case_finished(Proposal({}, "h", "random"), failed, False)
        events.generation_finished(0, None, [_trial(1, 0, 0.0, status="failed", n_cases=3)])
    out = console.export_text()
    assert "0 ok, 6 failed" in out and "no successful call (6 failed)" in out

    console = Console(record=True, width=160, force_terminal=False)
    events = RichEvents(console)
    with events:  # a run stopped before this generation's calls: the bar does not end full
        events.generation_started(1, 2, 2, 3)
        events.generation_finished(1, None, [_trial(2, 1, 0.0, status="partial", n_cases=0)])
    out = console.export_text()
    assert "calls 0/6 0 ok, 6 not run" in out and "no call made" in out and "6/6" not in out


def test_results_csv_counts_generations_from_1_like_the_report() -> None:
    trials = [_trial(i, i // 2, 0.5 + i / 100, x=i) for i in range(4)]
    report = _report(trials)
    from convergence.reporting.files import render_csv, render_markdown

    rows = list(csv.DictReader(render_csv(report, trials).splitlines()))
    assert [int(r["generation"]) for r in rows] == [1, 1, 2, 2]
    assert "| 2 | 0.53 | 0.525 | 2 | 2 |" in render_markdown(report, [], {}, [])  # generation 2 in the report


def test_a_trial_that_ran_no_case_shows_no_score_and_gets_no_estimate(tmp_path: Path) -> None:
    trials = [_trial(1, 0, 0.9, x=1), _trial(2, 0, 0.0, status="partial", n_cases=0, x=2)]
    write_reports(_report(trials), tmp_path, OutputConfig(formats=["csv"], visualizations=[]))
    rows = list(csv.DictReader((tmp_path / "results.csv").read_text().splitlines()))
    assert rows[1]["n_cases"] == "0" and rows[1]["score"] == "" and rows[1]["estimate"] == ""


def test_a_failed_run_gets_no_empty_plots_and_the_report_says_why(tmp_path: Path) -> None:
    trials = [_trial(i, 0, 0.0, status="failed", x=i) for i in range(3)]
    written = write_reports(_report(trials, status="failed"), tmp_path, OutputConfig())
    assert not [p for p in written if p.suffix in (".png", ".html")]
    md = (tmp_path / "report.md").read_text()
    assert "- Score over generations: not drawn, no trial completed (no successful trial to plot)." in md


def test_parameter_importance_from_nine_configurations_is_not_given() -> None:
    """Nine trials used to give "100 % prompt_style, 0 % everything else"."""
    trials = [_trial(i, 0, 0.9 if i % 3 == 0 else 0.2, prompt_style=["terse", "chatty", "formal"][i % 3],
                     temperature=i / 10) for i in range(9)]
    from convergence.reporting.files import render_markdown
    from convergence.reporting.importance import parameter_importance

    report = _report(trials)
    assert parameter_importance(trials, report.parameters) == {}
    md = render_markdown(report, [], parameter_importance(trials, report.parameters), [])
    assert "Not given: too few complete configurations to tell (9; at least 20 are needed)." in md


TARGET = '''
def call(params, input):
    return "no" if input == "c0" else "yes"   # right on 29 cases of 30: mean 0.967, a t-interval past 1.0
'''


@pytest.mark.anyio
async def test_the_95_interval_of_a_score_bounded_by_1_stays_within_1(tmp_path: Path) -> None:
    name = f"almost_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(TARGET)
    cases = json.dumps([{"input": f"c{i}", "expected": "yes"} for i in range(30)])
    text = textwrap.dedent(f"""
        study: bounded
        target: {{type: python, function: "{name}:call", retry: {{max_retries: 0}}}}
        storage: {{path: db.sqlite}}
        search_space:
          parameters:
            arm: {{type: categorical, values: [A, B]}}
        evaluation:
          test_cases: {{inline: {cases}}}
          metrics:
            acc: {{function: exact_match}}
        optimization:
          seed: 1
          evolution: {{population_size: 2, generations: 1}}
          selection: {{estimate: mean, confirm_top: 0}}
    """)
    path = tmp_path / "optimization.yaml"
    path.write_text(text)
    store = await Store.open(tmp_path / "db.sqlite")
    try:
        out = await Optimizer(parse_config(text, path), store).run()
        summary = await store.selection(out.run_id)
    finally:
        await store.close()
    assert summary is not None
    for row in summary["top"]:
        low, high = row["ci95"]
        assert row["mean"] == pytest.approx(29 / 30) and 0.0 <= low < row["mean"] < high <= 1.0, row


def test_the_selection_gives_no_estimate_to_a_trial_that_ran_no_case() -> None:
    """It used to get the run's average (0.718 in the report that found it) as its estimate."""
    from convergence.config.models import SelectionConfig
    from convergence.core.types import TestCase
    from convergence.engine.confirm import Confirmer

    cases = [TestCase(f"c{i}", f"q{i}", "yes") for i in range(3)]
    trials = [_trial(1, 0, 0.9), _trial(2, 0, 0.5), _trial(3, 0, 0.0, status="partial", n_cases=0)]
    scores = {"h1": {"c0": [1.0], "c1": [1.0], "c2": [0.7]}, "h2": {"c0": [0.5], "c1": [0.2], "c2": [0.8]}, "h3": {}}
    Confirmer(SelectionConfig(), None, cases, 0.05)._estimate(trials, scores)  # type: ignore[arg-type]
    assert trials[0].estimate is not None and trials[1].estimate is not None and trials[2].estimate is None
