"""The PPO learner in real runs: a Python target and the embedded model run with ``society.learner:
ppo``; the policy persists in the study's database, a second run starts from it, a run killed with
SIGKILL resumes without learning a generation twice, and ``convergence ppo stats | export | reset``
manage it.

What the policy learns over many runs of a rigged study (the learning curve) is measured by
``benchmarks/ppo_rigged.py``; ``test_ppo_rigged.py`` shows, in a few seconds, that learning from
rewards changes what the society proposes.
"""

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
from typer.testing import CliRunner

from convergence.cli.app import app

ROOT = Path(__file__).resolve().parents[3]
"""The repository (examples/)."""


# ---------------------------------------------------------------------------- end to end

def _bowl(tmp: Path, generations: int = 12, extra: str = "", mode: str = "generational") -> Path:
    """A Python target (a smooth bowl over four integers; each call may sleep and log itself) and a
    society of evolution, bandit and random agents under the PPO learner."""
    (tmp / "bowl.py").write_text(textwrap.dedent("""
        import json, math, os, time
        C = (730, 210, 480, 905)
        def f(params, input):
            if os.environ.get("CALL_SLEEP"):
                time.sleep(float(os.environ["CALL_SLEEP"]))
            if os.environ.get("CALL_LOG"):
                with open(os.environ["CALL_LOG"], "a") as log:
                    log.write(json.dumps([params, input]) + "\\n")
            d = sum((params[k] - c) ** 2 for k, c in zip("abcd", C))
            return str(round(math.exp(-d / (2 * 250.0 ** 2)), 6))
        def value(output, case, call, args):
            return float(output)
    """))
    path = tmp / "optimization.yaml"
    path.write_text(textwrap.dedent(f"""
        study: ppo-bowl
        target: {{type: python, function: "bowl:f"}}
        storage: {{path: db.sqlite}}
        search_space:
          parameters:
            a: {{type: discrete, min: 0, max: 1000, step: 1}}
            b: {{type: discrete, min: 0, max: 1000, step: 1}}
            c: {{type: discrete, min: 0, max: 1000, step: 1}}
            d: {{type: discrete, min: 0, max: 1000, step: 1}}
        evaluation:
          test_cases: {{inline: [{{id: one, input: "one"}}, {{id: two, input: "two"}}]}}
          metrics:
            score: {{function: "bowl:value"}}
        optimization:
          seed: 3
          warm_start: 0
          evolution: {{population_size: 6, generations: {generations}, elite_size: 1}}
          execution: {{mode: {mode}, concurrency: 2, early_stopping: {{enabled: false}}}}
          racing: {{enabled: false}}
          selection: {{stochastic: false}}  # a deterministic target: no probe draws among the calls counted
        society:
          enabled: true
          agents: {{evolution: 0.5, bandit: 0.25, random: 0.25}}
          learner: {{plugin: ppo, rollout: 4}}
        {extra}
    """))
    return path


def _cli(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "convergence", *args], cwd=path.parent, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(path.parent)})


def _rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    """Read-only: polling before the run creates the file must not create an empty one (which
    ``optimize`` refuses as a damaged database)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return list(con.execute(sql))


def _start_killable(path: Path, log: Path) -> tuple[list[str], dict[str, str], subprocess.Popen[bytes]]:
    """``convergence optimize`` in its own process group (to SIGKILL), its calls logged to ``log``."""
    env = {**os.environ, "CALL_LOG": str(log), "CALL_SLEEP": "0.03", "PYTHONPATH": str(path.parent)}
    cmd = [sys.executable, "-m", "convergence", "optimize", str(path), "--quiet", "--no-outputs"]
    proc = subprocess.Popen(cmd, cwd=path.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    return cmd, env, proc


def _stored_calls(db: Path) -> set[tuple[str, str]]:
    return {(h, c) for h, c in _rows(db, "SELECT config_hash, case_id FROM case_results")}


def _assert_nothing_stored_was_paid_again(log: Path, stored: set[tuple[str, str]], calls_before: int) -> None:
    """The resumed run called the target for no (configuration, case) whose result was stored before the
    kill. A call the kill cut short (done at the target, its result not yet committed) is made again:
    at most one per concurrency slot."""
    from convergence.core.space import config_hash

    calls = [json.loads(line) for line in log.read_text().splitlines()]
    after = {(config_hash(params), case) for params, case in calls[calls_before:]}
    assert after, "the resumed run called the target"
    assert after & stored == set(), f"stored results paid again: {sorted(after & stored)[:5]}"
    keys = [json.dumps(c, sort_keys=True) for c in calls]
    assert len(keys) - len(set(keys)) <= 2  # concurrency 2


@pytest.mark.slow
def test_the_policy_acts_persists_and_the_next_run_starts_from_it(tmp_path: Path) -> None:
    path = _bowl(tmp_path)
    first = _cli(path, "optimize", str(path), "--no-outputs")
    assert first.returncode == 0, first.stderr
    assert "ppo update" in first.stdout  # the learning metrics are in the run's output
    db = tmp_path / "db.sqlite"
    # one experience per generation; the controls it chose were in force (recorded with each generation)
    assert _rows(db, "SELECT COUNT(*) FROM agent_experience WHERE agent = 'learner:ppo'") == [(12,)]
    details = [json.loads(d) for (d,) in _rows(db, "SELECT detail_json FROM learner_log WHERE run_id = 1 "
                                                   "ORDER BY generation")]
    results = [json.loads(r) for (r,) in _rows(db, "SELECT result_json FROM learner_log WHERE run_id = 1 "
                                                   "ORDER BY generation")]
    for before, after in zip(details, results[1:], strict=False):
        assert after["controls"]["evolution"]["operator"] == before["action"]["evolution.operator"]
        assert after["controls"]["bandit"]["exploration"] == before["action"]["bandit.exploration"]
    updates = [d["metrics"] for d in details if "metrics" in d]
    assert len(updates) == 3 and all(m["entropy"] > 0 and m["samples"] >= 2 for m in updates)
    state = json.loads(_rows(db, "SELECT state_json FROM agent_memory WHERE agent = 'learner:ppo'")[0][0])
    assert state["updates"] == 3

    second = _cli(path, "optimize", str(path), "--no-outputs")
    assert second.returncode == 0, second.stderr
    first_note = json.loads(_rows(db, "SELECT detail_json FROM learner_log WHERE run_id = 2 AND generation = 0")
                            [0][0])["note"]
    assert first_note == "policy of earlier runs: 3 update(s), 12 decision(s)"
    state = json.loads(_rows(db, "SELECT state_json FROM agent_memory WHERE agent = 'learner:ppo'")[0][0])
    assert state["updates"] == 6 and state["decisions"] == 24

    # the CLI: stats (the curve per run), export (decisions + weights), reset
    runner = CliRunner()
    out = runner.invoke(app, ["ppo", "stats", "--config", str(path), "--json"])
    assert out.exit_code == 0, out.output
    stats = json.loads(out.output)
    assert stats["updates"] == 6 and sorted(stats["runs"]) == ["1", "2"]
    assert stats["runs"]["1"]["decisions"] == 11  # generation 0 ran under no decision of the policy
    out = runner.invoke(app, ["ppo", "export", "--config", str(path), "-o", str(tmp_path / "d.jsonl"),
                              "--policy", str(tmp_path / "p.pt")])
    assert out.exit_code == 0, out.output
    lines = [json.loads(x) for x in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert len(lines) == 22 and {"observation", "action", "reward", "done"} <= set(lines[0])
    assert [x["done"] for x in lines].count(True) == 2  # each run ends an episode
    import torch

    assert "state_dict" in torch.load(tmp_path / "p.pt", weights_only=True)
    out = runner.invoke(app, ["ppo", "reset", "--config", str(path), "--yes"])
    assert out.exit_code == 0 and "removed 1 policy and 24 experience row(s)" in out.output
    third = _cli(path, "optimize", str(path), "--no-outputs")
    assert third.returncode == 0, third.stderr
    note = json.loads(_rows(db, "SELECT detail_json FROM learner_log WHERE run_id = 3 AND generation = 0")[0][0])
    assert note["note"] == "new policy"


@pytest.mark.slow
def test_a_run_killed_mid_way_resumes_without_learning_a_generation_twice_or_paying_twice(tmp_path: Path) -> None:
    path = _bowl(tmp_path, generations=10)
    db, log = tmp_path / "db.sqlite", tmp_path / "calls.jsonl"
    cmd, env, proc = _start_killable(path, log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if _rows(db, "SELECT COUNT(*) FROM agent_experience")[0][0] >= 5:
                break
        except sqlite3.OperationalError:  # not created (or not migrated) yet
            pass
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    learned = _rows(db, "SELECT COUNT(*) FROM agent_experience")[0][0]
    assert 5 <= learned < 10, "killed mid-run"
    stored, calls_before = _stored_calls(db), len(log.read_text().splitlines())
    resumed = subprocess.run([*cmd, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert _rows(db, "SELECT status FROM runs") == [("finished",)]
    # each generation learned from once: one experience per generation, none repeated
    gens = [g for (g,) in _rows(db, "SELECT generation FROM agent_experience ORDER BY id")]
    assert gens == list(range(10))
    # the decisions replayed on resume are the ones made before the kill
    logged = {g: json.loads(d)["action"] for g, d in _rows(db, "SELECT generation, detail_json FROM learner_log")}
    chosen = {g: json.loads(d)["chosen"]["labels"] for g, d in _rows(db, "SELECT generation, data_json FROM "
                                                                          "agent_experience")}
    assert logged == chosen
    _assert_nothing_stored_was_paid_again(log, stored, calls_before)
    # the resumed run decided exactly what an uninterrupted run of the same seed decides
    other = tmp_path / "uninterrupted"
    other.mkdir()
    again = _bowl(other, generations=10)
    done = subprocess.run([*cmd[:4], str(again), "--quiet", "--no-outputs"], cwd=other, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(other)})
    assert done.returncode == 0, done.stderr
    straight = {g: json.loads(d)["action"] for g, d in _rows(other / "db.sqlite", "SELECT generation, detail_json "
                                                                                 "FROM learner_log")}
    assert straight == logged


@pytest.mark.slow
def test_async_mode_resumes_generations_in_flight_under_the_decision_they_ran_under(tmp_path: Path) -> None:
    """Async mode: at the kill, generations are in flight under some decision; the resumed run restarts
    them under that same decision (stored with the generation), so each decision a generation ran under
    is rewarded exactly once, and nothing is learned or paid twice."""
    path = _bowl(tmp_path, generations=10, mode="async")
    db, log = tmp_path / "db.sqlite", tmp_path / "calls.jsonl"
    cmd, env, proc = _start_killable(path, log)
    deadline = time.monotonic() + 120
    in_flight: list[int] = []
    while time.monotonic() < deadline:
        try:
            learned = {g for (g,) in _rows(db, "SELECT generation FROM agent_experience")}
            started = [(g, json.loads(c)) for g, c in _rows(
                db, "SELECT number, context_json FROM generations WHERE context_json IS NOT NULL")]
            in_flight = [g for g, c in started if g not in learned and c["decided_at"] >= 0]
            if len(learned) >= 4 and in_flight:
                break
        except sqlite3.OperationalError:  # not created (or not migrated) yet
            pass
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert in_flight, "a generation proposed under a learned decision was in flight at the kill"
    before = dict(_rows(db, "SELECT number, context_json FROM generations"))
    stored, calls_before = _stored_calls(db), len(log.read_text().splitlines())
    resumed = subprocess.run([*cmd, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert _rows(db, "SELECT status FROM runs") == [("finished",)]
    gens = [g for (g,) in _rows(db, "SELECT generation FROM agent_experience ORDER BY id")]
    assert sorted(gens) == list(range(10)) and len(gens) == len(set(gens))
    contexts = {g: json.loads(c) for g, c in _rows(db, "SELECT number, context_json FROM generations")}
    assert all(contexts[g] == json.loads(c) for g, c in before.items() if c)  # restarted, not re-decided
    ran_under = {c["decided_at"] for c in contexts.values()} - {-1}
    rewarded = [json.loads(d)["transition"]["decided_at"] for (d,) in _rows(
        db, "SELECT data_json FROM agent_experience") if json.loads(d).get("transition")]
    assert sorted(rewarded) == sorted(ran_under), (sorted(rewarded), sorted(ran_under))
    _assert_nothing_stored_was_paid_again(log, stored, calls_before)


@pytest.mark.slow
def test_a_changed_action_set_starts_a_new_policy_that_never_trains_on_the_old_ones_rows(tmp_path: Path) -> None:
    path = _bowl(tmp_path, generations=6)
    assert _cli(path, "optimize", str(path), "--no-outputs").returncode == 0
    path.write_text(path.read_text().replace("learner: {plugin: ppo, rollout: 4}",
                                             "learner: {plugin: ppo, rollout: 2, actions: [boost]}"))
    second = _cli(path, "optimize", str(path), "--no-outputs")
    assert second.returncode == 0, second.stderr
    db = tmp_path / "db.sqlite"
    note = json.loads(_rows(db, "SELECT detail_json FROM learner_log WHERE run_id = 2 AND generation = 0")[0][0])
    assert note["note"].startswith("the stored policy was for another roster")
    state = json.loads(_rows(db, "SELECT state_json FROM agent_memory WHERE agent = 'learner:ppo'")[0][0])
    assert state["updates"] == 2 and state["signature"]["heads"] == [["boost", ["none", "evolution", "bandit",
                                                                                "random"]]]


@pytest.mark.slow
def test_the_ppo_learner_runs_on_the_embedded_model(tmp_path: Path) -> None:
    """The default job's target (Gemma 3 270M in-process) with the PPO learner steering the society."""
    questions = ROOT / "examples" / "qa" / "questions.jsonl"
    path = tmp_path / "optimization.yaml"
    path.write_text(textwrap.dedent(f"""
        study: ppo-gemma
        target: {{type: litellm, model: local/gemma-3-270m, prompt: "Q: {{{{ question }}}}\\nA:", timeout_seconds: 60}}
        storage: {{path: db.sqlite}}
        search_space:
          parameters:
            temperature: {{type: continuous, min: 0.0, max: 1.0, step: 0.1}}
            max_tokens: {{type: discrete, values: [4, 8, 16]}}
        evaluation:
          test_cases: {{path: "{questions}", limit: 3}}
          metrics:
            accuracy: {{function: contains}}
        optimization:
          seed: 1
          warm_start: 0
          evolution: {{population_size: 3, generations: 3, elite_size: 1}}
          execution: {{mode: generational, concurrency: 1, early_stopping: {{enabled: false}}}}
        society:
          enabled: true
          agents: {{evolution: 0.5, bandit: 0.5}}
          learner: {{plugin: ppo, rollout: 2}}
    """))
    done = _cli(path, "optimize", str(path), "--no-outputs")
    assert done.returncode == 0, done.stderr
    db = tmp_path / "db.sqlite"
    assert _rows(db, "SELECT status FROM runs") == [("finished",)]
    assert _rows(db, "SELECT COUNT(*) FROM agent_experience WHERE agent = 'learner:ppo'") == [(3,)]
    state = json.loads(_rows(db, "SELECT state_json FROM agent_memory WHERE agent = 'learner:ppo'")[0][0])
    assert state["updates"] == 1 and state["decisions"] == 3
    assert "ppo update 1" in done.stdout


def test_validate_reports_a_bad_learner_option_with_its_line(tmp_path: Path) -> None:
    path = _bowl(tmp_path)
    path.write_text(path.read_text().replace("learner: {plugin: ppo, rollout: 4}",
                                             "learner: {plugin: ppo, rollout: 4, gamma: 3, learnin_rate: 0.1}"))
    out = CliRunner().invoke(app, ["validate", str(path)])
    assert out.exit_code == 2
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "learnin_rate" in text)
    assert (f"optimization.yaml:{line}: society.learner: ppo options: gamma: Input should be less than or equal "
            "to 1; learnin_rate: Extra inputs are not permitted") in " ".join(out.output.split())
