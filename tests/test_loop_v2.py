"""The loop without a generation barrier, and racing over test cases.

What a user sees: in async mode a slow call no longer holds every other slot
idle; racing stops paying for a configuration once a sequential test shows it
worse than the incumbent, never cuts the better one, and keeps a configuration
that is worse on the score but better on another weighted metric."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from convergence.config.loader import parse_config
from convergence.config.models import RacingConfig
from convergence.engine.loop import Optimizer
from convergence.engine.racing import CaseView, Racer, looks
from convergence.storage.store import Store

pytestmark = pytest.mark.anyio

TARGET = '''
import asyncio, json, os, time

async def timed(params, input):
    """Logs start and end of every call; one (config, case) is a slow outlier."""
    start = time.monotonic()
    marker = os.environ["CALL_LOG"] + ".slow"
    slow = input == "c0" and not os.path.exists(marker)  # the run's first call of case c0 (generation 0)
    if slow:
        open(marker, "w").close()
    await asyncio.sleep(0.6 if slow else 0.01)
    with open(os.environ["CALL_LOG"], "a") as f:
        f.write(json.dumps({"x": params["x"], "input": input, "start": start, "end": time.monotonic(),
                            "slow": slow}) + "\\n")
    return "yes"

def quality(params, input):
    """Case i is right with a probability set by the mode (a fixed pseudo-random draw per case)."""
    p = {"good": 0.9, "fair": 0.6, "bad": 0.1}[params["mode"]]
    i = int(input[1:])
    u = ((i * 7919 + 13) % 101) / 101.0
    return "yes" if u < p else "no"
'''


def make(tmp_path: Path, body: str, fn: str, cases: int) -> Any:
    (tmp_path / "tgt_v2.py").write_text(TARGET)
    inline = json.dumps([{"input": f"c{i}", "expected": "yes"} for i in range(cases)])
    text = textwrap.dedent(f"""
        study: v2-test
        target: {{type: python, function: "tgt_v2:{fn}", retry: {{max_retries: 0}}}}
        storage: {{path: db.sqlite}}
        evaluation:
          test_cases: {{inline: {inline}}}
          metrics:
            acc: {{function: exact_match}}
    """) + textwrap.dedent(body)
    path = tmp_path / "optimization.yaml"
    path.write_text(text)
    return parse_config(text, path)


async def run(loaded: Any) -> Any:
    store = await Store.open(loaded.base_dir / "db.sqlite")
    try:
        return await Optimizer(loaded, store).run()
    finally:
        await store.close()


@pytest.mark.parametrize("mode", ["async", "generational"])
async def test_a_slow_call_does_not_hold_the_other_slots_in_async_mode(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("CALL_LOG", str(log))
    loaded = make(tmp_path, f"""
        search_space:
          parameters:
            x: {{type: continuous, min: 0.0, max: 1.0, step: 0.05}}
        optimization:
          seed: 3
          warm_start: 0
          evolution: {{population_size: 4, generations: 3, elite_size: 0}}
          racing: {{enabled: false}}
          execution: {{mode: {mode}, concurrency: 4, early_stopping: {{enabled: false}}}}
    """, "timed", cases=3)
    out = await run(loaded)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    gen_of = {t.config["x"]: t.generation for t in out.trials}
    [outlier] = [c for c in calls if c["slow"]]
    assert gen_of[outlier["x"]] == 0
    during = [c for c in calls if gen_of[c["x"]] >= 1 and outlier["start"] < c["start"] < outlier["end"]]
    if mode == "async":
        assert during, "no call of a later generation started while the slow call ran"
    else:
        assert not during, "generational mode waits for each generation's slowest call"


RACE = """
    search_space:
      parameters:
        mode: {type: categorical, values: [%s]}
    optimization:
      seed: 1
      warm_start: 1
      evolution: {population_size: 1, generations: 3, elite_size: 0}
      execution: {mode: generational, concurrency: 1, early_stopping: {enabled: false}}
"""


async def test_racing_abandons_a_clearly_worse_configuration_early_and_never_the_better_one(tmp_path: Path) -> None:
    # an earlier run of the study found "good"; this run starts from it (warm start) and meets the others
    await run(make(tmp_path, RACE % "good", "quality", cases=30))
    out = await run(make(tmp_path, RACE % "good, fair, bad", "quality", cases=30))
    by_mode = {t.config["mode"]: t for t in out.trials}
    assert by_mode["good"].proposer == "warm_start"
    assert by_mode["good"].status == "complete" and by_mode["good"].n_cases == 30
    assert by_mode["bad"].status == "abandoned" and by_mode["bad"].n_cases < 15, by_mode["bad"]
    assert out.total_calls < 90 and out.total_calls >= sum(t.n_cases for t in out.trials)
    assert out.best is not None and out.best.config["mode"] == "good"

    # the better one of a pair is never abandoned: "fair" first, then "good" races against it
    other = tmp_path / "other"
    other.mkdir()
    await run(make(other, RACE % "fair", "quality", cases=30))
    out = await run(make(other, RACE % "fair, good", "quality", cases=30))
    by_mode = {t.config["mode"]: t for t in out.trials}
    assert by_mode["good"].status == "complete" and by_mode["good"].n_cases == 30


async def test_racing_off_pays_for_every_case(tmp_path: Path) -> None:
    loaded = make(tmp_path, """
        search_space:
          parameters:
            mode: {type: categorical, values: [good, fair, bad]}
        optimization:
          seed: 1
          evolution: {population_size: 3, generations: 1, elite_size: 0}
          racing: {enabled: false}
          execution: {mode: generational, concurrency: 1, early_stopping: {enabled: false}}
          selection: {stochastic: false}
    """, "quality", cases=30)
    out = await run(loaded)
    assert all(t.status == "complete" and t.n_cases == 30 for t in out.trials)
    assert out.total_calls == 90


class _Eval:
    """The evaluator surface racing reads: weights and per-case scoring (two metrics)."""

    def __init__(self) -> None:
        self.trial_level: dict[str, str] = {}

    def metric_weights(self) -> dict[str, float]:
        return {"acc": 0.5, "speed": 0.5}

    def score_means(self, means: dict[str, float]) -> Any:
        from convergence.evaluation.scorer import Aggregate

        return Aggregate(score=0.5 * means["acc"] + 0.5 * means["speed"], means=means, normalized=dict(means),
                         thresholds_passed=True)


def _views(acc: list[float], speed: list[float]) -> dict[str, CaseView]:
    pairs = enumerate(zip(acc, speed, strict=True))
    return {f"c{i}": CaseView(0.5 * a + 0.5 * s, {"acc": a, "speed": s}) for i, (a, s) in pairs}


def test_racing_abandons_only_what_is_dominated_on_every_weighted_metric() -> None:
    from convergence.core.types import TrialRecord
    from convergence.engine import case_model

    racer = Racer(RacingConfig(min_cases=5, alpha=0.05), _Eval(), 30)  # type: ignore[arg-type]
    incumbent = TrialRecord(config={}, config_hash="inc", generation=0, proposer="x", score=0.9)
    views = _views([1.0] * 30, [0.8] * 30)
    racer.add(incumbent, views)
    racer.refit(case_model.fit({"inc": {c: [v.score] for c, v in views.items()}}, list(views)))
    n = min(k for k in racer.looks if k >= 15)
    worse_everywhere = _views([0.0] * n, [0.7] * n)
    assert racer.verdict(worse_everywhere, 30) is not None
    # worse on the score and on accuracy, but faster on every case: it may be on the Pareto front
    trades_off = _views([0.0] * n, [1.0] * n)
    assert trades_off["c0"].score < 0.9
    assert racer.verdict(trades_off, 30) is None
    # equal on every case: never abandoned
    assert racer.verdict(_views([1.0] * n, [0.8] * n), 30) is None


def test_the_looks_are_fixed_and_their_level_bounds_the_false_abandon_rate() -> None:
    from statistics import NormalDist

    assert looks(5, 30) == [5, 7, 9, 12, 15, 19, 24]
    racer = Racer(RacingConfig(min_cases=5, alpha=0.05), _Eval(), 30)  # type: ignore[arg-type]
    assert 1 - NormalDist().cdf(racer.z) == pytest.approx(0.05 / 7)
