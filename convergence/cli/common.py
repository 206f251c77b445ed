"""What the command modules share: the consoles, the database options and
the helpers that load a config or open the store (or exit with a message).

Light on purpose (typer and rich only): heavy modules are imported inside
the helpers, so ``convergence --help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

# piped output (CI logs, files) gets wide tables instead of wrapped cells
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200, emoji=False)  # "x.yaml:100:" stays text
err = Console(stderr=True, soft_wrap=True, emoji=False)

DB_OPT = typer.Option(None, "--db", help="Project database (default: from --config, else .convergence/convergence.db).")
CFG_OPT = typer.Option(None, "--config", "-c", help="A YAML file whose storage.path locates the database.")


def _load(path: Path) -> Any:
    from rich.markup import escape as _escape

    from convergence.config.loader import ConfigError, load_config

    try:
        loaded = load_config(path)
    except ConfigError as exc:
        # the report quotes user input: escaped, so a '[' in it is text, not rich markup
        err.print("[red]config error[/] " + _escape(str(exc)), highlight=False, emoji=False)
        raise typer.Exit(2) from None
    from convergence.tracing.output_guard import guard_output
    from convergence.tracing.redact import redactor_for

    # from here on, nothing this process prints or logs holds the config's credentials
    guard_output(redactor_for(loaded.written, loaded.raw))
    return loaded


def _db_path(db: Path | None, config: Path | None) -> Path:
    if db is not None:
        return db
    if config is not None:
        return _load(config).db_path
    default = Path("optimization.yaml")
    if default.exists():
        from convergence.config.loader import ConfigError, load_config

        try:
            loaded = load_config(default)
            return loaded.db_path
        except ConfigError:
            pass
    return Path(".convergence/convergence.db")


def _run_async(fn: Any, *args: Any) -> Any:
    """Run a command's coroutine. A project database that cannot be used (damaged, empty, full,
    read-only: ``storage/faults.py``) is one clear line and exit code 2, whichever command hit it."""
    import anyio
    from rich.markup import escape as _escape

    from convergence.storage.faults import DatabaseFileError

    try:
        return anyio.run(fn, *args)
    except DatabaseFileError as exc:
        err.print(f"[red]error:[/] {_escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None


async def _open_store(path: Path) -> Any:
    from convergence.storage.store import Store

    if not path.exists():
        err.print(f"[red]no database at {path}[/] (run `convergence optimize` first, or pass --db/--config)")
        raise typer.Exit(2)
    return await Store.open(path)


async def _report_or_exit(store: Any, run_id: int) -> Any:
    """The run's report, or a clear message and exit code 2 for an unknown run."""
    from convergence.reporting.outputs import build_report

    try:
        return await build_report(store, run_id)
    except KeyError as exc:
        err.print(f"[red]{exc.args[0]}[/]")
        raise typer.Exit(2) from None

