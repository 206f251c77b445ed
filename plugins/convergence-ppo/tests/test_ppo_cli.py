"""``convergence ppo`` is this plugin's ``cli.ppo`` entry point: declared in its
pyproject.toml, discovered by Convergence through the registry, listed by ``convergence --help``
without importing the plugin, and light to import when invoked (no PyTorch for ``--help``).
(The commands themselves run against real runs in test_ppo_loop.py.)"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from convergence.cli.app import app
from convergence.cli.plugin_testing import check_cli_group


def test_the_pyproject_declares_the_cli_entry_point(this_checkouts_entry_points: dict[str, str]) -> None:
    assert this_checkouts_entry_points["cli.ppo"] == "convergence_ppo.cli:app"


@pytest.mark.usefixtures("this_checkouts_entry_points")
def test_convergence_lists_the_ppo_group_without_importing_it_and_runs_it() -> None:
    check_cli_group("ppo", "convergence-ppo", "convergence_ppo.cli", commands=("stats", "reset", "export"),
                    help_text="The PPO learner's policy")
    stats = CliRunner().invoke(app, ["ppo", "stats", "--help"])
    assert stats.exit_code == 0 and "--study" in stats.output and "--json" in stats.output
