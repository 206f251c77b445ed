"""Noise-aware selection: what a user sees.

The configuration returned as best is the truly better one even when its
first noisy pass scored lower (confirmation draws again and the estimate
weighs the draws); with selection off the luckier one wins. A resumed run
never asks a confirmation draw it already has. The estimate corrects a
configuration that ran only easy cases and pulls a mean over few cases in.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest

from convergence.config.loader import parse_config
from convergence.core.types import TrialRecord
from convergence.engine import selection
from convergence.engine.loop import Optimizer
from convergence.storage.store import Store

pytestmark = pytest.mark.anyio

CASES = 30
P_TRUE = {"A": 0.62, "B": 0.50}

TARGET = '''
import hashlib

calls = {}
stop = None  # (n, cancel): the test stops the run at the n-th call, as a kill would

async def coin(params, input):
    """A stochastic target: draw k of (arm, case) is a fixed pseudo-random coin with the arm's success rate."""
    key = (params["arm"], input)
    k = calls.get(key, 0)
    calls[key] = k + 1
    if stop and sum(calls.values()) == stop[0]:
        stop[1]()
    return "yes" if draw(SALT, params["arm"], input, k) < P[params["arm"]] else "no"

def draw(salt, arm, case, k):
    return int(hashlib.sha256(f"{salt}|{arm}|{case}|{k}".encode()).hexdigest()[:8], 16) / 2**32
'''


def _draw(salt: int, arm: str, case: str, k: int) -> float:
    return int(hashlib.sha256(f"{salt}|{arm}|{case}|{k}".encode()).hexdigest()[:8], 16) / 2**32


def _mean(salt: int, arm: str, passes: int) -> float:
    hits = [_draw(salt, arm, f"c{i}", k) < P_TRUE[arm] for k in range(passes) for i in range(CASES)]
    return sum(hits) / len(hits)


def inverted_salt() -> int:
    """A seed of the coins where B's first pass beats A's but A leads over every longer run of draws."""
    for salt in range(10_000):
        if _mean(salt, "B", 1) > _mean(salt, "A", 1) and all(
                _mean(salt, "A", n) > _mean(salt, "B", n) for n in range(2, 6)):
            return salt
    raise AssertionError("no inverted seed")


def make(tmp_path: Path, selection_yaml: str, max_calls: int = 300) -> tuple[Any, Any]:
    name = f"coin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        f"SALT = {inverted_salt()}\nP = {P_TRUE!r}\n" + TARGET)
    inline = json.dumps([{"input": f"c{i}", "expected": "yes"} for i in range(CASES)])
    text = textwrap.dedent(f"""
        study: selection-test
        target: {{type: python, function: "{name}:coin", retry: {{max_retries: 0}}}}
        storage: {{path: db.sqlite}}
        search_space:
          parameters:
            arm: {{type: categorical, values: [A, B]}}
        evaluation:
          test_cases: {{inline: {inline}}}
          metrics:
            acc: {{function: exact_match}}
        optimization:
          seed: 3
          warm_start: 0
          evolution: {{population_size: 2, generations: 1, elite_size: 1}}
          execution: {{concurrency: 4, early_stopping: {{enabled: false}}}}
          budget: {{max_calls: {max_calls}}}
          selection: {selection_yaml}
    """)
    path = tmp_path / "optimization.yaml"
    path.write_text(text)
    return parse_config(text, path), name


async def run(loaded: Any, resume: bool = False) -> Any:
    store = await Store.open(loaded.base_dir / "db.sqlite")
    try:
        return await Optimizer(loaded, store).run(resume=resume)
    finally:
        await store.close()


ON = "{stochastic: true, confirm_share: 0.8}"
OFF = "{estimate: mean, confirm_top: 0}"


async def test_confirmation_returns_the_truly_better_configuration_when_noisy_means_are_inverted(
        tmp_path: Path) -> None:
    salt = inverted_salt()
    assert _mean(salt, "B", 1) > _mean(salt, "A", 1)  # the search's pass favours B (true rate 0.50 < 0.62)
    (tmp_path / "on").mkdir()
    (tmp_path / "off").mkdir()
    on, _ = make(tmp_path / "on", ON)
    off, _ = make(tmp_path / "off", OFF)

    luck = await run(off)
    assert luck.best.config["arm"] == "B", "without selection the luckier first pass wins"
    assert luck.total_calls == 2 * CASES

    out = await run(on)
    assert out.best.config["arm"] == "A"
    assert out.best.repeats >= CASES, "the best was drawn again"
    assert out.total_calls <= 300
    store = await Store.open(on.base_dir / "db.sqlite")
    try:
        summary = await store.selection(out.run_id)
        repeats = await store.repeat_results(out.run_id)
    finally:
        await store.close()
    assert summary is not None and summary["confirm_calls"] == out.total_calls - 2 * CASES
    assert summary["top"][0]["config_hash"] == out.best.config_hash and summary["top"][0]["ci95"]
    assert sum(len(v) for v in repeats.values()) == summary["confirm_calls"]
    assert {r.repeat for v in repeats.values() for r in v} >= {1}


async def test_the_report_shows_how_the_best_was_chosen(tmp_path: Path) -> None:
    from convergence.reporting.outputs import write_outputs

    loaded, _ = make(tmp_path, ON)
    out = await run(loaded)
    store = await Store.open(loaded.base_dir / "db.sqlite")
    try:
        files = await write_outputs(loaded, store, out.run_id)
    finally:
        await store.close()
    md = next(p for p in files if p.name == "report.md").read_text()
    assert "## How the best was chosen" in md and "95% CI over cases" in md
    assert "The best is **distinguishable** from the runner-up" in md \
        or "The best is **not distinguishable** from the runner-up" in md
    doc = json.loads(next(p for p in files if p.name == "results.json").read_text())
    assert doc["selection"]["top"][0]["config_hash"] == doc["best"]["config_hash"]
    assert doc["best"]["estimate"] is not None


async def test_a_run_stopped_during_confirmation_resumes_without_asking_a_draw_twice(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "cut").mkdir()
    base, base_mod = make(tmp_path / "base", ON)
    full = await run(base)
    baseline_calls = sum(sys.modules[base_mod].calls.values())
    assert baseline_calls == full.total_calls > 2 * CASES

    cut, mod = make(tmp_path / "cut", ON)
    sys.path.insert(0, str(cut.base_dir))
    target = importlib.import_module(mod)  # the module the run imports
    with anyio.CancelScope() as scope:
        target.stop = (2 * CASES + 20, scope.cancel)  # in the first confirmation round
        await run(cut)
    assert scope.cancelled_caught
    store = await Store.open(cut.base_dir / "db.sqlite")
    try:
        assert (await store.get_run(1)).status == "interrupted"
        kept = sum(len(v) for v in (await store.case_results(1)).values())
        kept += sum(len(v) for v in (await store.repeat_results(1)).values())
    finally:
        await store.close()
    assert kept >= 2 * CASES + 10, "finished draws were stored"
    target.stop = None
    before = sum(sys.modules[mod].calls.values())
    out = await run(cut, resume=True)
    asked = sum(sys.modules[mod].calls.values()) - before
    assert asked <= baseline_calls - kept, "only draws the stopped run had not stored are asked"
    assert out.best.config["arm"] == "A"
    assert out.best.repeats > 0
    store = await Store.open(cut.base_dir / "db.sqlite")
    try:
        stored = sum(len(v) for h, v in (await store.repeat_results(1)).items() if h == out.best.config_hash)
    finally:
        await store.close()
    assert out.best.repeats == stored, "the resumed run's score counts every stored draw"


def _trial(h: str, score: float, status: str = "complete") -> TrialRecord:
    return TrialRecord(config={"h": h}, config_hash=h, generation=0, proposer="t", score=score, status=status)


def test_the_estimate_corrects_for_easy_cases_and_pulls_in_a_mean_over_few_cases() -> None:
    cases = [f"c{j}" for j in range(10)]
    easy = {c: 0.3 * (j < 5) for j, c in enumerate(cases)}  # the first five cases are easier for everyone
    true = {"a": 0.5, "b": 0.4, "c": 0.3, "d": 0.45}
    noise = [0.05, -0.05, 0.02, -0.02, 0.0, 0.04, -0.04, 0.01, -0.01, 0.0]
    scores: dict[str, dict[str, list[float]]] = {}
    trials = []
    for i, (h, mu) in enumerate(true.items()):
        run_cases = cases if h != "d" else cases[:5]  # d ran only the easy half (racing cut it short)
        scores[h] = {c: [mu + easy[c] + noise[(j + 3 * i) % 10]] for j, c in enumerate(cases) if c in run_cases}
        values = [v[0] for v in scores[h].values()]
        trials.append(_trial(h, sum(values) / len(values), "complete" if h != "d" else "abandoned"))
    model = selection.fit(trials, scores, cases)
    by = {t.config_hash: t for t in trials}
    d = model.estimate(by["d"], scores["d"])
    assert by["d"].score > by["a"].score, "d's mean over easy cases looks best"
    assert d < model.estimate(by["a"], scores["a"]), "corrected for the easy cases it is not"
    assert model.weight(5) < model.weight(10) < model.weight(40) <= 1.0, "fewer draws: pulled in more"


def test_with_no_noise_the_estimate_is_the_mean() -> None:
    cases = ["x", "y", "z", "w"]
    base = {"x": 0.2, "y": 0.5, "z": 0.6, "w": 0.9}
    offsets = {"a": 0.1, "b": 0.0, "c": -0.1}  # purely additive: no interaction, no noise
    scores = {h: {c: [base[c] + d] for c in cases} for h, d in offsets.items()}
    trials = [_trial(h, sum(base.values()) / 4 + d) for h, d in offsets.items()]
    model = selection.fit(trials, scores, cases)
    assert model.s_case == pytest.approx(0.0, abs=1e-12)
    for t in trials:
        assert model.estimate(t, scores[t.config_hash]) == pytest.approx(t.score)


def test_repeated_draws_only_average_out_the_draw_noise() -> None:
    model = selection.NoiseModel(s_case=0.04, s_draw=0.16, tau2=0.01, m0=0.5, case_effect={})
    assert model.noise(30, 30) == pytest.approx(0.04 / 30 + 0.16 / 30)
    assert model.noise(30, 120) == pytest.approx(0.04 / 30 + 0.16 / 120), "more draws: less draw noise only"
    assert model.weight(30, 120) > model.weight(30, 30)
    assert model.weight(30, 10**9) < 0.01 / (0.01 + 0.04 / 30) + 1e-9, "the interaction stays"


def test_without_a_detectable_spread_the_mean_breaks_the_tie() -> None:
    a, b = _trial("a", 0.6), _trial("b", 0.5)
    a.estimate = b.estimate = 0.55
    assert [t.config_hash for t in selection.rank([b, a])] == ["a", "b"]


def test_confirm_top_one_is_refused() -> None:
    from convergence.config.models import SelectionConfig

    with pytest.raises(ValueError, match="at least 2"):
        SelectionConfig(confirm_top=1)


async def test_confirmation_spends_its_share_of_max_calls_not_the_rest(tmp_path: Path) -> None:
    loaded, _ = make(tmp_path, "{stochastic: true, confirm_share: 0.2}", max_calls=1000)
    out = await run(loaded)
    store = await Store.open(loaded.base_dir / "db.sqlite")
    try:
        summary = await store.selection(out.run_id)
    finally:
        await store.close()
    assert summary is not None and 0 < summary["confirm_calls"] <= 200
    assert out.total_calls <= 2 * CASES + 200


async def test_a_run_stopped_by_its_time_limit_still_ends_cleanly_with_a_selection(tmp_path: Path) -> None:
    loaded, mod = make(tmp_path, ON)
    text = loaded.path.read_text().replace("max_calls: 300", "max_seconds: 0.3")
    (tmp_path / f"{mod}.py").write_text((tmp_path / f"{mod}.py").read_text().replace(
        "    calls[key] = k + 1\n", "    calls[key] = k + 1\n    import asyncio; await asyncio.sleep(0.05)\n"))
    loaded.path.write_text(text)
    loaded = parse_config(text, loaded.path)
    out = await run(loaded)
    assert out.status == "stopped" and "max_seconds" in out.stop_reason
    store = await Store.open(loaded.base_dir / "db.sqlite")
    try:
        assert await store.selection(out.run_id) is not None
    finally:
        await store.close()
