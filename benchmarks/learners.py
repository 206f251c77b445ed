"""Society learners at a fixed budget: fixed shares vs the synergy actor-critic vs the PPO learner.

What it measures: on the same tasks, budgets and run seeds, the best score each arm reaches, and
the learner's CPU time per generation (``time.thread_time()`` around the learner's ``update``,
which runs in a worker thread; this script limits torch to one thread so that figure is the whole cost;
a real run leaves torch's thread count as it is, and the same work may then spread over more threads).

Arms:

* ``fixed``: the roster's starting shares for the whole run, no ``society.learner``;
* ``synergy``: ``society.learner: {plugin: synergy, algorithm: actor_critic}``;
* ``ppo``: ``society.learner: {plugin: ppo}`` (default options: it boosts one agent's share and
  sets ``evolution.operator`` / ``evolution.strength`` / ``bandit.exploration``).

Both learners keep what they learned per study (synergy in ``learners/<study>`` next to the
database, PPO in the database), so each is measured twice:

* cold: the first run of a fresh study, once per evaluation seed;
* trained: K training runs of one study (their own run seeds), then a copy of the trained study
  (database and learner files) per evaluation seed, one run each, so every evaluation run starts
  from the same trained state and none learns from another. This is repeated for R training
  replicates (different training seeds); a seed's trained score is the mean over replicates.

``fixed`` learns nothing across runs (runs of a study share nothing else here: ``warm_start: 0``),
so its cold and trained scores are the same runs. Every arm uses the same evaluation seeds, so the
``vs fixed`` columns are paired differences (mean +- standard error over evaluation seeds).

Tasks (generational mode, racing and early stopping off, elite size 1, a fixed number of
generations; ``budget.max_calls`` = (population + (generations - 1) x (population - 1)) x cases,
exactly what those generations spend; ``early_stopping.min_improvement: 0``, because the synergy
learner otherwise stops runs on its own prediction even with early stopping off). The script
checks, and prints, that every run of a task spent the same calls and generations:

* ``llm_noisy``, ``cats_noisy``: the noisy LLM-like problems of ``benchmarks/noisy_problems.py``
  (each configuration is 30 Bernoulli case calls); the score is the *true* (noise-free) value of
  the configuration the run returns. Society: evolution 0.35, bandit 0.25, tpe 0.25, random 0.15.
* ``smooth``: a deterministic rotated, ill-conditioned bowl in 6 continuous parameters
  (score 1 / (1 + d), maximum 1.0), one case. The same society.
* ``dominant``: the rigged task of ``benchmarks/synergy.py`` (climber / stray / random agents; only
  the climber helps), a sanity check that a learner can find a clear signal. Its YAML is
  ``synergy.py``'s (generations only, no ``max_calls``). PPO has only its boost decision there
  (those agents have no controls).

Printed per task and arm: cold best, trained best (mean +- se over evaluation seeds), the paired
difference to fixed shares, the learner's CPU ms per generation, and diagnostics (mean shares of
the evaluation runs; PPO's chosen actions, and "mean max prob": the mean over its decisions of
the largest probability of each head, 1 / choices for a uniform head, 1.0 for a collapsed one).

    python benchmarks/learners.py            # full: K=20, R=3, 6 eval seeds, 696 runs (7-9 min on 2 cores)
    python benchmarks/learners.py --quick    # smoke run: K=3, R=1, 2 eval seeds, half the generations (~20 s)
    python benchmarks/learners.py --json     # the same as one JSON document (every run included)
    python benchmarks/learners.py --json-out /tmp/learners.json   # the table, and the JSON document to a file
    python benchmarks/learners.py --train-runs 20 --replicates 1 --eval-seeds 5 --tasks smooth dominant
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import noisy_problems as npb  # noqa: E402
from search_quality import _param_yaml  # noqa: E402
from synergy import TASKS as RIGGED, _yaml as rigged_yaml  # noqa: E402

ARMS = {"fixed": None, "synergy": "{plugin: synergy, algorithm: actor_critic}", "ppo": "{plugin: ppo}"}
SOCIETY = {"evolution": 0.35, "bandit": 0.25, "tpe": 0.25, "random": 0.15}
EVAL_SEED0 = 1000
TRAIN_SEED0 = 50_000

# --------------------------------------------------------------------------- the smooth task

SMOOTH_DIM = 6
_rng = np.random.default_rng(20261126)  # fixed: the same function on every run and machine
_ROT = np.linalg.qr(_rng.normal(size=(SMOOTH_DIM, SMOOTH_DIM)))[0]
_CENTRE = _rng.uniform(0.2, 0.8, SMOOTH_DIM)
_SCALE = np.geomspace(4.0, 200.0, SMOOTH_DIM)  # ill-conditioned: condition number 50


def smooth_quality(p: dict[str, Any]) -> float:
    x = np.asarray([p[f"x{i}"] for i in range(SMOOTH_DIM)]) - _CENTRE
    z = _ROT @ x
    return float(1.0 / (1.0 + float(np.sum(_SCALE * z * z))))


async def smooth_target(params: dict[str, Any], input: Any) -> float:
    return smooth_quality(params)


def dominant(params: dict[str, Any], input: Any) -> str:
    """The rigged ``dominant`` task's target (``benchmarks/synergy.py``: x / 1000 on a narrow ridge)."""
    x, y = params["x"], params["y"]
    return str(x / 1000 * max(0.0, 1 - abs(y - x) / 10))


value = npb.score
"""The rigged task's metric (``float(output)``), named as ``synergy._yaml`` expects."""

# --------------------------------------------------------------------------- tasks


NO_STOP = "{enabled: false, min_improvement: 0}"
"""Early stopping off, and min_improvement 0: the synergy learner's own stop (``stop_reason``: predicted
improvement below ``early_stopping.min_improvement``) ends runs even with early stopping disabled, and
every arm must spend the same budget."""


def _no_stop(text: str) -> str:
    old = "early_stopping: {enabled: false}"
    assert old in text, "benchmarks/synergy.py's YAML changed"
    return text.replace(old, f"early_stopping: {NO_STOP}")


def _society_yaml(problem: str, space: dict[str, tuple[Any, ...]], target: str, cases: int, seed: int,
                  gens: int, pop: int) -> str:
    params = "\n".join(f"    {k}: {_param_yaml(v)}" for k, v in space.items())
    inputs = "\n".join(f"      - {{input: {j}}}" for j in range(cases))
    return (
        f"study: learners-{problem}\n"
        f'target: {{type: python, function: "{target}", retry: {{max_retries: 0}}}}\n'
        "storage: {path: db.sqlite}\n"
        "search_space:\n  parameters:\n" + params + "\n"
        "evaluation:\n  test_cases:\n    inline:\n" + inputs + "\n"
        '  metrics:\n    success: {function: "noisy_problems:score"}\n'
        "optimization:\n"
        f"  seed: {seed}\n  warm_start: 0\n"
        f"  evolution: {{population_size: {pop}, generations: {gens}, elite_size: 1}}\n"
        f"  execution: {{mode: generational, early_stopping: {NO_STOP}}}\n"
        "  racing: {enabled: false}\n"
        f"  budget: {{max_calls: {(pop + (gens - 1) * (pop - 1)) * cases}}}\n"  # exactly what the run spends
        f"society:\n  enabled: true\n  agents: {json.dumps(SOCIETY)}\n"
    )


def _noisy(problem: str) -> dict[str, Any]:
    prob = npb.PROBLEMS[problem]
    return {"yaml": lambda seed, g, p: _society_yaml(problem, prob.space, f"noisy_problems:target_{problem}",
                                                     npb.N_CASES, seed, g, p),
            "judge": lambda best: prob.true_value(best.config), "society": None, "noisy": True,
            "gens": 12, "pop": 8}


TASKS: dict[str, dict[str, Any]] = {
    "llm_noisy": _noisy("llm_noisy"),
    "cats_noisy": _noisy("cats_noisy"),
    "smooth": {"yaml": lambda seed, g, p: _society_yaml(
                   "smooth", {f"x{i}": ("float", 0.0, 1.0, 0.001) for i in range(SMOOTH_DIM)},
                   "learners:smooth_target", 1, seed, g, p),
               "judge": lambda best: best.score, "society": None, "noisy": False, "gens": 15, "pop": 10},
    "dominant": {"yaml": lambda seed, g, p: _no_stop(rigged_yaml("dominant", "learners", seed, None, g, p)),
                 "judge": lambda best: best.score, "society": RIGGED["dominant"]["agents"], "noisy": False,
                 "gens": 16, "pop": 9},
}

# --------------------------------------------------------------------------- one run

_CPU: list[float] = []
"""Thread CPU seconds of every learner ``update`` in this process."""


def _time_learners() -> None:
    """Wrap each run's learner ``update`` with a thread-time timer (whatever the plugin)."""
    from convergence.engine.learner_driver import LearnerDriver

    if getattr(LearnerDriver, "_bench_timed", False):
        return
    original = LearnerDriver.start.__func__  # type: ignore[attr-defined]

    async def start(cls: Any, *args: Any, **kwargs: Any) -> Any:
        driver = await original(cls, *args, **kwargs)
        update = driver.learner.update

        def timed(result: Any) -> Any:
            t0 = time.thread_time()
            try:
                return update(result)
            finally:
                _CPU.append(time.thread_time() - t0)

        driver.learner.update = timed
        return driver

    LearnerDriver.start = classmethod(start)  # type: ignore[method-assign,assignment]
    LearnerDriver._bench_timed = True  # type: ignore[attr-defined]


async def _run(workdir: Path, task: str, arm: str, seed: int, gens: int, pop: int) -> dict[str, Any]:
    from convergence.config.loader import parse_config
    from convergence.core.space import SearchSpace
    from convergence.engine.loop import Optimizer
    from convergence.society.society import Society
    from convergence.storage.store import Store

    spec = TASKS[task]
    text = spec["yaml"](seed, gens, pop)
    if ARMS[arm] is not None:
        text += f"  learner: {ARMS[arm]}\n"
    path = workdir / "optimization.yaml"
    path.write_text(text)
    loaded = parse_config(text, path)
    society = None
    if spec["society"] is not None:
        agents = spec["society"]()
        society = Society([(a, 1 / len(agents)) for a in agents], SearchSpace.from_config(loaded.config.search_space))
    if spec["noisy"]:
        npb.reset(seed)
    before = len(_CPU)
    store = await Store.open(loaded.db_path)
    try:
        out = await Optimizer(loaded, store, society=society).run()
        log = await store.learner_log(out.run_id)
    finally:
        await store.close()
    cpu = _CPU[before:]
    return {"task": task, "arm": arm, "seed": seed, "best": spec["judge"](out.best) if out.best else 0.0,
            "observed": out.best.score if out.best else 0.0, "calls": out.total_calls,
            "generations": out.generations_run, "cpu_ms": [1000 * c for c in cpu], "log": _digest(log)}


def _digest(log: list[dict[str, Any]]) -> dict[str, Any]:
    """What the learner did in a run: mean shares, and PPO's actions and head peakedness."""
    if not log:
        return {}
    agents = list(log[0]["shares"])
    out: dict[str, Any] = {"shares": {a: statistics.mean(r["shares"].get(a, 0.0) for r in log) for a in agents}}
    actions = [r["detail"].get("action") for r in log if r["detail"].get("action")]
    if actions:
        out["actions"] = {h: dict(Counter(a[h] for a in actions)) for h in actions[0]}
        probs = [r["detail"]["probabilities"] for r in log if r["detail"].get("probabilities")]
        out["max_prob"] = {h: statistics.mean(max(p[h].values()) for p in probs) for h in probs[0]}
        out["updates"] = log[-1]["detail"].get("updates")
    return out


def _job(job: tuple[str, str, str, int, list[int], list[int], int, int]) -> list[dict[str, Any]]:
    """One job in a worker process: ``single`` (one run on a fresh study) or ``trained`` (train, then
    evaluate every seed on its own copy of the trained study)."""
    import anyio
    import torch

    torch.set_num_threads(1)
    _time_learners()
    kind, task, arm, replicate, train_seeds, eval_seeds, gens, pop = job
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix=f"learners-{task}-{arm}-") as wd:
        root = Path(wd)
        if kind == "single":
            for s in eval_seeds:
                d = root / f"cold-{s}"
                d.mkdir()
                rows.append({**anyio.run(_run, d, task, arm, s, gens, pop), "phase": "cold"})
            return rows
        study = root / "study"
        study.mkdir()
        for i, s in enumerate(train_seeds):
            rows.append({**anyio.run(_run, study, task, arm, s, gens, pop), "phase": "train", "index": i,
                         "replicate": replicate})
        for s in eval_seeds:
            d = root / f"eval-{s}"
            shutil.copytree(study, d)
            rows.append({**anyio.run(_run, d, task, arm, s, gens, pop), "phase": "trained",
                         "replicate": replicate})
            shutil.rmtree(d)
    return rows


# --------------------------------------------------------------------------- summary


def _mse(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return math.nan, math.nan
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else 0.0
    return statistics.mean(xs), se


def _per_seed(rows: list[dict[str, Any]], phase: str) -> dict[int, float]:
    by: dict[int, list[float]] = {}
    for r in rows:
        if r["phase"] == phase:
            by.setdefault(r["seed"], []).append(r["best"])
    return {s: statistics.mean(v) for s, v in by.items()}


def summarize(rows: list[dict[str, Any]], tasks: list[str], train_runs: int) -> list[dict[str, Any]]:
    table = []
    for task in tasks:
        fixed = _per_seed([r for r in rows if r["task"] == task and r["arm"] == "fixed"], "cold")
        for arm in ARMS:
            mine = [r for r in rows if r["task"] == task and r["arm"] == arm]
            if not mine:
                continue
            cold = _per_seed(mine, "cold")
            trained = cold if arm == "fixed" else _per_seed(mine, "trained")
            seeds = sorted(fixed)
            cpu = [c for r in mine for c in r["cpu_ms"]]
            train = [r for r in mine if r["phase"] == "train"]
            head = [r["best"] for r in train if r["index"] < max(1, train_runs // 3)]
            tail = [r["best"] for r in train if r["index"] >= train_runs - max(1, train_runs // 3)]
            evals = [r for r in mine if r["phase"] == ("cold" if arm == "fixed" else "trained")]
            table.append({
                "task": task, "arm": arm, "n_eval": len(seeds),
                "cold": _mse([cold[s] for s in seeds]), "trained": _mse([trained[s] for s in seeds]),
                "cold_vs_fixed": _mse([cold[s] - fixed[s] for s in seeds]),
                "trained_vs_fixed": _mse([trained[s] - fixed[s] for s in seeds]),
                "calls_per_run": sorted({r["calls"] for r in mine}),
                "generations_per_run": sorted({r["generations"] for r in mine}),
                "cpu_ms_per_gen": statistics.mean(cpu) if cpu else None,
                "train_first_third": statistics.mean(head) if head else None,
                "train_last_third": statistics.mean(tail) if tail else None,
                "eval_shares": _mean_dicts([r["log"].get("shares", {}) for r in evals]),
                "eval_actions": _sum_counts([r["log"].get("actions", {}) for r in evals]),
                "eval_max_prob": _mean_dicts([r["log"].get("max_prob", {}) for r in evals]),
                "updates_after_training": max((r["log"].get("updates") or 0 for r in train), default=None),
            })
    return table


def _mean_dicts(ds: list[dict[str, float]]) -> dict[str, float]:
    ds = [d for d in ds if d]
    return {k: statistics.mean(d.get(k, 0.0) for d in ds) for k in ds[0]} if ds else {}


def _sum_counts(ds: list[dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    out: dict[str, Counter[str]] = {}
    for d in ds:
        for head, counts in d.items():
            out.setdefault(head, Counter()).update(counts)
    return {h: dict(c.most_common()) for h, c in out.items()}


def _fmt(ms: tuple[float, float], signed: bool = False) -> str:
    m, se = ms
    return f"{m:+.3f} ± {se:.3f}" if signed else f"{m:.3f} ± {se:.3f}"


def print_table(table: list[dict[str, Any]]) -> None:
    print("| task | arm | cold best | trained best | cold vs fixed | trained vs fixed | learner CPU ms/gen |")
    print("|---|---|--:|--:|--:|--:|--:|")
    for t in table:
        cpu = "-" if t["cpu_ms_per_gen"] is None else f"{t['cpu_ms_per_gen']:.1f}"
        same = t["arm"] == "fixed"
        print(f"| {t['task']} | {t['arm']} | {_fmt(t['cold'])} | {_fmt(t['trained'])} | "
              f"{'-' if same else _fmt(t['cold_vs_fixed'], True)} | "
              f"{'-' if same else _fmt(t['trained_vs_fixed'], True)} | {cpu} |")
    uneven = [t for t in table if len(t["calls_per_run"]) > 1 or len(t["generations_per_run"]) > 1]
    for t in uneven:
        print(f"WARNING: {t['task']} / {t['arm']}: runs spent different budgets: calls {t['calls_per_run']}, "
              f"generations {t['generations_per_run']}")
    if not uneven:
        print("\nEvery run spent its whole budget: " + ", ".join(
            f"{t['task']} {t['calls_per_run'][0]} calls / {t['generations_per_run'][0]} generations"
            for t in table if t["arm"] == "fixed"))
    print("\nDiagnostics (evaluation runs of the trained studies; fixed: its runs):")
    for t in table:
        shares = ", ".join(f"{a} {s:.2f}" for a, s in t["eval_shares"].items()) or "fixed"
        line = f"  {t['task']:<11}{t['arm']:<8} mean shares: {shares}"
        if t["train_first_third"] is not None:
            line += f"; training best, first third {t['train_first_third']:.3f} -> last {t['train_last_third']:.3f}"
        print(line)
        if t["eval_actions"]:
            print(f"  {'':<19}PPO updates after training: {t['updates_after_training']}")
            for head, counts in t["eval_actions"].items():
                n = sum(counts.values())
                text = ", ".join(f"{k} {v / n:.0%}" for k, v in counts.items())
                print(f"  {'':<19}{head}: {text} (mean max prob {t['eval_max_prob'].get(head, math.nan):.2f})")


# --------------------------------------------------------------------------- main


def _sources() -> dict[str, str]:
    """A content hash of each learner plugin's source files (the plugins change; which code was measured?)."""
    import hashlib
    import importlib.util

    out = {}
    for name in ("convergence_synergy", "convergence_ppo", "convergence"):
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(next(iter(spec.submodule_search_locations)))
        files = [root / "society" / "learner.py", root / "engine" / "learner_driver.py"] if name == "convergence" \
            else sorted(root.rglob("*.py"))
        h = hashlib.sha256()
        for f in files:
            h.update(f.read_bytes() if f.exists() else b"")
        out[name] = h.hexdigest()[:12]
    return out


def _progress(i: int, n: int, started: float, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    print(f"  job {i + 1}/{n} done ({rows[0]['task']} {rows[0]['arm']}, {len(rows)} runs), "
          f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 training runs, 1 replicate, 2 eval seeds, "
                                                          "shorter runs")
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    ap.add_argument("--json-out", default=None, help="also write the JSON document to this file")
    ap.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    ap.add_argument("--train-runs", type=int, default=20, help="K: training runs per study (default 20)")
    ap.add_argument("--replicates", type=int, default=3, help="R: training replicates (default 3)")
    ap.add_argument("--eval-seeds", type=int, default=6, help="held-out evaluation seeds (default 6)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()
    if args.quick:
        args.train_runs, args.replicates, args.eval_seeds = 3, 1, 2
    started = time.perf_counter()
    eval_seeds = list(range(EVAL_SEED0, EVAL_SEED0 + args.eval_seeds))
    jobs: list[tuple[str, str, str, int, list[int], list[int], int, int]] = []
    shape = {t: (max(4, TASKS[t]["gens"] // 2) if args.quick else TASKS[t]["gens"], TASKS[t]["pop"])
             for t in args.tasks}
    for task in args.tasks:
        gens, pop = shape[task]
        for arm in ARMS:
            if arm != "fixed":
                for r in range(args.replicates):
                    train = [TRAIN_SEED0 + 1000 * r + k for k in range(args.train_runs)]
                    jobs.append(("trained", task, arm, r, train, eval_seeds, gens, pop))
        for arm in ARMS:  # short jobs last, so the pool's two workers finish together
            for s in eval_seeds:
                jobs.append(("single", task, arm, 0, [], [s], gens, pop))
    sources = _sources()
    if not args.json:
        print(f"Source hashes: {sources}")
        print(f"Society learners: tasks {', '.join(args.tasks)}; K = {args.train_runs} training runs x "
              f"R = {args.replicates} replicates, {args.eval_seeds} evaluation seeds, {len(jobs)} jobs on "
              f"{args.workers} worker(s)", flush=True)
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            results = [_progress(i, len(jobs), started, r) for i, r in enumerate(pool.map(_job, jobs, chunksize=1))]
    else:
        results = [_progress(i, len(jobs), started, _job(j)) for i, j in enumerate(jobs)]
    rows = [r for rs in results for r in rs]
    changed = sources != _sources()
    if changed:
        print(f"WARNING: learner sources changed during the run: {sources} -> {_sources()}", file=sys.stderr)
    table = summarize(rows, args.tasks, args.train_runs)
    wall = time.perf_counter() - started
    doc = {"tasks": {t: {"generations": g, "population": p} for t, (g, p) in shape.items()},
           "train_runs": args.train_runs, "replicates": args.replicates, "eval_seeds": eval_seeds,
           "quick": args.quick, "wall_seconds": wall, "sources": sources, "sources_changed_during_run": changed,
           "table": table, "runs": rows}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(doc, indent=1, default=str))
    if args.json:
        print(json.dumps(doc, indent=1, default=str))
        return
    print()
    print_table(table)
    print(f"\n{len(rows)} runs, wall {wall:.0f} s")


if __name__ == "__main__":
    main()
