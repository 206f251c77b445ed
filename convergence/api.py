"""``optimize()``: the one way a study is run, from Python and from ``convergence optimize``.

It loads and checks the config (what ``convergence validate`` checks, before the first call),
opens the project database, runs the :class:`~convergence.engine.loop.Optimizer` and writes the
run's outputs. It sits above reporting (it writes the outputs) and below the CLI (which calls it).
"""

from __future__ import annotations

import sqlite3
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from convergence.config.loader import ConfigError, LoadedConfig, Problem, load_config, parse_mapping
from convergence.core.types import TestCase
from convergence.engine.loop import LoopEvents, Optimizer, RunOutcome
from convergence.reporting.outputs import write_outputs as write_run_outputs
from convergence.storage.faults import DatabaseFileError
from convergence.storage.store import StorageError, Store


class StoreOpenError(StorageError):
    """The project database could not be opened (nothing ran)."""


async def optimize(
    config: str | Path | Mapping[str, Any] | LoadedConfig | None = None,
    *,
    resume: bool = False,
    events: LoopEvents | None = None,
    write_outputs: bool = True,
    cases: list[TestCase] | None = None,
    on_ready: Callable[[Optimizer], None] | None = None,
    on_run_started: Callable[[int], None] | None = None,
    config_path: str | Path | None = None,
) -> RunOutcome:
    """Run the study ``config`` describes: ``await optimize("optimization.yaml")``.

    ``config`` may be a path, a mapping with the file's sections (relative paths in it are relative to
    the current folder), or an already loaded config (``load_config``), with ``cases`` when
    they were already checked (``engine.preflight.check``). ``on_ready`` sees the optimizer once
    it is built, before any call (the CLI prints what will run); ``on_run_started`` gets the run
    id once the run row is committed. Outputs (reports, plots, the best configuration) are
    written when ``write_outputs`` and the run has trials (:func:`write_outputs`).
    ``config_path`` is the old name of ``config`` (deprecated)."""
    from convergence.engine.preflight import check

    if config_path is not None:
        warnings.warn("optimize(config_path=...) is deprecated: pass the config as the first argument",
                      DeprecationWarning, stacklevel=2)
        config = config if config is not None else config_path
    loaded = as_loaded(config)
    if cases is None:
        cases = check(loaded).cases  # what `convergence validate` checks, before the first call
    try:
        store = await Store.open(loaded.db_path)
    except DatabaseFileError as exc:  # its message names the file and what to do
        raise StoreOpenError(str(exc)) from exc
    except (StorageError, sqlite3.Error, OSError) as exc:
        raise StoreOpenError(f"cannot open the project database {loaded.db_path}: {exc}") from exc
    try:
        optimizer = Optimizer(loaded, store, cases=cases, events=events)
        optimizer.on_run_started = on_run_started
        if on_ready is not None:
            on_ready(optimizer)
        outcome = await optimizer.run(resume=resume)
        if write_outputs and outcome.trials:
            outcome.output_files = [str(p) for p in await write_run_outputs(loaded, store, outcome.run_id)]
        return outcome
    finally:
        await store.close()


def as_loaded(config: object) -> LoadedConfig:
    """``optimize()``'s config argument as a checked config: a path (str or Path), a mapping with the
    file's sections, or a config already loaded. Anything else is a :class:`ConfigError`, not a TypeError
    from deep inside."""
    if isinstance(config, LoadedConfig):
        return config
    if isinstance(config, (str, Path)):
        return load_config(config)
    if isinstance(config, Mapping):
        return parse_mapping(dict(config))
    what = "nothing (None)" if config is None else f"an object of type {type(config).__name__}"
    raise ConfigError(Path("<optimize() argument>"), [Problem(
        "", f"expected a path to optimization.yaml, a mapping of its sections, or a loaded config; got {what}")])


async def write_outputs(loaded: LoadedConfig, run_id: int) -> list[Path]:
    """Write run ``run_id``'s outputs (reports, plots, the best configuration) as ``loaded`` asks:
    what :func:`optimize` writes at the end of a run (the CLI prints the run's summary first)."""
    store = await Store.open(loaded.db_path)
    try:
        return await write_run_outputs(loaded, store, run_id)
    finally:
        await store.close()
