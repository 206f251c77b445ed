"""``convergence ppo`` is this plugin's ``cli.ppo`` entry point: declared in its
pyproject.toml, discovered by Convergence through the registry, listed by ``convergence --help``
without importing the plugin, and light to import when invoked (no PyTorch for ``--help``).
(The commands themselves run against real runs in test_ppo_loop.py.)"""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from convergence.cli.app import app
from convergence.registry import registry

COMMANDS = ("stats", "reset", "export")


def test_the_pyproject_declares_the_cli_entry_point(this_checkouts_entry_points: dict[str, str]) -> None:
    assert this_checkouts_entry_points["cli.ppo"] == "convergence_ppo.cli:app"
    entry = registry().get("cli", "ppo")
    assert entry.distribution == "convergence-ppo"
    assert isinstance(entry.load(), typer.Typer)


@pytest.mark.usefixtures("this_checkouts_entry_points")
def test_convergence_lists_and_runs_the_ppo_group() -> None:
    runner = CliRunner()
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0 and "ppo" in top.output and "convergence-ppo" in top.output
    group = runner.invoke(app, ["ppo", "--help"])
    assert group.exit_code == 0, group.output
    assert "The PPO learner's policy" in group.output
    assert all(c in group.output for c in COMMANDS)
    assert "--install-completion" not in group.output
    stats = runner.invoke(app, ["ppo", "stats", "--help"])
    assert stats.exit_code == 0 and "--study" in stats.output and "--json" in stats.output
    listing = runner.invoke(app, ["plugins", "--kind", "cli", "--json"])
    assert '"spec": "convergence_ppo.cli:app"' in listing.stdout


@pytest.mark.usefixtures("this_checkouts_entry_points")
def test_help_imports_neither_the_plugin_nor_pytorch() -> None:
    probe = ("import sys\n"
             "from convergence.cli.app import main\n"
             "sys.argv = ['convergence', *sys.argv[1:]]\n"
             "try:\n    main()\n"
             "except SystemExit:\n    pass\n"
             "print('LOADED', sorted(m for m in ('torch', 'convergence_ppo', 'convergence_ppo.cli') "
             "if m in sys.modules))\n")
    top = subprocess.run([sys.executable, "-c", probe, "--help"], capture_output=True, text=True, timeout=120)
    assert "ppo" in top.stdout and "LOADED []" in top.stdout, top.stdout + top.stderr
    group = subprocess.run([sys.executable, "-c", probe, "ppo", "--help"], capture_output=True, text=True,
                           timeout=120)
    assert "LOADED ['convergence_ppo', 'convergence_ppo.cli']" in group.stdout, group.stdout + group.stderr
