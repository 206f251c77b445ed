"""What a user sees from the CLI and the Python API around a config: ``--version``, ``init --help``,
``validate``'s call count, the JSON Schema, ``optimize()`` with a mapping, and ``convergence runs``
from the folder above the YAML."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import convergence
from convergence.cli.app import app
from convergence.config.loader import ConfigError, load_config
from convergence.engine.dry_run import forecast
from convergence.engine.preflight import check

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_version_flag_prints_the_package_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"convergence {convergence.__version__}"


def test_init_help_promises_only_the_file_it_writes(tmp_path: Path) -> None:
    help_text = " ".join(runner.invoke(app, ["init", "--help"]).stdout.split())
    assert "sample test set" not in help_text and "only file" in help_text
    assert runner.invoke(app, ["init", str(tmp_path / "p")]).exit_code == 0
    assert [p.name for p in (tmp_path / "p").iterdir()] == ["optimization.yaml"]


@pytest.mark.parametrize("yaml_path", ["optimization.yaml", "examples/python_function/optimization.yaml",
                                       "examples/http_endpoint/optimization.yaml"])
def test_validate_states_the_same_target_calls_as_the_dry_run(yaml_path: str, monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    monkeypatch.setenv("COMPLETIONS_TOKEN", "x")
    project = tmp_path / "proj"
    shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns(".git", ".venv", ".convergence", "results",
                                                                 "__pycache__", "plugins", "tests", "docs"))
    path = project / yaml_path
    loaded = load_config(path)
    calls = forecast(loaded, check(loaded).cases).calls
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    [line] = [x for x in result.stdout.splitlines() if "plan:" in x]
    assert re.search(rf"\b{calls} target calls\b", line), (calls, line)


def _schema() -> dict[str, Any]:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    return json.loads(result.stdout)


def test_the_json_schema_is_standard_and_accepts_the_documented_spellings() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = _schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    text = json.dumps(schema)
    assert not re.search(r'"(gt|ge|lt|le)": ', text), "pydantic-only constraint keys left in the schema"
    validator = jsonschema.Draft202012Validator(schema)
    doc = yaml.safe_load((ROOT / "optimization.yaml").read_text())
    doc["evaluation"]["metrics"]["latency_ms"]["type"] = "lower_is_better"  # the documented key
    doc["optimization"]["execution"] = {"parallel_workers": 2}
    assert list(validator.iter_errors(doc)) == []
    bad = {**doc, "optimization": {"budget": {"max_cost_usd": 0}}}
    assert any("exclusiveMinimum" in str(e.schema) or e.validator == "exclusiveMinimum"
               for e in validator.iter_errors(bad)), "max_cost_usd: 0 must fail (exclusiveMinimum 0)"


def _without_required(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_required(v) for k, v in node.items() if k != "required"}
    if isinstance(node, list):
        return [_without_required(v) for v in node]
    return node


def test_the_examples_and_the_docs_yaml_snippets_pass_the_json_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = _schema()
    validator = jsonschema.Draft202012Validator(schema)
    for path in [ROOT / "optimization.yaml", *sorted((ROOT / "examples").glob("*/optimization.yaml"))]:
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert errors == [], (path, errors)
    partial = jsonschema.Draft202012Validator(_without_required(schema))  # snippets show a few keys
    checked = 0
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("plugins/*/README.md"))]:
        for block in re.findall(r"```ya?ml\n(.*?)```", md.read_text(), re.S):
            doc = yaml.safe_load(block)
            if not isinstance(doc, dict) or "..." in block:
                continue  # a placeholder ("...") stands for what the reader fills in
            errors = [f"{list(e.path)}: {e.message}" for e in partial.iter_errors(doc)]
            assert errors == [], (md.name, errors)
            checked += 1
    assert checked >= 5


@pytest.mark.anyio
async def test_optimize_takes_a_mapping_and_refuses_anything_else_with_a_config_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(ROOT / "examples" / "python_function", tmp_path / "p")
    monkeypatch.chdir(tmp_path / "p")
    monkeypatch.syspath_prepend(str(tmp_path / "p"))
    doc = yaml.safe_load(Path("optimization.yaml").read_text())
    doc["optimization"]["evolution"] = {"population_size": 3, "generations": 1, "elite_size": 1}
    outcome = await convergence.optimize(doc, write_outputs=False)
    assert outcome.status == "finished" and outcome.best is not None
    for bad, words in ((42, "object of type int"), (None, "nothing"), ({"study": 1}, "study"),
                       ({**doc, "search_space": {"parameters": {"x": {"type": "continuous", "min": 0,
                                                                      "max": float("inf")}}}}, "finite")):
        with pytest.raises(ConfigError) as info:
            await convergence.optimize(bad)
        assert words in str(info.value), str(info.value)


def test_runs_from_the_folder_above_the_yaml_finds_the_database_or_says_where_it_looked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["runs"])
    assert result.exit_code == 2
    assert "*/optimization.yaml one folder down" in " ".join(result.output.split())
    shutil.copytree(ROOT / "examples" / "python_function", tmp_path / "my-study")
    monkeypatch.syspath_prepend(str(tmp_path / "my-study"))
    assert runner.invoke(app, ["optimize", "my-study/optimization.yaml", "--quiet", "--no-outputs"]).exit_code == 0
    result = runner.invoke(app, ["runs"])
    assert result.exit_code == 0, result.output
    assert "sentiment-rules" in result.stdout and "my-study/optimization.yaml" in result.output
