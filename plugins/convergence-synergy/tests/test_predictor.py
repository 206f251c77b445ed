"""The predictor of the next generation's improvement, and the learner's stop decision."""

from __future__ import annotations

import pytest

from convergence.society.learner import AgentResult, GenerationResult, LearnerContext
from convergence_synergy import make_learner, predictor
from convergence_synergy.predictor import ImprovementPredictor

DECAYING = [0.2 * 0.5**k for k in range(12)]  # 0.2, 0.1, 0.05, ... 0.0001
RISING = [0.01 * (k + 1) for k in range(12)]


def predictions(series, **kw):
    p = ImprovementPredictor(**kw)
    out = []
    for x in series:
        p.observe(x)
        out.append(p.predict())
    return out


def test_ema_before_enough_history_then_arima():
    out = predictions(DECAYING, method="arima", ema_alpha=0.5, min_history=8)
    assert [p.method for p in out] == ["ema"] * 7 + ["arima"] * 5
    assert out[0].value == pytest.approx(0.2)
    assert out[1].value == pytest.approx(0.5 * 0.2 + 0.5 * 0.1)  # ema <- (1 - a) * ema + a * x


def test_arima_follows_a_decay_faster_than_the_ema():
    arima = predictions(DECAYING, method="arima", min_history=8)[-1]
    ema = predictions(DECAYING, method="ema", ema_alpha=0.4)[-1]
    assert arima.method == "arima"
    assert arima.value < 0.001 < ema.value  # the EMA lags behind the decay


def test_a_failed_fit_falls_back_to_the_ema(monkeypatch):
    def boom(y):
        raise ValueError("singular")

    monkeypatch.setattr(predictor, "arima_forecast", boom)
    last = predictions(RISING, method="arima", min_history=8)[-1]
    assert last.method == "ema" and "ARIMA failed (ValueError: singular)" in last.note


def test_a_constant_series_forecasts_itself():
    last = predictions([0.0] * 10, method="arima")[-1]
    assert last.method == "constant" and last.value == 0.0


def test_forecasts_are_never_negative():
    assert all(p.value >= 0 for p in predictions([0.3, 0.0, 0.2, 0.0, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0]))


def _result(g: int, improvement: float) -> GenerationResult:
    agents = {a: AgentResult(share=0.5, proposed=5, improvement=improvement, in_top=1, cost=50.0, best_score=0.5)
              for a in ("x", "y")}
    return GenerationResult(generation=g, progress=g / 20, best_score=0.5, improvement=improvement,
                            cost_unit="calls", agents=agents)


def _learner(tmp_path, min_improvement=0.001, **options):
    ctx = LearnerContext(agents=["x", "y"], shares={"x": 0.5, "y": 0.5}, options=options, seed=0, study="s",
                         state_dir=tmp_path, min_improvement=min_improvement)
    return make_learner(ctx)


def test_a_decaying_improvement_series_stops_the_run(tmp_path):
    learner = _learner(tmp_path)
    reasons = []
    for g, x in enumerate(DECAYING, start=1):
        learner.update(_result(g, x))
        reasons.append(learner.stop_reason())
    first = next(i for i, r in enumerate(reasons, start=1) if r)
    assert 8 <= first <= 12  # 0.2 * 0.5^k drops below 0.001 at k = 8; ARIMA sees it as it happens
    assert reasons[-1].startswith("synergy: predicted improvement of the next generation ")
    assert "< min_improvement 0.001 (arima over " in reasons[-1]
    summary = learner.summary()
    assert summary["stop_reason"] == reasons[-1] and summary["prediction"]["method"] == "arima"


def test_a_rising_improvement_series_does_not(tmp_path):
    learner = _learner(tmp_path)
    for g, x in enumerate(RISING, start=1):
        learner.update(_result(g, x))
        assert learner.stop_reason() is None


def test_no_stop_before_min_generations(tmp_path):
    learner = _learner(tmp_path, min_improvement=0.5, predictor="ema")
    for g in range(1, 4):
        learner.update(_result(g, 0.0))
        assert learner.stop_reason() is None  # predicted 0 < 0.5, but too early to tell
    learner.update(_result(4, 0.0))
    assert learner.stop_reason() == ("synergy: predicted improvement of the next generation 0 < min_improvement 0.5 "
                                     "(ema over 4 generations)")


def test_min_improvement_zero_never_stops(tmp_path):
    learner = _learner(tmp_path, min_improvement=0.0)
    for g in range(1, 10):
        learner.update(_result(g, 0.0))
    assert learner.stop_reason() is None
