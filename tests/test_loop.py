"""Loop behaviour a user relies on: elitism, no duplicate evaluations, early
stopping, budgets, seeds, failure isolation, warm start and resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from convergence.config.loader import parse_config
from convergence.core.space import config_hash
from convergence.engine.loop import Optimizer
from convergence.storage.store import Store

pytestmark = pytest.mark.anyio

TARGET = '''
import asyncio, json, os

async def peak(params, input):
    """Score peaks at x=0.7, mode='b'. Logs every call so tests can count them."""
    log = os.environ.get("CALL_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"params": params, "input": input}) + "\\n")
    await asyncio.sleep(float(os.environ.get("CALL_SLEEP", "0")))
    if input == "explode":
        raise RuntimeError("target blew up on this case")
    good = abs(params["x"] - 0.7) < 0.051 and params.get("mode", "b") == "b"
    return {"output": "yes" if good else "no", "cost_usd": float(os.environ.get("CALL_COST", "0"))}

def flat(params, input):
    return "same"
'''


def make_config(tmp_path: Path, body: str, fn: str = "peak") -> Any:
    (tmp_path / "tgt.py").write_text(TARGET)
    text = textwrap.dedent(
        f"""
        study: loop-test
        target: {{type: python, function: "tgt:{fn}", retry: {{max_retries: 0}}}}
        storage: {{path: db.sqlite}}
        """
    ) + textwrap.dedent(body)
    path = tmp_path / "optimization.yaml"
    path.write_text(text)
    return parse_config(text, path)


SPACE = """
search_space:
  parameters:
    x: {type: continuous, min: 0.0, max: 1.0, step: 0.05}
    mode: {type: categorical, values: [a, b, c]}
evaluation:
  test_cases:
    inline:
      - {input: "one", expected: "yes"}
      - {input: "two", expected: "yes"}
  metrics:
    acc: {function: exact_match}
"""


async def run(loaded: Any, **kw: Any) -> Any:
    store = await Store.open(loaded.base_dir / loaded.config.storage.path)
    try:
        return await Optimizer(loaded, store).run(**kw)
    finally:
        await store.close()


async def test_finds_the_peak_never_repeats_a_config_and_elites_are_not_re_run(tmp_path: Path) -> None:
    loaded = make_config(tmp_path, SPACE + """
optimization:
  seed: 1
  evolution: {population_size: 6, generations: 8, elite_size: 2}
  execution: {mode: generational, concurrency: 4, early_stopping: {enabled: false}}
  selection: {stochastic: false}  # deterministic: no probe calls (calls are counted exactly)
""")
    out = await run(loaded)
    assert out.best is not None and out.best.score == 1.0
    assert out.best.config["mode"] == "b" and abs(out.best.config["x"] - 0.7) < 0.051
    hashes = [t.config_hash for t in out.trials]
    assert len(hashes) == len(set(hashes))  # no configuration evaluated twice
    # generation 0 fills the population; later ones breed population - elites
    assert len(out.trials) == 6 + 7 * 4
    assert out.total_calls == len(out.trials) * 2  # elites carried over cost nothing
    # best-so-far never goes down
    best_so_far, last = [], 0.0
    for g in range(8):
        gen = [t.score for t in out.trials if t.generation == g]
        last = max([last, *gen])
        best_so_far.append(last)
    assert best_so_far == sorted(best_so_far)


async def test_small_space_is_exhausted_without_duplicates(tmp_path: Path) -> None:
    loaded = make_config(tmp_path, SPACE.replace("step: 0.05", "step: 0.5") + """
optimization:
  seed: 2
  evolution: {population_size: 4, generations: 10, elite_size: 1}
  execution: {early_stopping: {enabled: false}}
""")
    out = await run(loaded)
    assert len(out.trials) == 9  # 3 x-values x 3 modes, each exactly once
    assert len({t.config_hash for t in out.trials}) == 9
    assert "exhausted" in out.stop_reason


async def test_early_stopping_after_patience_without_improvement(tmp_path: Path) -> None:
    loaded = make_config(tmp_path, SPACE + """
optimization:
  seed: 3
  evolution: {population_size: 3, generations: 20, elite_size: 1}
  execution: {mode: generational, early_stopping: {enabled: true, patience: 2, min_improvement: 0.01}}
""", fn="flat")
    out = await run(loaded)
    assert out.generations_run == 3  # generation 1 sets the best; 2 and 3 bring nothing
    assert out.stop_reason.startswith("early stopping")


@pytest.mark.parametrize(
    ("budget", "env", "reason"),
    [
        ("max_calls: 7", {}, "max_calls"),
        ("max_cost_usd: 0.05", {"CALL_COST": "0.01"}, "max_cost_usd"),
        ("max_seconds: 1.0", {"CALL_SLEEP": "0.2"}, "max_seconds"),
    ],
)
async def test_each_budget_stops_the_run_cleanly_and_keeps_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: str, env: dict[str, str], reason: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    loaded = make_config(tmp_path, SPACE + f"""
optimization:
  seed: 4
  evolution: {{population_size: 4, generations: 50, elite_size: 1}}
  execution: {{concurrency: 2, early_stopping: {{enabled: false}}}}
  budget: {{{budget}}}
""")
    started = time.monotonic()
    out = await run(loaded)
    assert out.status == "stopped" and reason in out.stop_reason
    assert out.trials, "finished work is kept"
    if reason == "max_calls":
        assert out.total_calls == 7
        assert any(t.status == "partial" for t in out.trials)
    if reason == "max_cost_usd":
        assert 0.05 <= out.total_cost_usd < 0.05 + 0.01 * 2 + 1e-9  # in-flight calls may finish
    if reason == "max_seconds":
        assert time.monotonic() - started < 3.0
    with sqlite3.connect(tmp_path / "db.sqlite") as db:
        status, stop = db.execute("SELECT status, stop_reason FROM runs").fetchone()
        assert status == "stopped" and reason in stop
        assert db.execute("SELECT COUNT(*) FROM case_results").fetchone()[0] >= 1


async def test_same_seed_repeats_the_run_exactly(tmp_path: Path) -> None:
    body = SPACE + """
optimization:
  seed: 11
  warm_start: 0
  evolution: {population_size: 5, generations: 4, elite_size: 1}
  execution: {concurrency: 3, early_stopping: {enabled: false}}
"""
    runs = []
    for name in ("a", "b", "c"):
        d = tmp_path / name
        d.mkdir()
        text = body if name != "c" else body.replace("seed: 11", "seed: 12")
        runs.append(await run(make_config(d, text)))
    seq = [[(t.generation, t.proposer, t.config_hash, t.score) for t in r.trials] for r in runs]
    assert seq[0] == seq[1]
    assert seq[0] != seq[2]


async def test_failed_call_fails_only_its_test_case(tmp_path: Path) -> None:
    space = SPACE.replace('- {input: "two", expected: "yes"}', '- {input: "explode", expected: "yes"}')
    loaded = make_config(tmp_path, space + """
optimization:
  seed: 5
  evolution: {population_size: 3, generations: 1}
""")
    out = await run(loaded)
    for t in out.trials:
        assert t.n_errors == 1 and t.n_cases == 2 and t.status == "complete"
    async with await Store.open(tmp_path / "db.sqlite") as store:
        cases = await store.case_results(out.run_id)
    for by_case in cases.values():
        assert "target blew up" in (by_case["case-2"].call.error or "")
        assert by_case["case-1"].call.error is None


async def test_second_run_warm_starts_from_the_best_earlier_config(tmp_path: Path) -> None:
    body = SPACE + """
optimization:
  seed: 6
  evolution: {population_size: 6, generations: 6, elite_size: 2}
  execution: {early_stopping: {enabled: false}}
"""
    first = await run(make_config(tmp_path, body))
    second = await run(make_config(tmp_path, body.replace("seed: 6", "seed: 60")))
    warm = [t for t in second.trials if t.proposer == "warm_start"]
    assert warm and warm[0].config == first.best.config and warm[0].generation == 0


def _db_pairs(db_path: Path) -> set[tuple[str, str]]:
    with sqlite3.connect(db_path) as db:
        return {(h, c) for h, c in db.execute("SELECT config_hash, case_id FROM case_results")}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["generational", "async"])
def test_sigkill_mid_run_then_resume_pays_for_nothing_twice(tmp_path: Path, mode: str) -> None:
    loaded = make_config(tmp_path, SPACE + f"""
optimization:
  seed: 8
  evolution: {{population_size: 6, generations: 6, elite_size: 1}}
  execution: {{mode: {mode}, concurrency: 2, early_stopping: {{enabled: false}}}}
  selection: {{stochastic: false}}  # deterministic: no probe calls (every call is checked against the store)
""")
    log = tmp_path / "calls.jsonl"
    env = {**os.environ, "CALL_LOG": str(log), "CALL_SLEEP": "0.05", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "convergence", "optimize", str(loaded.path), "--quiet", "--no-outputs"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= 25:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    db = tmp_path / "db.sqlite"
    done_before = _db_pairs(db)
    assert done_before, "some case results were persisted before the kill"
    calls_before = len(log.read_text().splitlines())

    resumed = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    case_ids = {"one": "case-1", "two": "case-2"}
    after = [json.loads(line) for line in log.read_text().splitlines()[calls_before:]]
    repaid = {(config_hash(c["params"]), case_ids[c["input"]]) for c in after} & done_before
    assert repaid == set(), f"finished case results were paid for again: {sorted(repaid)[:5]}"
    with sqlite3.connect(db) as conn:
        runs = conn.execute("SELECT id, status FROM runs").fetchall()
        assert runs == [(1, "finished")]  # the same run continued
        n_trials = conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
        n_gens = conn.execute("SELECT COUNT(*) FROM generations WHERE finished_at IS NOT NULL").fetchone()[0]
        assert n_gens == 6
        if mode == "generational":
            assert n_trials == 6 + 5 * 5
        else:  # a generation proposed while the last was in flight may keep fewer elites
            assert 6 + 5 * 5 <= n_trials <= 6 * 6
