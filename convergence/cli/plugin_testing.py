"""Checks a plugin's own tests can use: its checkout's entry points as Convergence discovers them,
and its ``cli.<name>`` command group listed without importing the plugin.

The shipped plugins (``plugins/convergence-synergy``, ``plugins/convergence-ppo``) use these; a
third-party plugin can too::

    from convergence.cli.plugin_testing import checkout_entry_points, check_cli_group
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from convergence.registry import GROUP, registry


@contextmanager
def checkout_entry_points(pyproject: Path, site: Path) -> Iterator[dict[str, str]]:
    """The entry points ``pyproject`` declares, discovered as installed ones are while the block runs:
    a dist-info of the distribution (its name, version and entry points) in ``site``, first on
    ``sys.path`` and on ``PYTHONPATH`` for subprocesses. A test then sees what ``pip install -e`` of
    this checkout installs even when the environment's metadata is older (new entry points need a
    reinstall)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    points: dict[str, str] = project["entry-points"][GROUP]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    (info / "entry_points.txt").write_text(f"[{GROUP}]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()))
    old_path, old_env = list(sys.path), os.environ.get("PYTHONPATH")
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [old_env])])
    registry.cache_clear()
    try:
        yield points
    finally:
        sys.path[:] = old_path
        if old_env is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old_env
        registry.cache_clear()


def check_cli_group(name: str, distribution: str, module: str, *, commands: Sequence[str], help_text: str,
                    heavy: Sequence[str] = ("torch",)) -> None:
    """``convergence --help`` lists the group ``name`` of ``distribution`` without importing ``module``
    (nor any of ``heavy``); ``convergence NAME --help`` shows ``help_text`` and ``commands`` and imports
    the plugin's CLI module only; ``convergence plugins --kind cli`` shows the entry. Raises
    ``AssertionError`` naming what differs."""
    import typer
    from typer.testing import CliRunner

    from convergence.cli.app import app

    entry = registry().get("cli", name)
    assert entry.distribution == distribution, (entry.distribution, distribution)
    assert isinstance(entry.load(), typer.Typer), entry.spec
    runner = CliRunner()
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0 and name in top.output and distribution in top.output, top.output
    group = runner.invoke(app, [name, "--help"])
    assert group.exit_code == 0, group.output
    assert help_text in group.output and all(c in group.output for c in commands), group.output
    assert "--install-completion" not in group.output
    listing = runner.invoke(app, ["plugins", "--kind", "cli", "--json"])
    assert f'"spec": "{entry.spec}"' in listing.stdout, listing.stdout
    package = module.split(".")[0]
    watched = (*heavy, package, module)
    probe = ("import sys\n"
             "from convergence.cli.app import main\n"
             "sys.argv = ['convergence', *sys.argv[1:]]\n"
             "try:\n    main()\n"
             "except SystemExit:\n    pass\n"
             f"print('LOADED', sorted(m for m in {watched!r} if m in sys.modules))\n")
    listed = subprocess.run([sys.executable, "-c", probe, "--help"], capture_output=True, text=True, timeout=120)
    assert name in listed.stdout and "LOADED []" in listed.stdout, listed.stdout + listed.stderr
    invoked = subprocess.run([sys.executable, "-c", probe, name, "--help"], capture_output=True, text=True,
                             timeout=120)
    assert f"LOADED {sorted({package, module})!r}" in invoked.stdout, invoked.stdout + invoked.stderr
