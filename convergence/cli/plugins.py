"""``convergence plugins``: what the registry holds, built-in and installed."""

from __future__ import annotations

import json

import typer
from rich.markup import escape
from rich.table import Table

from convergence.cli.common import console, err


def plugins(
    ctx: typer.Context,
    kind: str | None = typer.Option(None, "--kind", "-k", help="Only this kind: agent, learner, metric, target, "
                                                                "sampler, cli."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    builtin: bool = typer.Option(True, "--builtin/--no-builtin", help="Include the built-in entries."),
) -> None:
    """List agents, learners, metrics, targets, samplers and cli groups: name, kind, distribution, version, origin.

    Plugins are found through the ``convergence.plugins`` entry points of installed
    distributions; nothing is imported to list them. Problems (a name taken twice, a
    malformed entry point) are listed below the table."""
    from convergence.registry import KINDS, registry

    if kind is not None and kind not in KINDS:
        err.print(f"[red]error:[/] unknown kind {escape(kind)!r}; expected one of {', '.join(KINDS)}")
        raise typer.Exit(2)
    reg = registry()
    check = getattr(ctx.find_root().command, "plugin_problems", None)  # `cli.*` entries named like a command
    problems = [*reg.problems, *(check() if callable(check) else [])]
    entries = [e for e in reg.entries(kind) if builtin or not e.builtin]
    if as_json:
        print(json.dumps({"entries": [{"name": e.name, "kind": e.kind, "distribution": e.distribution,
                                       "version": e.version, "origin": e.origin, "spec": e.spec} for e in entries],
                          "problems": problems}, indent=2))
        return
    table = Table(title="Convergence plugins")
    for col in ("kind", "name", "distribution", "version", "origin"):
        table.add_column(col)
    for e in entries:
        table.add_row(e.kind, escape(e.name), escape(e.distribution), escape(e.version), escape(e.origin))
    console.print(table)
    for problem in problems:
        err.print(f"[yellow]problem:[/] {escape(problem)}")

