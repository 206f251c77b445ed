"""`convergence traces RUN` on a finished run: the tree from the local store, its
filters and its JSON, run through the real CLI (typer's runner)."""

from __future__ import annotations

import json
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from typer.testing import CliRunner

from convergence.cli.app import app
from convergence.config.loader import load_config
from convergence.engine.loop import Optimizer
from convergence.storage.store import Store

TARGET = '''
def answer(params, input):
    if input == "bad":
        raise ValueError("cannot answer bad")
    return {"output": f"{params['style']}-{input}", "cost_usd": 0.002, "prompt_tokens": 4, "completion_tokens": 1}
'''

CONFIG = '''
study: traces-cli
target: {{type: python, function: "{module}:answer", retry: {{max_retries: 0}}}}
search_space:
  parameters:
    style: {{type: categorical, values: [x, y, z, w]}}
evaluation:
  test_cases:
    inline:
      - {{id: c1, input: good, expected: good}}
      - {{id: c2, input: bad, expected: bad}}
  metrics:
    hit: {{function: contains}}
optimization:
  algorithm: genetic
  seed: 5
  evolution: {{population_size: 2, generations: 2, elite_size: 0}}
  execution: {{concurrency: 2}}
storage: {{path: conv.db}}
'''


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    root = tmp_path_factory.mktemp("traces")
    module = f"traces_target_{uuid.uuid4().hex[:8]}"
    (root / f"{module}.py").write_text(textwrap.dedent(TARGET))
    cfg = root / "optimization.yaml"
    cfg.write_text(CONFIG.format(module=module))

    async def go() -> int:
        async with await Store.open(root / "conv.db") as store:
            outcome = await Optimizer(load_config(cfg), store).run()
            # As a traced run would have recorded it.
            await store.save_run_trace(outcome.run_id, project="ent/proj",
                                 url="https://wandb.ai/ent/proj/r/call/0191-abc", call_id="0191-abc")
            return outcome.run_id

    run_id = anyio.run(go)
    yield root / "conv.db", run_id
    sys.modules.pop(module, None)


def invoke(*args: str) -> str:
    res = CliRunner().invoke(app, ["traces", *args], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    return res.output


def test_tree_shows_generations_trials_calls_errors_and_weave_url(finished_run: tuple[Path, int]) -> None:
    db, run_id = finished_run
    out = invoke(str(run_id), "--db", str(db))
    assert f"run {run_id}" in out and "traces-cli" in out
    assert "generation 1" in out and "generation 2" in out
    assert out.count("trial ") == 4
    lines = out.splitlines()
    assert sum(1 for ln in lines if ln.lstrip("│├└─ ").startswith("c1 ")) == 4
    errors = [ln for ln in lines if ln.lstrip("│├└─ ").startswith("c2 ")]
    assert len(errors) == 4 and all("error: target_error: ValueError: cannot answer bad" in ln for ln in errors)
    assert "tokens 4/1" in out
    assert "Weave: https://wandb.ai/ent/proj/r/call/0191-abc" in out


def test_json_has_the_same_tree(finished_run: tuple[Path, int]) -> None:
    db, run_id = finished_run
    tree = json.loads(invoke(str(run_id), "--db", str(db), "--json"))
    assert tree["run"]["id"] == run_id and tree["run"]["status"] == "finished"
    assert [g["generation"] for g in tree["generations"]] == [0, 1]
    trials = [t for g in tree["generations"] for t in g["trials"]]
    assert len(trials) == 4
    for t in trials:
        calls = {c["case_id"]: c for c in t["calls"]}
        assert set(calls) == {"c1", "c2"}
        assert calls["c1"]["output"] == f"{t['configuration']['style']}-good"
        assert calls["c1"]["cost_usd"] == pytest.approx(0.002) and calls["c1"]["error"] is None
        assert calls["c2"]["error"].endswith("cannot answer bad")
        assert t["n_errors"] == 1 and t["score"] == pytest.approx(0.5)
    assert tree["weave"][0]["call_id"] == "0191-abc"


def test_filters_narrow_the_tree(finished_run: tuple[Path, int]) -> None:
    db, run_id = finished_run
    full = json.loads(invoke(str(run_id), "--db", str(db), "--json"))

    second = json.loads(invoke(str(run_id), "--db", str(db), "--json", "--generation", "2"))
    assert [g["generation"] for g in second["generations"]] == [1]

    target = full["generations"][0]["trials"][1]
    by_id = json.loads(invoke(str(run_id), "--db", str(db), "--json", "--trial", str(target["trial_id"])))
    by_hash = json.loads(invoke(str(run_id), "--db", str(db), "--json", "--trial", target["config_hash"][:8]))
    for picked in (by_id, by_hash):
        only = [t for g in picked["generations"] for t in g["trials"]]
        assert [t["trial_id"] for t in only] == [target["trial_id"]]

    errors = json.loads(invoke(str(run_id), "--db", str(db), "--json", "--errors-only"))
    calls = [c for g in errors["generations"] for t in g["trials"] for c in t["calls"]]
    assert len(calls) == 4 and all(c["case_id"] == "c2" and c["error"] for c in calls)


def test_unknown_run_is_a_clear_error(finished_run: tuple[Path, int]) -> None:
    db, _ = finished_run
    res = CliRunner().invoke(app, ["traces", "999", "--db", str(db)])
    assert res.exit_code == 2
    assert "no run 999" in res.output
