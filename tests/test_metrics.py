"""Built-in metrics and metric resolution: the values a user sees per case."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from convergence.config.models import CustomEvaluatorConfig, MetricConfig
from convergence.core.types import CallResult, TestCase
from convergence.evaluation.metrics import (
    BUILTINS,
    MetricConfigError,
    MetricError,
    resolve_metric,
)

OK = CallResult(output="x", latency_ms=120.0, cost_usd=0.0003)


def m(name: str, output: object, expected: object = None, **args: object) -> float:
    return BUILTINS[name](output, TestCase("c", "q", expected), OK, dict(args))


def test_exact_match_normalises_and_accepts_lists() -> None:
    assert m("exact_match", "  Paris. ", "paris") == 1.0
    assert m("exact_match", "New-York", "new  york") == 1.0
    assert m("exact_match", "The answer is Paris", "Paris") == 0.0
    assert m("exact_match", "Lyon", ["Paris", "lyon"]) == 1.0
    assert m("exact_match", "3.14", "314") == 0.0
    assert m("exact_match", 42, 42) == 1.0
    assert m("exact_match", "42", 42) == 1.0
    with pytest.raises(MetricError, match="no 'expected'"):
        m("exact_match", "x", None)


def test_contains_matches_whole_words_and_first_line() -> None:
    assert m("contains", "I think the answer is PARIS!", "paris") == 1.0
    assert m("contains", "The answer is 14", "4") == 0.0
    assert m("contains", "nope", ["x", "nope"]) == 1.0
    assert m("contains", "Rome\nbut maybe Paris", "paris", first_line_only=True) == 0.0
    assert m("contains", "Rome\nbut maybe Paris", "paris") == 1.0


def test_regex_from_args_or_expected() -> None:
    assert m("regex", "Order #12345 shipped", None, pattern=r"#\d{5}\b") == 1.0
    assert m("regex", "Order shipped", None, pattern=r"#\d{5}") == 0.0
    assert m("regex", "YES", r"^yes$", ignore_case=True) == 1.0
    assert m("regex", "yes indeed", r"yes", fullmatch=True) == 0.0


def test_numeric_tolerances_and_decay() -> None:
    assert m("numeric", "The total is 1,000 dollars", 1000) == 1.0
    assert m("numeric", "about 101", 100, rel_tolerance=0.02) == 1.0
    assert m("numeric", "0.5000001", "0.5", tolerance=1e-3) == 1.0
    assert m("numeric", "110", 100) == pytest.approx(math.exp(-10 / 100))
    assert m("numeric", "3", 1, scale=2) == pytest.approx(math.exp(-1))
    assert m("numeric", "no digits here", 5) == 0.0
    assert m("numeric", 7, 7) == 1.0
    assert m("numeric", "-2", 2) < m("numeric", "1", 2)


def test_json_valid_and_schema(tmp_path: Path) -> None:
    assert m("json_valid", '{"a": 1}') == 1.0
    assert m("json_valid", '```json\n{"a": 1}\n```') == 1.0
    assert m("json_valid", '```json\n{"a": 1}\n```', allow_code_fence=False) == 0.0
    assert m("json_valid", "{a: 1}") == 0.0
    assert m("json_valid", {"already": "parsed"}) == 1.0
    schema = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
    assert m("json_schema", '{"name": "Ada"}', schema=schema) == 1.0
    assert m("json_schema", '{"name": 3}', schema=schema) == 0.0
    assert m("json_schema", "not json", schema=schema) == 0.0
    # A schema given as a path is loaded once at resolution, relative to the YAML's folder.
    (tmp_path / "s.json").write_text(json.dumps(schema))
    metric = resolve_metric("shape", MetricConfig(function="json_schema", args={"schema": "s.json"}), None, tmp_path)
    assert metric('{"name": "x"}', TestCase("c", "q"), OK) == 1.0
    assert metric('{"nom": "x"}', TestCase("c", "q"), OK) == 0.0
    with pytest.raises(MetricConfigError, match="schema file not found"):
        resolve_metric("shape", MetricConfig(function="json_schema", args={"schema": "nope.json"}), None, tmp_path)
    with pytest.raises(MetricConfigError, match="invalid schema"):
        resolve_metric("s", MetricConfig(function="json_schema", args={"schema": {"type": 5}}), None, tmp_path)


def test_similarity_latency_cost_success() -> None:
    assert m("similarity", "Hello, World!", "hello world") == 1.0
    assert 0.0 < m("similarity", "hello there", "hello world") < 1.0
    assert m("similarity", "abc", ["zzz", "abc"]) == 1.0
    assert m("latency", "x") == 120.0
    assert m("cost", "x") == 0.0003
    assert BUILTINS["success"](None, TestCase("c", "q"), CallResult(error="boom"), {}) == 0.0


def test_latency_scores_wall_time_by_default_or_the_last_attempt(tmp_path: Path) -> None:
    """Retried call: 2.1 s from first attempt to answer, the good attempt took 40 ms."""
    retried = CallResult(output="x", latency_ms=40.0, wall_ms=2100.0, attempts=2)
    case = TestCase("c", "q")
    assert BUILTINS["latency"]("x", case, retried, {}) == 2100.0
    wall = resolve_metric("latency_ms", MetricConfig(type="lower_is_better", threshold=3000), None, tmp_path)
    assert wall.function == "latency" and wall("x", case, retried) == 2100.0
    attempt_cfg = MetricConfig(function="latency", args={"measure": "attempt"})
    attempt = resolve_metric("attempt_ms", attempt_cfg, None, tmp_path)
    assert attempt("x", case, retried) == 40.0
    explicit = resolve_metric("wall", MetricConfig(function="latency", args={"measure": "wall"}), None, tmp_path)
    assert explicit("x", case, retried) == 2100.0
    # no wall time recorded (a result stored before it existed): the attempt's latency
    assert wall("x", case, CallResult(output="x", latency_ms=55.0)) == 55.0
    with pytest.raises(MetricConfigError, match="measure must be one of wall, attempt"):
        resolve_metric("l", MetricConfig(function="latency", args={"measure": "total"}), None, tmp_path)


def test_resolution_infers_from_name_and_lists_builtins(tmp_path: Path) -> None:
    def fn(name: str) -> str:
        return resolve_metric(name, MetricConfig(), None, tmp_path).function

    assert fn("latency_ms") == "latency"
    assert fn("cost_per_call") == "cost"
    assert fn("accuracy") == "exact_match"
    assert fn("success_rate") == "success"
    with pytest.raises(MetricConfigError) as ei:
        fn("helpfulness")
    assert "exact_match" in str(ei.value) and "llm_judge" in str(ei.value) and "module:function" in str(ei.value)
    with pytest.raises(MetricConfigError, match="unknown function 'exactmatch'"):
        resolve_metric("a", MetricConfig(function="exactmatch"), None, tmp_path)
    with pytest.raises(MetricConfigError, match=r"needs evaluation\.custom_evaluator"):
        resolve_metric("a", MetricConfig(function="custom"), None, tmp_path)
    with pytest.raises(MetricConfigError, match="invalid pattern"):
        resolve_metric("a", MetricConfig(function="regex", args={"pattern": "("}), None, tmp_path)


def test_module_function_metric_from_the_yaml_folder(tmp_path: Path) -> None:
    (tmp_path / "my_metrics_a1.py").write_text(
        "def brevity(output, case, call, args):\n"
        "    return 1.0 if len(output) <= args['max_len'] else 0.0\n"
    )
    metric = resolve_metric(
        "short", MetricConfig(function="my_metrics_a1:brevity", args={"max_len": 5}), None, tmp_path
    )
    assert metric("tiny", TestCase("c", "q"), OK) == 1.0
    assert metric("far too long", TestCase("c", "q"), OK) == 0.0
    with pytest.raises(MetricConfigError, match="module 'no_such_mod_xyz' not found"):
        resolve_metric("a", MetricConfig(function="no_such_mod_xyz:f"), None, tmp_path)
    with pytest.raises(MetricConfigError, match="has no attribute 'nope'"):
        resolve_metric("a", MetricConfig(function="my_metrics_a1:nope"), None, tmp_path)


def test_unnamed_metric_uses_custom_evaluator_when_configured(tmp_path: Path) -> None:
    (tmp_path / "my_eval_a2.py").write_text(
        "def score(response, expected, metadata):\n"
        "    return {'helpfulness': 0.75}\n"
    )
    custom = CustomEvaluatorConfig(module="my_eval_a2", function="score")
    metric = resolve_metric("helpfulness", MetricConfig(), custom, tmp_path)
    assert metric.function == "custom:my_eval_a2:score"
    assert metric("out", TestCase("c", "q"), OK) == 0.75
