"""A big test-case file with a small call budget: the work a run creates follows its budget and its
concurrency, not the number of test cases (a case's task exists only while its call holds a slot), and
the calls still go out one trial after another in the run's case order."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from convergence.config.loader import parse_config
from convergence.engine.loop import Optimizer
from convergence.engine.trials import TrialRunner
from convergence.storage.store import Store

pytestmark = pytest.mark.anyio

TARGET = '''
import asyncio

CALLS = []

async def call(params, input):
    CALLS.append((params["x"], input))
    await asyncio.sleep(0.001)
    return "yes" if params["x"] > 0.5 else "no"
'''

N_CASES = 3000
CONCURRENCY = 4
MAX_CALLS = 60


def make(tmp_path: Path, mode: str) -> Any:
    (tmp_path / "big_tgt.py").write_text(TARGET)
    with open(tmp_path / "cases.jsonl", "w") as f:
        for i in range(N_CASES):
            f.write(json.dumps({"id": f"c{i}", "input": f"q{i}", "expected": "yes"}) + "\n")
    text = textwrap.dedent(f"""
        study: big
        target: {{type: python, function: "big_tgt:call", retry: {{max_retries: 0}}}}
        storage: {{path: db.sqlite}}
        search_space:
          parameters:
            x: {{type: continuous, min: 0.0, max: 1.0, step: 0.001}}
        evaluation:
          test_cases: {{path: cases.jsonl}}
          metrics:
            acc: {{function: exact_match}}
        optimization:
          seed: 5
          warm_start: 0
          budget: {{max_calls: {MAX_CALLS}}}
          evolution: {{population_size: 6, generations: 20, elite_size: 1}}
          execution: {{mode: {mode}, concurrency: {CONCURRENCY}, early_stopping: {{enabled: false}}}}
          racing: {{enabled: false}}
          selection: {{stochastic: false}}
        """)
    path = tmp_path / "optimization.yaml"
    path.write_text(text)
    return parse_config(text, path)


@pytest.mark.parametrize("mode", ["generational", "async"])
async def test_a_big_case_file_creates_no_more_case_tasks_at_once_than_the_concurrency(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    alive = created = peak = 0
    eval_case = TrialRunner._eval_case

    async def counted(self: TrialRunner, *args: Any) -> None:
        nonlocal alive, created, peak
        alive += 1
        created += 1
        peak = max(peak, alive)
        try:
            await eval_case(self, *args)
        finally:
            alive -= 1

    monkeypatch.setattr(TrialRunner, "_eval_case", counted)
    loaded = make(tmp_path, mode)
    store = await Store.open(tmp_path / "db.sqlite")
    try:
        out = await Optimizer(loaded, store).run()
    finally:
        await store.close()
    import big_tgt  # the target module the run imported (its call log)

    assert out.status == "stopped" and out.total_calls == MAX_CALLS
    assert created == MAX_CALLS, "one case task per call sent, none for the cases never called"
    assert peak <= CONCURRENCY, f"{peak} case tasks existed at once with concurrency {CONCURRENCY}"
    # the order is one queue of every (trial, case): the first trial's cases first, in the run's case order
    first_x = big_tgt.CALLS[0][0]
    assert [i for x, i in big_tgt.CALLS if x == first_x] == [f"q{i}" for i in range(MAX_CALLS)]
    big_tgt.CALLS.clear()
