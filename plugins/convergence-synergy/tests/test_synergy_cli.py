"""``convergence synergy`` is this plugin's ``cli.synergy`` entry point: declared in its
pyproject.toml, discovered by Convergence through the registry, listed by ``convergence --help``
without importing the plugin, and light to import when invoked (no PyTorch for ``--help``).
(The commands themselves run against real runs in test_synergy_loop.py.)"""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from convergence.cli.app import app
from convergence.registry import registry

COMMANDS = ("show", "export", "import", "reset", "history", "train", "serve")


def test_the_pyproject_declares_the_cli_entry_point(this_checkouts_entry_points: dict[str, str]) -> None:
    assert this_checkouts_entry_points["cli.synergy"] == "convergence_synergy.cli:app"
    entry = registry().get("cli", "synergy")
    assert entry.distribution == "convergence-synergy"
    assert isinstance(entry.load(), typer.Typer)


@pytest.mark.usefixtures("this_checkouts_entry_points")
def test_convergence_lists_and_runs_the_synergy_group() -> None:
    runner = CliRunner()
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0 and "synergy" in top.output and "convergence-synergy" in top.output
    group = runner.invoke(app, ["synergy", "--help"])
    assert group.exit_code == 0, group.output
    assert "The synergy learner's weights" in group.output
    assert all(c in group.output for c in COMMANDS)
    assert "--install-completion" not in group.output
    serve = runner.invoke(app, ["synergy", "serve", "--help"])
    assert serve.exit_code == 0 and "--port" in serve.output and "--state-dir" in serve.output
    listing = runner.invoke(app, ["plugins", "--kind", "cli", "--json"])
    assert '"spec": "convergence_synergy.cli:app"' in listing.stdout


@pytest.mark.usefixtures("this_checkouts_entry_points")
def test_help_imports_neither_the_plugin_nor_pytorch() -> None:
    probe = ("import sys\n"
             "from convergence.cli.app import main\n"
             "sys.argv = ['convergence', *sys.argv[1:]]\n"
             "try:\n    main()\n"
             "except SystemExit:\n    pass\n"
             "print('LOADED', sorted(m for m in ('torch', 'convergence_synergy', 'convergence_synergy.cli') "
             "if m in sys.modules))\n")
    top = subprocess.run([sys.executable, "-c", probe, "--help"], capture_output=True, text=True, timeout=120)
    assert "synergy" in top.stdout and "LOADED []" in top.stdout, top.stdout + top.stderr
    group = subprocess.run([sys.executable, "-c", probe, "synergy", "--help"], capture_output=True, text=True,
                           timeout=120)
    assert "LOADED ['convergence_synergy', 'convergence_synergy.cli']" in group.stdout, group.stdout + group.stderr
