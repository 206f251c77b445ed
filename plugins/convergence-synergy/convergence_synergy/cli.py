"""``convergence synergy``: the synergy learner's weights (the society's learned shares).

The plugin's ``cli.synergy`` entry point: Convergence adds :data:`app` as the
``synergy`` command group and imports this module only when it is invoked. Light
on purpose (typer, rich and Convergence's CLI helpers): the learner (PyTorch) is
imported by the commands that need it. The commands work on the learner's per-study
folder (``<database folder>/learners/<study>``, or ``--state-dir``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from convergence.cli.common import CFG_OPT, _load, _run_async, console, err

app = typer.Typer(no_args_is_help=True, help="The synergy learner's weights: show, export, import, train, "
                                                     "reset, history, serve.")
STATE_OPT = typer.Option(None, "--state-dir", help="The learner's folder (default: from --config's database and "
                                                    "study).")
PLUGIN = "synergy"


def _plugin() -> ModuleType:
    """The plugin's functions (show, export, import_, reset, history, plot_history): imported here, not at
    the module's import, so ``convergence synergy --help`` imports no PyTorch."""
    import convergence_synergy

    return convergence_synergy


def _state_dir(state_dir: Path | None, config: Path | None) -> Path:
    if state_dir is not None:
        return state_dir
    from convergence.society.learner import state_dir as learner_state_dir

    loaded = _load(config or Path("optimization.yaml"))
    return learner_state_dir(loaded.db_path, loaded.config.study_name)


def _fail(exc: Exception) -> None:
    err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
    raise typer.Exit(1) from None


@app.command()
def show(config: Path | None = CFG_OPT, state_dir: Path | None = STATE_OPT,
         as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The learned shares, the learner that wrote them and where they are stored."""
    plugin = _plugin()
    try:
        info = plugin.show(_state_dir(state_dir, config))
    except Exception as exc:  # noqa: BLE001 - the plugin's file errors are shown, not raised
        _fail(exc)
    if as_json:
        print(json.dumps(info, indent=2, default=str))
        return
    if not info.get("exists"):
        console.print(f"nothing learned yet in {escape(str(info.get('state_dir')))}")
        return
    table = Table(title=f"synergy weights ({escape(str(info.get('algorithm')))}, {info.get('changes')} change(s))")
    table.add_column("agent")
    table.add_column("share", justify="right")
    for agent, share in sorted(info["shares"].items(), key=lambda kv: -kv[1]):
        table.add_row(escape(agent), f"{share:.1%}")
    console.print(table)
    console.print(f"file: {escape(str(info.get('weights_file')))}")


@app.command("export")
def export_cmd(out: Path = typer.Option(..., "--out", "-o", help="The JSON file to write."),
               config: Path | None = CFG_OPT, state_dir: Path | None = STATE_OPT) -> None:
    """Write the learned shares to a JSON file (to edit, or to start another study from)."""
    plugin = _plugin()
    try:
        path = plugin.export(_state_dir(state_dir, config), out)
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    console.print(f"written: {escape(str(path))}")


@app.command("import")
def import_cmd(file: Path = typer.Argument(..., help="A JSON file written by `synergy export` (or by hand)."),
               config: Path | None = CFG_OPT, state_dir: Path | None = STATE_OPT) -> None:
    """Replace the learned shares by a file's (validated; logged in the change log)."""
    plugin = _plugin()
    try:
        shares = plugin.import_(_state_dir(state_dir, config), file)
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    console.print("imported: " + ", ".join(f"{escape(a)} {s:.1%}" for a, s in shares.items()))


@app.command()
def reset(config: Path | None = CFG_OPT, state_dir: Path | None = STATE_OPT) -> None:
    """Forget what was learned; the next run starts from the roster's shares (the change log stays)."""
    plugin = _plugin()
    try:
        removed = plugin.reset(_state_dir(state_dir, config))
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    console.print(f"removed {len(removed)} file(s)" if removed else "nothing to reset")


@app.command()
def history(config: Path | None = CFG_OPT, state_dir: Path | None = STATE_OPT,
            plot: Path | None = typer.Option(None, "--plot", help="Also draw each weight over time (PNG)."),
            as_json: bool = typer.Option(False, "--json", help="Print JSON lines.")) -> None:
    """Every change of the weights, oldest first (and a plot with --plot)."""
    plugin = _plugin()
    where = _state_dir(state_dir, config)
    try:
        entries = plugin.history(where)
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    if as_json:
        for e in entries:
            print(json.dumps(e, default=str))
    else:
        table = Table(title=f"synergy history ({len(entries)} change(s))")
        for col in ("#", "event", "generation", "algorithm", "reward", "new shares"):
            table.add_column(col)
        for i, e in enumerate(entries, 1):
            new = e.get("new") or {}
            table.add_row(str(i), escape(str(e.get("event", "update"))), str(e.get("generation", "")),
                          escape(str(e.get("algorithm") or "")),
                          "" if e.get("reward") is None else f"{e['reward']:.3f}",
                          ", ".join(f"{escape(a)} {s:.0%}" for a, s in new.items()))
        console.print(table)
    if plot is not None:
        try:
            console.print(f"written: {escape(str(plugin.plot_history(where, plot)))}")
        except Exception as exc:  # noqa: BLE001
            _fail(exc)


@app.command()
def train(config: Path | None = CFG_OPT,
          from_db: Path | None = typer.Option(None, "--from-db", help="Database to read the study's generations "
                                                                       "from (default: the config's)."),
          watch: bool = typer.Option(False, "--watch", help="Keep training as new generations are stored."),
          interval: float = typer.Option(10.0, "--interval", min=0.1, help="Seconds between checks (--watch)."),
          ) -> None:
    """Train the learner offline on the generations the study's runs stored (what each agent's proposals
    brought per cost), as the learner of the config would have seen them. Each call is one more pass over
    that history, on top of what the runs already learned; --watch also learns from generations stored later."""
    _plugin()
    loaded = _load(config or Path("optimization.yaml"))
    _run_async(_train, loaded, from_db or loaded.db_path, watch, interval)


async def _train(loaded: Any, db: Path, watch: bool, interval: float) -> None:
    import anyio

    from convergence.registry import registry
    from convergence.society.learner import GenerationResult, LearnerContext, state_dir
    from convergence.storage.store import Store

    cfg = loaded.config
    study = cfg.study_name
    roster = cfg.society.roster(cfg.optimization.algorithm)
    total = sum(roster.values()) or 1.0
    options = cfg.society.learner.options if cfg.society.learner is not None else {}
    ctx = LearnerContext(agents=list(roster), shares={k: v / total for k, v in roster.items()}, options=options,
                         seed=cfg.optimization.seed or 0, study=study, state_dir=state_dir(loaded.db_path, study),
                         min_improvement=cfg.optimization.execution.early_stopping.min_improvement)
    learner = registry().load("learner", PLUGIN)(ctx)
    done: set[tuple[int, int]] = set()
    store = await Store.open(db)
    try:
        while True:
            rows = [r for r in await store.learner_log(study=study) if (r["run_id"], r["generation"]) not in done]
            for r in rows:
                shares = await anyio.to_thread.run_sync(learner.update, GenerationResult.from_dict(r["result"]))
                done.add((r["run_id"], r["generation"]))
                console.print(f"run {r['run_id']} generation {r['generation'] + 1}: "
                              + ", ".join(f"{escape(a)} {s:.1%}" for a, s in shares.items()))
            if not watch:
                break
            await anyio.sleep(interval)
    finally:
        await store.close()
    if not done:
        console.print(f"no stored generations of study {escape(study)} in {escape(str(db))} "
                      "(runs with society.learner store them)")


@app.command()
def serve(config: Path | None = CFG_OPT, state_dir: Path | None = STATE_OPT,
          port: int = typer.Option(8003, "--port", min=0, max=65535),
          host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on.")) -> None:
    """Serve the latest synergy weights and learning metrics as Prometheus gauges (/metrics) and /health,
    read from the learner's files at every scrape. Ctrl-C stops it."""
    plugin = _plugin()
    where = _state_dir(state_dir, config)
    from convergence.tracing.prometheus import MetricsServer
    from convergence_synergy.metrics import SynergyCollector

    registry = SynergyCollector.registry(lambda: plugin.show(where), lambda: plugin.history(where))
    try:
        server = MetricsServer(registry, port, host)
    except OSError as exc:
        err.print(f"[red]error:[/] cannot serve on {escape(host)}:{port}: {escape(str(exc))}")
        raise typer.Exit(2) from None
    console.print(f"serving http://{host}:{server.port}/metrics (synergy weights of {escape(str(where))})")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()



if __name__ == "__main__":
    app()
