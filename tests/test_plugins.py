"""Plugins: a third party's distribution, pip-installed, adds an agent, a sampler,
a metric, a target and a learner that a run then uses by name; a broken or
clashing entry point is reported with its distribution and does not break the
others; `convergence plugins` lists what is installed; `validate` suggests names.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from convergence.cli.app import app
from convergence.config.loader import parse_config
from convergence.engine.loop import Optimizer
from convergence.registry import PluginError, Registry, load_spec, registry
from convergence.storage.store import Store

PLUGIN = '''
"""A tiny third-party Convergence plugin (written by the test)."""
import math


class Greedy:
    """Proposes the largest unseen x: a deliberately simple agent."""

    name = "greedy"

    def __init__(self, ctx):
        self.space = ctx.space

    async def propose(self, ctx, n):
        from convergence.core.space import config_hash
        out = []
        for x in range(40, -1, -1):
            c = {"x": x}
            if config_hash(c) not in ctx.seen and len(out) < n:
                out.append(c)
        return out

    def observe(self, trials):
        pass


def make_greedy(ctx):
    return Greedy(ctx)


def make_qmc(seed):
    import optuna
    return optuna.samplers.QMCSampler(seed=seed, scramble=True)


def closeness(output, case, call, args):
    """1 at x = 40, falling off linearly."""
    return max(0.0, 1.0 - abs(float(output) - 40) / 40)


class Echo:
    """Answers with x, the configuration's only parameter."""

    name = "echo"

    def __init__(self, scale):
        self.scale = scale

    async def call(self, params, case):
        from convergence.core.types import CallResult
        return CallResult(output=str(params["x"] * self.scale))

    async def aclose(self):
        pass


def make_echo(cfg, base_dir, concurrency):
    return Echo(cfg.options.get("scale", 1))


class AllToGreedy:
    """A learner that moves every share it can to the greedy agent, step by step."""

    name = "all_to_greedy"

    def __init__(self, ctx):
        self.shares = dict(ctx.shares)
        self.step = float(ctx.options.get("step", 0.25))
        self.stop_after = ctx.options.get("stop_after")
        self.seen = 0

    def initial_shares(self):
        return dict(self.shares)

    def update(self, result):
        self.seen += 1
        for k in self.shares:
            if k != "greedy":
                moved = min(self.shares[k], self.step)
                self.shares[k] -= moved
                self.shares["greedy"] = self.shares.get("greedy", 0) + moved
        return dict(self.shares)

    def stop_reason(self):
        if self.stop_after is not None and self.seen >= self.stop_after:
            return f"predicted improvement after {self.seen} updates is too small"
        return None

    def summary(self):
        return {"updates": self.seen}


def make_learner(ctx):
    return AllToGreedy(ctx)


class Explodes(AllToGreedy):
    name = "explodes"

    def update(self, result):
        if self.step < 0:
            return {"greedy": float("nan")}
        raise RuntimeError("the learner's network diverged")


def make_explodes(ctx):
    return Explodes(ctx)


NOT_A_FACTORY = 42
'''

PYPROJECT = '''
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "cvg-test-plugin"
version = "1.2.3"

[tool.setuptools]
py-modules = ["cvg_test_plugin"]

[project.entry-points."convergence.plugins"]
"agent.greedy" = "cvg_test_plugin:make_greedy"
"sampler.qmc" = "cvg_test_plugin:make_qmc"
"metric.closeness" = "cvg_test_plugin:closeness"
"target.echo" = "cvg_test_plugin:make_echo"
"learner.all_to_greedy" = "cvg_test_plugin:make_learner"
"learner.explodes" = "cvg_test_plugin:make_explodes"
"agent.broken" = "cvg_test_plugin_missing:make"
"agent.not_callable" = "cvg_test_plugin:NOT_A_FACTORY"
"agent.evolution" = "cvg_test_plugin:make_greedy"
"gadget.thing" = "cvg_test_plugin:make_greedy"
"metric.llm_judge" = "cvg_test_plugin:closeness"
"sampler.greedy" = "cvg_test_plugin:make_qmc"
'''


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The plugin distribution, built and pip-installed into this venv for the module's tests."""
    src = tmp_path_factory.mktemp("plugin-src")
    (src / "cvg_test_plugin.py").write_text(PLUGIN)
    (src / "pyproject.toml").write_text(PYPROJECT)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", str(src)], check=True, timeout=300)
    registry.cache_clear()
    try:
        yield
    finally:
        subprocess.run([*pip, "uninstall", "-y", "cvg-test-plugin"], check=True, timeout=300)
        registry.cache_clear()


def _yaml(body: str) -> str:
    return textwrap.dedent("""
        study: plugin-test
        target: {type: echo, options: {scale: 1}}
        storage: {path: db.sqlite}
        search_space:
          parameters:
            x: {type: discrete, min: 0, max: 40, step: 1}
        evaluation:
          test_cases: {inline: [{input: "a"}, {input: "b"}]}
          metrics:
            close: {function: closeness}
    """) + textwrap.dedent(body)


@pytest.mark.anyio
@pytest.mark.usefixtures("installed")
async def test_a_pip_installed_plugin_is_discovered_and_used_in_a_run(tmp_path: Path) -> None:
    text = _yaml("""
        optimization:
          seed: 1
          warm_start: 0
          evolution: {population_size: 4, generations: 4, elite_size: 1}
          execution: {mode: generational, early_stopping: {enabled: false}}
          racing: {enabled: false}
        society:
          enabled: true
          agents: {greedy: 0.25, qmc: 0.5, random: 0.25}
          learner: {plugin: all_to_greedy, step: 0.25}
    """)
    path = tmp_path / "optimization.yaml"
    path.write_text(text)
    loaded = parse_config(text, path)
    store = await Store.open(tmp_path / "db.sqlite")
    try:
        out = await Optimizer(loaded, store).run()
        log = await store.learner_log(out.run_id)
        from convergence.reporting.outputs import write_outputs

        files = await write_outputs(loaded, store, out.run_id)
    finally:
        await store.close()
    proposers = {t.proposer for t in out.trials}
    assert {"greedy", "qmc"} <= proposers, "the plugin agent and the plugin sampler proposed"
    assert out.best is not None and out.best.config == {"x": 40} and out.best.score == pytest.approx(1.0)
    assert [row["generation"] for row in log] == [0, 1, 2, 3], "one decision per generation, stored"
    assert log[1]["shares"]["greedy"] == pytest.approx(1.0) and log[-1]["detail"] == {"updates": 4}
    last = [t for t in out.trials if t.generation == 3]
    assert {t.proposer for t in last} == {"greedy"}, "the learner's shares decide who proposes"
    md = next(p for p in files if p.name == "report.md").read_text()
    assert "## Society learner: all_to_greedy" in md and "| 2 | 100% | 0% | 0% |" in md


@pytest.mark.anyio
@pytest.mark.usefixtures("installed")
async def test_a_learner_can_stop_the_run_early_and_says_why(tmp_path: Path) -> None:
    text = _yaml("""
        optimization:
          evolution: {population_size: 4, generations: 6, elite_size: 1}
          execution: {mode: generational}
        society:
          enabled: true
          agents: {greedy: 0.5, random: 0.5}
          learner: {plugin: all_to_greedy, stop_after: 2}
    """)
    path = tmp_path / "optimization.yaml"
    path.write_text(text)
    store = await Store.open(tmp_path / "db.sqlite")
    try:
        out = await Optimizer(parse_config(text, path), store).run()
    finally:
        await store.close()
    assert out.status == "finished" and out.generations_run == 2
    assert out.stop_reason == "early stopping: predicted improvement after 2 updates is too small"


@pytest.mark.anyio
@pytest.mark.usefixtures("installed")
@pytest.mark.parametrize(("step", "match"), [(0.25, "failed after generation 1: RuntimeError: the learner's network"),
                                             (-1, "share of 'greedy' must be a finite number")])
async def test_a_failing_learner_fails_the_run_with_a_clear_error_and_the_run_can_resume(
        tmp_path: Path, step: float, match: str) -> None:
    text = _yaml(f"""
        optimization:
          evolution: {{population_size: 4, generations: 3, elite_size: 1}}
        society:
          enabled: true
          agents: {{greedy: 0.5, random: 0.5}}
          learner: {{plugin: explodes, step: {step}}}
    """)
    path = tmp_path / "optimization.yaml"
    path.write_text(text)
    loaded = parse_config(text, path)
    store = await Store.open(tmp_path / "db.sqlite")
    try:
        with pytest.raises(PluginError, match=match):
            await Optimizer(loaded, store).run()
        run = await store.get_run(1)
        assert run is not None and run.status == "failed" and "explodes" in (run.stop_reason or "")
        assert await store.trials(1), "the generation it finished is kept"
    finally:
        await store.close()


@pytest.mark.usefixtures("installed")
def test_the_listing_shows_plugins_with_their_distribution_and_problems() -> None:
    result = CliRunner().invoke(app, ["plugins", "--json", "--no-builtin"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    mine = {(e["kind"], e["name"]): e for e in doc["entries"]}
    assert {("agent", "greedy"), ("sampler", "qmc"), ("metric", "closeness"), ("target", "echo"),
            ("learner", "all_to_greedy")} <= set(mine)
    assert mine[("agent", "greedy")]["distribution"] == "cvg-test-plugin"
    assert mine[("agent", "greedy")]["version"] == "1.2.3"
    problems = "\n".join(doc["problems"])
    assert "cvg-test-plugin 1.2.3, entry point 'agent.evolution'" in problems and "already provided" in problems
    assert "'gadget.thing'" in problems and "<kind>.<name>" in problems
    assert "'llm_judge' is a built-in metric function" in problems
    assert "entry point 'sampler.greedy'" in problems and "'greedy' is already an agent" in problems


@pytest.mark.usefixtures("installed")
def test_a_broken_plugin_names_its_distribution_and_leaves_the_others_working() -> None:
    reg = registry()
    with pytest.raises(PluginError, match=r"cvg-test-plugin 1\.2\.3, entry point agent\.broken.*not found"):
        reg.load("agent", "broken")
    with pytest.raises(PluginError, match="not what a agent plugin must be"):
        reg.load("agent", "not_callable", check=lambda o: callable(o))
    assert callable(reg.load("agent", "greedy"))
    assert reg.get("agent", "evolution").builtin, "a plugin cannot shadow a built-in"


@pytest.mark.usefixtures("installed")
def test_validate_knows_installed_plugins_and_suggests_names(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(_yaml("society: {enabled: true, agents: {greedy: 1.0}}\n"))
    result = CliRunner().invoke(app, ["validate", str(good)])
    assert result.exit_code == 0, result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(_yaml("society: {enabled: true, agents: {greedyy: 1.0}}\n").replace("type: echo", "type: ecko"))
    result = CliRunner().invoke(app, ["validate", str(bad)])
    assert result.exit_code != 0
    assert "target.type: unknown target 'ecko'; did you mean 'echo'?" in result.output
    assert "society.agents.greedyy: unknown agent 'greedyy'; did you mean 'greedy'?" in result.output
    bad.write_text(_yaml("society: {enabled: true, agents: {greedy: 1.0}, learner: {plugin: all_to_gredy}}\n"))
    result = CliRunner().invoke(app, ["validate", str(bad)])
    assert "society.learner.plugin: unknown learner 'all_to_gredy'; did you mean 'all_to_greedy'?" in result.output


def test_one_loader_for_module_attr_specs(tmp_path: Path) -> None:
    (tmp_path / "spec_mod.py").write_text("class A:\n    class B:\n        value = 7\n")
    assert load_spec("spec_mod:A.B.value", tmp_path) == 7
    with pytest.raises(ValueError, match="has no attribute 'C'"):
        load_spec("spec_mod:A.C", tmp_path)
    with pytest.raises(ValueError, match="module 'nope_mod' not found"):
        load_spec("nope_mod:x", tmp_path)
    with pytest.raises(ValueError, match="expected 'module:attribute'"):
        load_spec("spec_mod", tmp_path)


def test_registry_without_plugins_has_the_builtins_as_entries() -> None:
    class _EP:
        def __init__(self, name: str, value: str) -> None:
            self.name, self.value, self.dist = name, value, None

    reg = Registry(plugin_points=[_EP("metric.exact_match", "x:y")])
    assert reg.get("metric", "exact_match").builtin
    assert "already provided by Convergence (built-in)" in reg.problems[0]
    assert reg.names("target") == ["litellm", "http", "python"]
    entry: Any = reg.get("agent", "tpe")
    assert entry.spec.endswith(":optuna_sampler")


CLI_PLUGIN = '''
"""A plugin's command group (written by the test)."""
import typer

app = typer.Typer(no_args_is_help=True, help="Demo commands of a plugin.")


@app.command()
def hello(name: str = "world") -> None:
    """Say hello."""
    print(f"hello {name}")


@app.command()
def bye() -> None:
    """Say bye."""
    print("bye")


def make_app():
    return app


NOT_AN_APP = 42
'''


@pytest.fixture
def cli_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A registry with plugin command groups: good (an app, a factory), broken (a missing module, not an
    app) and one named like a built-in command."""
    import convergence.registry

    class _Dist:
        name, version = "cvg-cli-plugin", "0.4.2"

    class _EP:
        def __init__(self, name: str, value: str) -> None:
            self.name, self.value, self.dist = name, value, _Dist()

    (tmp_path / "cvg_cli_plugin.py").write_text(CLI_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry(plugin_points=[_EP("cli.demo", "cvg_cli_plugin:app"), _EP("cli.made", "cvg_cli_plugin:make_app"),
                                  _EP("cli.broken", "cvg_cli_plugin_missing:app"),
                                  _EP("cli.notapp", "cvg_cli_plugin:NOT_AN_APP"),
                                  _EP("cli.optimize", "cvg_cli_plugin:app")])
    monkeypatch.setattr(convergence.registry, "registry", lambda: reg)
    yield
    sys.modules.pop("cvg_cli_plugin", None)


@pytest.mark.usefixtures("cli_plugins")
def test_a_plugin_cli_entry_adds_a_command_group_imported_only_when_invoked() -> None:
    runner = CliRunner()
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0, top.output
    assert all(name in top.output for name in ("demo", "made", "broken", "notapp"))
    assert "cvg-cli-plugin 0.4.2" in top.output
    assert "cvg_cli_plugin" not in sys.modules, "--help imports no plugin"
    result = runner.invoke(app, ["demo", "hello", "--name", "you"])
    assert result.exit_code == 0 and result.stdout == "hello you\n", result.output
    assert "cvg_cli_plugin" in sys.modules
    group = runner.invoke(app, ["demo", "--help"])
    assert group.exit_code == 0 and "Demo commands of a plugin." in group.output and "bye" in group.output
    assert runner.invoke(app, ["made", "bye"]).stdout == "bye\n"


@pytest.mark.usefixtures("cli_plugins")
def test_a_broken_plugin_cli_fails_alone_with_its_distribution_and_the_rest_works() -> None:
    runner = CliRunner()
    broken = runner.invoke(app, ["broken", "anything"])
    assert broken.exit_code == 2
    said = " ".join(broken.output.split())
    assert "'broken' cannot be loaded" in said and "cvg-cli-plugin 0.4.2, entry point cli.broken" in said
    assert "'cvg_cli_plugin_missing' not found" in said
    notapp = runner.invoke(app, ["notapp", "--help"])
    assert notapp.exit_code == 2 and "is a int, not a typer.Typer app" in " ".join(notapp.output.split())
    assert runner.invoke(app, ["--help"]).exit_code == 0
    assert runner.invoke(app, ["demo", "bye"]).stdout == "bye\n"
    # a built-in command keeps its meaning; the clash is listed with the other problems
    optimize = runner.invoke(app, ["optimize", "--help"])
    assert optimize.exit_code == 0 and "--resume" in optimize.output
    listing = runner.invoke(app, ["plugins", "--kind", "cli", "--json"])
    doc = json.loads(listing.stdout)
    assert {e["name"] for e in doc["entries"]} == {"demo", "made", "broken", "notapp", "optimize"}
    assert any("'cli.optimize'" in p and "'optimize' is a built-in command" in p for p in doc["problems"])
