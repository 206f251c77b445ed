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
  early stopping off, no progress events. The ideal is ``C / L``
  evaluations/s; the framework overhead per evaluation is
  ``wall * C / n_evals - L``: the time each concurrency slot spends on
  anything but the target.
* cpu: the same with ``L = 0`` at ``C = 256``: pure framework cost (process
  CPU time per evaluation, all threads, including the SQLite writer).
* memory: peak resident set (``ru_maxrss``) of a 100,000-evaluation run.
* cli: wall time of ``convergence --help`` and ``convergence validate`` and
  whether they imported litellm / weave / llama_cpp.

Targets (from the issue): >= 95 % of ``C / L`` at ``C = 256``; < 500 MB for
100,000 evaluations. They are reported, never asserted.

    python benchmarks/throughput.py            # full run (~1-2 min on 2 cores)
    python benchmarks/throughput.py --quick    # smoke run (seconds)
    python benchmarks/throughput.py --json     # machine-readable output
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
from typing import Any

import anyio

HEAVY_MODULES = ("litellm", "weave", "llama_cpp")
TARGET_FRACTION = 0.95
TARGET_MEMORY_MB = 500.0


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


# --------------------------------------------------------------------------- driver


def _spawn(scenario: Scenario, folder: Path, profile: str | None = None, *, bare: bool = True) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    spec = json.dumps({"scenario": asdict(scenario), "folder": str(folder), "profile": profile, "bare": bare})
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", spec], capture_output=True, text=True, check=False
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"scenario {scenario.name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


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
    ap.add_argument("--only", choices=["throughput", "cpu", "memory", "cli"], action="append",
                    help="run only these sections (repeatable)")
    ap.add_argument("--profile", metavar="DIR", help="write a pyinstrument profile of each run into DIR")
    ap.add_argument("--tracing", action="store_true",
                    help="set tracing.weave.enabled in every scenario (inactive without W&B credentials)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--cli-probe", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args.worker)
        return
    if args.cli_probe:
        spec = json.loads(args.cli_probe)
        _cli_probe(spec["argv"], spec["out"])
        return

    sections = set(args.only or ["throughput", "cpu", "memory", "cli"])
    report: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                          "platform": sys.platform, "load_before": os.getloadavg()[0]},
                              "quick": args.quick, "tracing_enabled": args.tracing}
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


if __name__ == "__main__":
    main()
