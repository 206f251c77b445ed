"""Evaluator: per-case metric values and the trial score a user sees."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from convergence.config.models import EvaluationConfig
from convergence.core.types import CallResult, CaseResult, TestCase
from convergence.evaluation.scorer import Evaluator


def cfg(metrics: dict[str, Any], custom: dict[str, Any] | None = None) -> EvaluationConfig:
    data: dict[str, Any] = {"test_cases": {"inline": [{"input": "x"}]}, "metrics": metrics}
    if custom is not None:
        data["custom_evaluator"] = custom
    return EvaluationConfig.model_validate(data)


QA = {
    "accuracy": {"weight": 3, "type": "higher_is_better", "function": "exact_match", "threshold": 0.5},
    "latency_ms": {"weight": 1, "type": "lower_is_better", "threshold": 2000},
}


@pytest.mark.anyio
async def test_weights_and_directions_are_honoured(tmp_path: Path) -> None:
    ev = Evaluator(cfg(QA), tmp_path)
    assert ev.metric_directions() == {"accuracy": "higher_is_better", "latency_ms": "lower_is_better"}
    assert ev.metric_weights() == {"accuracy": 0.75, "latency_ms": 0.25}
    case = TestCase("c1", "capital of France?", "Paris")
    right_slow = await ev.evaluate(case, CallResult(output="Paris", latency_ms=1500.0))
    wrong_fast = await ev.evaluate(case, CallResult(output="Lyon", latency_ms=100.0))
    assert right_slow == {"accuracy": 1.0, "latency_ms": 1500.0}
    a = ev.aggregate([CaseResult("c1", CallResult(), right_slow)])
    b = ev.aggregate([CaseResult("c1", CallResult(), wrong_fast)])
    assert a.normalized == {"accuracy": 1.0, "latency_ms": pytest.approx(0.25)}
    assert a.score == pytest.approx(0.75 * 1.0 + 0.25 * 0.25)
    assert b.score == pytest.approx(0.25 * (1 - 100 / 2000))
    assert a.score > b.score  # accuracy weighs 3x latency
    # Flip the weights: now speed wins.
    flipped = {k: {**v, "weight": 3 if k == "latency_ms" else 1} for k, v in QA.items()}
    ev2 = Evaluator(cfg(flipped), tmp_path)
    assert (
        ev2.aggregate([CaseResult("c1", CallResult(), wrong_fast)]).score
        > ev2.aggregate([CaseResult("c1", CallResult(), right_slow)]).score
    )


@pytest.mark.anyio
async def test_failed_call_is_a_failure_for_that_case_only(tmp_path: Path) -> None:
    metrics = {
        **QA,
        "cost": {"weight": 1, "type": "lower_is_better", "budget_per_call": 0.01},
        "tokens_penalty": {"weight": 1, "type": "lower_is_better", "function": "numeric"},
    }
    ev = Evaluator(cfg(metrics), tmp_path)
    case = TestCase("c", "q", "7")
    ok = await ev.evaluate(case, CallResult(output="7", latency_ms=100.0, cost_usd=0.002))
    failed = await ev.evaluate(case, CallResult(error="timeout", latency_ms=0.0, cost_usd=0.001))
    assert ok["accuracy"] == 1.0
    assert failed["accuracy"] == 0.0
    assert failed["latency_ms"] == 2000.0  # nothing measured: the value that normalises to 0
    assert failed["cost"] == 0.001  # what was charged
    assert failed["tokens_penalty"] == 1.0  # lower_is_better quality metric: its worst value
    timed_out = await ev.evaluate(case, CallResult(error="timeout", latency_ms=30_000.0))
    assert timed_out["latency_ms"] == 30_000.0
    agg = ev.aggregate([CaseResult("a", CallResult(), ok), CaseResult("b", CallResult(error="x"), failed)])
    assert agg.means["accuracy"] == 0.5
    assert agg.means["cost"] == pytest.approx(0.0015)
    assert agg.normalized["cost"] == pytest.approx(0.85)


@pytest.mark.anyio
async def test_thresholds_pass_and_fail(tmp_path: Path) -> None:
    ev = Evaluator(cfg(QA), tmp_path)

    def res(acc: float, lat: float) -> CaseResult:
        return CaseResult("c", CallResult(), {"accuracy": acc, "latency_ms": lat})

    assert ev.aggregate([res(1.0, 1000.0), res(0.0, 1000.0)]).thresholds_passed  # 0.5 >= 0.5
    assert not ev.aggregate([res(0.0, 1000.0), res(0.0, 1000.0)]).thresholds_passed
    assert not ev.aggregate([res(1.0, 2500.0)]).thresholds_passed  # latency above its threshold
    assert not ev.aggregate([]).thresholds_passed
    assert ev.aggregate([]).score == 0.0
    no_thresholds = Evaluator(cfg({"accuracy": {"function": "exact_match"}}), tmp_path)
    assert no_thresholds.aggregate([res(0.0, 1.0)]).thresholds_passed


@pytest.mark.anyio
async def test_out_of_range_values_are_clamped_and_defaults_documented(tmp_path: Path) -> None:
    metrics = {
        "custom_q": {"function": "numeric"},
        "latency": {"type": "lower_is_better"},
        "cost": {"type": "lower_is_better"},
    }
    ev = Evaluator(cfg(metrics), tmp_path)
    agg = ev.aggregate([CaseResult("c", CallResult(), {"custom_q": 3.0, "latency": 15_000.0, "cost": 0.005})])
    assert agg.normalized == {"custom_q": 1.0, "latency": 0.0, "cost": pytest.approx(0.5)}
    # the documented defaults: latency 0 at 10 000 ms, cost 0 at $0.01, higher_is_better 1 at 1.0
    agg = ev.aggregate([CaseResult("c", CallResult(), {"custom_q": 1.0, "latency": 5_000.0, "cost": 0.01})])
    assert agg.normalized == {"custom_q": 1.0, "latency": pytest.approx(0.5), "cost": 0.0}


@pytest.mark.anyio
async def test_custom_module_function_and_errors_side_channel(tmp_path: Path) -> None:
    (tmp_path / "scorer_metrics_b1.py").write_text(
        "def word_count(output, case, call, args):\n"
        "    if output == 'explode':\n"
        "        raise RuntimeError('cannot score explode')\n"
        "    return min(1.0, len(output.split()) / args['target'])\n"
    )
    metrics = {
        "words": {"function": "scorer_metrics_b1:word_count", "args": {"target": 4}, "weight": 1},
        "accuracy": {"function": "contains", "weight": 1},
    }
    ev = Evaluator(cfg(metrics), tmp_path)
    case = TestCase("c", "q", "blue")
    assert await ev.evaluate(case, CallResult(output="the sky is blue")) == {"words": 1.0, "accuracy": 1.0}
    values, errors = await ev.evaluate_detailed(case, CallResult(output="explode"))
    assert values == {"words": 0.0, "accuracy": 0.0}
    assert errors == {"words": "RuntimeError: cannot score explode"}
    assert ev.errors["words"] == (1, "RuntimeError: cannot score explode")
    # A case without 'expected' breaks only the metric that needs it.
    values, errors = await ev.evaluate_detailed(TestCase("n", "q"), CallResult(output="a b"))
    assert values == {"words": 0.5, "accuracy": 0.0}
    assert "no 'expected'" in errors["accuracy"]


@pytest.mark.anyio
async def test_the_convergence_custom_evaluator_runs_once_per_case(tmp_path: Path) -> None:
    (tmp_path / "tc_eval_b2.py").write_text(
        "CALLS = []\n"
        "def score_response(response, expected, metadata):\n"
        "    CALLS.append(response)\n"
        "    hit = expected['keyword'] in response\n"
        "    return {'relevance': 1.0 if hit else 0.0, 'tone': metadata.get('tone_score', 0.5)}\n"
        "def per_metric(result, expected, params, metric=None):\n"
        "    return {'m_a': 0.2, 'm_b': 0.9}[metric]\n"
    )
    metrics = {
        "relevance": {"function": "custom", "weight": 2},
        "tone": {"weight": 1},  # no function: falls to the custom evaluator
        "m_a": {"function": "tc_eval_b2:per_metric"},
        "m_b": {"function": "tc_eval_b2:per_metric"},
    }
    ev = Evaluator(cfg(metrics, {"module": "tc_eval_b2", "function": "score_response"}), tmp_path)
    import tc_eval_b2  # type: ignore[import-not-found]

    case = TestCase("c", "q", {"keyword": "refund"}, {"tone_score": 0.8})
    out = await ev.evaluate(case, CallResult(output="we will refund you"))
    assert out == {"relevance": 1.0, "tone": 0.8, "m_a": 0.2, "m_b": 0.9}
    assert tc_eval_b2.CALLS == ["we will refund you"]  # one call fed both metrics
    out2 = await ev.evaluate(case, CallResult(output="no"))
    assert out2["relevance"] == 0.0
    assert len(tc_eval_b2.CALLS) == 2


@pytest.mark.anyio
async def test_custom_evaluator_missing_key_is_reported(tmp_path: Path) -> None:
    (tmp_path / "tc_eval_b3.py").write_text("def f(response, expected, metadata):\n    return {'other': 1}\n")
    ev = Evaluator(cfg({"quality": {"function": "custom"}}, {"module": "tc_eval_b3", "function": "f"}), tmp_path)
    values, errors = await ev.evaluate_detailed(TestCase("c", "q"), CallResult(output="x"))
    assert values == {"quality": 0.0}
    assert "none named 'quality'" in errors["quality"]


@pytest.mark.anyio
async def test_evaluate_and_aggregate_are_fast(tmp_path: Path) -> None:
    metrics = {
        "accuracy": {"function": "exact_match", "weight": 2},
        "has": {"function": "contains"},
        "latency_ms": {"type": "lower_is_better"},
        "cost": {"type": "lower_is_better"},
    }
    ev = Evaluator(cfg(metrics), tmp_path)
    case = TestCase("c", "q", "Paris")
    call = CallResult(output="The answer is Paris.", latency_ms=200.0, cost_usd=0.0001)
    n = 5000
    t0 = time.perf_counter()
    results = []
    for _ in range(n):
        results.append(CaseResult("c", call, await ev.evaluate(case, call)))
    for i in range(0, n, 10):
        ev.aggregate(results[i : i + 10])
    rate = n / (time.perf_counter() - t0)
    # The throughput benchmark needs thousands per second; leave headroom for slow CI.
    assert rate > 5000, f"{rate:.0f} evaluations/s"
