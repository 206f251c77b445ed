"""``convergence ppo``: the PPO learner's policy and reflection buffer in a study's database.

The plugin's ``cli.ppo`` entry point: Convergence adds :data:`app` as the ``ppo`` command
group and imports this module only when it is invoked. Light on purpose (typer, rich and
Convergence's CLI helpers): :mod:`convergence_ppo.admin` is imported by the commands. The
learner's state lives in the study's database (``agent_memory`` / ``agent_experience`` under
``learner:ppo``), so these commands take the config (or ``--db`` and ``--study``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from convergence.cli.common import (
    CFG_OPT,
    DB_OPT,
    _db_path,
    _load,
    _open_store,
    _run_async,
    console,
    err,
)

app = typer.Typer(no_args_is_help=True, help="The PPO learner's policy: stats, reset, export.")
STUDY_OPT = typer.Option(None, "--study", help="The study (default: the config's).")


def _admin() -> Any:
    """The plugin's store functions: imported here, so ``convergence ppo --help`` imports no PyTorch."""
    import importlib

    return importlib.import_module("convergence_ppo.admin")


def _where(config: Path | None, db: Path | None, study: str | None) -> tuple[Path, str]:
    if study is None or db is None:
        loaded = _load(config or Path("optimization.yaml"))
        return db or loaded.db_path, study or loaded.config.study_name
    return _db_path(db, config), study


async def _with_store(path: Path, fn: Any, *args: Any) -> Any:
    store = await _open_store(path)
    try:
        return await fn(store, *args)
    finally:
        await store.close()


@app.command()
def stats(config: Path | None = CFG_OPT, db: Path | None = DB_OPT, study: str | None = STUDY_OPT,
          as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The saved policy (updates, decisions, last learning metrics) and the learning curve over the
    study's runs: mean reward per decision and the most frequent choice of each decision."""
    admin = _admin()
    path, name = _where(config, db, study)
    info = _run_async(_with_store, path, admin.stats, name)
    if as_json:
        print(json.dumps(info, indent=2, default=str))
        return
    if not info.get("exists"):
        console.print(f"no PPO policy for study {escape(name)} in {escape(str(path))} yet")
        return
    console.print(f"[bold]PPO policy of study {escape(name)}[/]: {info['updates']} update(s), "
                  f"{info['decisions']} decision(s), {info['experiences']} stored; decides "
                  + ", ".join(escape(a) for a in info["actions"]))
    last = info.get("last_update")
    if last:
        console.print("last update: " + ", ".join(
            f"{k} {last[k]:.4g}" for k in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction",
                                           "mean_reward") if k in last))
    table = Table(title="per run (the learning curve)")
    heads = list(info["actions"])
    for col in ("run", "decisions", "mean reward", *heads):
        table.add_column(col, justify="right" if col in ("run", "decisions", "mean reward") else "left")
    for run_id, e in sorted(info["runs"].items(), key=lambda kv: int(kv[0])):
        cells = []
        for h in heads:
            counts = e["choices"].get(h, {})
            top = max(counts.items(), key=lambda kv: kv[1], default=None)
            cells.append(f"{escape(top[0])} {top[1] / e['decisions']:.0%}" if top else "")
        table.add_row(str(run_id), str(e["decisions"]), f"{e['mean_reward']:+.3f}", *cells)
    console.print(table)


@app.command()
def reset(config: Path | None = CFG_OPT, db: Path | None = DB_OPT, study: str | None = STUDY_OPT,
          yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask.")) -> None:
    """Forget the study's PPO policy and reflection buffer; its next run starts a new policy."""
    admin = _admin()
    path, name = _where(config, db, study)
    if not yes and not typer.confirm(f"forget the PPO policy and experience of study {name!r}?"):
        raise typer.Exit(1)
    states, rows = _run_async(_with_store, path, admin.reset, name)
    console.print(f"removed {states} policy and {rows} experience row(s)" if states or rows else "nothing to reset")


@app.command("export")
def export_cmd(out: Path = typer.Option(..., "--out", "-o", help="JSON lines file of the decisions."),
               policy: Path | None = typer.Option(None, "--policy", help="Also write the policy's weights "
                                                                          "(a PyTorch file)."),
               config: Path | None = CFG_OPT, db: Path | None = DB_OPT, study: str | None = STUDY_OPT) -> None:
    """Write the reflection buffer (one decision per line: observation, action, reward, done) and, with
    --policy, the policy's weights."""
    admin = _admin()
    path, name = _where(config, db, study)
    try:
        written = _run_async(_with_store, path, admin.export, name, out, policy)
    except ValueError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    console.print(f"written: {escape(written['experiences'])} ({written['decisions']} decision(s))"
                  + (f", {escape(written['policy'])}" if "policy" in written else ""))



if __name__ == "__main__":
    app()
