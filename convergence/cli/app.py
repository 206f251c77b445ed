"""The ``convergence`` command line.

Heavy modules (LiteLLM, Weave, llama.cpp, matplotlib) are imported inside the
commands that need them so ``--help`` and ``validate`` start in a blink.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
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
    _report_or_exit,
    _run_async,
    console,
    err,
)
from convergence.cli.plugin_groups import CoreGroup
from convergence.cli.plugins import plugins as plugins_cmd
from convergence.cli.sao import sao_app
from convergence.cli.traces import traces as traces_cmd

app = typer.Typer(
    name="convergence",
    help="Find the best configuration for an LLM call or an API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=CoreGroup,  # plus one group per `cli.<name>` plugin entry (`convergence synergy`, `convergence ppo`)
)
ConfigArg = typer.Argument(Path("optimization.yaml"), help="The optimization YAML file.")


def _print_version(value: bool) -> None:
    if value:
        from convergence._version import __version__

        console.print(f"convergence {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print the version and exit."),
) -> None:
    """Find the best configuration for an LLM call or an API."""


# --------------------------------------------------------------------------- optimize


@app.command()
def optimize(
    config: Path = ConfigArg,
    resume: bool = typer.Option(
        False, "--resume",
        help="Continue the study's last unfinished run; finished case results are reused, not re-paid.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    no_outputs: bool = typer.Option(False, "--no-outputs", help="Skip reports, plots and best-config export."),
    dry_run: bool = typer.Option(
        False, "--dry-run",
        help="Print the expected calls, tokens, cost and time, and which budget stops the run first; "
             "call nothing, write nothing.",
    ),
    metrics_port: int | None = typer.Option(
        None, "--metrics-port", min=0, max=65535,
        help="Serve live run metrics (evaluations, errors, best score, cost, agent shares) for Prometheus on "
             "http://127.0.0.1:PORT/metrics (and /health) while the run lasts.",
    ),
    ray: str | None = typer.Option(
        None, "--ray", metavar="ADDRESS",
        help="Run the target calls on Ray (execution.backend: ray) at ADDRESS: auto (the cluster this machine "
             "belongs to, or RAY_ADDRESS), local (a one-machine Ray for this run), ray://HOST:PORT (Ray Client) "
             "or HOST:PORT. Overrides the config's execution.backend and ray.address; needs the ray extra.",
    ),
) -> None:
    """Run the optimization described by CONFIG."""
    loaded = _load(config)
    if ray is not None:
        from pydantic import ValidationError

        from convergence.config.models import RayConfig

        try:
            address = RayConfig(address=ray).address
        except ValidationError as exc:
            why = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
            err.print(f"[red]--ray:[/] {escape(why)}", highlight=False)
            raise typer.Exit(2) from None
        execution = loaded.config.optimization.execution
        execution.backend = "ray"
        execution.ray.address = address
    from convergence.targets.factory import missing_env_vars

    missing = missing_env_vars(loaded.config.resolved_target)
    if missing:
        err.print(f"[red]missing environment variable(s):[/] {', '.join(missing)} (needed by the target in {config})")
        raise typer.Exit(2)
    from convergence.config.loader import ConfigError
    from convergence.engine.preflight import check as _preflight_check

    try:  # the same deep checks as `validate` (imports, test cases, templates, URLs, paths), before any call
        cases = _preflight_check(loaded).cases
    except ConfigError as exc:
        from rich.markup import escape as _escape

        err.print("[red]config error[/] " + _escape(str(exc)), highlight=False, emoji=False)
        raise typer.Exit(2) from None
    if dry_run:
        _dry_run(loaded, cases)
        return
    state: dict[str, Any] = {}
    try:
        _run_async(_optimize, loaded, cases, resume, quiet, no_outputs, state, metrics_port)
    except KeyboardInterrupt:
        import shlex

        which = f"run {state['run_id']} " if "run_id" in state else ""
        err.print(f"[yellow]interrupted:[/] {which}stopped; every finished call is stored.", highlight=False)
        err.print(f"continue with: convergence optimize {shlex.quote(str(loaded.path))} --resume", highlight=False,
                  markup=False)
        raise typer.Exit(130) from None


def _dry_run(loaded: Any, cases: list[Any]) -> None:
    """The dry-run forecast: no target call, no LLM, no database created (read only when it exists)."""
    from convergence.engine.dry_run import forecast, load_history

    est = forecast(loaded, cases, history=_run_async(load_history, loaded))
    table = Table(title=f"Dry run of study {escape(est.study)}: nothing was called")
    for col in ("quantity", "estimate", "source"):
        table.add_column(col, justify="right" if col == "estimate" else "left")
    for quantity, value, source in est.rows():
        table.add_row(escape(quantity), escape(value), escape(source))
    console.print(table)


EXIT_ALL_CALLS_FAILED = 3
"""Exit code when every call failed with one error (wrong URL, server down, bad key)."""


async def _optimize(
    loaded: Any, cases: list[Any], resume: bool, quiet: bool, no_outputs: bool, state: dict[str, Any],
    metrics_port: int | None = None,
) -> None:
    """``convergence optimize``: the same :func:`convergence.api.optimize` as Python users, with the
    console's progress, a header once the optimizer is built, and an exit code per kind of failure."""
    from convergence.api import StoreOpenError, optimize, write_outputs
    from convergence.cli.progress import RichEvents
    from convergence.engine.session import ResumeError
    from convergence.errors import ConvergenceError
    from convergence.evaluation.cases import TestCaseError
    from convergence.reporting.outputs import OutputsError
    from convergence.storage.faults import DatabaseFileError
    from convergence.storage.store import StorageError
    from convergence.storage.writer import WriterError

    cfg = loaded.config
    screen = contextlib.ExitStack()
    """The live progress view (and the metrics server), from the header to the summary."""

    def ready(optimizer: Any) -> None:
        """The optimizer is built: the header, then the live view (and the metrics server) it reports to."""
        state["optimizer"] = optimizer
        t = cfg.resolved_target
        console.print(
            f"[bold]Convergence[/] study [cyan]{escape(cfg.study_name)}[/]: {t.type} target, "
            f"{len(optimizer.space.names)} parameter(s), {len(optimizer.cases)} test case(s), "
            f"{_length(optimizer.cfg, optimizer.budget_plan)}, "
            f"concurrency {cfg.optimization.execution.concurrency}, {society_line(cfg)}"
            + (f", calls on Ray at {escape(cfg.optimization.execution.ray.address)}"
               if cfg.optimization.execution.backend == "ray" else "")
        )
        optimizer.events = screen.enter_context(RichEvents(console, quiet))
        if metrics_port is not None:
            from convergence.tracing.prometheus import RunMetrics

            try:
                live = RunMetrics(optimizer.events, metrics_port)
            except OSError as exc:
                err.print(f"[red]cannot serve metrics on 127.0.0.1:{metrics_port}:[/] {exc}")
                raise typer.Exit(2) from None
            screen.callback(live.close)
            optimizer.events = live
            console.print(f"metrics: http://127.0.0.1:{live.server.port}/metrics")

    try:
        with screen:
            outcome = await optimize(
                loaded, cases=cases, resume=resume, write_outputs=False, on_ready=ready,
                on_run_started=lambda run_id: state.__setitem__("run_id", run_id))
    except StoreOpenError as exc:
        err.print(f"[red]{escape(str(exc))}[/]", highlight=False)
        raise typer.Exit(2) from None
    except (TestCaseError, ValueError, ConvergenceError) as exc:
        if "optimizer" not in state:  # the optimizer could not be built: nothing ran
            err.print(f"[red]error[/] {exc}")
            raise typer.Exit(2) from None
        if isinstance(exc, ResumeError):
            err.print(f"[red]cannot resume:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(2) from None
        if isinstance(exc, DatabaseFileError):  # damaged, full, read-only: the user fixes the file, then resumes
            which = f"run {state['run_id']} stopped; " if "run_id" in state else ""
            err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
            err.print(f"{which}finished results are stored; once fixed, continue with: convergence optimize "
                      f"{loaded.path} --resume", highlight=False, markup=False)
            raise typer.Exit(2) from None
        if isinstance(exc, (StorageError, WriterError)):
            err.print(f"[red]stopped:[/] {escape(str(exc))} (finished results are stored)", highlight=False)
            raise typer.Exit(1) from None
        if not isinstance(exc, ConvergenceError):
            raise
        # e.g. a plugin that failed: one clear line, not a traceback
        which = f" (run {state['run_id']}; finished results are stored)" if "run_id" in state else ""
        err.print(f"[red]error:[/] {escape(str(exc))}{which}", highlight=False)
        raise typer.Exit(1) from None
    _print_outcome(outcome, state["optimizer"])
    if not no_outputs and outcome.trials:  # as optimize() writes them, after the summary
        try:
            paths = await write_outputs(loaded, outcome.run_id)
        except (OutputsError, DatabaseFileError) as exc:  # the run is finished and stored: only files are missing
            err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
            if isinstance(exc, DatabaseFileError):
                err.print(f"run {outcome.run_id} is stored; once fixed, `convergence report {outcome.run_id}` "
                          "writes its outputs", highlight=False, markup=False)
            raise typer.Exit(1) from None
        console.print("[bold]Written:[/]")
        for p in paths:
            console.print(f"  {p}")
    if outcome.all_failed_error is not None:
        err.print(f"[red]every call failed with the same error:[/] {escape(outcome.all_failed_error)}",
                  highlight=False)
        err.print("check the target (URL, server, credentials); the failed calls are stored "
                  f"(convergence traces {outcome.run_id} --errors-only)", highlight=False)
        raise typer.Exit(EXIT_ALL_CALLS_FAILED)


def _estimate(t: Any) -> str:
    return _score(t.estimate)


def _score(value: float | None, spec: str = ".4f") -> str:
    """A score for a table; "-" when there is none (None or NaN), never "nan"."""
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def _print_outcome(outcome: Any, optimizer: Any) -> None:
    """The run in one line and its top configurations, best first by the run's one ranking
    (:func:`convergence.engine.selection.rank`): #1 is ``outcome.best``, the exported configuration."""
    from convergence.cli.progress import short_config
    from convergence.engine.selection import ranking

    usable = ranking(outcome.trials)
    console.print(
        f"\n[bold]{outcome.status}[/]: {outcome.stop_reason} - run {outcome.run_id}, "
        f"{len(outcome.trials)} trial(s), {outcome.total_calls} call(s), ${outcome.total_cost_usd:.4f}, "
        f"{outcome.elapsed_seconds:.1f}s"
        + (f", {outcome.cached_cases} cached case result(s) reused" if outcome.cached_cases else "")
    )
    if not usable:
        console.print("[yellow]no configuration completed every test case[/]")
        return
    metrics = list(optimizer.cfg.evaluation.metrics)
    estimates = any(t.estimate is not None for t in usable)
    table = Table(title="Top configurations")
    table.add_column("#", justify="right")
    table.add_column("trial", justify="right")
    table.add_column("score", justify="right")
    if estimates:
        table.add_column("estimate", justify="right")
    for m in metrics:
        table.add_column(m, justify="right")
    table.add_column("errors", justify="right")
    table.add_column("configuration")
    for i, t in enumerate(usable[:8], 1):
        table.add_row(str(i), str(t.trial_id), f"{t.score:.4f}",
                      *([_estimate(t)] if estimates else []),
                      *[f"{t.metrics.get(m, float('nan')):.4g}" for m in metrics],
                      str(t.n_errors), short_config(t.config, 80))
    console.print(table)
    if len(usable) > 1:
        console.print(f"best {usable[0].score:.4f} vs worst {usable[-1].score:.4f} "
                      f"({usable[0].score - usable[-1].score:+.4f})")


# --------------------------------------------------------------------------- validate, schema, init


@app.command()
def validate(config: Path = ConfigArg) -> None:
    """Check CONFIG without running anything: the schema, then everything `optimize`
    checks before its first call (imports, test cases, templates, URLs, paths,
    environment variables). No model is loaded, nothing is called or written."""
    from rich.markup import escape as _escape

    from convergence.config.loader import ConfigError
    from convergence.core.space import SearchSpace
    from convergence.engine.preflight import preflight

    loaded = _load(config)
    cfg = loaded.config
    result = preflight(loaded)

    def show(value: Any, limit: int = 200) -> str:  # user text: bounded, never markup
        text = str(value)
        return _escape(text if len(text) <= limit else text[: limit - 3] + "...")

    from convergence.config.budget_plan import apply_plan, budget_plan

    space = SearchSpace.from_config(cfg.search_space)
    t = cfg.resolved_target
    size = space.size()
    n_cases = len(result.cases)
    plan = budget_plan(cfg, n_cases)
    what = getattr(t, "model", None) or getattr(t, "endpoint", None) or getattr(t, "function", "")
    out = [
        f"[bold]{show(config)}[/]: study [cyan]{show(cfg.study_name)}[/]",
        f"  target: {t.type} {show(what)}",
        f"  parameters: {show(', '.join(space.names))} "
        f"({'continuous' if size == float('inf') else f'{size:.0f}'} configurations)",
        f"  test cases: {n_cases}",
        "  metrics: "
        + show(", ".join(f"{k} (w={m.weight:g}, {m.direction})" for k, m in cfg.evaluation.metrics.items()), 400),
        f"  plan: {_length(apply_plan(cfg, plan), plan)}, {_calls_line(cfg, n_cases)}",
        f"  proposers: {society_line(cfg)}",
    ]
    for line in out:
        console.print(line, highlight=False, emoji=False)
    if result.problems:
        err.print("[red]config error[/] " + _escape(str(ConfigError(loaded.path, result.problems))),
                  highlight=False, emoji=False)
        raise typer.Exit(2)
    console.print("[green]valid[/]", highlight=False)


def _length(cfg: Any, plan: Any) -> str:
    """How long the run is and how many configurations a generation has, saying what the budget set
    (``cfg`` with ``plan``, a :class:`~convergence.config.budget_plan.BudgetPlan`, applied)."""
    evo, es = cfg.optimization.evolution, cfg.optimization.execution.early_stopping
    gens = "generations until the budget is spent" if plan.generations is not None else \
        f"{evo.generations} generation(s)"
    pop = f"population {evo.population_size}" + (" (from the budget)" if plan.population is not None else "")
    early = ", early stopping off (the budget sets the length)" if plan.early_stopping_off and not es.enabled else ""
    return f"{gens} x {pop}{early}"


def _calls_line(cfg: Any, n_cases: int) -> str:
    """The target calls the run expects: the dry-run forecast's figure (one source), with what caps it."""
    from convergence.engine.dry_run import target_calls

    needed, calls = target_calls(cfg, n_cases)
    capped = f" (the plan needs {needed}; budget.max_calls caps it)" if calls < needed else ""
    return f"{calls} target calls{capped}; `optimize --dry-run` forecasts time and cost"


@app.command()
def schema(out: Path | None = typer.Option(None, "--out", "-o", help="Write to a file instead of stdout.")) -> None:
    """Print the JSON Schema of optimization.yaml (for editor completion)."""
    from convergence.config.schema import config_json_schema

    text = json.dumps(config_json_schema(), indent=2)
    if out:
        out.write_text(text + "\n")
        console.print(f"wrote {out}")
    else:
        sys.stdout.write(text + "\n")


@app.command()
def init(
    directory: Path = typer.Argument(Path("."), help="Where to write optimization.yaml (its test cases are inline, "
                                                     "so it is the only file)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
) -> None:
    """Write a starter optimization.yaml for the embedded local model."""
    from convergence.cli.starter import write_starter

    try:
        paths = write_starter(directory, force=force)
    except FileExistsError as exc:
        err.print(f"[red]{exc}[/] (use --force to overwrite)")
        raise typer.Exit(2) from None
    for p in paths:
        console.print(f"wrote {p}")
    console.print(f"next: convergence optimize {directory / 'optimization.yaml'}")


# --------------------------------------------------------------------------- runs, show, export


@app.command()
def runs(db: Path | None = DB_OPT, config: Path | None = CFG_OPT,
         study: str | None = typer.Option(None, help="Only this study.")) -> None:
    """List runs in the project database."""
    _run_async(_runs, _db_path(db, config), study)


async def _runs(path: Path, study: str | None) -> None:
    from convergence.engine.selection import best as best_of

    store = await _open_store(path)
    try:
        rows = await store.list_runs(study)
        table = Table(title=f"Runs in {path}")
        for col in ("run", "study", "status", "stop reason", "trials", "best", "best trial", "calls", "cost $",
                    "seconds"):
            table.add_column(col)
        for r in rows:
            trials = await store.trials(r.id)
            best = best_of(trials)  # the run's best as its report and export have it (score: its mean)
            reason = r.stop_reason or ("its process is gone: --resume continues it" if store.owner_gone(r) else "")
            table.add_row(str(r.id), r.study, r.status, reason[:50], str(len(trials)),
                          f"{best.score:.4f}" if best is not None else "-",
                          str(best.trial_id) if best is not None else "-", str(r.total_calls),
                          f"{r.total_cost_usd:.4f}", f"{r.elapsed_seconds:.1f}")
        console.print(table)
    finally:
        await store.close()


@app.command()
def show(run: int = typer.Argument(..., help="Run id (see `convergence runs`)."),
         db: Path | None = DB_OPT, config: Path | None = CFG_OPT,
         top: int = typer.Option(10, help="How many trials to list.")) -> None:
    """Show one run: status, generations and its best trials."""
    _run_async(_show, _db_path(db, config), run, top)


async def _show(path: Path, run_id: int, top: int) -> None:
    from convergence.cli.progress import short_config
    from convergence.reporting.model import shown_score

    store = await _open_store(path)
    try:
        report = await _report_or_exit(store, run_id)
        console.print(f"[bold]run {report.run_id}[/] study [cyan]{report.study}[/] - "
                      f"{report.status}: {report.stop_reason}")
        console.print(f"  started {report.started_at}, finished {report.finished_at or '-'}, seed {report.seed}, "
                      f"{report.total_calls} calls, ${report.total_cost_usd:.4f}, {report.elapsed_seconds:.1f}s")
        gt = Table(title="Generations")
        for col in ("gen", "trials", "best", "mean"):
            gt.add_column(col, justify="right")
        for g in report.generation_summaries():  # no complete trial (early stopping, racing, failures): no score
            gt.add_row(str(g.number + 1), str(g.n_trials), _score(g.best_score), _score(g.mean_score))
        console.print(gt)
        metrics = list(report.metric_directions) or sorted({k for t in report.trials for k in t.metrics})
        tt = Table(title=f"Top {top} trials")  # #1 is the run's best (engine/selection.py: rank)
        ranked = report.ranked[:top]
        estimates = any(t.estimate is not None for t in ranked)
        for col in ("#", "trial", "gen", "proposer", "score", *(["estimate"] if estimates else []), *metrics,
                    "errors", "configuration"):
            tt.add_column(col)
        for i, t in enumerate(ranked, 1):
            tt.add_row(str(i), str(t.trial_id), str(t.generation + 1), t.proposer, _score(shown_score(t)),
                       *([_estimate(t)] if estimates else []),
                       *[_score(t.metrics.get(m), ".4g") for m in metrics], str(t.n_errors),
                       short_config(t.config, 70))
        console.print(tt)
    finally:
        await store.close()


@app.command("export")
def export_cmd(run: int = typer.Argument(..., help="Run id."),
               fmt: str = typer.Option("yaml", "--format", "-f", help="yaml | json | python"),
               out: Path | None = typer.Option(None, "--out", "-o", help="Write to this file (default: stdout)."),
               db: Path | None = DB_OPT, config: Path | None = CFG_OPT) -> None:
    """Export the best configuration of RUN."""
    if fmt not in ("yaml", "json", "python"):
        err.print(f"[red]unknown format {fmt!r}[/]; expected yaml, json or python")
        raise typer.Exit(2)
    _run_async(_export, _db_path(db, config), run, fmt, out)


async def _export(path: Path, run_id: int, fmt: str, out: Path | None) -> None:
    from convergence.reporting.export import export_config

    store = await _open_store(path)
    try:
        report = await _report_or_exit(store, run_id)
        if report.best is None:
            err.print(f"[red]run {run_id} has no completed trial to export[/]")
            raise typer.Exit(1)
        text = export_config(report, fmt, out)  # type: ignore[arg-type]
        if out:
            console.print(f"wrote {out}")
        else:
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
    finally:
        await store.close()


# --------------------------------------------------------------------------- report

REPORT_FORMATS = ("json", "markdown", "csv")


@app.command("report")
def report_cmd(run: int = typer.Argument(..., help="Run id (see `convergence runs`)."),
               db: Path | None = DB_OPT,
               config: Path | None = typer.Option(
                   None, "--config", "-c",
                   help="A YAML file: its storage.path locates the database and its output: section "
                        "replaces the run's stored one (save_path relative to the YAML)."),
               out: Path | None = typer.Option(
                   None, "--out", "-o", help="Output directory (default: <save_path>/run-N, where optimize writes)."),
               formats: list[str] | None = typer.Option(
                   None, "--formats", "-f",
                   help="Report files: json, markdown, csv (repeat or comma-separate; default: output.formats).",
               )) -> None:
    """(Re)write every output of RUN (reports, plots, best config), whatever its state:
    finished, stopped, failed, interrupted or killed. Files are replaced atomically."""
    fmts: list[str] | None = None
    if formats:
        aliases = {"md": "markdown"}
        fmts = list(dict.fromkeys(aliases.get(f, f) for item in formats
                                  for f in (s.strip().lower() for s in item.split(",")) if f))
        bad = [f for f in fmts if f not in REPORT_FORMATS]
        if bad:
            err.print(f"[red]unknown format(s) {', '.join(map(repr, bad))}[/]; expected {', '.join(REPORT_FORMATS)}")
            raise typer.Exit(2)
    loaded = _load(config) if config is not None else None
    _run_async(_report_files, _db_path(db, config), run, loaded, out, fmts)


async def _report_files(path: Path, run_id: int, loaded: Any, out: Path | None, fmts: list[str] | None) -> None:
    from convergence.reporting.outputs import OutputsError, output_config_of_run, write_run_outputs

    store = await _open_store(path)
    try:
        row = await store.get_run(run_id)
        if row is None:
            err.print(f"[red]no run {run_id} in {path}[/]")
            raise typer.Exit(2)
        output_cfg = loaded.config.output if loaded is not None else output_config_of_run(row)
        if fmts is not None:
            output_cfg = output_cfg.model_copy(update={"formats": fmts})
        try:
            paths = await write_run_outputs(store, run_id, out, output_cfg,
                                            base_dir=loaded.base_dir if loaded is not None else None)
        except OutputsError as exc:
            err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(1) from None
        except (OSError, RuntimeError) as exc:
            err.print(f"[red]cannot write the outputs of run {run_id}:[/] {exc}")
            raise typer.Exit(1) from None
        state = row.status + (" - unfinished: killed, or still running" if row.status == "running" else "")
        console.print(f"[bold]run {run_id}[/] ({state}): written:")
        for p in paths:
            console.print(f"  {p}")
    finally:
        await store.close()


app.command("traces")(traces_cmd)  # registered last: its place in --help
app.command("plugins")(plugins_cmd)
app.add_typer(sao_app, name="sao", help="Self-alignment optimization: export, import and inspect preference pairs.")


def main() -> None:
    app()


def society_line(cfg: Any) -> str:
    """Who proposes: the algorithm's agents, or the society's with their shares and LLM."""
    soc, opt = cfg.society, cfg.optimization
    if not soc.enabled:
        return f"algorithm {opt.algorithm}"
    roster = ", ".join(f"{k} {v:g}" for k, v in soc.roster(opt.algorithm).items())
    line = f"society: {roster}"
    agents = soc.roster(opt.algorithm)
    notes = []
    if "rlp" in agents:
        notes.append(f"rlp: LLM {soc.rlp.model_name or soc.llm.model}, G={soc.rlp.G}, "
                     f"thought_length={soc.rlp.thought_length}")
    if "sao" in agents:
        notes.append(f"sao: LLM {soc.sao.model_name or soc.llm.model}, {soc.sao.batch_size} pair(s) "
                     f"every {soc.sao.every} generation(s)")
    return line + (f" ({'; '.join(notes)})" if notes else "")


if __name__ == "__main__":
    main()

