"""Glue between storage and reporting: read a run back, write its files.

:func:`write_run_outputs` (re)writes every output of any stored run —
finished, stopped, failed, interrupted or killed — from the store alone; it
is what ``convergence report RUN`` runs, and what ``optimize`` uses after a
run (through :func:`write_outputs`).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pydantic import ValidationError

from convergence.config.loader import LoadedConfig, resolve_path
from convergence.config.models import ConvergenceConfig, OutputConfig
from convergence.core.space import SearchSpace
from convergence.errors import ConvergenceError
from convergence.reporting.model import GenerationSummary, RunReport
from convergence.reporting.sao import summarize_sao
from convergence.reporting.society import summarize_society
from convergence.storage.store import RunNotFoundError, RunRow, Store


class OutputsError(ConvergenceError):
    """A run's output files could not be written (full disk, read-only folder); the run itself
    is stored, and ``convergence report N`` writes them once that is fixed."""


def _iso(ts: float | None) -> str | None:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds") if ts else None


def config_of_run(run: RunRow) -> ConvergenceConfig | None:
    """The config a run was started with (stored as written: its ``${VAR}``
    references are filled from the current environment when they can be, else
    kept as text), or None if it no longer validates."""
    from convergence.config.loader import interpolate

    data, problems = interpolate(run.config)
    try:  # an unset ${VAR} (say, a token in a header) must not lose the metrics and search space
        return ConvergenceConfig.model_validate(run.config if problems else data)
    except ValueError:
        return None


def output_config_of_run(run: RunRow) -> OutputConfig:
    """The run's stored ``output:`` settings; the defaults when there are none
    (or they no longer validate). Only the ``output:`` section is needed, so a
    stored config that fails elsewhere still gives its own output settings."""
    cfg = config_of_run(run)
    if cfg is not None:
        return cfg.output
    section = run.config.get("output") if isinstance(run.config, dict) else None
    try:
        return OutputConfig.model_validate(section or {})
    except ValidationError:
        return OutputConfig()


def default_base_dir(run: RunRow) -> Path:
    """Where a run's relative ``save_path`` is resolved when no config file is
    given: the stored config file's directory if that file still exists, else
    the current directory."""
    if run.config_path:
        path = Path(run.config_path).expanduser()
        if path.is_file():
            return path.resolve().parent
    return Path.cwd()


def run_output_dir(run_id: int, output_cfg: OutputConfig, base_dir: Path) -> Path:
    """``<save_path>/run-N``, as ``optimize`` writes it."""
    return resolve_path(base_dir, output_cfg.save_path) / f"run-{run_id}"


def _metric_function(name: str, function: str | None, has_custom: bool) -> str | None:
    if function:
        return function
    from convergence.evaluation.metrics import infer_function

    try:
        return infer_function(name, has_custom)
    except Exception:  # noqa: BLE001 - unknown: the report falls back to the name
        return None


async def build_report(store: Store, run_id: int) -> RunReport:
    run = await store.get_run(run_id)
    if run is None:
        raise RunNotFoundError(f"no run {run_id} in {store.path}")
    trials = await store.trials(run_id)
    gens = await store.generations(run_id)
    cfg = config_of_run(run)
    directions: dict[str, str] = {}
    weights: dict[str, float] = {}
    params: list[str] = []
    resolved_best = None
    report = RunReport(
        run_id=run.id, study=run.study, status=run.status, stop_reason=run.stop_reason,
        started_at=_iso(run.started_at) or "", finished_at=_iso(run.finished_at), seed=run.seed,
        trials=trials,
        generations=[
            GenerationSummary(g.number, g.best_score if g.best_score is not None else float("nan"),
                              g.mean_score if g.mean_score is not None else float("nan"),
                              sum(1 for t in trials if t.generation == g.number), g.n_new or 0)
            for g in gens if g.finished_at is not None
        ],
        total_calls=run.total_calls, total_cost_usd=run.total_cost_usd, elapsed_seconds=run.elapsed_seconds,
    )
    if cfg is not None:
        directions = {k: m.direction for k, m in cfg.evaluation.metrics.items()}
        weights = {k: m.weight for k, m in cfg.evaluation.metrics.items()}
        has_custom = cfg.evaluation.custom_evaluator is not None
        functions = {k: f for k, m in cfg.evaluation.metrics.items()
                     if (f := _metric_function(k, m.function, has_custom)) is not None}
        report.metric_functions = functions
        params = list(cfg.search_space.parameters)
        report.parameter_descriptions = {k: p.description for k, p in cfg.search_space.parameters.items()
                                         if p.description}
        report.description = cfg.api.description if cfg.api is not None and cfg.api.description else None
        best = report.best
        if best is not None:
            space = SearchSpace.from_config(cfg.search_space)
            resolved_best = space.resolve(best.config)
    report.metric_directions = directions
    report.metric_weights = weights
    report.parameters = params or sorted({k for t in trials for k in t.config})
    report.resolved_best = resolved_best
    report.society = summarize_society(await store.society_log(run_id), trials,
                                       enabled=_society_enabled(run, cfg))
    report.sao = summarize_sao(await store.sao_pairs(run_id=run_id), await store.sao_ratings(run_id), trials)
    report.selection = await store.selection(run_id)
    report.learner = await store.learner_log(run_id) or None
    return report


def _society_enabled(run: RunRow, cfg: ConvergenceConfig | None) -> bool:
    """Whether the run had ``society.enabled`` on (read from the stored YAML
    when it no longer validates)."""
    if cfg is not None:
        return cfg.society.enabled
    section = run.config.get("society") if isinstance(run.config, dict) else None
    return isinstance(section, dict) and section.get("enabled") is True


async def write_run_outputs(
    store: Store, run_id: int, out_dir: str | Path | None = None, output_cfg: OutputConfig | None = None,
    *, base_dir: str | Path | None = None,
) -> list[Path]:
    """(Re)write every output of run ``run_id`` — reports, plots, the exported
    best configuration — whatever state the run is in, and return the paths.

    ``output_cfg`` defaults to the run's stored ``output:`` settings;
    ``out_dir`` to ``<save_path>/run-N`` with a relative ``save_path``
    resolved against ``base_dir``, else the stored config file's directory if
    it still exists, else the current directory. Each file is replaced
    atomically. Raises ``KeyError`` for an unknown run, :class:`OutputsError` when a file
    cannot be written.
    """
    from convergence.reporting.files import write_reports

    run = await store.get_run(run_id)
    if run is None:
        raise RunNotFoundError(f"no run {run_id} in {store.path}")
    if output_cfg is None:
        output_cfg = output_config_of_run(run)
    if out_dir is None:
        out_dir = run_output_dir(run_id, output_cfg, Path(base_dir) if base_dir is not None else default_base_dir(run))
    report = await build_report(store, run_id)
    try:
        return list(write_reports(report, Path(out_dir), output_cfg))
    except OSError as exc:  # each file is written whole or not at all (storage/atomic.py)
        where = exc.filename or out_dir
        raise OutputsError(
            f"cannot write the outputs of run {run_id} to {out_dir}: {exc.strerror or exc} ({where}); the run "
            f"itself is stored: `convergence report {run_id}` writes them once that is fixed") from exc


async def write_outputs(loaded: LoadedConfig, store: Store, run_id: int) -> list[Path]:
    """Reports, plots and the exported best configuration, as ``loaded`` asks."""
    return await write_run_outputs(store, run_id, output_cfg=loaded.config.output, base_dir=loaded.base_dir)
