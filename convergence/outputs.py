"""Glue between storage and reporting: read a run back, write its files."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from convergence.config.loader import LoadedConfig, resolve_path
from convergence.config.models import ConvergenceConfig
from convergence.core.space import SearchSpace
from convergence.reporting.model import GenerationSummary, RunReport
from convergence.storage.store import RunRow, Store


def _iso(ts: float | None) -> str | None:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds") if ts else None


def config_of_run(run: RunRow) -> ConvergenceConfig | None:
    """The config a run was started with (as stored), or None if it no longer validates."""
    try:
        return ConvergenceConfig.model_validate(run.config)
    except ValueError:
        return None


async def build_report(store: Store, run_id: int) -> RunReport:
    run = await store.get_run(run_id)
    if run is None:
        raise KeyError(f"no run {run_id} in {store.path}")
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
        params = list(cfg.search_space.parameters)
        best = report.best
        if best is not None:
            space = SearchSpace.from_config(cfg.search_space)
            resolved_best = space.resolve(best.config)
    report.metric_directions = directions
    report.metric_weights = weights
    report.parameters = params or sorted({k for t in trials for k in t.config})
    report.resolved_best = resolved_best
    return report


async def write_outputs(loaded: LoadedConfig, store: Store, run_id: int) -> list[Path]:
    """Reports, plots and the exported best configuration, as the config asks."""
    from convergence.reporting.files import write_reports

    out = loaded.config.output
    out_dir = resolve_path(loaded.base_dir, out.save_path) / f"run-{run_id}"
    report = await build_report(store, run_id)
    return list(write_reports(report, out_dir, out))
