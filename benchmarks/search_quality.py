"""Search quality on a fixed evaluation budget: Convergence vs random search vs Optuna.

Every method gets the same number of configuration evaluations (the budget)
on the same deterministic objective, and we compare the best score each one
found. Every number printed is measured when the script runs.

Methods
-------
* Convergence, through its real API (``parse_config`` -> ``Store.open`` ->
  ``Optimizer.run``), with ``algorithm`` = ``mab_evolution``, ``genetic``,
  ``mab_only`` and ``random`` (uniform random search, the baseline). The
  objective is a Python target module written to a temp dir
  (``target: {type: python, function: "sq_objectives_target:<name>"}``) that
  returns the score as its output; a custom metric ``module:function`` turns
  the output into the metric value (``float(output)``). One test case, one
  metric, early stopping off, ``warm_start: 0``, a fresh SQLite file per run,
  ``budget.max_calls`` = the budget (one call per configuration), and enough
  generations to spend it. Population size ``round(1.25 * sqrt(budget))``
  (10 for 60, 14 for 120), elite size 1, every other setting at its default.
* Optuna's TPE sampler (default settings, seeded) and Optuna's RandomSampler
  as a sanity check, ``n_trials`` = the budget, the same objective and the
  same grid (``suggest_categorical`` / ``suggest_float(step=)`` /
  ``suggest_int(step=)``). Optuna may re-evaluate a configuration it already
  tried; that counts against its budget, as it would with a paid target.

Objectives (plain Python functions below, deterministic, scores in [0, 1],
global maximum 1.0):
* ``llm_table``: prompt style x model from a scored table with an
  interaction (chain-of-thought is the best style only on the largest model
  and the worst on small ones), a smooth temperature bump whose centre
  depends on the model, and a max_tokens factor whose knee depends on the
  style. 5 x 4 x 31 x 7 = 4,340 configurations.
* ``narrow``: a broad hill (max 0.74) with a narrow needle (max 1.0) on one
  template only, in temperature (step 0.01), top_p (step 0.01) and an
  integer max_tokens (16..1024 step 16). 6 x 201 x 51 x 64 = 3.9 M
  configurations.
* ``many_cats``: many categorical values: 24 prompt templates x 8 models x
  6 system prompts x 4 stop sequences x 11 temperatures (50,688
  configurations), additive main effects plus sparse prompt x model and
  system x prompt interactions from fixed pseudo-random tables.

Statistics: per objective and budget, the mean, std and median of the best
score over seeds, how often the global optimum was hit, the mean rank across
methods (rank within each seed index, 1 = best, ties averaged), and a
one-sided Mann-Whitney U test of "method > Convergence random search" (scipy
if installed; otherwise the normal approximation with tie correction,
computed here with numpy).

    python benchmarks/search_quality.py             # full: budgets 60, 120; 30 seeds (~1.5-3 min on 2 cores)
    python benchmarks/search_quality.py --quick     # budget 60, 4 seeds (< 1 min)
    python benchmarks/search_quality.py --json      # the same numbers as one JSON document
    python benchmarks/search_quality.py --seeds 20 --budgets 30 60 120 --workers 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

# --------------------------------------------------------------------------- objectives
#
# Plain functions ``f(params) -> float in [0, 1]``. The same function object
# is called by the Convergence target module and by the Optuna objective.

# llm_table ------------------------------------------------------------------

STYLES = ["bare", "qa", "few_shot", "instruct", "cot"]
MODELS = ["tiny", "small", "medium", "large"]
QUALITY = {  # style -> quality per model (tiny, small, medium, large)
    "bare": [0.20, 0.30, 0.40, 0.50],
    "qa": [0.30, 0.42, 0.52, 0.60],
    "few_shot": [0.45, 0.60, 0.72, 0.80],
    "instruct": [0.25, 0.45, 0.65, 0.85],
    "cot": [0.10, 0.25, 0.55, 1.00],
}
BEST_TEMP = {"tiny": 0.2, "small": 0.3, "medium": 0.5, "large": 0.7}
TOKENS_NEEDED = {"bare": 64, "qa": 64, "few_shot": 128, "instruct": 128, "cot": 512}
MAX_TOKENS = [32, 64, 128, 256, 512, 1024, 2048]


def llm_table(p: dict[str, Any]) -> float:
    quality = QUALITY[p["style"]][MODELS.index(p["model"])]
    temp = 0.4 + 0.6 * math.exp(-(((p["temperature"] - BEST_TEMP[p["model"]]) / 0.25) ** 2))
    need, mt = TOKENS_NEEDED[p["style"]], p["max_tokens"]
    tokens = (mt / need) ** 1.5 if mt < need else 1.0 - 0.04 * math.log2(mt / need)  # truncation vs latency
    return quality * temp * tokens


# narrow ---------------------------------------------------------------------

TEMPLATES = ["plain", "role", "json", "checklist", "socratic", "expert"]
TEMPLATE_W = {"plain": 0.70, "role": 0.80, "json": 0.75, "checklist": 0.85, "socratic": 0.90, "expert": 1.00}
_NARROW_MAX = 0.8121487687632378
"""Max of the raw score (at expert, T=0.37, top_p=0.83, max_tokens=384); checked in main()."""


def _narrow_raw(p: dict[str, Any]) -> float:
    t, tp, mt = p["temperature"], p["top_p"], p["max_tokens"]
    broad = (
        math.exp(-(((t - 0.6) / 0.5) ** 2))
        * math.exp(-(((tp - 0.9) / 0.25) ** 2))
        * math.exp(-(((math.log2(mt) - 8.0) / 2.0) ** 2))
    )
    needle = 0.0
    if p["template"] == "expert":
        needle = math.exp(-(((t - 0.37) / 0.04) ** 2 + ((tp - 0.83) / 0.03) ** 2 + ((mt - 384) / 64) ** 2))
    return 0.6 * TEMPLATE_W[p["template"]] * broad + 0.4 * needle


def narrow(p: dict[str, Any]) -> float:
    return _narrow_raw(p) / _NARROW_MAX


# many_cats ------------------------------------------------------------------

PROMPTS = [f"prompt_{i:02d}" for i in range(24)]
MODELS8 = ["m-a", "m-b", "m-c", "m-d", "m-e", "m-f", "m-g", "m-h"]
SYSTEMS = ["none", "helpful", "terse", "expert", "pirate", "careful"]
STOPS = ["none", "newline", "double_newline", "period"]
_r = random.Random(20240611)  # fixed tables: the same objective on every run and machine
PROMPT_Q = [_r.random() for _ in PROMPTS]
MODEL_Q = [_r.random() for _ in MODELS8]
AFFINITY = [[_r.random() ** 4 for _ in MODELS8] for _ in PROMPTS]  # sparse: few strong pairs
SYS_FIT = [[_r.random() ** 3 for _ in PROMPTS] for _ in SYSTEMS]
STOP_Q = [0.6, 1.0, 0.8, 0.3]
BEST_T8 = [_r.choice([0.0, 0.2, 0.4, 0.6]) for _ in MODELS8]
_MANY_MAX = 1.0  # replaced below by the exact maximum over the whole grid


def _many_raw(p: dict[str, Any]) -> float:
    i, j = PROMPTS.index(p["prompt"]), MODELS8.index(p["model"])
    s, k = SYSTEMS.index(p["system"]), STOPS.index(p["stop"])
    temp = 1.0 - abs(p["temperature"] - BEST_T8[j])
    return (
        0.20 * PROMPT_Q[i] + 0.15 * MODEL_Q[j] + 0.35 * AFFINITY[i][j]
        + 0.15 * SYS_FIT[s][i] + 0.05 * STOP_Q[k] + 0.10 * temp
    )


def _many_max() -> float:
    # separable given (prompt, model): maximise system, stop and temperature independently
    best = 0.0
    for i in range(len(PROMPTS)):
        sys_best = max(SYS_FIT[s][i] for s in range(len(SYSTEMS)))
        for j in range(len(MODELS8)):
            v = 0.20 * PROMPT_Q[i] + 0.15 * MODEL_Q[j] + 0.35 * AFFINITY[i][j] + 0.15 * sys_best + 0.05 + 0.10
            best = max(best, v)
    return best


_MANY_MAX = _many_max()


def many_cats(p: dict[str, Any]) -> float:
    return _many_raw(p) / _MANY_MAX


# search spaces --------------------------------------------------------------
# One description, turned into Convergence YAML and into Optuna suggestions.
# ("cat", values) | ("float", low, high, step) | ("values", [ints]) | ("int", low, high, step)

SPACES: dict[str, dict[str, tuple[Any, ...]]] = {
    "llm_table": {
        "style": ("cat", STYLES),
        "model": ("cat", MODELS),
        "temperature": ("float", 0.0, 1.5, 0.05),
        "max_tokens": ("values", MAX_TOKENS),
    },
    "narrow": {
        "template": ("cat", TEMPLATES),
        "temperature": ("float", 0.0, 2.0, 0.01),
        "top_p": ("float", 0.5, 1.0, 0.01),
        "max_tokens": ("int", 16, 1024, 16),
    },
    "many_cats": {
        "prompt": ("cat", PROMPTS),
        "model": ("cat", MODELS8),
        "system": ("cat", SYSTEMS),
        "stop": ("cat", STOPS),
        "temperature": ("float", 0.0, 1.0, 0.1),
    },
}
OBJECTIVES: dict[str, Callable[[dict[str, Any]], float]] = {
    "llm_table": llm_table, "narrow": narrow, "many_cats": many_cats,
}

CONVERGENCE_METHODS = ["mab_evolution", "genetic", "mab_only", "random"]
OPTUNA_METHODS = ["optuna_tpe", "optuna_random"]
BASELINE = "random"

# --------------------------------------------------------------------------- Convergence runs

TARGET_MODULE = '''
"""Benchmark target: returns the objective's score as the output."""
import sys
sys.path.insert(0, {bench_dir!r})
import search_quality as _sq

{functions}

def score(output, case, call, args):
    return float(output)
'''


def _param_yaml(spec: tuple[Any, ...]) -> str:
    kind = spec[0]
    if kind == "cat":
        return json.dumps({"type": "categorical", "values": list(spec[1])})
    if kind == "float":
        return json.dumps({"type": "continuous", "min": spec[1], "max": spec[2], "step": spec[3]})
    if kind == "values":
        return json.dumps({"type": "discrete", "values": list(spec[1])})
    return json.dumps({"type": "discrete", "min": spec[1], "max": spec[2], "step": spec[3]})


def population_for(budget: int) -> int:
    return max(4, round(1.25 * math.sqrt(budget)))


def convergence_yaml(objective: str, algorithm: str, budget: int, seed: int) -> str:
    params = "\n".join(f"    {k}: {_param_yaml(v)}" for k, v in SPACES[objective].items())
    pop = population_for(budget)
    gens = 2 + math.ceil(budget / max(1, pop - 1))  # more than enough; max_calls stops the run
    return textwrap.dedent(
        f"""\
        study: sq-{objective}
        target: {{type: python, function: "sq_objectives_target:{objective}", retry: {{max_retries: 0}}}}
        storage: {{path: db.sqlite}}
        search_space:
          parameters:
        """
    ) + params + textwrap.dedent(
        f"""
        evaluation:
          test_cases:
            inline:
              - {{input: "x", expected: "1"}}
          metrics:
            score: {{function: "sq_objectives_target:score"}}
        optimization:
          algorithm: {algorithm}
          seed: {seed}
          warm_start: 0
          evolution: {{population_size: {pop}, generations: {gens}, elite_size: 1}}
          execution: {{concurrency: 8, early_stopping: {{enabled: false}}}}
          budget: {{max_calls: {budget}}}
        """
    )


def _target_dir() -> Path:
    d = Path(os.environ.get("SQ_TARGET_DIR") or Path(tempfile.gettempdir()) / f"convergence-sq-{os.getpid()}")
    d.mkdir(exist_ok=True)
    mod = d / "sq_objectives_target.py"
    if not mod.exists():
        funcs = "\n".join(
            f"async def {name}(params, input):\n    return _sq.{name}(params)\n" for name in OBJECTIVES
        )
        mod.write_text(TARGET_MODULE.format(bench_dir=str(Path(__file__).resolve().parent), functions=funcs))
    return d


def run_convergence(objective: str, algorithm: str, budget: int, seed: int) -> dict[str, Any]:
    import anyio

    from convergence.config.loader import parse_config
    from convergence.engine.loop import Optimizer
    from convergence.storage.store import Store

    tdir = _target_dir()
    if str(tdir) not in sys.path:
        sys.path.insert(0, str(tdir))

    async def go(workdir: Path) -> dict[str, Any]:
        path = workdir / "optimization.yaml"
        text = convergence_yaml(objective, algorithm, budget, seed)
        path.write_text(text)
        loaded = parse_config(text, path)
        store = await Store.open(workdir / "db.sqlite")
        try:
            out = await Optimizer(loaded, store).run()
        finally:
            await store.close()
        evaluated = [t for t in out.trials if t.n_cases == 1 and t.status != "partial"]
        scores = [t.score for t in evaluated]
        return {"best": max(scores), "n_evals": len(scores), "n_distinct": len({t.config_hash for t in evaluated}),
                "best_config": out.best.config if out.best else None}

    with tempfile.TemporaryDirectory(prefix="sq-run-") as wd:
        return anyio.run(go, Path(wd))


# --------------------------------------------------------------------------- Optuna runs


def run_optuna(objective: str, method: str, budget: int, seed: int) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space, fn = SPACES[objective], OBJECTIVES[objective]
    samplers = optuna.samplers
    sampler = samplers.TPESampler(seed=seed) if method == "optuna_tpe" else samplers.RandomSampler(seed=seed)

    def suggest(trial: Any) -> dict[str, Any]:
        p: dict[str, Any] = {}
        for name, spec in space.items():
            if spec[0] in ("cat", "values"):
                p[name] = trial.suggest_categorical(name, list(spec[1]))
            elif spec[0] == "float":
                p[name] = round(trial.suggest_float(name, spec[1], spec[2], step=spec[3]), 6)
            else:
                p[name] = trial.suggest_int(name, spec[1], spec[2], step=spec[3])
        return p

    seen: set[str] = set()

    def objective_fn(trial: Any) -> float:
        p = suggest(trial)
        seen.add(json.dumps(p, sort_keys=True))
        return fn(p)

    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective_fn, n_trials=budget)
    return {"best": study.best_value, "n_evals": budget, "n_distinct": len(seen), "best_config": study.best_params}


# --------------------------------------------------------------------------- jobs


def run_job(job: tuple[str, str, int, int]) -> dict[str, Any]:
    objective, method, budget, seed = job
    t0 = time.perf_counter()
    if method in CONVERGENCE_METHODS:
        res = run_convergence(objective, method, budget, seed)
    else:
        res = run_optuna(objective, method, budget, seed)
    res.update(objective=objective, method=method, budget=budget, seed=seed, seconds=time.perf_counter() - t0)
    return res


# --------------------------------------------------------------------------- statistics


def _rankdata(x: np.ndarray) -> np.ndarray:
    """Average ranks (1 = smallest), ties share the mean rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=float)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def mann_whitney_greater(a: list[float], b: list[float]) -> tuple[float, float]:
    """One-sided Mann-Whitney U test of ``a > b``: (U of a, p-value)."""
    try:
        from scipy.stats import mannwhitneyu

        r = mannwhitneyu(a, b, alternative="greater")
        return float(r.statistic), float(r.pvalue)
    except ImportError:
        pass
    n1, n2 = len(a), len(b)
    x = np.asarray([*a, *b], dtype=float)
    ranks = _rankdata(x)
    u1 = ranks[:n1].sum() - n1 * (n1 + 1) / 2.0
    mu = n1 * n2 / 2.0
    _, counts = np.unique(x, return_counts=True)
    n = n1 + n2
    tie = float(((counts ** 3) - counts).sum())
    var = n1 * n2 / 12.0 * ((n + 1) - tie / (n * (n - 1)))
    if var <= 0:
        return u1, 1.0 if u1 <= mu else 0.0
    z = (u1 - mu - 0.5) / math.sqrt(var)  # continuity correction
    return u1, 0.5 * math.erfc(z / math.sqrt(2.0))


def summarize(results: list[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    tables = []
    keys = sorted({(r["objective"], r["budget"]) for r in results}, key=lambda k: (list(OBJECTIVES).index(k[0]), k[1]))
    for objective, budget in keys:
        by_method = {
            m: {r["seed"]: r for r in results
                if r["objective"] == objective and r["budget"] == budget and r["method"] == m}
            for m in methods
        }
        seeds = sorted(set.intersection(*(set(v) for v in by_method.values())))
        # rank within each seed index, 1 = best
        rank_sum = {m: 0.0 for m in methods}
        for s in seeds:
            vals = np.array([by_method[m][s]["best"] for m in methods])
            ranks = len(methods) + 1 - _rankdata(vals)
            for m, rk in zip(methods, ranks, strict=True):
                rank_sum[m] += rk
        base = [by_method[BASELINE][s]["best"] for s in seeds]
        rows = []
        for m in methods:
            best = np.array([by_method[m][s]["best"] for s in seeds])
            row = {
                "method": m, "n": len(seeds), "mean": float(best.mean()),
                "std": float(best.std(ddof=1)) if len(best) > 1 else 0.0,
                "median": float(np.median(best)), "hit_opt": float(np.mean(best >= 0.999)),
                "mean_rank": rank_sum[m] / max(1, len(seeds)),
                "distinct": float(np.mean([by_method[m][s]["n_distinct"] for s in seeds])),
                "seconds": float(np.mean([by_method[m][s]["seconds"] for s in seeds])),
            }
            if m != BASELINE:
                u, p = mann_whitney_greater(list(best), base)
                row["u_vs_random"], row["p_vs_random"] = u, p
            rows.append(row)
        tables.append({"objective": objective, "budget": budget, "rows": rows})
    return tables


def _verdict(row: dict[str, Any], base_mean: float) -> str:
    if row["method"] == BASELINE:
        return "(baseline)"
    p = row["p_vs_random"]
    if p < 0.001:
        return "better, p<0.001 **"
    if p < 0.01:
        return f"better, p={p:.3f} **"
    if p < 0.05:
        return f"better, p={p:.3f} *"
    if row["mean"] < base_mean:
        return f"worse on mean (p={p:.2f})"
    return f"not significant (p={p:.2f})"


def print_tables(tables: list[dict[str, Any]]) -> None:
    for t in tables:
        base_mean = next(r["mean"] for r in t["rows"] if r["method"] == BASELINE)
        print(f"\n### {t['objective']}, budget {t['budget']} evaluations, {t['rows'][0]['n']} seeds\n")
        print("| method | mean best | std | median | hit optimum | mean rank | distinct configs "
              "| vs random search (MWU, one-sided) |")
        print("|---|--:|--:|--:|--:|--:|--:|---|")
        for r in sorted(t["rows"], key=lambda r: r["mean_rank"]):
            name = r["method"] if r["method"].startswith("optuna") else f"convergence {r['method']}"
            print(f"| {name} | {r['mean']:.4f} | {r['std']:.4f} | {r['median']:.4f} | {100 * r['hit_opt']:.0f} % "
                  f"| {r['mean_rank']:.2f} | {r['distinct']:.1f} | {_verdict(r, base_mean)} |")


def overall(tables: list[dict[str, Any]], methods: list[str]) -> dict[str, float]:
    return {m: float(np.mean([r["mean_rank"] for t in tables for r in t["rows"] if r["method"] == m])) for m in methods}


# --------------------------------------------------------------------------- main


def check_objectives() -> None:
    """The normalisers are right: each objective's maximum over its grid is 1.0."""
    m = max(llm_table({"style": s, "model": mo, "temperature": round(0.05 * i, 2), "max_tokens": mt})
            for s in STYLES for mo in MODELS for i in range(31) for mt in MAX_TOKENS)
    assert abs(m - 1.0) < 1e-9, m
    # narrow: elsewhere the score is at most 0.6 / _NARROW_MAX < 0.74; search the needle's neighbourhood
    m = max(narrow({"template": "expert", "temperature": round(0.01 * i, 2), "top_p": round(0.01 * j, 2),
                    "max_tokens": mt})
            for i in range(25, 50) for j in range(75, 92) for mt in range(256, 529, 16))
    assert abs(m - 1.0) < 1e-6, m
    m = max(many_cats({"prompt": p, "model": mo, "system": s, "stop": "newline",
                       "temperature": BEST_T8[MODELS8.index(mo)]})
            for p in PROMPTS for mo in MODELS8 for s in SYSTEMS)
    assert abs(m - 1.0) < 1e-9, m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="budget 60, 4 seeds (< 1 min)")
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per method (default 30; quick 4)")
    ap.add_argument("--budgets", type=int, nargs="+", default=None, help="evaluation budgets (default 60 120)")
    ap.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=list(OBJECTIVES))
    ap.add_argument("--methods", nargs="+", default=CONVERGENCE_METHODS + OPTUNA_METHODS,
                    choices=CONVERGENCE_METHODS + OPTUNA_METHODS)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed + seeds - 1")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()
    seeds = args.seeds or (4 if args.quick else 30)
    budgets = args.budgets or ([60] if args.quick else [60, 120])
    methods = list(args.methods)
    if BASELINE not in methods:
        methods.append(BASELINE)
    check_objectives()

    jobs = [(o, m, b, s) for o in args.objectives for b in budgets for m in methods
            for s in range(args.first_seed, args.first_seed + seeds)]
    jobs.sort(key=lambda j: (-j[2], j[1] != "optuna_tpe"))  # longest first
    started = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="convergence-sq-")
    os.environ["SQ_TARGET_DIR"] = tmp.name  # one target module for every worker, removed at the end
    if args.workers > 1:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            results = list(pool.map(run_job, jobs, chunksize=1))
    else:
        results = [run_job(j) for j in jobs]
    wall = time.perf_counter() - started
    tmp.cleanup()
    tables = summarize(results, methods)
    ranks = overall(tables, methods)
    import optuna

    meta = {
        "seeds": seeds, "first_seed": args.first_seed, "budgets": budgets, "objectives": args.objectives,
        "methods": methods,
        "workers": args.workers, "wall_seconds": wall, "population": {b: population_for(b) for b in budgets},
        "optuna": optuna.__version__, "python": sys.version.split()[0], "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(),
    }
    if args.json:
        out = {"meta": meta, "tables": tables, "overall_mean_rank": ranks, "runs": results}
        print(json.dumps(out, indent=2, default=str))
        return
    print(f"# Search quality: best score on a fixed budget ({seeds} seeds, budgets {budgets}, "
          f"{len(jobs)} runs in {wall:.0f} s on {args.workers} worker(s), load avg {meta['load_avg'][0]:.1f})")
    print_tables(tables)
    print("\n### Mean rank over all objectives and budgets (1 = best)\n")
    for m, r in sorted(ranks.items(), key=lambda kv: kv[1]):
        print(f"* {m}: {r:.2f}")
    print("\nMWU: one-sided Mann-Whitney U test that the method's best scores exceed Convergence random "
          "search's (* p < 0.05, ** p < 0.01)"
          + ("" if _has_scipy() else "; normal approximation, scipy not installed") + ".")


def _has_scipy() -> bool:
    try:
        import scipy  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
