"""``convergence synergy`` is this plugin's ``cli.synergy`` entry point: declared in its
pyproject.toml, discovered by Convergence through the registry, listed by ``convergence --help``
without importing the plugin, and light to import when invoked (no PyTorch for ``--help``).
(The commands themselves run against real runs in test_synergy_loop.py.)"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from convergence.cli.app import app
from convergence.cli.plugin_testing import check_cli_group


def test_the_pyproject_declares_the_cli_entry_point(this_checkouts_entry_points: dict[str, str]) -> None:
    assert this_checkouts_entry_points["cli.synergy"] == "convergence_synergy.cli:app"


@pytest.mark.usefixtures("this_checkouts_entry_points")
def test_convergence_lists_the_synergy_group_without_importing_it_and_runs_it() -> None:
    check_cli_group("synergy", "convergence-synergy", "convergence_synergy.cli",
                    commands=("show", "export", "import", "reset", "history", "train", "serve"),
                    help_text="The synergy learner's weights")
    serve = CliRunner().invoke(app, ["synergy", "serve", "--help"])
    assert serve.exit_code == 0 and "--port" in serve.output and "--state-dir" in serve.output
