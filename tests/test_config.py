"""What a user sees when optimization.yaml is right, and when it is wrong."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from convergence.config.loader import ConfigError, load_config, parse_config
from convergence.config.models import HTTPTargetConfig, LiteLLMTargetConfig

ROOT = Path(__file__).resolve().parents[1]

GOOD = """\
target:
  type: python
  function: "fn:call"
search_space:
  parameters:
    x: {type: continuous, min: 0, max: 1, step: 0.1}
evaluation:
  test_cases:
    inline: [{input: a, expected: b}]
  metrics:
    acc: {function: exact_match}
"""


def parse(text: str, name: str = "opt.yaml") -> object:
    return parse_config(textwrap.dedent(text), Path(name))


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return [f"{p.line}|{p.field}|{p.message}" for p in info.value.problems]


def test_minimal_config_loads_with_defaults() -> None:
    cfg = parse(GOOD).config  # type: ignore[attr-defined]
    assert cfg.study_name == "opt"  # defaults to the file name
    assert cfg.optimization.execution.concurrency == 4
    assert cfg.storage.path == ".convergence/convergence.db"


def test_unknown_key_names_line_field_and_suggestion() -> None:
    text = GOOD + "optimization:\n  evolution:\n    populaton_size: 3\n"
    [p] = problems(text)
    assert p.startswith("14|optimization.evolution.populaton_size|")
    assert "did you mean 'population_size'" in p


def test_wrong_type_is_reported_with_the_value() -> None:
    text = GOOD + "optimization:\n  execution:\n    concurrency: many\n"
    [p] = problems(text)
    assert p.startswith("14|optimization.execution.concurrency|")
    assert "'many'" in p


def test_unknown_parameter_type_lists_the_valid_ones() -> None:
    text = GOOD.replace("type: continuous, min: 0, max: 1, step: 0.1", "type: continous, min: 0, max: 1")
    [p] = problems(text)
    assert "search_space.parameters.x" in p and "categorical" in p


def test_missing_env_var_in_interpolation() -> None:
    text = GOOD.replace('"fn:call"', '"${CONVERGENCE_TEST_UNSET_VAR}"')
    [p] = problems(text)
    assert p.startswith("3|target.function|") and "CONVERGENCE_TEST_UNSET_VAR" in p


def test_env_interpolation_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_FN", "mod:f")
    cfg = parse(GOOD.replace('"fn:call"', '"${MY_FN}"') + "study: ${STUDY_NAME:-fallback}\n").config  # type: ignore[attr-defined]
    assert cfg.resolved_target.function == "mod:f"
    assert cfg.study_name == "fallback"


def test_broken_yaml_gives_line() -> None:
    [p] = problems("target: [unclosed\n")
    assert "invalid YAML" in p and p.split("|")[0] in ("1", "2")


def test_min_greater_than_max_refused() -> None:
    [p] = problems(GOOD.replace("min: 0, max: 1", "min: 2, max: 1"))
    assert "min (2.0) must be <= max (1.0)" in p


def test_society_enabled_is_refused_clearly() -> None:
    [p] = problems(GOOD + "society:\n  enabled: true\n")
    assert "society" in p and "not supported yet" in p


def test_the_convergence_api_section_maps_to_targets() -> None:
    http = parse(
        """
        api:
          name: my_api
          endpoint: http://127.0.0.1:9/chat
          auth: {type: bearer, token_env: MY_TOKEN}
          request: {timeout_seconds: 12}
          response: {result_field: choices.0.message.content}
        search_space:
          parameters:
            temperature: {type: continuous, min: 0.0, max: 1.0, step: 0.1}
            max_tokens: {type: discrete, values: [256, 512]}
        evaluation:
          test_cases: {inline: [{input: {q: hi}, expected: hello}]}
          metrics:
            quality: {weight: 0.7, type: higher_is_better, function: contains}
            latency_ms: {weight: 0.3, type: lower_is_better, threshold: 5000}
        optimization:
          algorithm: mab_evolution
          mab: {strategy: thompson_sampling, exploration_rate: 0.2}
          evolution: {population_size: 4, generations: 3, mutation_rate: 0.3, crossover_rate: 0.7,
                      elite_size: 1, early_stopping_generations: 2}
          execution: {experiments_per_generation: 4, parallel_workers: 2, max_retries: 5,
                      retry_delay_seconds: 2, early_stopping: {enabled: true, patience: 2, min_improvement: 0.01}}
        output:
          save_path: ./results/x
          visualizations: [score_over_time, pareto_front]
          export_best_config: {enabled: true, format: python, output_path: ./best.py}
        legacy: {enabled: true, session_id: s1}
        """
    ).config  # type: ignore[attr-defined]
    t = http.resolved_target
    assert isinstance(t, HTTPTargetConfig)
    assert t.timeout_seconds == 12 and t.retry.max_retries == 5 and t.retry.backoff_initial_seconds == 2
    assert http.optimization.execution.concurrency == 2  # parallel_workers
    assert http.optimization.execution.early_stopping.patience == 2
    assert http.evaluation.metrics["latency_ms"].direction == "lower_is_better"
    assert http.study_name == "my_api"

    llm = parse(
        """
        api: {name: m, model: openai/gpt-4o-mini, api_key_env: OPENAI_API_KEY}
        search_space: {parameters: {temperature: {type: continuous, min: 0, max: 1}}}
        evaluation: {test_cases: {inline: [{input: x}]}, metrics: {q: {function: contains}}}
        """
    ).config  # type: ignore[attr-defined]
    assert isinstance(llm.resolved_target, LiteLLMTargetConfig)
    assert llm.resolved_target.model == "openai/gpt-4o-mini"


def test_root_optimization_yaml_and_examples_validate() -> None:
    for path in [ROOT / "optimization.yaml", *sorted((ROOT / "examples").glob("*/optimization.yaml"))]:
        load_config(path)


def test_cli_reports_config_errors_with_exit_2_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("exact_match}", "exact_match, wieght: 2}"))
    proc = subprocess.run(
        [sys.executable, "-m", "convergence", "validate", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{bad}:11" in proc.stderr and "did you mean 'weight'" in proc.stderr


def test_schema_command_exports_json_schema(tmp_path: Path) -> None:
    out = tmp_path / "schema.json"
    proc = subprocess.run(
        [sys.executable, "-m", "convergence", "schema", "--out", str(out)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    schema = json.loads(out.read_text())
    assert {"search_space", "evaluation", "optimization", "target", "api"} <= set(schema["properties"])


def test_cli_help_does_not_import_heavy_modules() -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from convergence.cli.app import app\n"
        f"r = CliRunner().invoke(app, ['validate', {str(ROOT / 'optimization.yaml')!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in ('litellm', 'weave', 'llama_cpp', 'matplotlib', 'torch') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
