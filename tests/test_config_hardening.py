"""Configs that used to trace back, hang or be accepted as nonsense: each is now a clear error
(file, line, field, expected), and ``validate`` refuses what ``optimize`` would refuse."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest

from convergence.config.loader import ConfigError, load_config, parse_config
from convergence.engine.preflight import preflight
from convergence.targets.templating import TemplateError, render

BASE = """\
study: hardening
target:
  type: python
  function: "fn:call"
search_space:
  parameters:
    x: {type: continuous, min: 0, max: 1}
evaluation:
  test_cases:
    inline: [{input: {question: one}, expected: "1"}]
  metrics:
    exact: {function: exact_match}
"""
FN = "def call(params, input):\n    return '1'\n"


def errors(tmp_path: Path, text: str) -> list[tuple[int | None, str, str]]:
    """(line, field, message) of every problem validate reports (schema, then the preflight checks)."""
    (tmp_path / "fn.py").write_text(FN)
    path = tmp_path / "opt.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        return [(p.line, p.field, p.message) for p in exc.problems]
    return [(p.line, p.field, p.message) for p in preflight(loaded).problems]


def with_section(extra: str) -> str:
    return BASE + textwrap.dedent(extra)


def test_a_step_that_cuts_a_huge_range_into_too_many_points_is_an_error_not_an_overflow(tmp_path: Path) -> None:
    text = BASE.replace("min: 0, max: 1}", "min: 0, max: 1e308, step: 0.1}")
    [(line, field, message)] = errors(tmp_path, text)
    assert (line, field) == (7, "search_space.parameters.x.step")
    assert "2**53 points" in message


def test_a_lone_surrogate_in_a_name_is_an_error_with_its_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [(line, field, message)] = errors(tmp_path, BASE.replace("study: hardening", 'study: "t\\udc80"'))
    assert (line, field) == (1, "study") and "lone surrogate U+DC80" in message
    monkeypatch.setenv("FROM_ENV", "a\udcffb")  # undecodable bytes in the environment
    [(line, field, message)] = errors(tmp_path, BASE.replace("study: hardening", "study: ${FROM_ENV}"))
    assert (line, field) == (1, "study") and "from the environment" in message


NONSENSE = [
    ("society:\n  llm: {api_base: not a url}\n", "society.llm.api_base", "http"),
    ("society:\n  llm: {api_key_env: bad name}\n", "society.llm.api_key_env", "environment variable name"),
    ("society:\n  llm: {model: a b}\n", "society.llm.model", "model name"),
    ("society:\n  rlp: {model_name: a b}\n", "society.rlp.model_name", "model name"),
    ("society:\n  sao: {response_temperatures: [-5, 100]}\n", "society.sao.response_temperatures[0]",
     "greater than or equal to 0"),
    ("optimization:\n  execution:\n    ray: {address: '127.0.0.1:99999'}\n", "optimization.execution.ray.address",
     "out of range"),
    ("optimization:\n  execution:\n    ray: {address: 'ray://h:0'}\n", "optimization.execution.ray.address",
     "out of range"),
    ("optimization:\n  execution:\n    ray: {address: 'bad host:10001'}\n", "optimization.execution.ray.address",
     "host:port"),
    ("optimization:\n  execution:\n    ray: {env_vars: ['bad name']}\n", "optimization.execution.ray.env_vars[0]",
     "environment variable name"),
    ("optimization:\n  execution:\n    ray: {runtime_env: {env_vars: {'bad name': x}}}\n",
     "optimization.execution.ray.runtime_env.env_vars.bad name", "environment variable name"),
    ("optimization:\n  execution:\n    ray: {resources: {memory: 0.5}}\n",
     "optimization.execution.ray.resources.memory", "bytes"),
    ("storage: {path: \"a\\0b.db\"}\n", "storage.path", "control characters"),
    ("output: {save_path: \"res\\nults\"}\n", "output.save_path", "control characters"),
    ("output:\n  export_best_config: {output_path: \"best\\t.yaml\"}\n",
     "output.export_best_config.output_path", "control characters"),
]


@pytest.mark.parametrize(("extra", "field", "words"), NONSENSE, ids=[n[1] for n in NONSENSE])
def test_nonsense_values_are_refused_with_their_field(tmp_path: Path, extra: str, field: str, words: str) -> None:
    found = errors(tmp_path, with_section(extra))
    assert found, f"{field} accepted"
    assert any(f == field and words in m and line is not None for line, f, m in found), found


HTTP = BASE.replace('  type: python\n  function: "fn:call"\n', "  type: http\n  endpoint: http://127.0.0.1:9/x\n")
LLM = BASE.replace('  type: python\n  function: "fn:call"\n',
                   "  type: litellm\n  model: openai/gpt-4o-mini\n  api_key_env: HARDENING_KEY\n")


@pytest.mark.parametrize(("old", "new", "field", "words"), [
    ("endpoint: http://127.0.0.1:9/x", "endpoint: http://127.0.0.1:9/x\n  auth: {type: bearer, token_env: bad name}",
     "target.auth.token_env", "environment variable name"),
    ("endpoint: http://127.0.0.1:9/x",
     "endpoint: http://127.0.0.1:9/x\n  auth: {type: basic, username: 'a:b', password_env: HARDENING_KEY}",
     "target.auth.username", "':'"),
    ("endpoint: http://127.0.0.1:9/x", "endpoint: http://127.0.0.1:9/x\n  response: {result_field: a..b}",
     "target.response.result_field", "part is empty"),
])
def test_nonsense_http_settings_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old: str, new: str,
                                            field: str, words: str) -> None:
    monkeypatch.setenv("HARDENING_KEY", "x")
    found = errors(tmp_path, HTTP.replace(old, new))
    assert any(f == field and words in m for _, f, m in found), found


def test_an_env_var_name_with_a_space_is_named_as_such_not_as_unset(tmp_path: Path) -> None:
    found = errors(tmp_path, LLM.replace("HARDENING_KEY", "bad name"))
    assert [(f, "environment variable name" in m) for _, f, m in found] == [("target.api_key_env", True)]


@pytest.mark.parametrize("template", [
    "{% for i in range(10**9) %}x{% endfor %}",
    "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
    "{{ 'x' * 10**9 }}",
    "{{ 'x'|center(10**9) }}",
    "{% set ns = namespace(a='x') %}{% for i in range(60) %}{% set ns.a = ns.a ~ ns.a %}{% endfor %}{{ ns.a }}",
    "{{ ''.__class__.__mro__ }}",
])
def test_a_runaway_or_unsafe_template_is_a_template_error_within_a_second(template: str) -> None:
    start = time.perf_counter()
    with pytest.raises(TemplateError):
        render(template, {"question": "q"})
    assert time.perf_counter() - start < 2.0


def test_validate_reports_a_looping_prompt_template_instead_of_hanging(tmp_path: Path) -> None:
    text = BASE.replace('    x: {type: continuous, min: 0, max: 1}',
                        '    x: {type: continuous, min: 0, max: 1}\n'
                        '    p: {type: categorical, values: {loop: "{% for i in range(10**9) %}x{% endfor %}"}}')
    start = time.perf_counter()
    found = errors(tmp_path, text)
    assert time.perf_counter() - start < 10
    assert any(f == "search_space.parameters.p.values.loop" and "range()" in m for _, f, m in found), found


def test_ordinary_templates_still_render() -> None:
    assert render("{% for i in range(3) %}{{ i }}{% endfor %} {{ question|upper }}", {"question": "q"}) == "012 Q"


def test_synergy_learner_options_optimize_would_refuse_fail_validate(tmp_path: Path) -> None:
    pytest.importorskip("convergence_synergy")
    for options, words in (("nonsense_option: 3", "unknown option"),
                           ("algorithm: double_dqn, shifts: [2.0]", "shifts"),
                           ("ema_alpha: 5.0", "ema_alpha")):
        extra = f"society:\n  enabled: true\n  learner: {{plugin: synergy, {options}}}\n"
        found = errors(tmp_path, with_section(extra))
        assert any(f == "society.learner" and words in m for _, f, m in found), (options, found)
    assert errors(tmp_path, with_section("society:\n  enabled: true\n  learner: {plugin: synergy}\n")) == []


def test_the_good_config_passes(tmp_path: Path) -> None:
    assert errors(tmp_path, BASE) == []
    assert os.environ.get("FROM_ENV") is None
    assert parse_config(BASE, Path("x.yaml")).config.study == "hardening"
