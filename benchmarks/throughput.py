"""Throughput, overhead, memory and CLI start-up of the optimization loop.

Every number printed here is measured on this machine when the script runs;
nothing is estimated. Each scenario runs in a fresh subprocess (``--worker``)
so imports, caches and the peak resident set of one scenario never leak into
another.

Scenarios
---------
* throughput: a Python-callable target that sleeps a fixed latency ``L``
  (``anyio.sleep``), concurrency ``C`` in {16, 64, 256}, persistence on (a
  real SQLite file in a temp dir), metrics ``exact_match`` + ``latency``,
  early stopping and racing off (every configuration pays every case),
  ``execution.mode`` at its default (async), no progress events. The ideal
  is ``C / L`` evaluations/s; the framework overhead per evaluation is
  ``wall * C / n_evals - L``: the time each concurrency slot spends on
  anything but the target.
* cpu: the same with ``L = 0`` at ``C = 256``: pure framework cost (process
  CPU time per evaluation, all threads, including the SQLite writer).
* memory: peak resident set (``ru_maxrss``) of a 100,000-evaluation run.
* cli: wall time of ``convergence --help`` and ``convergence validate`` and
  whether they imported litellm / weave / llama_cpp.
* tails: long-tailed latencies. Real LLM latencies are not fixed: a slow
  call holds its generation back, so a barrier costs far more than with a
  fixed ``L``. One seeded *latency stream* per row (fixed 50 ms, or
  lognormal with median 50 ms and sigma 0.8 / 1.2) is consumed in call
  order, in one process, by (1) a bare pool: ``C`` anyio workers pulling
  ``N`` calls from one queue, no barrier, each call sleeping the next
  latency; (2) the loop (``Optimizer``) with a Python target that sleeps the
  next latency: 16 configurations x 30 cases per generation, racing, early
  stopping and the society off, persistence on, in ``execution.mode: async``
  and then ``generational``; (3) the bare pool again (its rate is the mean
  of the two runs, which bracket the loop's). Every run gets the same first
  ``N`` latencies in the same order. Rates are ``calls / window``, the
  window running from the first target call's start to the last call's
  return: store open/close, run bookkeeping before the first call and after
  the last are not timed (the whole ``Optimizer.run()`` wall is in
  ``--json``). Rows: {fixed, sigma 0.8, sigma 1.2} x ``C`` in {64, 256};
  the ideal is ``C / mean(L)`` over the ``N`` latencies actually used.

* ray (``--backend ray``, issue 12): the loop with ``execution.backend: ray``
  on a one-machine Ray started in the worker process (``num_cpus=2``: the
  actors share this machine's 2 CPUs with the driver), against the local
  backend in the same process, Ray running throughout. Each row runs four
  times in the order local, ray, ray, local (so drift over the row, a cluster
  warming up, hits both backends alike) and reports both values of each
  backend and their mean. Rows: the tails section's latencies
  (fixed 50 ms, lognormal sigma 0.8 / 1.2) x ``C`` in {64, 256}, 16
  configurations x 30 cases per generation, async mode, racing / early
  stopping / society off, persistence on. The target is an async Python
  function (so the Ray backend uses its actor pool: 2 actors, each
  ``max_concurrency = C``) that sleeps a latency drawn from a hash of
  (configuration, case), so both backends see the same distribution. Each
  executor is built (actors started) before the timed ``Optimizer.run()``.
  Rate = calls / run wall; Ray's share = its mean rate / the local mean rate.
  Plus one ``L = 0``, ``C = 256`` row: the per-evaluation cost Ray adds
  (driver CPU time per call, and wall per call with ``C`` calls in flight).
  Driver CPU is ``time.process_time()`` of the driver process, which includes
  the threads Ray's core worker runs in it (for the local runs too, idle).

Targets (from the issues): >= 95 % of ``C / L`` at ``C = 256``; < 500 MB
for 100,000 evaluations; with long tails, the loop >= 95 % of the bare pool
in every row. They are reported, never asserted.

    python benchmarks/throughput.py                 # full run, every section (~5 min on 2 cores)
    python benchmarks/throughput.py --only tails    # long-tailed latencies only (~3-4 min)
    python benchmarks/throughput.py --quick         # smoke run (~1.5 min; tails alone ~50 s)
    python benchmarks/throughput.py --json          # machine-readable output
    python benchmarks/throughput.py --backend ray   # Ray backend vs local (~3.5 min; needs the ray extra)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import anyio

HEAVY_MODULES = ("litellm", "weave", "llama_cpp")
TARGET_FRACTION = 0.95
TARGET_MEMORY_MB = 500.0
TAIL_MEDIAN_S = 0.050
TAIL_SIGMAS = (0.0, 0.8, 1.2)
"""Lognormal sigma of the latency stream; 0 is a fixed latency (the median)."""
TAIL_CONCURRENCY = (64, 256)
TAIL_CONFIGS = 16
TAIL_CASES = 30
TAIL_SEED = 20261121
TAIL_MODES: tuple[Literal["async", "generational"], ...] = ("async", "generational")


# --------------------------------------------------------------------------- scenario description


@dataclass(slots=True)
class Scenario:
    """One optimization run: ``population * cases * generations`` evaluations."""

    name: str
    latency_s: float
    concurrency: int
    population: int
    cases: int
    generations: int
    tracing: bool = False
    """``tracing.weave.enabled: true`` in the YAML (without W&B credentials this
    measures the cost of tracing being configured but inactive)."""

    @property
    def n_evals(self) -> int:
        return self.population * self.cases * self.generations


def _scenario_yaml(s: Scenario, module: str) -> str:
    # elite_size 0: every generation evaluates exactly `population` new
    # configurations, so the evaluation count is exact and known up front.
    cases = ", ".join(f'{{id: "c{i}", input: "q{i}", expected: "x"}}' for i in range(s.cases))
    return textwrap.dedent(
        f"""\
        study: bench_{s.name}
        target: {{type: python, function: "{module}:call"}}
        search_space:
          parameters:
            x: {{type: continuous, min: 0, max: 1, step: 0.00001}}
            style: {{type: categorical, values: [a, b, c, d, e, f, g, h]}}
        evaluation:
          test_cases:
            inline: [{cases}]
          metrics:
            acc: {{function: exact_match, weight: 1}}
            latency: {{function: latency, direction: lower_is_better, weight: 0.1}}
        optimization:
          seed: 7
          warm_start: 0
          evolution: {{population_size: {s.population}, generations: {s.generations}, elite_size: 0}}
          execution: {{concurrency: {s.concurrency}, early_stopping: {{enabled: false}}}}
          racing: {{enabled: false}}
        storage: {{path: bench.db}}
        tracing: {{weave: {{enabled: {str(s.tracing).lower()}}}}}
        """
    )


def _target_source(latency_s: float) -> str:
    return textwrap.dedent(
        f"""\
        import anyio

        async def call(params, input):
            await anyio.sleep({latency_s!r})
            return "x"
        """
    )


# --------------------------------------------------------------------------- worker (runs in a subprocess)


class _GenerationClock:
    """Loop events that only timestamp generation boundaries (``case_finished``
    is a no-op, as with no events at all), to split wall time into evaluation
    and between-generation work (proposals, scoring, persistence)."""

    def __init__(self) -> None:
        self.in_generation_s = 0.0
        self._start = 0.0

    def generation_started(self, generation: int, total: int, n_trials: int, n_cases: int) -> None:
        self._start = time.perf_counter()

    def case_finished(self, trial: Any, result: Any, cached: bool) -> None:
        pass

    def trial_finished(self, trial: Any, best: Any) -> None:
        pass

    def generation_finished(self, generation: int, best: Any, new: list[Any]) -> None:
        self.in_generation_s += time.perf_counter() - self._start

    def message(self, text: str) -> None:
        pass


async def _bare_anyio(concurrency: int, latency_s: float, per_generation: int, generations: int) -> float:
    """Evaluations/s of the same workload with no framework at all: per
    generation, ``C`` tasks await ``anyio.sleep(L)`` until ``per_generation``
    sleeps are done, then a barrier, like the loop's generations. This is what
    the event loop, the generation barrier and this machine allow right now
    (timer overshoot, other processes): the real ceiling under ``C / L``."""

    async def worker(jobs: Any) -> None:
        for _ in jobs:
            await anyio.sleep(latency_s)

    t0 = time.perf_counter()
    for _ in range(generations):
        jobs = iter(range(per_generation))
        async with anyio.create_task_group() as tg:
            for _ in range(min(concurrency, per_generation)):
                tg.start_soon(worker, jobs)
    return per_generation * generations / (time.perf_counter() - t0)


async def _run_scenario(s: Scenario, folder: Path, profile: str | None, bare: bool) -> dict[str, Any]:
    from convergence.config.loader import load_config, resolve_path
    from convergence.engine.loop import Optimizer
    from convergence.storage.store import Store

    module = f"bench_target_{s.name}"
    (folder / f"{module}.py").write_text(_target_source(s.latency_s), encoding="utf-8")
    path = folder / "optimization.yaml"
    path.write_text(_scenario_yaml(s, module), encoding="utf-8")
    loaded = load_config(path)
    store = await Store.open(resolve_path(loaded.base_dir, loaded.config.storage.path))
    try:
        clock = _GenerationClock()
        optimizer = Optimizer(loaded, store, events=clock)  # nothing renders progress
        profiler = None
        if profile:
            from pyinstrument import Profiler

            profiler = Profiler(async_mode="enabled")
            profiler.start()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        outcome = await optimizer.run()
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        if profiler is not None:
            profiler.stop()
            Path(profile).write_text(profiler.output_text(unicode=False, color=False, show_all=False))
        async with store._db.execute("SELECT COUNT(*) FROM case_results") as cur:
            row = await cur.fetchone()
        stored = int(row[0]) if row else 0
    finally:
        await store.close()
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "n_evals": outcome.total_calls,
        "stored_case_results": stored,
        "generations": outcome.generations_run,
        "status": outcome.status,
        "in_generation_s": clock.in_generation_s,
        "maxrss_mb": _maxrss_mb(),
        # measured after the run, in the same process, so it never adds to the RSS peak above
        "bare_evals_per_s": (
            await _bare_anyio(s.concurrency, s.latency_s, s.population * s.cases, s.generations) if bare else None
        ),
    }


def _maxrss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def _worker(spec: str) -> None:
    args = json.loads(spec)
    s = Scenario(**args["scenario"])
    folder = Path(args["folder"])
    result = anyio.run(_run_scenario, s, folder, args.get("profile"), bool(args.get("bare")))
    print("RESULT " + json.dumps(result), flush=True)


def _cli_probe(argv: list[str], out: str) -> None:
    """Run the CLI in-process, then record which heavy modules got imported."""
    from convergence.cli.app import main

    sys.argv = ["convergence", *argv]
    code: Any = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    Path(out).write_text(
        json.dumps({"exit": code, "heavy": [m for m in HEAVY_MODULES if m in sys.modules]}), encoding="utf-8"
    )


# --------------------------------------------------------------------------- long-tailed latencies (section "tails")


@dataclass(slots=True)
class TailRow:
    """One row of the tails section: a latency stream and a concurrency."""

    sigma: float
    """Lognormal sigma; 0 means every call sleeps the median."""
    concurrency: int
    generations: int
    seed: int

    @property
    def per_generation(self) -> int:
        return TAIL_CONFIGS * TAIL_CASES

    @property
    def n_calls(self) -> int:
        return self.per_generation * self.generations

    @property
    def label(self) -> str:
        return "fixed" if self.sigma == 0 else f"lognormal {self.sigma:g}"


class _LatencyStream:
    """The latencies of one row, handed out in call order. The bare pool and
    the loop's target draw from this one object in the same process, so every
    run sleeps the same sequence; it also timestamps the call window (first
    call's start, last call's return), which is what the rates are over."""

    def __init__(self) -> None:
        self.latencies: list[float] = [TAIL_MEDIAN_S]
        self.reset()

    def reset(self) -> None:
        self.next = 0
        self.first = 0.0
        self.last = 0.0

    @property
    def window_s(self) -> float:
        return self.last - self.first


_STREAM = _LatencyStream()


async def stream_call(params: Any, input: Any) -> str:
    """The Python target of the tails section (``<this module>:stream_call``) and
    the bare pool's call: sleep the stream's next latency."""
    s = _STREAM
    i = s.next
    s.next = i + 1
    if i == 0:
        s.first = time.perf_counter()
    await anyio.sleep(s.latencies[i % len(s.latencies)])
    s.last = time.perf_counter()
    return "x"


def _latency_stream(row: TailRow) -> list[float]:
    if row.sigma == 0:
        return [TAIL_MEDIAN_S] * row.n_calls
    import numpy as np

    rng = np.random.default_rng([row.seed, round(row.sigma * 1000)])
    return [float(x) for x in rng.lognormal(math.log(TAIL_MEDIAN_S), row.sigma, row.n_calls)]


async def _bare_pool(concurrency: int, n_calls: int) -> dict[str, Any]:
    """The no-barrier ceiling: ``C`` workers pulling ``N`` calls from one queue
    (a shared iterator), so a slot is refilled the moment its call returns."""
    _STREAM.reset()
    jobs = iter(range(n_calls))

    async def worker() -> None:
        for _ in jobs:
            await stream_call(None, None)

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(min(concurrency, n_calls)):
            tg.start_soon(worker)
    wall = time.perf_counter() - t0
    return {"calls": _STREAM.next, "window_s": _STREAM.window_s, "wall_s": wall,
            "per_s": _STREAM.next / _STREAM.window_s}


def _tail_yaml(row: TailRow, mode: str) -> str:
    # elite_size 0 and no warm start: every generation pays 16 x 30 new calls, so N is exact
    cases = ", ".join(f'{{id: "c{i}", input: "q{i}", expected: "x"}}' for i in range(TAIL_CASES))
    return textwrap.dedent(
        f"""\
        study: tails_{mode}
        target: {{type: python, function: "{__name__}:stream_call"}}
        search_space:
          parameters:
            x: {{type: continuous, min: 0, max: 1, step: 0.00001}}
            style: {{type: categorical, values: [a, b, c, d, e, f, g, h]}}
        evaluation:
          test_cases:
            inline: [{cases}]
          metrics:
            acc: {{function: exact_match, weight: 1}}
            latency: {{function: latency, direction: lower_is_better, weight: 0.1}}
        optimization:
          seed: 7
          warm_start: 0
          evolution: {{population_size: {TAIL_CONFIGS}, generations: {row.generations}, elite_size: 0}}
          execution: {{mode: {mode}, concurrency: {row.concurrency}, early_stopping: {{enabled: false}}}}
          racing: {{enabled: false}}
        society: {{enabled: false}}
        storage: {{path: tails_{mode}.db}}
        """
    )


class _ErrorCount(_GenerationClock):
    """Loop events that count failed calls (a timeout would silently shorten a call)."""

    def __init__(self) -> None:
        super().__init__()
        self.errors = 0

    def case_finished(self, trial: Any, result: Any, cached: bool) -> None:
        if result.call.error is not None:
            self.errors += 1


async def _loop_on_stream(row: TailRow, mode: str, folder: Path, profile: str | None) -> dict[str, Any]:
    """One ``Optimizer.run()`` on the stream; the store is opened before and closed after the timing."""
    from convergence.config.loader import load_config, resolve_path
    from convergence.engine.loop import Optimizer
    from convergence.storage.store import Store

    path = folder / f"tails_{mode}.yaml"
    path.write_text(_tail_yaml(row, mode), encoding="utf-8")
    loaded = load_config(path)
    store = await Store.open(resolve_path(loaded.base_dir, loaded.config.storage.path))
    try:
        events = _ErrorCount()
        optimizer = Optimizer(loaded, store, events=events)
        _STREAM.reset()
        profiler = None
        if profile:
            from pyinstrument import Profiler

            profiler = Profiler(async_mode="enabled")
            profiler.start()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        outcome = await optimizer.run()
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        if profiler is not None:
            profiler.stop()
            Path(profile).write_text(profiler.output_text(unicode=False, color=False, show_all=False))
    finally:
        await store.close()
    return {"calls": _STREAM.next, "window_s": _STREAM.window_s, "per_s": _STREAM.next / _STREAM.window_s,
            "run_wall_s": wall, "cpu_us_per_call": cpu / max(_STREAM.next, 1) * 1e6,
            "total_calls": outcome.total_calls, "generations": outcome.generations_run,
            "status": outcome.status, "errors": events.errors}


async def _run_tail_row(row: TailRow, folder: Path, profile_dir: str | None) -> dict[str, Any]:
    """Bare pool, the loop in each mode, bare pool again: one process, one latency stream."""
    lat = _latency_stream(row)
    _STREAM.latencies = lat
    ordered = sorted(lat)
    out: dict[str, Any] = {
        "mean_latency_s": sum(lat) / len(lat),
        "p50_latency_s": ordered[len(ordered) // 2],
        "p99_latency_s": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "max_latency_s": ordered[-1],
        "bare_before": await _bare_pool(row.concurrency, row.n_calls),
    }
    for mode in TAIL_MODES:
        prof = str(Path(profile_dir) / f"tails_{row.label.replace(' ', '')}_c{row.concurrency}_{mode}.txt") \
            if profile_dir else None
        out[mode] = await _loop_on_stream(row, mode, folder, prof)
    out["bare_after"] = await _bare_pool(row.concurrency, row.n_calls)
    return out


def _tail_worker(spec: str) -> None:
    args = json.loads(spec)
    result = anyio.run(_run_tail_row, TailRow(**args["row"]), Path(args["folder"]), args.get("profile_dir"))
    print("RESULT " + json.dumps(result), flush=True)


def _tail_rows(quick: bool, seed: int) -> list[TailRow]:
    """Enough generations for about 4 s (quick: 0.5 s) of ideal run time per run, so the
    drain at the end (the slowest of the last calls) weighs about the same in every row."""
    ideal_s, min_gens = (0.5, 2) if quick else (4.0, 6)
    rows = []
    for sigma in TAIL_SIGMAS:
        mean_l = TAIL_MEDIAN_S * math.exp(sigma**2 / 2)  # lognormal mean
        for c in TAIL_CONCURRENCY:
            gens = max(min_gens, math.ceil(ideal_s * c / mean_l / (TAIL_CONFIGS * TAIL_CASES)))
            rows.append(TailRow(sigma, c, gens, seed))
    return rows


def _tail_report(row: TailRow, r: dict[str, Any]) -> dict[str, Any]:
    ideal = row.concurrency / r["mean_latency_s"]
    bare = (r["bare_before"]["per_s"] + r["bare_after"]["per_s"]) / 2
    out: dict[str, Any] = {
        "latency": row.label, "sigma": row.sigma, "concurrency": row.concurrency,
        "generations": row.generations, "per_generation": row.per_generation, "calls": row.n_calls,
        "mean_latency_ms": r["mean_latency_s"] * 1000, "p50_latency_ms": r["p50_latency_s"] * 1000,
        "p99_latency_ms": r["p99_latency_s"] * 1000, "max_latency_ms": r["max_latency_s"] * 1000,
        "ideal_per_s": ideal, "bare_per_s": bare, "bare_pct_of_ideal": 100.0 * bare / ideal,
        "bare_runs": [r["bare_before"], r["bare_after"]],
    }
    for mode in TAIL_MODES:
        m = r[mode]
        out[mode] = {**m, "pct_of_bare": 100.0 * m["per_s"] / bare, "pct_of_ideal": 100.0 * m["per_s"] / ideal}
    return out



# --------------------------------------------------------------------------- Ray backend vs local (section "ray")

RAY_ACTORS = 2
RAY_ORDER = ("local", "ray", "ray", "local")
"""Each row's runs, alternating so neither backend always runs first (or last) in the row."""


def _mean_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs' mean of every rate and time, their errors summed, and the runs themselves."""
    keys = ("wall_s", "per_s", "driver_cpu_us_per_call", "overhead_ms_per_call")
    out: dict[str, Any] = {k: sum(r[k] for r in runs) / len(runs) for k in keys}
    out.update(calls=runs[0]["calls"], status=runs[-1]["status"], errors=sum(r["errors"] for r in runs), runs=runs)
    return out


def _ray_target_source(sigma: float, seed: int, zero: bool) -> str:
    """An async target sleeping a latency drawn from a hash of (configuration, case): the same draws
    whichever process (driver or actor) makes the call. ``zero``: no sleep at all."""
    return textwrap.dedent(
        f"""\
        import asyncio, math, random

        async def call(params, input):
            if {zero!r}:
                latency = 0.0
            elif {sigma!r} == 0:
                latency = {TAIL_MEDIAN_S!r}
            else:
                rng = random.Random(f"{seed}:{{params['x']}}:{{params['style']}}:{{input}}")
                latency = rng.lognormvariate(math.log({TAIL_MEDIAN_S!r}), {sigma!r})
            if latency > 0:
                await asyncio.sleep(latency)
            return "x"
        """
    )


def _ray_module(row: TailRow, zero: bool) -> str:
    """One module per row: the driver keeps imported modules, so a shared name would keep the first row's."""
    return "ray_bench_zero" if zero else f"ray_bench_s{round(row.sigma * 10)}_c{row.concurrency}"


def _ray_yaml(row: TailRow, backend: str, zero: bool) -> str:
    base = _tail_yaml(row, "async").replace(f'"{__name__}:stream_call"', f'"{_ray_module(row, zero)}:call"')
    base = base.replace("study: tails_async", f"study: ray_{backend}").replace("tails_async.db", f"{backend}.db")
    ray = f", backend: ray, ray: {{num_actors: {RAY_ACTORS}, max_concurrency_per_actor: {row.concurrency}}}"
    return base.replace("early_stopping: {enabled: false}}",
                        "early_stopping: {enabled: false}" + (ray if backend == "ray" else "") + "}")


async def _ray_run(row: TailRow, backend: str, folder: Path, zero: bool = False, rep: int = 0) -> dict[str, Any]:
    """One timed ``Optimizer.run()`` with a prebuilt executor (Ray: actors up and their target built);
    ``rep`` numbers the repetition (its own folder and database: no warm start from the last one)."""
    from convergence.config.loader import load_config, resolve_path
    from convergence.engine.executor import build_executor
    from convergence.engine.loop import Optimizer
    from convergence.storage.store import Store

    sub = folder / f"{backend}_{_ray_module(row, zero)}_{rep}"
    sub.mkdir(parents=True, exist_ok=True)
    (sub / f"{_ray_module(row, zero)}.py").write_text(_ray_target_source(row.sigma, row.seed, zero),
                                                      encoding="utf-8")
    path = sub / "optimization.yaml"
    path.write_text(_ray_yaml(row, backend, zero), encoding="utf-8")
    loaded = load_config(path)
    store = await Store.open(resolve_path(loaded.base_dir, loaded.config.storage.path))
    executor = await build_executor(loaded)
    try:
        events = _ErrorCount()
        optimizer = Optimizer(loaded, store, events=events, executor=executor)
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        outcome = await optimizer.run()
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    finally:
        await executor.aclose()
        await store.close()
    calls = outcome.total_calls
    return {"calls": calls, "wall_s": wall, "per_s": calls / wall, "driver_cpu_us_per_call": cpu / calls * 1e6,
            "status": outcome.status, "errors": events.errors,
            "overhead_ms_per_call": (wall * row.concurrency / calls) * 1000.0}


async def _ray_section(rows: list[TailRow], zero: TailRow, folder: Path) -> dict[str, Any]:
    import logging

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    started = time.perf_counter() - t0
    await anyio.sleep(5.0)  # let the fresh cluster's own start-up work (prestarted workers) settle
    out: dict[str, Any] = {"ray_version": ray.__version__, "ray_init_s": started, "actors": RAY_ACTORS, "rows": []}
    try:
        for row in [*rows, zero]:
            r: dict[str, Any] = {"latency": row.label if row is not zero else "zero", "sigma": row.sigma,
                                 "concurrency": row.concurrency, "calls_planned": row.n_calls}
            runs: dict[str, list[dict[str, Any]]] = {"local": [], "ray": []}
            for i, backend in enumerate(RAY_ORDER):
                runs[backend].append(await _ray_run(row, backend, folder, zero=row is zero, rep=i))
            for backend, done in runs.items():
                r[backend] = _mean_run(done)
            r["ray_share"] = r["ray"]["per_s"] / r["local"]["per_s"]
            out["rows"].append(r)
    finally:
        ray.shutdown()
    return out


def _ray_worker(spec: str) -> None:
    args = json.loads(spec)
    rows = [TailRow(**r) for r in args["rows"]]
    result = anyio.run(_ray_section, rows, TailRow(**args["zero"]), Path(args["folder"]))
    print("RESULT " + json.dumps(result), flush=True)


def _print_ray(rep: dict[str, Any]) -> None:
    print(f"\nRay backend vs local (Ray {rep['ray_version']}, one-machine Ray with num_cpus=2 started in "
          f"{rep['ray_init_s']:.1f} s, {rep['actors']} actors; the same process, runs in the order "
          f"{', '.join(RAY_ORDER)} per row)")
    print("16 configurations x 30 cases per generation, async mode, persistence on; executors built before timing.")

    def both(run: dict[str, Any], key: str) -> str:
        return "/".join(f"{x[key]:.0f}" for x in run.get("runs", [run]))

    hdr = (f"{'latency':<14} {'C':>4} {'calls':>6} {'local/s':>11} {'ray/s':>11} {'ray share':>9} "
           f"{'local CPU us/call':>17} {'ray CPU us/call':>15} {'errors':>6}")
    print(hdr)
    print("-" * len(hdr))
    for r in rep["rows"]:
        lo, ra = r["local"], r["ray"]
        print(f"{r['latency']:<14} {r['concurrency']:>4} {ra['calls']:>6} {both(lo, 'per_s'):>11} "
              f"{both(ra, 'per_s'):>11} {100 * r['ray_share']:>8.1f}% {both(lo, 'driver_cpu_us_per_call'):>17} "
              f"{both(ra, 'driver_cpu_us_per_call'):>15} {lo['errors'] + ra['errors']:>6}")
    print("each cell: the backend's two runs (local: 1st/4th of the row, ray: 2nd/3rd); the share and the lines\n"
          "below use their means. Rates: calls / Optimizer.run() wall. CPU: time.process_time() of the driver\n"
          "process (Ray's core-worker threads in it included; the actors and raylet are other processes, on the\n"
          "same 2 CPUs here).")
    for r in rep["rows"]:
        if r["latency"] == "fixed":
            lo, ra = r["local"], r["ray"]
            added = (ra["overhead_ms_per_call"] - lo["overhead_ms_per_call"])
            print(f"fixed 50 ms, C={r['concurrency']}: each call holds a concurrency slot {added:+.1f} ms longer on "
                  f"Ray ({ra['overhead_ms_per_call'] - 50:.1f} ms vs {lo['overhead_ms_per_call'] - 50:.1f} ms "
                  "over the 50 ms)")
        if r["latency"] == "zero":
            lo, ra = r["local"], r["ray"]
            print(f"L=0, C={r['concurrency']}: {lo['per_s']:.0f} calls/s local vs {ra['per_s']:.0f} on Ray; driver "
                  f"CPU {lo['driver_cpu_us_per_call']:.0f} vs {ra['driver_cpu_us_per_call']:.0f} us/call "
                  f"(Ray adds {ra['driver_cpu_us_per_call'] - lo['driver_cpu_us_per_call']:.0f} us of driver CPU "
                  "per call)")


# --------------------------------------------------------------------------- driver


def _spawn(scenario: Scenario, folder: Path, profile: str | None = None, *, bare: bool = True) -> dict[str, Any]:
    spec = {"scenario": asdict(scenario), "folder": str(folder), "profile": profile, "bare": bare}
    return _in_subprocess("--worker", spec, folder, f"scenario {scenario.name}")


def _in_subprocess(flag: str, spec: dict[str, Any], folder: Path, what: str) -> dict[str, Any]:
    """Run one worker in a fresh interpreter and return its RESULT line."""
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, __file__, flag, json.dumps(spec)], capture_output=True, text=True, check=False
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def _throughput_scenarios(quick: bool, tracing: bool = False) -> list[Scenario]:
    out = []
    cases = 8
    # waves = evaluations per generation / C. 8 waves for every C, plus C=256
    # with 32 waves: the generation barrier costs about one wave of stagger, so
    # bigger generations (more test cases, larger populations) amortise it.
    for c, waves in ((16, 8), (64, 8), (256, 8), (256, 32)):
        if quick:
            waves //= 2
        population = math.ceil(waves * c / cases)
        # full: ~5 s of ideal run time per row, at least 3 generations.
        ideal_s = 1.0 if quick else 5.0
        gens = max(3, math.ceil(ideal_s * c / 0.050 / (population * cases)))
        out.append(Scenario(f"c{c}w{waves}", 0.050, c, population, cases, gens, tracing))
    return out


def _cpu_scenario(quick: bool) -> Scenario:
    return Scenario("cpu", 0.0, 256, 256, 8, 4 if quick else 10)


def _memory_scenario(quick: bool) -> Scenario:
    # 1,000 configurations x 10 cases x 10 generations = 100,000 evaluations.
    if quick:
        return Scenario("mem", 0.001, 1024, 200, 10, 5)
    return Scenario("mem", 0.001, 1024, 1000, 10, 10)


def _time_cli(argv: list[str], repeats: int) -> dict[str, Any]:
    exe = shutil.which("convergence")
    cmd = [exe, *argv] if exe else [sys.executable, "-m", "convergence.cli.app", *argv]
    times = []
    code = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - t0)
        code = proc.returncode
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as f:
        out = f.name
    try:
        subprocess.run([sys.executable, __file__, "--cli-probe", json.dumps({"argv": argv, "out": out})],
                       capture_output=True, text=True, check=False)
        probe = json.loads(Path(out).read_text(encoding="utf-8"))
    finally:
        os.unlink(out)
    return {"command": "convergence " + " ".join(argv), "best_s": min(times),
            "median_s": sorted(times)[len(times) // 2], "exit": code, "heavy_imported": probe["heavy"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run (a few seconds per scenario)")
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    ap.add_argument("--only", choices=["throughput", "cpu", "memory", "cli", "tails"], action="append",
                    help="run only these sections (repeatable)")
    ap.add_argument("--seed", type=int, default=TAIL_SEED, help="seed of the tails section's latency streams")
    ap.add_argument("--profile", metavar="DIR", help="write a pyinstrument profile of each run into DIR")
    ap.add_argument("--tracing", action="store_true",
                    help="set tracing.weave.enabled in every scenario (inactive without W&B credentials)")
    ap.add_argument("--backend", choices=["local", "ray"], default="local",
                    help="ray: compare the Ray backend (a one-machine, 2-CPU Ray) with the local one (section ray)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--ray-worker", help=argparse.SUPPRESS)
    ap.add_argument("--tail-worker", help=argparse.SUPPRESS)
    ap.add_argument("--cli-probe", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args.worker)
        return
    if args.tail_worker:
        _tail_worker(args.tail_worker)
        return
    if args.ray_worker:
        _ray_worker(args.ray_worker)
        return
    if args.cli_probe:
        spec = json.loads(args.cli_probe)
        _cli_probe(spec["argv"], spec["out"])
        return

    sections = set(args.only or ["throughput", "cpu", "memory", "cli", "tails"])
    if args.backend == "ray":
        sections = {"ray"}
    report: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                          "platform": sys.platform, "load_before": os.getloadavg()[0]},
                              "quick": args.quick, "tracing_enabled": args.tracing, "seed": args.seed}
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    profile_dir = Path(args.profile).resolve() if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)

    def prof(name: str) -> str | None:
        return str(profile_dir / f"{name}.txt") if profile_dir else None

    with tempfile.TemporaryDirectory(prefix="convergence-bench-") as tmp:
        root = Path(tmp)
        if "throughput" in sections:
            rows = []
            for s in _throughput_scenarios(args.quick, args.tracing):
                log(f"throughput: C={s.concurrency} L={s.latency_s * 1000:g} ms, {s.n_evals} evaluations ...")
                r = _spawn(s, root / s.name, prof(s.name))
                limit = s.concurrency / s.latency_s
                rate = r["n_evals"] / r["wall_s"]
                bare = r["bare_evals_per_s"]
                rows.append({
                    "concurrency": s.concurrency, "latency_ms": s.latency_s * 1000, "evaluations": r["n_evals"],
                    "stored": r["stored_case_results"], "generations": r["generations"],
                    "per_generation": s.population * s.cases, "wall_s": r["wall_s"],
                    "evals_per_s": rate, "limit_per_s": limit, "pct_of_limit": 100.0 * rate / limit,
                    "overhead_ms_per_eval": (r["wall_s"] * s.concurrency / r["n_evals"] - s.latency_s) * 1000,
                    "cpu_us_per_eval": r["cpu_s"] / r["n_evals"] * 1e6,
                    "in_generation_pct": 100.0 * r["in_generation_s"] / r["wall_s"],
                    "bare_anyio_evals_per_s": bare, "bare_pct_of_limit": 100.0 * bare / limit,
                    "pct_of_bare": 100.0 * rate / bare,
                })
            report["throughput"] = rows
        if "cpu" in sections:
            s = _cpu_scenario(args.quick)
            log(f"cpu: C={s.concurrency} L=0, {s.n_evals} evaluations ...")
            r = _spawn(s, root / s.name, prof(s.name))
            report["cpu"] = {"concurrency": s.concurrency, "latency_ms": 0.0, "evaluations": r["n_evals"],
                             "wall_s": r["wall_s"], "evals_per_s": r["n_evals"] / r["wall_s"],
                             "cpu_us_per_eval": r["cpu_s"] / r["n_evals"] * 1e6,
                             "wall_us_per_eval": r["wall_s"] / r["n_evals"] * 1e6,
                             "bare_anyio_evals_per_s": r["bare_evals_per_s"]}
        if "memory" in sections:
            s = _memory_scenario(args.quick)
            log(f"memory: C={s.concurrency} L={s.latency_s * 1000:g} ms, {s.n_evals} evaluations ...")
            # never profiled: the profiler would inflate the RSS
            r = _spawn(s, root / s.name, None, bare=False)
            report["memory"] = {"concurrency": s.concurrency, "latency_ms": s.latency_s * 1000,
                                "evaluations": r["n_evals"], "stored": r["stored_case_results"],
                                "wall_s": r["wall_s"], "evals_per_s": r["n_evals"] / r["wall_s"],
                                "peak_rss_mb": r["maxrss_mb"], "target_mb": TARGET_MEMORY_MB}
        if "cli" in sections:
            log("cli: timing `convergence --help` and `convergence validate` ...")
            folder = root / "cli"
            folder.mkdir()
            s = Scenario("cli", 0.05, 16, 8, 4, 2)
            (folder / "bench_target_cli.py").write_text(_target_source(s.latency_s), encoding="utf-8")
            (folder / "optimization.yaml").write_text(_scenario_yaml(s, "bench_target_cli"), encoding="utf-8")
            repeats = 3 if args.quick else 7
            report["cli"] = [_time_cli(["--help"], repeats),
                             _time_cli(["validate", str(folder / "optimization.yaml")], repeats)]
        if "tails" in sections:
            tails = []
            for row in _tail_rows(args.quick, args.seed):
                log(f"tails: {row.label}, C={row.concurrency}, {row.generations} generations x "
                    f"{row.per_generation} = {row.n_calls} calls, bare pool / async / generational / bare pool ...")
                name = f"tails_s{row.sigma:g}_c{row.concurrency}"
                spec = {"row": asdict(row), "folder": str(root / name),
                        "profile_dir": str(profile_dir) if profile_dir else None}
                tails.append(_tail_report(row, _in_subprocess("--tail-worker", spec, root / name, name)))
            report["tails"] = tails
        if "ray" in sections:
            rows = [r for r in _tail_rows(args.quick, args.seed)]
            zero = TailRow(0.0, 256, 2 if args.quick else 4, args.seed)
            log(f"ray: {len(rows)} latency rows + L=0, each run local, ray, ray, local ...")
            spec = {"rows": [asdict(r) for r in rows], "zero": asdict(zero), "folder": str(root / "ray")}
            report["ray"] = _in_subprocess("--ray-worker", spec, root / "ray", "ray section")

    report["machine"]["load_after"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report)


def _print_report(rep: dict[str, Any]) -> None:
    m = rep["machine"]
    print(f"Convergence throughput benchmark  ({m['cpus']} CPUs, Python {m['python']}, {m['platform']}"
          f"{', --quick' if rep['quick'] else ''})")
    print(f"1-minute load average: {m['load_before']:.1f} before, {m['load_after']:.1f} after "
          f"(other processes competing for the {m['cpus']} CPUs slow the event loop; see 'bare anyio %')")
    if "throughput" in rep:
        print("\nPython target, fixed latency, persistence on (SQLite WAL), metrics exact_match + latency")
        hdr = (f"{'C':>5} {'L ms':>5} {'evals/gen':>9} {'evals':>7} {'wall s':>7} {'evals/s':>9} {'limit C/L':>9} "
               f"{'% limit':>8} {'overhead ms/eval':>17} {'CPU us/eval':>12} {'in-gen %':>9} "
               f"{'bare anyio %':>13} {'% of bare':>10}")
        print(hdr)
        print("-" * len(hdr))
        for r in rep["throughput"]:
            print(f"{r['concurrency']:>5} {r['latency_ms']:>5g} {r['per_generation']:>9} {r['evaluations']:>7} "
                  f"{r['wall_s']:>7.2f} "
                  f"{r['evals_per_s']:>9.0f} {r['limit_per_s']:>9.0f} {r['pct_of_limit']:>7.1f}% "
                  f"{r['overhead_ms_per_eval']:>17.2f} {r['cpu_us_per_eval']:>12.0f} "
                  f"{r['in_generation_pct']:>8.1f}% {r['bare_pct_of_limit']:>12.1f}% {r['pct_of_bare']:>9.1f}%")
        print("in-gen %: share of the wall time spent inside generations (the rest: proposals, selection,\n"
              "persisting generations). bare anyio %: the same C, L, generation size and count with no\n"
              "framework at all (C tasks awaiting anyio.sleep(L), a barrier per generation): what the event\n"
              "loop, the generation barrier and this machine allow right now. % of bare: ours / that ceiling.")
        for r in rep["throughput"]:
            if r["concurrency"] == 256:
                ok = r["pct_of_limit"] >= TARGET_FRACTION * 100
                print(f"target >= {TARGET_FRACTION:.0%} of C/L at C=256, {r['per_generation']} evals/generation: "
                      f"{'met' if ok else 'MISSED'} ({r['pct_of_limit']:.1f}%; the bare ceiling is "
                      f"{r['bare_pct_of_limit']:.1f}%)")
    if "cpu" in rep:
        c = rep["cpu"]
        print(f"\nPure framework cost (L=0, C={c['concurrency']}, {c['evaluations']} evaluations): "
              f"{c['evals_per_s']:.0f} evals/s, {c['cpu_us_per_eval']:.0f} us CPU/eval "
              f"(all threads), {c['wall_us_per_eval']:.0f} us wall/eval; bare anyio: "
              f"{c['bare_anyio_evals_per_s']:.0f} evals/s")
    if "memory" in rep:
        mm = rep["memory"]
        ok = mm["peak_rss_mb"] < mm["target_mb"]
        print(f"\nPeak RSS of a {mm['evaluations']:,}-evaluation run (L={mm['latency_ms']:g} ms, "
              f"C={mm['concurrency']}, {mm['wall_s']:.1f} s, {mm['evals_per_s']:.0f} evals/s): "
              f"{mm['peak_rss_mb']:.0f} MB  (target < {mm['target_mb']:.0f} MB: {'met' if ok else 'MISSED'})")
    if "cli" in rep:
        print("\nCLI start-up (wall, fresh process)")
        for c in rep["cli"]:
            heavy = ", ".join(c["heavy_imported"]) or "none"
            print(f"  {c['command'][:60]:<60} best {c['best_s'] * 1000:6.0f} ms  median "
                  f"{c['median_s'] * 1000:6.0f} ms  exit {c['exit']}  heavy imports: {heavy}")
    if "tails" in rep:
        _print_tails(rep["tails"], rep["seed"])
    if "ray" in rep:
        _print_ray(rep["ray"])


def _print_tails(rows: list[dict[str, Any]], seed: int) -> None:
    print(f"\nLong-tailed latencies (median {TAIL_MEDIAN_S * 1000:g} ms, stream seed {seed}): "
          f"{TAIL_CONFIGS} configurations x {TAIL_CASES} cases per generation,\n"
          "racing / early stopping / society off, persistence on. Rates are calls / call window.")
    hdr = (f"{'latency':<14} {'C':>4} {'gens':>4} {'calls':>6} {'mean ms':>7} {'p99 ms':>7} {'ideal/s':>8} "
           f"{'bare/s':>8} {'% ideal':>8} {'async/s':>8} {'% bare':>7} {'gen/s':>8} {'% bare':>7}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        a, g = r["async"], r["generational"]
        print(f"{r['latency']:<14} {r['concurrency']:>4} {r['generations']:>4} {r['calls']:>6} "
              f"{r['mean_latency_ms']:>7.1f} {r['p99_latency_ms']:>7.0f} {r['ideal_per_s']:>8.0f} "
              f"{r['bare_per_s']:>8.0f} {r['bare_pct_of_ideal']:>7.1f}% {a['per_s']:>8.0f} "
              f"{a['pct_of_bare']:>6.1f}% {g['per_s']:>8.0f} {g['pct_of_bare']:>6.1f}%")
    print("ideal: C / mean of the latencies used. bare: C workers pulling the same calls from one queue, no\n"
          "barrier, same latencies in the same order, same process (mean of a run before and one after the\n"
          "loop's). async / gen: Optimizer.run() in execution.mode async / generational. Window: first target\n"
          "call's start to the last call's return (store open/close and run bookkeeping outside it).")
    for r in rows:
        for mode in TAIL_MODES:
            m = r[mode]
            if m["calls"] != r["calls"] or m["errors"] or m["status"] != "finished":
                print(f"WARNING {r['latency']}, C={r['concurrency']}, {mode}: {m['calls']} calls of {r['calls']}, "
                      f"{m['errors']} errors, status {m['status']}")
    for mode in TAIL_MODES:
        worst = min(rows, key=lambda r: r[mode]["pct_of_bare"])
        ok = worst[mode]["pct_of_bare"] >= TARGET_FRACTION * 100
        print(f"target >= {TARGET_FRACTION:.0%} of the bare pool in every row, {mode}: {'met' if ok else 'MISSED'} "
              f"(lowest {worst[mode]['pct_of_bare']:.1f}%: {worst['latency']}, C={worst['concurrency']})")
    for r in rows:
        if r["sigma"] == 0 and r["concurrency"] == 256:
            parts = [f"{mode} {r[mode]['pct_of_ideal']:.1f}%" for mode in TAIL_MODES]
            ok = r["async"]["pct_of_ideal"] >= TARGET_FRACTION * 100
            print(f"target >= {TARGET_FRACTION:.0%} of C/L at C=256, fixed latency, {r['per_generation']} "
                  f"calls/generation (async): {'met' if ok else 'MISSED'} ({', '.join(parts)}; bare pool "
                  f"{r['bare_pct_of_ideal']:.1f}%)")


if __name__ == "__main__":
    main()
