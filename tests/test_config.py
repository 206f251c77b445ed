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


def test_the_convergence_society_block_loads_as_written() -> None:
    cfg = parse(GOOD + textwrap.dedent("""\
        society:
          enabled: true
          auto_generate_agents: true
          learning: {rlp_enabled: true, sao_enabled: false}
          llm: {model: openai/gpt-4o-mini, api_key_env: OPENAI_API_KEY}
        """)).config  # type: ignore[attr-defined]
    assert cfg.society.enabled and cfg.society.llm.model == "openai/gpt-4o-mini"
    # the algorithm's numeric agents keep 70 %, RLP gets 30 %
    assert cfg.society.roster("mab_evolution") == {"evolution": 0.35, "bandit": 0.35, "rlp": 0.3}


def test_sao_enabled_joins_the_roster_next_to_rlp() -> None:
    cfg = parse(GOOD + "society:\n  enabled: true\n  learning: {sao_enabled: true}\n"
                "  sao: {batch_size: 2, every: 3}\n").config  # type: ignore[attr-defined]
    assert cfg.society.roster("mab_evolution") == pytest.approx(
        {"evolution": 0.3, "bandit": 0.3, "rlp": 0.2, "sao": 0.2})
    assert cfg.society.sao.batch_size == 2 and cfg.society.sao.every == 3


def test_society_agents_and_shares_are_ours_to_set() -> None:
    cfg = parse(GOOD + "society:\n  enabled: true\n  agents: {evolution: 0.4, bandit: 0.3, rlp: 0.3}\n"
                "  rlp: {G: 2, thought_length: 16}\n").config  # type: ignore[attr-defined]
    assert cfg.society.roster("genetic") == {"evolution": 0.4, "bandit": 0.3, "rlp": 0.3}
    assert cfg.society.rlp.G == 2 and cfg.society.rlp.thought_length == 16


def test_bad_agent_name_is_a_clear_error_with_the_valid_names() -> None:
    [p] = problems(GOOD + "society:\n  enabled: true\n  agents: {evolution: 0.5, rpl: 0.5}\n")
    assert "society.agents.rpl" in p and "unknown agent 'rpl'; did you mean 'rlp'?" in p
    assert "evolution, bandit, random, rlp, sao" in p


@pytest.mark.parametrize(("block", "expected"), [
    ("society:\n  agents: {evolution: 1.0}\n", "the society is off"),
    ("society:\n  enabled: true\n  learning: {sao_enabled: true}\n  agents: {evolution: 1}\n", "make them agree"),
    ("society:\n  enabled: true\n  sao: {min_response_length: 9, max_response_length: 3}\n", "exceeds max_response"),
    ("society:\n  enabled: true\n  sao: {response_pairs: 3}\n", "only 2 is accepted"),
    ("society:\n  enabled: true\n  learning: {rlp_enabled: false}\n  agents: {rlp: 1}\n", "make them agree"),
    ("society:\n  enabled: true\n  auto_generate_agents: false\n", "list the agents"),
    ("society:\n  enabled: true\n  rlp: {strategies: [exploit, guess]}\n", "unknown strategy 'guess'"),
    ("society:\n  enabled: true\n  agents: {evolution: 0, bandit: 0}\n", "must not all be 0"),
    ("optimization: {algorithm: genetic}\nsociety:\n  enabled: true\n  agents: {bandit: 1}\n",
     "replaces optimization.algorithm"),
])
def test_contradictory_society_settings_are_refused(block: str, expected: str) -> None:
    assert any(expected in p for p in problems(GOOD + block))


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


# --------------------------------------------------------------------------- hostile files (issue 6, item 11)


def load_bytes(tmp_path: Path, data: bytes, name: str = "opt.yaml") -> list[str]:
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    return [f"{p.line}|{p.field}|{p.message}" for p in info.value.problems]


def test_duplicate_keys_are_refused_with_both_lines() -> None:
    [p] = problems(GOOD + "study: a\nstudy: b\n")
    assert p.startswith("13|study|") and "duplicate key 'study' (first at line 12)" in p
    [p] = problems(GOOD.replace("acc: {function: exact_match}", "acc: {function: exact_match, function: contains}"))
    assert p.startswith("11|evaluation.metrics.acc.function|duplicate key")


def test_merge_keys_may_override_without_counting_as_duplicates() -> None:
    cfg = parse(GOOD + "optimization:\n  evolution:\n    <<: {population_size: 4, generations: 2}\n"
                       "    population_size: 6\n").config  # type: ignore[attr-defined]
    assert cfg.optimization.evolution.population_size == 6 and cfg.optimization.evolution.generations == 2


def test_non_utf8_and_binary_files_are_refused(tmp_path: Path) -> None:
    [p] = load_bytes(tmp_path, GOOD.encode() + b"study: caf\xe9\n")
    assert p.startswith("12||") and "not UTF-8" in p
    [p] = load_bytes(tmp_path, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    assert "binary file" in p
    [p] = load_bytes(tmp_path, GOOD.encode() + b"study: \x07\n")
    assert p.startswith("12||") and "not allowed" in p


def test_recursive_alias_and_alias_bomb_are_refused_quickly() -> None:
    import time

    [p] = problems(GOOD + "zz: &loop [*loop]\n")
    assert "recursive alias" in p
    bomb = "zz:\n  a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"  {n}: &{n} [{', '.join(['*' + prev] * 9)}]\n" for prev, n in zip("abcdefgh", "bcdefghi", strict=True))
    start = time.perf_counter()
    [p] = problems(GOOD + bomb)
    assert time.perf_counter() - start < 0.5
    assert "alias bomb" in p
    [p] = problems(GOOD + "zz: " + "[" * 300 + "]" * 300 + "\n")
    assert "nested" in p


def test_unsupported_yaml_tags_are_refused_and_dates_stay_text() -> None:
    [p] = problems(GOOD + "study: !!binary aGVsbG8=\n")
    assert p.startswith("12|study|") and "!!binary" in p
    cfg = parse(GOOD + "study: 2024-01-01\n").config  # type: ignore[attr-defined]
    assert cfg.study == "2024-01-01"


@pytest.mark.parametrize("line, field", [
    ("search_space: {parameters: {x: {type: continuous, min: 0, max: .inf}}}", "search_space.parameters.x.max"),
    ("evaluation: {test_cases: {inline: [{input: a, expected: b}]}, "
     "metrics: {acc: {function: exact_match, weight: .inf}}}",
     "evaluation.metrics.acc.weight"),
    ("evaluation: {test_cases: {inline: [{input: a, expected: b}]}, "
     "metrics: {acc: {function: numeric, args: {tolerance: .nan}}}}",
     "evaluation.metrics.acc.args.tolerance"),
])
def test_infinite_and_nan_numbers_are_refused_everywhere(line: str, field: str) -> None:
    section = line.split(":", 1)[0]
    kept = "\n".join(chunk for chunk in GOOD.split("\n") if chunk)
    text = _replace_section(kept, section, line)
    [p] = problems(text)
    assert f"|{field}|" in p and "finite" in p


def _replace_section(text: str, section: str, line: str) -> str:
    out, skip = [], False
    for row in text.splitlines():
        if row.startswith(section + ":"):
            out.append(line)
            skip = True
        elif skip and row.startswith(" "):
            continue
        else:
            skip = False
            out.append(row)
    return "\n".join(out) + "\n"


def test_seed_must_fit_sqlite_and_integers_are_integers() -> None:
    assert problems(GOOD + "optimization: {seed: -1}\n")[0].startswith("12|optimization.seed|")
    assert problems(GOOD + f"optimization: {{seed: {2**63}}}\n")[0].startswith("12|optimization.seed|")
    assert parse(GOOD + f"optimization: {{seed: {2**63 - 1}}}\n").config.optimization.seed == 2**63 - 1  # type: ignore[attr-defined]
    [p] = problems(GOOD + "optimization: {evolution: {generations: true}}\n")
    assert p.startswith("12|optimization.evolution.generations|") and "boolean" in p
    [p] = problems(GOOD + "optimization: {evolution: {generations: 2.5}}\n")
    assert "optimization.evolution.generations" in p
    [p] = problems(GOOD.replace("acc: {function: exact_match}", "acc: {function: exact_match, weight: true}"))
    assert "evaluation.metrics.acc.weight" in p and "boolean" in p
    cfg = parse(GOOD + "optimization: {evolution: {generations: 3, mutation_rate: 0.5}}\n").config  # type: ignore[attr-defined]
    assert cfg.optimization.evolution.generations == 3 and cfg.optimization.evolution.mutation_rate == 0.5


def test_integer_settings_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONV_POP", "6")
    cfg = parse(GOOD + "optimization: {evolution: {population_size: '${CONV_POP}'}}\n").config  # type: ignore[attr-defined]
    assert cfg.optimization.evolution.population_size == 6


@pytest.mark.parametrize("ref, expected", [
    ("${}", "empty reference"),
    ("${1X}", "not an environment variable name"),
    ("${CONV_VAR", "unclosed reference"),
    ("${CONV_VAR:default}", "unsupported syntax"),
    ("${CONV_A:-${CONV_B}}", "nested references"),
])
def test_malformed_env_references_are_errors_with_a_line(ref: str, expected: str) -> None:
    [p] = problems(GOOD + f"study: 'x{ref}'\n")
    assert p.startswith("12|study|") and expected in p


def test_dollar_escapes_and_plain_dollars_stay_literal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONV_VAR", "value")
    cfg = parse(GOOD + "study: 'a $5 $$6 $${CONV_VAR} ${CONV_VAR}'\n").config  # type: ignore[attr-defined]
    assert cfg.study == "a $5 $$6 ${CONV_VAR} value"


def test_huge_names_are_bounded_and_fast(tmp_path: Path) -> None:
    import time

    start = time.perf_counter()
    [p] = problems(GOOD + "study: " + "s" * 100_000 + "\n")
    assert time.perf_counter() - start < 1.0
    assert "100000 characters long; at most 200" in p and len(p) < 300
    bad = tmp_path / "big.yaml"
    bad.write_text(GOOD + "study: '" + "[/]" * 30_000 + "'\n")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "convergence", "validate", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert time.perf_counter() - start < 10
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr) < 2000


def test_markup_and_emoji_codes_in_user_text_are_printed_literally(tmp_path: Path) -> None:
    (tmp_path / "fn.py").write_text("def call(params, input):\n    return input\n")
    good = tmp_path / "opt.yaml"
    good.write_text(GOOD + "study: '[bold]x[/] :100: [/]'\n")
    proc = subprocess.run([sys.executable, "-m", "convergence", "validate", str(good)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "[bold]x[/] :100: [/]" in proc.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("\n" * 99 + GOOD + "'[/]': 1\n")
    proc = subprocess.run([sys.executable, "-m", "convergence", "validate", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{bad}:111: [/]: unknown key '[/]'" in proc.stderr


# --------------------------------------------------------------------------- secrets: raw vs written (issue 6, item 10)


def test_written_keeps_env_references_and_raw_has_their_values(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-very-secret-value-123"
    monkeypatch.setenv("CONV_SECRET", secret)
    loaded = parse(
        """
        api:
          name: s
          endpoint: "http://127.0.0.1:9/x?key=${CONV_SECRET}"
          request: {headers: {X-Key: "${CONV_SECRET}"}}
        search_space: {parameters: {t: {type: discrete, values: [1, 2]}}}
        evaluation: {test_cases: {inline: [{input: x, expected: y}]}, metrics: {acc: {function: exact_match}}}
        """
    )
    assert secret not in json.dumps(loaded.written)  # type: ignore[attr-defined]
    assert loaded.written["api"]["request"]["headers"]["X-Key"] == "${CONV_SECRET}"  # type: ignore[attr-defined]
    assert secret in json.dumps(loaded.raw)  # type: ignore[attr-defined]
    assert loaded.config.resolved_target.endpoint.endswith(secret)  # type: ignore[attr-defined]
    defaulted = parse(GOOD)
    assert defaulted.written["study"] == defaulted.raw["study"] == "opt"  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- options parsed but unused (item 14)


def test_experiments_per_generation_is_population_size() -> None:
    cfg = parse(GOOD + "optimization: {execution: {experiments_per_generation: 5}}\n").config  # type: ignore[attr-defined]
    assert cfg.optimization.evolution.population_size == 5
    [p] = problems(
        GOOD + "optimization: {execution: {experiments_per_generation: 5}, evolution: {population_size: 4}}\n"
    )
    assert "optimization.execution.experiments_per_generation" in p and "give one of them" in p


def test_mab_options_are_what_the_bandit_implements() -> None:
    assert parse(GOOD + "optimization: {mab: {confidence_level: 0.95, strategy: thompson_sampling}}\n")
    [p] = problems(GOOD + "optimization: {mab: {confidence_level: 0.9}}\n")
    assert "optimization.mab.confidence_level" in p and "Thompson sampling" in p
    [p] = problems(GOOD + "optimization: {mab: {strategy: ucb}}\n")
    assert "optimization.mab.strategy" in p and "thompson_sampling" in p


def test_legacy_section_maps_to_storage_and_output() -> None:
    cfg = parse(GOOD + "legacy: {tracking_backend: sqlite, sqlite_path: old.db, export_dir: out, "
                       "export_formats: [json]}\n").config  # type: ignore[attr-defined]
    assert cfg.storage.path == "old.db"
    assert cfg.output.save_path == "out" and cfg.output.formats == ["json"]
    [p] = problems(GOOD + "legacy: {tracking_backend: mlflow}\n")
    assert "legacy.tracking_backend" in p and "SQLite" in p
    [p] = problems(GOOD + "storage: {path: a.db}\nlegacy: {sqlite_path: b.db}\n")
    assert p.startswith("13|legacy.sqlite_path|")
    [p] = problems(GOOD + "output: {save_path: a}\nlegacy: {export_dir: b}\n")
    assert "legacy.export_dir" in p
    [p] = problems(GOOD + "legacy: {export_formats: [pdf]}\n")
    assert "legacy.export_formats[0]" in p
    [p] = problems(GOOD + "optimization: {warm_start: 2}\nlegacy: {enabled: false}\n")
    assert "legacy.enabled" in p
    assert parse(GOOD + "legacy: {enabled: false}\n").config.optimization.warm_start == 0  # type: ignore[attr-defined]


def test_compatibility_models_live_apart_from_ours() -> None:
    from convergence.config import compat, models

    assert models.ApiConfig is compat.ApiConfig and compat.ApiConfig.__module__ == "convergence.config.compat"
    assert compat.LegacyConfig.__module__ == "convergence.config.compat"
    source = (ROOT / "convergence" / "config" / "models.py").read_text()
    assert "class ApiConfig" not in source and "class LegacyConfig" not in source


def test_api_options_the_target_kind_would_ignore_are_refused() -> None:
    base = (
        "\nsearch_space: {parameters: {t: {type: discrete, values: [1, 2]}}}\n"
        "evaluation: {test_cases: {inline: [{input: x, expected: y}]}, metrics: {acc: {function: exact_match}}}\n"
    )
    [p] = problems("api: {name: a, endpoint: 'http://127.0.0.1:9/x', prompt: hi}" + base)
    assert "api.prompt" in p
    [p] = problems("api: {name: a, model: m, request: {body: {x: 1}}}" + base)
    assert "api.request.body" in p
    # a model registry is refused as a whole, whatever its entries hold (a description too)
    [p] = problems("api: {name: a, model: m, models: {fast: {endpoint: e, description: the fast one}}}" + base)
    assert "api.models" in p and "model registry" in p


def test_descriptions_are_kept_for_the_report_and_response_pairs_accepts_only_its_one_value() -> None:
    cfg = parse(
        """
        api: {name: a, model: m, description: the support bot}
        search_space:
          parameters:
            t: {type: discrete, values: [1, 2], description: how many tries}
            tone: {type: categorical, values: [warm, dry], description: voice of the answer}
            temp: {type: continuous, min: 0, max: 1}
        evaluation: {test_cases: {inline: [{input: x, expected: y}]}, metrics: {acc: {function: exact_match}}}
        society: {enabled: true, sao: {response_pairs: 2}}
        """
    ).config  # type: ignore[attr-defined]
    assert cfg.api.description == "the support bot"
    params = cfg.search_space.parameters
    assert params["t"].description == "how many tries" and params["tone"].description == "voice of the answer"
    assert params["temp"].description is None
    assert cfg.society.sao.response_pairs == 2


# ----------------------------------------------------------- preflight: what optimize checks before its first call


def preflight_problems(tmp_path: Path, text: str, files: dict[str, str] | None = None) -> list[str]:
    from convergence.engine.preflight import preflight

    for name, content in (files or {}).items():
        (tmp_path / name).write_text(content)
    p = tmp_path / "opt.yaml"
    p.write_text(textwrap.dedent(text))
    return [f"{x.line}|{x.field}|{x.message}" for x in preflight(load_config(p)).problems]


FN = {"fn.py": "def call(params, input):\n    return input\ndef noargs():\n    return 1\n"}


def test_preflight_accepts_a_good_config(tmp_path: Path) -> None:
    assert preflight_problems(tmp_path, GOOD, FN) == []


def test_preflight_imports_the_target_function(tmp_path: Path) -> None:
    [p] = preflight_problems(tmp_path, GOOD.replace("fn:call", "fn:nope"), FN)
    assert p.startswith("3|target.function|") and "no attribute 'nope'" in p
    [p] = preflight_problems(tmp_path, GOOD.replace("fn:call", "fn:noargs"), FN)
    assert "must accept two arguments" in p
    [p] = preflight_problems(tmp_path, GOOD.replace("fn:call", "boom_mod:call"), {"boom_mod.py": "1/0\n"})
    assert p.startswith("3|target.function|") and "ZeroDivisionError" in p


def test_preflight_compiles_metrics_and_checks_their_args(tmp_path: Path) -> None:
    metrics = """
      metrics:
        rx: {function: regex, args: {pattern: "(unclosed"}}
        typo: {function: regex, args: {patern: "a"}}
        js: {function: json_schema, args: {schema: {type: 12}}}
        own: {function: "fn:missing"}
    """
    indented = textwrap.dedent(metrics).replace("\n", "\n  ").rstrip() + "\n"
    text = GOOD.replace("  metrics:\n    acc: {function: exact_match}\n", indented)
    found = preflight_problems(tmp_path, text, FN)
    joined = "\n".join(found)
    assert "evaluation.metrics.rx" in joined and "invalid pattern" in joined
    assert "evaluation.metrics.typo.args.patern|unknown argument 'patern'" in joined
    assert "evaluation.metrics.js" in joined and "invalid schema" in joined
    assert "evaluation.metrics.own.function" in joined


def test_preflight_renders_templates_against_the_test_cases(tmp_path: Path) -> None:
    text = """\
    target:
      type: litellm
      model: local/gemma-3-270m
      prompt: "{{ style }} {{ questoin }}"
    search_space:
      parameters:
        style: {type: categorical, values: {ok: "Q: {{ question }}", broken: "{{ question"}}
    evaluation:
      test_cases: {inline: [{input: {question: hi}, expected: x}]}
      metrics: {acc: {function: contains}}
    """
    found = preflight_problems(tmp_path, text)
    assert any(p.startswith("4|target.prompt|") and "'questoin' is undefined" in p for p in found)
    assert any("search_space.parameters.style.values.broken" in p and "syntax error" in p for p in found)


def test_preflight_checks_urls_headers_and_local_models(tmp_path: Path) -> None:
    text = """\
    api:
      name: h
      endpoint: "localhost:8080/v1"
      request: {headers: {X-Name: "café"}}
    search_space: {parameters: {t: {type: discrete, values: [1, 2]}}}
    evaluation: {test_cases: {inline: [{input: x, expected: y}]}, metrics: {acc: {function: exact_match}}}
    """
    found = "\n".join(preflight_problems(tmp_path, text))
    assert "api.endpoint|" in found and "http:// or https://" in found
    assert "api.request.headers.X-Name|" in found and "ASCII" in found
    text = GOOD.replace('type: python\n  function: "fn:call"', "type: litellm\n  model: local/gpt-5")
    [p] = preflight_problems(tmp_path, text)
    assert "target.model|unknown local model" in p


def test_preflight_checks_storage_and_output_paths(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    (tmp_path / "notdb.db").write_text("not sqlite")
    text = GOOD + "storage: {path: notdb.db}\noutput: {save_path: afile}\n"
    found = "\n".join(preflight_problems(tmp_path, text, FN))
    assert "storage.path|" in found and "not a SQLite database" in found
    assert "output.save_path|" in found and "not a directory" in found
    [p] = preflight_problems(tmp_path, GOOD + "storage: {path: afile/x.db}\n", FN)
    assert "storage.path|" in p and "is a file" in p
    [p] = preflight_problems(tmp_path, GOOD + "storage: {path: .}\n", FN)
    assert "is a directory" in p


def test_preflight_reports_cases_metrics_need(tmp_path: Path) -> None:
    [p] = preflight_problems(tmp_path, GOOD.replace("[{input: a, expected: b}]", "[{input: a}]"), FN)
    assert "evaluation.metrics.acc|" in p and "has none" in p
    [p] = preflight_problems(tmp_path, GOOD.replace("inline: [{input: a, expected: b}]", "path: nope.jsonl"), FN)
    assert p.startswith("9|evaluation.test_cases.path|") and "not found" in p


def test_optimize_runs_the_same_preflight_before_any_call(tmp_path: Path) -> None:
    (tmp_path / "fn.py").write_text(FN["fn.py"])
    cfg = tmp_path / "opt.yaml"
    cfg.write_text(GOOD.replace("fn:call", "fn:noargs"))
    for command in ("validate", "optimize"):
        proc = subprocess.run([sys.executable, "-m", "convergence", command, str(cfg)],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert f"{cfg}:3: target.function:" in proc.stderr and "two arguments" in proc.stderr
    assert not (tmp_path / ".convergence").exists()  # nothing was created, nothing called
