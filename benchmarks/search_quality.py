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

Noisy mode (``--noisy``): LLM-like problems from ``benchmarks/noisy_problems.py``, where a configuration's
score is the mean of Bernoulli outcomes over 30 test cases. Every method gets B x 30 case calls
(B = 50, 100, 200 configuration-equivalents, plus 30, 40, 60 for Convergence alone) and is judged by the true
(noise-free) value of the configuration it returns: Optuna TPE's ``study.best_params`` (n_trials = B, a trial
= 30 draws) against Convergence's ``RunOutcome.best`` (30 inline cases, ``budget.max_calls`` = B x 30). The
headline row ``default`` sets nothing but seed and budget (the library's defaults; ``benchmarks/noisy_default.py``),
with one-change ablation rows; the older set-up rows (generational, racing and ``optimization.selection``
on/off) are kept. ``--reuse`` merges runs from earlier ``--json-out`` documents (``benchmarks/noisy_reuse.py``). Peers
(``benchmarks/noisy_peers.py``, the ``bench`` extra): Optuna TPE + WilcoxonPruner, SMAC3's algorithm
configuration facade and irace (R, through rpy2), each run as its documentation recommends; a peer that cannot
run here is skipped with a line saying why. Five problems: llm_noisy, needle_noisy, cats_noisy, cells_noisy
(few good cells in a large categorical space), heavy_noisy (heavy-tailed case difficulty).

    python benchmarks/search_quality.py --noisy           # 5 problems, every method, 20 seeds (many hours: SMAC takes
                                                          # minutes per run, TPE + WilcoxonPruner about one)
    python benchmarks/search_quality.py --noisy --quick   # budgets 50, 100 (+60), 3 seeds
    python benchmarks/search_quality.py --noisy --methods tpe tpe_mv convergence convergence_mab no_racing \
        no_selection neither                              # without the peers: ~2,200 runs, about 20-25 min
    python benchmarks/search_quality.py --noisy --json-out noisy.json   # tables, and every run as JSON
    python benchmarks/search_quality.py --noisy --methods default default-no_racing only_tpe --reuse peers/*.json
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
import warnings
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

    _bench_on_path()
    from noisy_problems import suggest as suggest_over

    def suggest(trial: Any) -> dict[str, Any]:
        return suggest_over(trial, space)

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


# --------------------------------------------------------------------------- noisy mode (--noisy)
#
# LLM-like problems (benchmarks/noisy_problems.py): a configuration's score is the mean of Bernoulli
# outcomes over 30 test cases, and every method is judged by the *true* (noise-free) value of the
# configuration it returns, at equal budgets counted in test-case calls (B configuration-equivalents
# = B * 30 calls).

NOISY_BUDGETS = [50, 100, 200]
REACH_BUDGET, REACH_OF = 60, 100
"""``convergence`` also runs at 60 configuration-equivalents: does it reach TPE's quality at 100 with 60 % of
the calls?"""
NOISY_SOCIETY = {"evolution": 0.4, "bandit": 0.3, "tpe": 0.3}
HEADLINE = "society"
"""Which Convergence set-up is "convergence" (the headline row): ``society`` (NOISY_SOCIETY) or ``mab``
(no society section: ``algorithm: mab_evolution``, evolution + bandit). See benchmarks/README.md for why."""
SELECTION_ON = {"estimate": "shrinkage", "confirm_top": 3, "confirm_share": 0.1, "stochastic": True}
SELECTION_OFF = {"estimate": "mean", "confirm_top": 0}
OPTUNA_NOISY = ["tpe", "tpe_mv"]
PEERS = ["tpe_wilcoxon", "smac", "irace"]
"""benchmarks/noisy_peers.py (the ``bench`` extra; irace also needs R): skipped, with a line saying why, where
they cannot run."""


def selection_available() -> bool:
    """Whether this Convergence has ``optimization.selection`` (noise-aware choice of the returned best)."""
    from convergence.config.models import OptimizationConfig

    return "selection" in OptimizationConfig.model_fields


def noisy_variants() -> dict[str, tuple[str, bool, bool | None]]:
    """Convergence rows: name -> (set-up, racing, selection); selection None = not emitted (not available)."""
    other = "mab" if HEADLINE == "society" else "society"
    if not selection_available():
        return {"convergence": (HEADLINE, True, None), f"convergence_{other}": (other, True, None),
                "no_racing": (HEADLINE, False, None)}
    return {"convergence": (HEADLINE, True, True), f"convergence_{other}": (other, True, True),
            "no_racing": (HEADLINE, False, True), "no_selection": (HEADLINE, True, False),
            "neither": (HEADLINE, False, False)}


def _peers() -> Any:
    _bench_on_path()
    import noisy_peers

    return noisy_peers


def noisy_methods() -> list[str]:
    """Every --noisy method, in table order: Optuna TPE, the peers, the ``default`` rows, the older set-ups."""
    _bench_on_path()
    import noisy_default

    return [*OPTUNA_NOISY, *PEERS, *noisy_default.ROWS, *noisy_variants()]


def head_method(methods: Any) -> str:
    """The headline Convergence row: ``default`` when it ran, else the older ``convergence`` set-up."""
    _bench_on_path()
    import noisy_default

    if noisy_default.HEAD not in methods and "convergence" in methods:
        return "convergence"
    return noisy_default.HEAD


def noisy_label(method: str) -> str:
    _bench_on_path()
    import noisy_default

    if method in noisy_default.ROWS:
        return noisy_default.label(method)
    if method in PEERS:
        return str(_peers().LABELS[method])
    if method == "tpe":
        return "Optuna TPE (best_params)"
    if method == "tpe_mv":
        return "Optuna TPE multivariate (best_params)"
    setup, racing, selection = noisy_variants()[method]
    who = "society evolution/bandit/tpe" if setup == "society" else "mab_evolution"
    sel = "" if selection is None else f", selection {'on' if selection else 'off'}"
    return f"{method}: {who}, racing {'on' if racing else 'off'}{sel}"


def noisy_yaml(problem: str, method: str, budget: int, seed: int) -> str:
    import noisy_default
    import noisy_problems as npb

    if method in noisy_default.ROWS:
        return noisy_default.yaml(problem, method, budget, seed, _param_yaml)
    setup, racing, selection = noisy_variants()[method]
    params = "\n".join(f"    {k}: {_param_yaml(v)}" for k, v in npb.PROBLEMS[problem].space.items())
    cases = "\n".join(f"      - {{input: {j}}}" for j in range(npb.N_CASES))
    pop = population_for(budget)
    gens = 5 + math.ceil(4 * budget / max(1, pop - 1))  # racing makes configurations cheaper; max_calls stops the run
    opt = [f"seed: {seed}", "warm_start: 0",
           f"evolution: {{population_size: {pop}, generations: {gens}, elite_size: 1}}",
           "execution: {mode: generational, concurrency: 8, early_stopping: {enabled: false}}",
           f"racing: {{enabled: {str(racing).lower()}}}",
           f"budget: {{max_calls: {budget * npb.N_CASES}}}"]
    if setup == "mab":
        opt.insert(0, "algorithm: mab_evolution")
    if selection is not None:
        opt.append(f"selection: {json.dumps(SELECTION_ON if selection else SELECTION_OFF)}")
    text = (
        f"study: sqn-{problem}\n"
        f'target: {{type: python, function: "noisy_problems:target_{problem}", retry: {{max_retries: 0}}}}\n'
        "storage: {path: db.sqlite}\n"
        "search_space:\n  parameters:\n" + params + "\n"
        "evaluation:\n  test_cases:\n    inline:\n" + cases + "\n"
        '  metrics:\n    success: {function: "noisy_problems:score"}\n'
        "optimization:\n" + "".join(f"  {line}\n" for line in opt)
    )
    if setup == "society":
        text += f"society: {{enabled: true, agents: {json.dumps(NOISY_SOCIETY)}}}\n"
    return text


def _bench_on_path() -> None:
    bench = str(Path(__file__).resolve().parent)
    if bench not in sys.path:
        sys.path.insert(0, bench)


def config_sha1(text: str) -> str:
    """Which YAML a Convergence run had (--reuse takes a run only when the row's YAML is still the same)."""
    import hashlib

    return hashlib.sha1(text.encode()).hexdigest()[:12]


def run_convergence_noisy(problem: str, method: str, budget: int, seed: int) -> dict[str, Any]:
    import anyio

    from convergence.config.loader import parse_config
    from convergence.engine.loop import Optimizer
    from convergence.storage.store import Store

    _bench_on_path()
    import noisy_problems as npb

    prob = npb.PROBLEMS[problem]
    npb.reset(seed)

    async def go(workdir: Path) -> dict[str, Any]:
        path = workdir / "optimization.yaml"
        text = noisy_yaml(problem, method, budget, seed)
        path.write_text(text)
        loaded = parse_config(text, path)
        store = await Store.open(workdir / "db.sqlite")
        optimizer = Optimizer(loaded, store)
        try:
            out = await optimizer.run()
        finally:
            await store.close()
        # racing's verdicts with the incumbent each was made against (older code does not record them)
        verdicts = getattr(optimizer.state.racer if optimizer.state else None, "abandons", None)
        evaluated = {t.config_hash: t.config for t in out.trials if t.n_cases > 0}
        true_of = {h: prob.true_value(c) for h, c in evaluated.items()}
        true_evaluated = list(true_of.values())
        best = out.best
        returned_true = prob.true_value(best.config) if best else float("nan")
        abandoned = [t for t in out.trials if t.status == "abandoned"]
        top = max(true_of, key=lambda h: true_of[h], default=None)
        return {
            "returned_config": best.config if best else None,
            "returned_true": returned_true,
            "returned_noisy": best.score if best else float("nan"),
            "returned_status": best.status if best else None,
            "returned_cases": best.n_cases if best else 0,
            "returned_repeats": getattr(best, "repeats", 0) if best else 0,
            "best_evaluated_true": max(true_evaluated, default=float("nan")),
            "calls": out.total_calls,
            "n_distinct": len(evaluated),
            "n_abandoned": len(abandoned),
            "abandoned_cases": float(np.mean([t.n_cases for t in abandoned])) if abandoned else None,
            "best_evaluated_abandoned": any(t.config_hash == top for t in abandoned),
            "abandoned_better_than_returned": sum(1 for t in abandoned if true_of[t.config_hash] > returned_true),
            "verdicts": len(verdicts) if verdicts is not None else None,
            "false_abandons": (sum(1 for a in verdicts if true_of[a.config_hash] >= true_of[a.incumbent])
                               if verdicts is not None else None),
            "returned_is_best_evaluated": abs(returned_true - max(true_evaluated, default=-1.0)) < 1e-12,
            "stop_reason": out.stop_reason,
            "config_sha1": config_sha1(text),
        }

    with tempfile.TemporaryDirectory(prefix="sqn-run-") as wd:
        return anyio.run(go, Path(wd))


def run_optuna_noisy(problem: str, method: str, budget: int, seed: int) -> dict[str, Any]:
    import optuna

    _bench_on_path()
    import noisy_problems as npb

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    prob = npb.PROBLEMS[problem]
    npb.reset(seed)
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=(method == "tpe_mv"))

    def objective_fn(trial: Any) -> float:
        p = npb.suggest(trial, prob.space)
        return sum(npb.draw(prob, p, j) for j in range(npb.N_CASES)) / npb.N_CASES

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multivariate=True is marked experimental
        study = optuna.create_study(direction="maximize", sampler=sampler)
        study.optimize(objective_fn, n_trials=budget)
    evaluated = {npb.config_key(t.params): t.params for t in study.trials}
    returned = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in study.best_params.items()}
    best_evaluated = max(prob.true_value(c) for c in evaluated.values())
    return {
        "returned_config": returned,
        "returned_true": prob.true_value(returned),
        "returned_noisy": study.best_value,
        "returned_status": "complete",
        "returned_cases": npb.N_CASES,
        "returned_repeats": 0,
        "best_evaluated_true": best_evaluated,
        "calls": budget * npb.N_CASES,
        "n_distinct": len(evaluated),
        "n_abandoned": 0,
        "abandoned_cases": None,
        "best_evaluated_abandoned": False,
        "abandoned_better_than_returned": 0,
        "verdicts": None,
        "false_abandons": None,
        "returned_is_best_evaluated": abs(prob.true_value(returned) - best_evaluated) < 1e-12,
        "stop_reason": f"{budget} trials",
    }


def run_noisy_job(job: tuple[str, str, int, int]) -> dict[str, Any]:
    problem, method, budget, seed = job
    t0 = time.perf_counter()
    if method in PEERS:
        res = getattr(_peers(), f"run_{method}")(problem, budget, seed)
    elif method in OPTUNA_NOISY:
        res = run_optuna_noisy(problem, method, budget, seed)
    else:
        res = run_convergence_noisy(problem, method, budget, seed)
    res.update(objective=problem, method=method, budget=budget, seed=seed, seconds=time.perf_counter() - t0)
    return res


def summarize_noisy(results: list[dict[str, Any]], optima: dict[str, float]) -> list[dict[str, Any]]:
    """One table per (problem, budget); each method's n is its own (reused peers may have other seeds), and
    the paired test against the headline row uses the seeds both have (its n is given)."""
    head = head_method({r["method"] for r in results})
    tables = []
    keys = sorted({(r["objective"], r["budget"]) for r in results}, key=lambda k: (list(optima).index(k[0]), k[1]))
    for problem, budget in keys:
        cell = [r for r in results if r["objective"] == problem and r["budget"] == budget]
        methods = [m for m in noisy_methods() if any(r["method"] == m for r in cell)]
        tpe = [r["returned_true"] for r in cell if r["method"] == "tpe"]
        ours = {r["seed"]: r["returned_true"] for r in cell if r["method"] == head}
        rows = []
        for m in methods:
            rs = sorted((r for r in cell if r["method"] == m), key=lambda r: r["seed"])
            true = np.array([r["returned_true"] for r in rs])
            abandoned = sum(r["n_abandoned"] for r in rs)
            row = {
                "method": m, "label": noisy_label(m), "n": len(rs), "seeds": [r["seed"] for r in rs],
                "mean_true": float(true.mean()), "std_true": float(true.std(ddof=1)) if len(rs) > 1 else 0.0,
                "mean_regret": float(np.mean(optima[problem] - true)),
                "mean_noisy": float(np.mean([r["returned_noisy"] for r in rs])),
                "mean_best_evaluated": float(np.mean([r["best_evaluated_true"] for r in rs])),
                "mean_gap": float(np.mean([r["best_evaluated_true"] - r["returned_true"] for r in rs])),
                "calls": float(np.mean([r["calls"] for r in rs])),
                "distinct": float(np.mean([r["n_distinct"] for r in rs])),
                "abandoned": float(np.mean([r["n_abandoned"] for r in rs])),
                "abandoned_share": float(np.mean([r["n_abandoned"] / max(1, r["n_distinct"]) for r in rs])),
                "returned_repeats": float(np.mean([r["returned_repeats"] for r in rs])),
                "abandoned_cases": float(np.mean(ac)) if (ac := [r["abandoned_cases"] for r in rs
                                                                 if r["abandoned_cases"] is not None]) else None,
                "best_evaluated_abandoned": float(np.mean([r["best_evaluated_abandoned"] for r in rs])),
                "abandoned_better_than_returned": float(np.mean([r["abandoned_better_than_returned"] for r in rs])),
                "abandoned_better_share": (sum(r["abandoned_better_than_returned"] for r in rs) / abandoned
                                           if abandoned else None),
                "returned_is_best_evaluated": float(np.mean([r["returned_is_best_evaluated"] for r in rs])),
                "false_abandon_share": (
                    sum(r["false_abandons"] for r in checked) / max(1, sum(r["verdicts"] for r in checked))
                    if (checked := [r for r in rs if r.get("verdicts") is not None]) else None),
                "returned_not_complete": sum(r["returned_status"] != "complete" for r in rs),
                "seconds": float(np.mean([r["seconds"] for r in rs])),
                "reused": sum("reused_from" in r for r in rs),
            }
            if m != "tpe" and tpe:
                row["u_vs_tpe"], row["p_vs_tpe"] = mann_whitney_greater(list(true), tpe)
            pairs = [(ours[r["seed"]], r["returned_true"]) for r in rs if r["seed"] in ours]
            if m != head and pairs:
                row["p_head_greater"] = paired_greater([a for a, _ in pairs], [b for _, b in pairs])
                row["n_paired"] = len(pairs)
            rows.append(row)
        tables.append({"objective": problem, "budget": budget, "optimum": optima[problem], "head": head,
                       "rows": rows})
    return tables


def paired_greater(a: list[float], b: list[float]) -> float:
    """One-sided paired test that ``a`` > ``b`` (pairs = the same seed): Wilcoxon signed-rank, zeros split."""
    from scipy.stats import wilcoxon

    d = np.asarray(a) - np.asarray(b)
    if not np.any(d):
        return 1.0
    return float(wilcoxon(d, alternative="greater", zero_method="zsplit").pvalue)


def noisy_verdicts(tables: list[dict[str, Any]], results: list[dict[str, Any]],
                   budgets: list[int] | None = None) -> dict[str, Any]:
    """The headline row vs TPE per budget, the headline at 60 vs TPE at 100, every method over the main
    ``budgets`` (default: those TPE ran at), and the summary against the best peer (:func:`peer_summary`)."""
    head = head_method({r["method"] for r in results})

    def cell(problem: str, budget: int, method: str) -> list[float]:
        return [r["returned_true"] for r in sorted(results, key=lambda r: r["seed"])
                if r["objective"] == problem and r["budget"] == budget and r["method"] == method]

    problems = list(dict.fromkeys(t["objective"] for t in tables))
    main_budgets = sorted(set(budgets) if budgets else {t["budget"] for t in tables
                                                         if any(r["method"] == "tpe" for r in t["rows"])})
    per_budget = []
    for b in main_budgets:
        items = []
        for p in problems:
            ours, tpe = cell(p, b, head), cell(p, b, "tpe")
            if not ours or not tpe:
                continue
            _, pv = mann_whitney_greater(ours, tpe)
            items.append({"objective": p, "ours": float(np.mean(ours)), "tpe": float(np.mean(tpe)),
                          "diff": float(np.mean(ours) - np.mean(tpe)), "p_greater": pv})
        if items:
            per_budget.append({"budget": b, "items": items, "wins": sum(i["diff"] > 0 for i in items),
                               "significant": sum(i["p_greater"] < 0.05 for i in items), "n": len(items)})
    reach = []
    for p in problems:
        ours, tpe = cell(p, REACH_BUDGET, head), cell(p, REACH_OF, "tpe")
        calls = [r["calls"] for r in results
                 if r["objective"] == p and r["budget"] == REACH_BUDGET and r["method"] == head]
        if not ours or not tpe:
            continue
        _, p_better = mann_whitney_greater(ours, tpe)
        _, p_worse = mann_whitney_greater(tpe, ours)
        reach.append({"objective": p, "ours_at": REACH_BUDGET, "tpe_at": REACH_OF, "ours": float(np.mean(ours)),
                      "tpe": float(np.mean(tpe)), "diff": float(np.mean(ours) - np.mean(tpe)),
                      "p_ours_greater": p_better, "p_tpe_greater": p_worse,
                      "call_share": float(np.mean(calls)) / (REACH_OF * 30)})
    main = [t for t in tables if t["budget"] in main_budgets]
    cells = [(t["objective"], t["budget"]) for t in main]
    methods = [m for m in noisy_methods() if any(r["method"] == m for t in main for r in t["rows"])]
    overall = []
    for m in methods:
        rows = [r for t in main for r in t["rows"] if r["method"] == m]
        item: dict[str, Any] = {
            "method": m, "cells": len(rows), "mean_true": float(np.mean([r["mean_true"] for r in rows])),
            "mean_best_evaluated": float(np.mean([r["mean_best_evaluated"] for r in rows])),
            "mean_gap": float(np.mean([r["mean_gap"] for r in rows])),
            "returned_is_best_evaluated": float(np.mean([r["returned_is_best_evaluated"] for r in rows])),
        }
        if m != head and head in methods:
            diffs = [float(np.mean(cell(p, b, head)) - np.mean(cell(p, b, m)))
                     for p, b in cells if cell(p, b, m) and cell(p, b, head)]
            item["head_ahead"] = sum(d > 0 for d in diffs)
            item["head_minus_this"] = float(np.mean(diffs)) if diffs else float("nan")
        overall.append(item)
    return {"head": head, "budgets": main_budgets, "per_budget": per_budget, "reach": reach, "overall": overall,
            "summary": peer_summary(tables, head, main_budgets)}


REACH_PEER_BUDGET = 100
"""The summary's reach: the smallest budget at which the headline row's mean regret is at most the best
peer's at this budget (aim: at most 60 % of its calls)."""


def peer_summary(tables: list[dict[str, Any]], head: str, budgets: list[int]) -> dict[str, Any]:
    """Across problems, per budget: each method's mean regret, the best peer (lowest mean regret over the
    problems the headline row ran), the headline's regret relative to it (aim: >= 20 % lower), the problems it
    wins against it; and the reach (REACH_PEER_BUDGET)."""
    peers = [*OPTUNA_NOISY, *PEERS]

    def regrets(budget: int) -> dict[str, dict[str, dict[str, Any]]]:
        """method -> problem -> its row, at ``budget``."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for t in tables:
            if t["budget"] == budget:
                for r in t["rows"]:
                    out.setdefault(r["method"], {})[t["objective"]] = r
        return out

    def best_peer(by: dict[str, dict[str, dict[str, Any]]], problems: list[str]) -> str | None:
        complete = [m for m in peers if m in by and all(p in by[m] for p in problems)]
        return min(complete, key=lambda m: np.mean([by[m][p]["mean_regret"] for p in problems]), default=None)

    per_budget = []
    for b in budgets:
        by = regrets(b)
        problems = sorted(by.get(head, {}))
        if not problems:
            continue
        mean_regret = {m: float(np.mean([rows[p]["mean_regret"] for p in problems if p in rows]))
                       for m, rows in by.items()}
        complete = {m: all(p in rows for p in problems) for m, rows in by.items()}
        peer = best_peer(by, problems)
        seeds = {m: min(rows[p]["n"] for p in problems if p in rows) for m, rows in by.items()}
        item: dict[str, Any] = {"budget": b, "problems": problems, "mean_regret": mean_regret,
                                "all_problems": complete, "min_seeds": seeds, "best_peer": peer}
        if peer is not None:
            wins = [p for p in problems if by[head][p]["mean_regret"] < by[peer][p]["mean_regret"]]
            significant = [p for p in wins if by[peer][p].get("p_head_greater", 1.0) < 0.05]
            item.update(relative=1.0 - mean_regret[head] / mean_regret[peer] if mean_regret[peer] else float("nan"),
                        won=wins, won_significant=significant,
                        n_paired={p: by[peer][p].get("n_paired", 0) for p in problems})
        per_budget.append(item)
    reach: dict[str, Any] = {}
    at = regrets(REACH_PEER_BUDGET)
    problems = sorted(at.get(head, {}))
    peer = best_peer(at, problems) if problems else None
    if peer is not None:
        target = float(np.mean([at[peer][p]["mean_regret"] for p in problems]))
        ours = {}
        for b in sorted({t["budget"] for t in tables}):
            by = regrets(b).get(head, {})
            if all(p in by for p in problems):
                ours[b] = (float(np.mean([by[p]["mean_regret"] for p in problems])),
                           float(np.mean([by[p]["calls"] for p in problems])))
        reached = [b for b, (r, _) in ours.items() if r <= target]
        peer_calls = float(np.mean([at[peer][p]["calls"] for p in problems]))
        first = min(reached, default=None)
        per_problem = {}
        for p in problems:
            hit = [b for b in sorted(ours) if regrets(b)[head][p]["mean_regret"] <= at[peer][p]["mean_regret"]]
            per_problem[p] = min(hit, default=None)
        reach = {"peer": peer, "peer_budget": REACH_PEER_BUDGET, "peer_mean_regret": target,
                 "peer_calls": peer_calls, "head_mean_regret": {b: r for b, (r, _) in ours.items()},
                 "budget": first, "calls_share": ours[first][1] / peer_calls if first is not None else None,
                 "per_problem": per_problem}
    return {"per_budget": per_budget, "reach": reach}


def _p(p: float | None, n: int | None = None) -> str:
    if p is None:
        return ""
    return f"p={p:.3f}" + (" *" if p < 0.05 else "") + ("" if n is None else f" (n={n})")


def print_noisy(tables: list[dict[str, Any]], verdicts: dict[str, Any]) -> None:
    head = verdicts["head"]
    for t in tables:
        ns = sorted({r["n"] for r in t["rows"]})
        print(f"\n### {t['objective']}, budget {t['budget']} configuration-equivalents "
              f"({t['budget'] * 30} case calls), {'/'.join(map(str, ns))} seeds; grid optimum {t['optimum']:.4f}\n")
        print("| method | n | true value of returned (mean ± std) | regret | regret of best evaluated "
              "| loss at selection | configs seen | calls used | abandoned share | cases at abandonment "
              "| abandoned truly better than returned (share of abandoned) | abandoned while truly >= the incumbent "
              "(false abandons, share) | s/run | vs TPE (MWU) "
              f"| {head} > this (paired Wilcoxon, n) |")
        print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|")
        for r in sorted(t["rows"], key=lambda r: -r["mean_true"]):
            cases = "-" if r["abandoned_cases"] is None else f"{r['abandoned_cases']:.1f}"
            better = "-" if r["abandoned_better_share"] is None else f"{100 * r['abandoned_better_share']:.0f} %"
            false = "-" if r["false_abandon_share"] is None else f"{100 * r['false_abandon_share']:.1f} %"
            paired = _p(r.get("p_head_greater"), r.get("n_paired"))
            print(f"| {r['label']} | {r['n']} | {r['mean_true']:.4f} ± {r['std_true']:.4f} | {r['mean_regret']:.4f} "
                  f"| {t['optimum'] - r['mean_best_evaluated']:.4f} | {r['mean_gap']:.4f} | {r['distinct']:.1f} "
                  f"| {r['calls']:.0f} | {100 * r['abandoned_share']:.0f} % | {cases} | {better} | {false} "
                  f"| {r['seconds']:.1f} | {_p(r.get('p_vs_tpe'))} | {paired} |")
    summary = verdicts["summary"]
    if summary["per_budget"]:
        print(f"\n### Summary over problems: {head} vs the best peer (mean regret; lower is better)\n")
        methods = [m for m in noisy_methods() if any(m in i["mean_regret"] for i in summary["per_budget"])]
        print("| budget | problems | " + " | ".join(methods) + f" | best peer | {head} vs best peer "
              "(relative regret) | problems won (significant) |")
        print("|--:|--:|" + "--:|" * len(methods) + "---|--:|---|")
        for i in summary["per_budget"]:
            vals = [("-" if m not in i["mean_regret"] else f"{i['mean_regret'][m]:.4f}"
                     + ("" if i["all_problems"][m] else " (some)")) for m in methods]
            rel = won = "-"
            if i["best_peer"] is not None:
                rel = f"{100 * i['relative']:+.0f} % lower" if i["relative"] >= 0 else \
                    f"{-100 * i['relative']:.0f} % higher"
                won = f"{len(i['won'])} of {len(i['problems'])} ({len(i['won_significant'])})"
            peer = "-" if i["best_peer"] is None else f"{i['best_peer']} (n>={i['min_seeds'][i['best_peer']]})"
            print(f"| {i['budget']} | {len(i['problems'])} | " + " | ".join(vals) + f" | {peer} | {rel} | {won} |")
        print("\n'(some)': the method did not run on every problem of the row (its mean is over those it ran). "
              "n>=: the fewest seeds the best peer has in a cell. Aim: the relative regret at least 20 % lower.")
    reach = summary["reach"]
    if reach:
        got = reach["budget"]
        print(f"\n### Reach: the smallest budget at which {head} matches {reach['peer']} at "
              f"{reach['peer_budget']} (mean regret {reach['peer_mean_regret']:.4f})\n")
        print(" ".join(f"{head}@{b}: {r:.4f};" for b, r in reach["head_mean_regret"].items()))
        print(f"\nreached at budget {got}, {100 * reach['calls_share']:.0f} % of the peer's calls (aim: <= 60 %)"
              if got is not None else f"\nnot reached at any budget {head} ran")
        print("per problem: " + ", ".join(f"{p}: {b if b is not None else 'not reached'}"
                                          for p, b in reach["per_problem"].items()))
    print(f"\n### {head} vs Optuna TPE (true value of the returned configuration, mean over seeds)\n")
    print(f"| budget | problem | {head} | TPE | difference | p ({head} > TPE, MWU one-sided) |")
    print("|--:|---|--:|--:|--:|--:|")
    for pb in verdicts["per_budget"]:
        for i in pb["items"]:
            print(f"| {pb['budget']} | {i['objective']} | {i['ours']:.4f} | {i['tpe']:.4f} | {i['diff']:+.4f} "
                  f"| {i['p_greater']:.3f} |")
    print()
    for pb in verdicts["per_budget"]:
        print(f"* budget {pb['budget']}: {head} ahead on mean in {pb['wins']} of {pb['n']} problems "
              f"({pb['significant']} significant at p < 0.05)")
    if verdicts["reach"]:
        print(f"\n### {head} at {REACH_BUDGET} vs TPE at {REACH_OF} configuration-equivalents\n")
        print(f"| problem | {head}@{REACH_BUDGET} | TPE@{REACH_OF} | difference | calls used / TPE@{REACH_OF}'s | "
              f"p ({head} > TPE) | p (TPE > {head}) |")
        print("|---|--:|--:|--:|--:|--:|--:|")
        for i in verdicts["reach"]:
            print(f"| {i['objective']} | {i['ours']:.4f} | {i['tpe']:.4f} | {i['diff']:+.4f} | "
                  f"{100 * i['call_share']:.0f} % | {i['p_ours_greater']:.3f} | {i['p_tpe_greater']:.3f} |")
    print(f"\n### Every method over the problem x budget cells of budgets {verdicts['budgets']}\n")
    print("| method | cells | mean true value of returned | mean best evaluated (true) | mean returned vs best "
          f"evaluated | returned = best evaluated | {head} ahead in (cells) | {head} minus this (mean) |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for i in verdicts["overall"]:
        ahead = (f"{i['head_ahead']} | {i['head_minus_this']:+.4f}" if "head_ahead" in i else "- | -")
        print(f"| {noisy_label(i['method'])} | {i['cells']} | {i['mean_true']:.4f} | {i['mean_best_evaluated']:.4f} "
              f"| -{i['mean_gap']:.4f} | {100 * i['returned_is_best_evaluated']:.0f} % | {ahead} |")


def code_state() -> dict[str, Any]:
    """Which Convergence code ran: git HEAD, whether convergence/ differs from it, a hash of the sources of the
    package imported (and of the learner plugins', which the learner rows run)."""
    import hashlib
    import importlib.util
    import subprocess

    import convergence

    def sources_sha1(package: Path) -> str:
        digest = hashlib.sha1()
        for f in sorted(package.rglob("*.py")):
            digest.update(str(f.relative_to(package.parent)).encode() + b"\0" + f.read_bytes())
        return digest.hexdigest()[:12]

    root = Path(__file__).resolve().parent.parent
    plugins = {}
    for name in ("convergence_synergy", "convergence_ppo"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin is not None:
            plugins[name] = sources_sha1(Path(spec.origin).parent)

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = git("diff", "--name-only", "HEAD", "--", "convergence")
    untracked = git("ls-files", "--others", "--exclude-standard", "--", "convergence")
    return {"head": git("rev-parse", "--short", "HEAD"),
            "sources_sha1": sources_sha1(Path(convergence.__file__).resolve().parent), "plugins_sha1": plugins,
            "uncommitted": [*changed.splitlines(), *untracked.splitlines()]}


def peer_versions(methods: list[str]) -> dict[str, str]:
    """Installed versions of the peers that ran (irace: the R package's)."""
    from importlib.metadata import version

    out = {}
    if "smac" in methods:
        out["smac"] = version("smac")
    if "irace" in methods:
        from rpy2.robjects import r

        out["rpy2"] = version("rpy2")
        out["irace"] = str(r('as.character(packageVersion("irace"))')[0])
        out["R"] = str(r("R.version.string")[0])
    return out


def noisy_jobs(problems: list[str], methods: list[str], budgets: list[int],
               seeds: range) -> list[tuple[str, str, int, int]]:
    """Every (problem, method, budget, seed), plus the headline rows at the reach budgets when 100 is run."""
    import noisy_default

    jobs = [(p, m, b, s) for p in problems for b in budgets for m in methods for s in seeds]
    extra = {"convergence": [REACH_BUDGET], noisy_default.HEAD: noisy_default.REACH_BUDGETS}
    for m, reach in extra.items():
        if m in methods and REACH_OF in budgets:
            jobs += [(p, m, b, s) for b in reach if b not in budgets for p in problems for s in seeds]
    slow = {"smac": 0, "tpe_wilcoxon": 1}
    jobs.sort(key=lambda j: (slow.get(j[1], 2), -j[2], j[1] not in OPTUNA_NOISY))  # longest first
    return jobs


def noisy_main(args: argparse.Namespace) -> None:
    _bench_on_path()
    import noisy_default
    import noisy_problems as npb
    import noisy_reuse

    problems = args.objectives or list(npb.PROBLEMS)
    known = noisy_methods()
    methods = args.methods or known
    for name in [*problems, *methods]:
        if name not in npb.PROBLEMS and name not in known:
            raise SystemExit(f"--noisy: unknown problem or method {name!r} (problems: {', '.join(npb.PROBLEMS)}; "
                             f"methods: {', '.join(known)})")
    seeds = args.seeds or (3 if args.quick else 20)
    budgets = args.budgets or ([50, 100] if args.quick else NOISY_BUDGETS)
    seed_range = range(args.first_seed, args.first_seed + seeds)
    code_before = code_state()
    reused = noisy_reuse.load(args.reuse or [], code={k: code_before[k] for k in ("sources_sha1", "plugins_sha1")},
                              code_free={*OPTUNA_NOISY, *PEERS}, known=set(known), problems=problems,
                              n_cases=npb.N_CASES, config_sha1=lambda k: config_sha1(noisy_yaml(*k)))
    for line in reused.messages:
        print(line, file=sys.stderr)
    jobs = [j for j in noisy_jobs(problems, methods, budgets, seed_range) if j not in reused.runs]
    skipped = {}
    for m in dict.fromkeys(j[1] for j in jobs):
        why = (_peers().unavailable(m) if m in PEERS else
               noisy_default.unavailable(m) if m in noisy_default.ROWS else None)
        if why:
            skipped[m] = why
            print(f"skipping {m}: {why}", file=sys.stderr)
    jobs = [j for j in jobs if j[1] not in skipped]
    if not jobs and not reused.runs:
        raise SystemExit("--noisy: nothing to run (every method asked for was skipped, see above)")
    ran = list(dict.fromkeys(j[1] for j in jobs))
    started = time.perf_counter()
    if args.workers > 1:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            results = list(pool.map(run_noisy_job, jobs, chunksize=1))
    else:
        results = [run_noisy_job(j) for j in jobs]
    wall = time.perf_counter() - started
    results += list(reused.runs.values())
    optima = {p: npb.PROBLEMS[p].optimum for p in problems}
    tables = summarize_noisy(results, optima)
    verdicts = noisy_verdicts(tables, results, budgets)
    import optuna

    in_tables = [m for m in known if any(r["method"] == m for r in results)]
    meta = {
        "mode": "noisy", "seeds": seeds, "first_seed": args.first_seed, "budgets": budgets,
        "reach_budget": REACH_BUDGET, "reach_budgets": noisy_default.REACH_BUDGETS, "problems": problems,
        "methods": in_tables, "labels": {m: noisy_label(m) for m in in_tables}, "head": verdicts["head"],
        "selection_available": selection_available(),
        "headline": HEADLINE, "society": NOISY_SOCIETY, "selection_on": SELECTION_ON, "selection_off": SELECTION_OFF,
        "n_cases": npb.N_CASES, "optima": optima,
        "optimum_configs": {p: npb.PROBLEMS[p].optimum_config for p in problems},
        "population": {b: population_for(b) for b in sorted({*budgets, REACH_BUDGET})},
        "code": code_before, "code_changed_during_run": code_state()["sources_sha1"] != code_before["sources_sha1"],
        "workers": args.workers, "wall_seconds": wall, "runs_here": len(jobs), "runs_reused": len(reused.runs),
        "reused": reused.files, "optuna": optuna.__version__, "peers_skipped": skipped,
        "peer_versions": {**reused.peer_versions, **peer_versions(ran)},
        "python": sys.version.split()[0], "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
    }
    document = {"meta": meta, "tables": tables, "verdicts": verdicts, "runs": results}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(document, indent=2, default=str))
    if args.json:
        print(json.dumps(document, indent=2, default=str))
        return
    print(f"# Noisy search quality: true value of the returned configuration ({seeds} seeds "
          f"{seed_range.start}..{seed_range.stop - 1}, budgets {budgets} configuration-equivalents x "
          f"{npb.N_CASES} cases, {len(jobs)} runs in {wall:.0f} s on {args.workers} worker(s)"
          f"{f' + {len(reused.runs)} reused' if reused.runs else ''}, "
          f"load avg {meta['load_avg'][0]:.1f})")
    code = meta["code"]
    print(f"\nConvergence code: git {code['head']}"
          + (f" + {len(code['uncommitted'])} uncommitted file(s) in convergence/" if code["uncommitted"] else "")
          + f", sources sha1 {code['sources_sha1']}"
          + (" (CHANGED during the run: the runs may mix two versions)." if meta["code_changed_during_run"] else "."))
    for f in reused.files:
        print(f"\nReused {f['taken']} run(s) from {f['path']} (Convergence sources {f['code_sha']})"
              + (f"; refused {f['refused']} Convergence run(s) made by other code" if f["refused"] else "") + ".")
    for m, why in skipped.items():
        print(f"\n{m} skipped: {why}.")
    if meta["peer_versions"]:
        print(f"\nPeer versions: {meta['peer_versions']}.")
    if not meta["selection_available"]:
        print("\noptimization.selection is not in this Convergence: the selection on/off rows are left out, "
              "and the Convergence rows run the library's default selection of the returned best.")
    print(f"\nThe {noisy_default.HEAD} rows run the library's defaults (only seed and budget set; the default "
          "async mode is not seed-deterministic). The older rows: population per budget "
          f"{meta['population']}; elite 1; generational, concurrency 8.")
    print_noisy(tables, verdicts)
    print("\nTrue value = mean over the 30 cases of the success probability (noise-free). Regret = grid optimum "
          "- true value. 'loss at selection' = true value of the best configuration the method evaluated minus "
          "that of the one it returned. 'abandoned truly better than returned' = abandoned configurations whose "
          "true value is above the returned one's, as a share of all abandoned (a false-abandon rate against "
          "the returned configuration). MWU: one-sided Mann-Whitney U test (* p < 0.05). "
          f"'{verdicts['head']} > this (paired)': one-sided Wilcoxon signed-rank test on the seeds both have (n "
          "pairs; the same seed, so the same case difficulties and job seed).")


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
    ap.add_argument("--objectives", nargs="+", default=None,
                    help=f"default: all ({', '.join(OBJECTIVES)}; with --noisy: llm_noisy needle_noisy cats_noisy "
                         "cells_noisy heavy_noisy)")
    ap.add_argument("--methods", nargs="+", default=None,
                    help=f"default: all ({', '.join(CONVERGENCE_METHODS + OPTUNA_METHODS)}; with --noisy: "
                         "tpe tpe_mv tpe_wilcoxon smac irace default default-no_racing default-no_confirm "
                         "default+stochastic only_evolution only_bandit only_tpe only_surrogate default+synergy "
                         "default+ppo convergence convergence_<other set-up> no_racing no_selection neither; smac and "
                         "tpe_wilcoxon are slow: see benchmarks/README.md)")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed + seeds - 1")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--noisy", action="store_true",
                    help="noisy LLM-like problems (Bernoulli outcomes over 30 cases), judged by the true value of "
                         "the returned configuration; budgets 50 100 200 (+60) x 30 calls, 20 seeds (quick: 50 100, 3)")
    ap.add_argument("--json-out", default=None, help="--noisy: also write the JSON document to this file")
    ap.add_argument("--reuse", nargs="+", default=None, metavar="FILE",
                    help="--noisy: runs from earlier --json-out documents; their jobs are not run again (Convergence "
                         "rows only when made by the same Convergence sources)")
    args = ap.parse_args()
    if args.noisy:
        noisy_main(args)
        return
    for name in args.objectives or []:
        if name not in OBJECTIVES:
            ap.error(f"--objectives: {name!r} is not one of {', '.join(OBJECTIVES)}")
    for name in args.methods or []:
        if name not in CONVERGENCE_METHODS + OPTUNA_METHODS:
            ap.error(f"--methods: {name!r} is not one of {', '.join(CONVERGENCE_METHODS + OPTUNA_METHODS)}")
    args.objectives = args.objectives or list(OBJECTIVES)
    args.methods = args.methods or CONVERGENCE_METHODS + OPTUNA_METHODS
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
