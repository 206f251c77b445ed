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
from rich.markup import escape

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
    fallback = Path(".convergence/convergence.db")
    if fallback.exists():
        return fallback
    found = _databases_one_folder_down()
    if len(found) == 1:
        yaml_path, db_path = found[0]
        err.print(f"using the database of {yaml_path} ({db_path}); pass --config or --db to choose another",
                  highlight=False, markup=False)
        return db_path
    if len(found) > 1:
        names = ", ".join(str(y) for y, _ in found[:6])
        err.print(f"[red]several project databases one folder down[/] ({escape(names)}): pass --config FILE "
                  "(its storage.path) or --db PATH", highlight=False)
        raise typer.Exit(2)
    return fallback


def _databases_one_folder_down() -> list[tuple[Path, Path]]:
    """(YAML, its existing database) for each ``*/optimization.yaml`` one folder below the current
    one: the README runs ``convergence optimize my-study/optimization.yaml`` then ``convergence runs``
    from the folder above, where the database (beside the YAML) is not in the current folder."""
    from convergence.config.loader import ConfigError, load_config

    out = []
    for yaml_path in sorted(Path(".").glob("*/optimization.yaml"))[:50]:
        try:
            db_path = load_config(yaml_path).db_path
        except ConfigError:
            continue
        if db_path.is_file():
            out.append((yaml_path, db_path))
    return out


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
        where = "" if path != Path(".convergence/convergence.db") else (
            "; looked for ./optimization.yaml, .convergence/convergence.db and */optimization.yaml one folder down")
        err.print(f"[red]no database at {escape(str(path))}[/]{where} (run `convergence optimize` first, "
                  "or pass --db/--config)", highlight=False)
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

