"""A target that reports a NaN, infinite or negative cost, or a token count that is not a whole number:
that case fails with a clear error naming the field and the value, the run finishes and keeps every
other row, and the run's totals stay numbers (issue 20, defect 1)."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import pytest
from local_server import serve

import convergence
from convergence.config.models import BudgetConfig
from convergence.core.budget import Budget
from convergence.core.types import CallResult, CaseResult, TrialRecord
from convergence.storage.store import Store

CASES = ["good", "nan", "inf", "negative", "half_token", "nan_tokens"]
BAD = {  # case -> what the user must read in that case's error
    "nan": "target returned cost_usd=nan",
    "inf": "target returned cost_usd=inf",
    "negative": "target returned cost_usd=-0.5",
    "half_token": "target returned prompt_tokens=2.5",
    "nan_tokens": "target returned completion_tokens=nan",
}


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "convergence", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)


def _write_project(folder: Path, target: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cases = "\n".join(f"      - {{input: {c}, expected: x}}" for c in CASES)
    (folder / "optimization.yaml").write_text(textwrap.dedent("""\
        study: bad-values
        target: {target}
        search_space:
          parameters:
            a: {{type: categorical, values: [1, 2, 3]}}
        evaluation:
          test_cases:
            inline:
        {cases}
          metrics:
            accuracy: {{function: exact_match, weight: 1.0}}
        optimization:
          seed: 1
          evolution: {{population_size: 2, generations: 1}}
          selection: {{stochastic: false}}  # the rows are counted: no probe or confirmation draws
        """).format(target=target, cases=cases))
    return folder


def _stored(folder: Path) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
    with sqlite3.connect(folder / ".convergence" / "convergence.db") as db:
        run = db.execute("SELECT status, total_cost_usd, total_calls FROM runs").fetchone()
        rows = db.execute("SELECT case_id, error, cost_usd FROM case_results").fetchall()
    return run, rows


def _check_run(folder: Path, proc: subprocess.CompletedProcess[str], good_cost: float) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in out, out[-4000:]
    run, rows = _stored(folder)
    status, total_cost, calls = run
    assert status == "finished" and calls == 2 * len(CASES)
    assert len(rows) == 2 * len(CASES)  # every case of both trials stored, the good ones and the bad ones
    assert total_cost == pytest.approx(2 * good_cost)  # only what the good calls cost, a number
    by_case: dict[str, list[str | None]] = {}
    for case_id, error, _ in rows:
        by_case.setdefault(case_id, []).append(error)
    traces = cli("traces", "1", cwd=folder)
    assert traces.returncode == 0, traces.stderr
    inputs = {f"case-{i + 1}": c for i, c in enumerate(CASES)}
    for case_id, errors in by_case.items():
        kind = inputs[case_id]
        if kind == "good":
            assert errors == [None, None]
        else:
            # the value as the target gave it: nan, or 'NaN' when a server wrote it as text
            assert all(e is not None and BAD[kind] in e.lower().replace("'", "") and "expected a" in e
                       for e in errors), (kind, errors)
            assert BAD[kind] in traces.stdout.lower().replace("'", "")  # what `convergence traces` shows


PYTHON_TARGET = '''
def f(params, input):
    values = {
        "good": {"cost_usd": 0.001, "prompt_tokens": 3, "completion_tokens": 1},
        "nan": {"cost_usd": float("nan")},
        "inf": {"cost_usd": float("inf")},
        "negative": {"cost_usd": -0.5},
        "half_token": {"prompt_tokens": 2.5},
        "nan_tokens": {"completion_tokens": float("nan")},
    }[input]
    return {"output": "x", **values}
'''


def test_a_python_target_returning_nan_or_inf_cost_fails_those_cases_and_the_run_finishes(tmp_path: Path) -> None:
    """Before: ``sqlite3.IntegrityError: NOT NULL constraint failed: runs.total_cost_usd``, exit 1,
    the run left ``running`` and 0 rows stored."""
    folder = _write_project(tmp_path / "py", '{type: python, function: "t:f"}')
    (folder / "t.py").write_text(PYTHON_TARGET)
    proc = cli("optimize", "optimization.yaml", "--no-outputs", cwd=folder)
    _check_run(folder, proc, good_cost=0.001)
    assert "in the returned dict" in str(_stored(folder)[1])


class _Priced(BaseHTTPRequestHandler):
    """Answers ``{"result": "x", "cost": ...}`` with the cost (and usage) each case asks for,
    written as a server would write them: ``"NaN"`` as text, ``Infinity`` as Python's json writes it."""

    protocol_version = "HTTP/1.1"
    BODIES: ClassVar[dict[str, str]] = {
        "good": '{"result": "x", "cost": 0.01, "usage": {"prompt_tokens": 3, "completion_tokens": 1}}',
        "nan": '{"result": "x", "cost": "NaN"}',
        "inf": '{"result": "x", "cost": Infinity}',
        "negative": '{"result": "x", "cost": -0.5}',
        "half_token": '{"result": "x", "cost": 0, "usage": {"prompt_tokens": 2.5}}',
        "nan_tokens": '{"result": "x", "usage": {"completion_tokens": NaN}}',
    }

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        data = self.BODIES[body["input"]].encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_an_http_target_answering_a_nan_cost_fails_those_cases_and_the_run_finishes(tmp_path: Path) -> None:
    with serve(_Priced) as base:
        folder = _write_project(
            tmp_path / "http", f'{{type: http, endpoint: "{base}/run", response: {{result_field: result, '
                               'cost_field: cost}}'
        )
        proc = cli("optimize", "optimization.yaml", "--no-outputs", cwd=folder)
    _check_run(folder, proc, good_cost=0.01)
    assert "response field 'cost'" in str(_stored(folder)[1])


# --------------------------------------------------------------------------- LiteLLM: a price map entry that is NaN


class _OpenAI(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint that answers as model ``nanprice`` (priced NaN in LiteLLM's map)
    when the prompt says ``nan``, as ``unpriced`` (no price: cost 0) when it says ``none``, else as ``stub``."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        prompt = body["messages"][-1]["content"]
        model = {"nan": "nanprice", "none": "unpriced"}.get(prompt, "stub")
        data = json.dumps({
            "id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def nan_price() -> Iterator[None]:
    from convergence.llm.client import litellm_module

    litellm = litellm_module()
    litellm.register_model({"openai/nanprice": {"input_cost_per_token": math.nan, "output_cost_per_token": 0.0,
                                                "litellm_provider": "openai", "mode": "chat"}})
    try:
        yield
    finally:
        litellm.model_cost.pop("openai/nanprice", None)


@pytest.mark.anyio
async def test_a_litellm_price_map_giving_nan_fails_those_cases_and_the_run_finishes(
    tmp_path: Path, nan_price: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model priced NaN in LiteLLM's map: those calls fail with the error; a model LiteLLM has no
    price for (``None``) costs 0, as before, and its calls succeed."""
    monkeypatch.setenv("CONVERGENCE_TEST_STUB_KEY", "sk-stub")
    with serve(_OpenAI) as base:
        folder = tmp_path / "llm"
        folder.mkdir()
        (folder / "optimization.yaml").write_text(textwrap.dedent(f"""\
            study: nan-price
            target: {{type: litellm, model: openai/stub, api_base: "{base}/v1",
                      api_key_env: CONVERGENCE_TEST_STUB_KEY, prompt: "{{{{ input }}}}"}}
            search_space:
              parameters:
                temperature: {{type: categorical, values: [0.1, 0.2, 0.3]}}
            evaluation:
              test_cases:
                inline: [{{input: good, expected: x}}, {{input: nan, expected: x}}, {{input: none, expected: x}}]
              metrics:
                accuracy: {{function: exact_match, weight: 1.0}}
            optimization:
              seed: 1
              evolution: {{population_size: 2, generations: 1}}
              selection: {{stochastic: false}}  # the rows are counted: no confirmation draws
            """))
        outcome = await convergence.optimize(folder / "optimization.yaml", write_outputs=False)
    assert outcome.status == "finished"
    run, rows = _stored(folder)
    assert run[0] == "finished" and run[1] == 0.0 and len(rows) == 6
    errors = {case: err for case, err, _ in rows}
    assert errors["case-1"] is None and errors["case-3"] is None
    assert errors["case-2"] is not None
    assert "target returned cost_usd=nan (LiteLLM's price for nanprice): expected a finite number >= 0" in errors[
        "case-2"]


# --------------------------------------------------------------------------- the totals' last line of defence


def test_a_nan_or_infinite_charge_leaves_the_budget_a_number() -> None:
    budget = Budget(BudgetConfig(max_cost_usd=1.0))
    for cost in (0.25, math.nan, math.inf, -1.0, 0.25):
        budget.charge(cost)
    assert budget.cost_usd == 0.5
    assert budget.reserve_call()  # the max_cost_usd check still works


@pytest.mark.anyio
async def test_non_finite_values_never_reach_the_database_and_the_run_still_finishes(tmp_path: Path) -> None:
    """Whatever reaches the store: a NaN total no longer fails the commit (NOT NULL) and an infinite
    cost is not stored to poison the sums over the column."""
    async with await Store.open(tmp_path / "c.db") as store:
        run_id = await store.start_run("s", {}, seed=1, config_path=None)
        store.track_run(run_id, lambda: (1, math.nan, 1.0))
        async with store.writing():
            call = CallResult(output="x", latency_ms=math.inf, cost_usd=math.inf, wall_ms=math.nan)
            store.record_case(run_id, "h", CaseResult("c1", call, {"acc": 1.0}))
            store.record_trial(run_id, TrialRecord({}, "h", 1, "p", cost_usd=math.nan, latency_ms=math.inf))
        await store.finish_run(run_id, "finished", None, total_calls=1, total_cost_usd=math.inf, elapsed_seconds=1.0)
    with sqlite3.connect(tmp_path / "c.db") as db:
        assert db.execute("SELECT status, total_cost_usd FROM runs").fetchone() == ("finished", 0.0)
        assert db.execute("SELECT SUM(cost_usd), SUM(latency_ms), SUM(wall_ms) FROM case_results").fetchone() == (
            None, None, None)
        assert db.execute("SELECT cost_usd, latency_ms FROM trials").fetchone() == (None, None)
