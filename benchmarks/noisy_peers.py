"""Peer optimizers for ``search_quality.py --noisy``, each run the way its documentation recommends.

* ``tpe_wilcoxon``: Optuna's TPESampler with ``WilcoxonPruner`` (Optuna's recipe for "the mean performance
  over a set of problem instances"): a trial reports each case's outcome with ``trial.report(value, case)``,
  and when ``trial.should_prune()`` it *returns* the mean of the cases seen so far (the docs' workaround, so
  TPE learns from pruned trials) instead of raising ``TrialPruned``. The cases run in one seeded order per
  run, shared by every trial, so the early cases pair across trials. The returned configuration is
  ``study.best_params``; trials stop when the next one could overrun the case-call budget.
* ``smac``: SMAC3's ``AlgorithmConfigurationFacade`` with the 30 cases as instances (no instance features),
  ``deterministic=False`` and ``n_trials`` = the budget in case calls (a SMAC trial is one (configuration,
  case, seed) call). The returned configuration is the incumbent ``optimize()`` returns.
* ``irace``: the irace R package (``r-cran-irace``) through ``rpy2``, with the target runner an R function
  that calls back into Python, ``instances`` = the case ids, ``maxExperiments`` = the budget in case calls,
  ``deterministic = 0``. The returned configuration is the first elite irace returns.

Every configuration space is the problem's grid: categorical and value-list parameters are categorical, a
stepped float or int is an integer index into its grid (so no peer proposes a value off the grid). The
peers are optional (``pip install -e ".[bench]"``, and R with irace for ``irace``): :func:`unavailable`
says why one cannot run here, and the benchmark skips it.
"""

from __future__ import annotations

import random
import tempfile
import warnings
from pathlib import Path
from typing import Any

import noisy_problems as npb

PEERS = ["tpe_wilcoxon", "smac", "irace"]
LABELS = {
    "tpe_wilcoxon": "Optuna TPE + WilcoxonPruner (best_params)",
    "smac": "SMAC3 AlgorithmConfigurationFacade (incumbent)",
    "irace": "irace via rpy2 (best elite)",
}


def unavailable(method: str) -> str | None:
    """Why ``method`` cannot run on this machine (None when it can)."""
    try:
        if method == "tpe_wilcoxon":
            import optuna
            import scipy  # noqa: F401  (WilcoxonPruner needs it)

            if not hasattr(optuna.pruners, "WilcoxonPruner"):
                return f"optuna {optuna.__version__} has no WilcoxonPruner (3.6 or later)"
        elif method == "smac":
            import smac  # noqa: F401
        elif method == "irace":
            from rpy2.robjects.packages import importr

            importr("irace")
    except ImportError as exc:
        return f"{exc} (pip install -e '.[bench]')"
    except Exception as exc:  # noqa: BLE001  (rpy2 raises its own kinds when R or irace is missing)
        return f"R/irace not usable: {type(exc).__name__}: {str(exc).strip()[:160]} (apt-get install r-cran-irace)"
    return None


def _grid_value(spec: tuple[Any, ...], raw: Any) -> Any:
    """A peer's raw value (category or grid index, maybe a numpy scalar) -> the parameter value."""
    if hasattr(raw, "item"):
        raw = raw.item()
    if spec[0] in ("cat", "values"):
        return next(v for v in spec[1] if v == raw)
    return npb._grid(spec)[int(raw)]


class Log:
    """Every case call a peer made: configurations seen, and the outcomes per (configuration, case)."""

    def __init__(self, prob: npb.NoisyProblem) -> None:
        self.prob = prob
        self.calls = 0
        self.seen: dict[str, dict[str, Any]] = {}
        self.outcomes: dict[str, list[tuple[int, int]]] = {}

    def call(self, params: dict[str, Any], case: int) -> int:
        key = npb.config_key(params)
        self.seen[key] = params
        outcome = npb.draw(self.prob, params, case)
        self.calls += 1
        self.outcomes.setdefault(key, []).append((case, outcome))
        return outcome


def _result(log: Log, returned: dict[str, Any], stop: str) -> dict[str, Any]:
    """The benchmark's record of one run; the noisy score of the returned configuration is the mean of its draws."""
    prob = log.prob
    true_seen = [prob.true_value(c) for c in log.seen.values()]
    returned_true = prob.true_value(returned)
    best = max(true_seen, default=float("nan"))
    mine = log.outcomes.get(npb.config_key(returned), [])
    cases = len({c for c, _ in mine})
    return {
        "returned_config": returned, "returned_true": returned_true,
        "returned_noisy": sum(o for _, o in mine) / len(mine) if mine else float("nan"),
        "returned_status": "complete" if cases >= npb.N_CASES else "partial",
        "returned_cases": cases, "returned_repeats": len(mine) - cases,
        "best_evaluated_true": best, "calls": log.calls, "n_distinct": len(log.seen),
        "n_abandoned": 0, "abandoned_cases": None, "best_evaluated_abandoned": False,
        "abandoned_better_than_returned": 0, "returned_is_best_evaluated": abs(returned_true - best) < 1e-12,
        "stop_reason": stop,
    }


# --------------------------------------------------------------------------- Optuna TPE + WilcoxonPruner


def run_tpe_wilcoxon(problem: str, budget: int, seed: int) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    prob = npb.PROBLEMS[problem]
    npb.reset(seed)
    order = list(range(npb.N_CASES))
    random.Random(seed).shuffle(order)
    limit = budget * npb.N_CASES
    log = Log(prob)

    def objective(trial: Any) -> float:
        p = npb.suggest(trial, prob.space)
        outcomes = []
        for case in order:
            outcomes.append(log.call(p, case))
            trial.report(float(outcomes[-1]), case)
            if trial.should_prune():
                trial.set_user_attr("cases", len(outcomes))
                return sum(outcomes) / len(outcomes)  # the docs' recipe: tell TPE the estimate, do not raise
        trial.set_user_attr("cases", len(outcomes))
        return sum(outcomes) / len(outcomes)

    def stop_when_spent(study: Any, trial: Any) -> None:
        if log.calls + npb.N_CASES > limit:  # the next trial could overrun the budget
            study.stop()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # WilcoxonPruner is "experimental"
        pruner = optuna.pruners.WilcoxonPruner()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner)
    study.optimize(objective, n_trials=limit, callbacks=[stop_when_spent])
    best = study.best_trial
    returned = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in best.params.items()}
    res = _result(log, returned, f"{len(study.trials)} trials")
    res["n_pruned"] = sum(t.user_attrs.get("cases", npb.N_CASES) < npb.N_CASES for t in study.trials)
    return res


# --------------------------------------------------------------------------- SMAC3


def run_smac(problem: str, budget: int, seed: int) -> dict[str, Any]:
    import logging

    from ConfigSpace import Categorical, ConfigurationSpace, Integer
    from smac import AlgorithmConfigurationFacade, Scenario

    logging.getLogger("smac").setLevel(logging.ERROR)
    prob = npb.PROBLEMS[problem]
    npb.reset(seed)
    space = ConfigurationSpace(seed=seed)
    for name, spec in prob.space.items():
        if spec[0] in ("cat", "values"):
            space.add(Categorical(name, list(spec[1])))
        else:
            space.add(Integer(name, (0, len(npb._grid(spec)) - 1)))
    log = Log(prob)
    errors: list[BaseException] = []

    def params_of(config: Any) -> dict[str, Any]:
        return {name: _grid_value(spec, config[name]) for name, spec in prob.space.items()}

    def train(config: Any, instance: str, seed: int = 0) -> float:
        try:
            return 1.0 - log.call(params_of(config), int(instance))  # SMAC minimises a cost
        except Exception as exc:  # SMAC would record a crash and go on: a bug here must stop the benchmark
            errors.append(exc)
            raise

    with tempfile.TemporaryDirectory(prefix="sqn-smac-") as out:
        scenario = Scenario(space, name=f"{problem}-{budget}-{seed}", output_directory=Path(out),
                            deterministic=False, instances=[str(j) for j in range(npb.N_CASES)],
                            n_trials=budget * npb.N_CASES, seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            smac = AlgorithmConfigurationFacade(scenario, train, overwrite=True, logging_level=40)
            incumbent = smac.optimize()
        if errors:
            raise RuntimeError(f"the SMAC target function failed: {errors[0]!r}") from errors[0]
    if isinstance(incumbent, list):
        incumbent = incumbent[0]
    return _result(log, params_of(incumbent), f"{log.calls} SMAC trials")


# --------------------------------------------------------------------------- irace (R) through rpy2

_IRACE_RUNNER = """
function(callback, names) {
  function(experiment, scenario) {
    values <- vapply(names, function(n) as.character(experiment$configuration[[n]]), "")
    list(cost = callback(as.character(experiment$instance), values), call = "")
  }
}
"""


_IRACE_QUIET = """
function(scenario, parameters) {
  utils::capture.output(result <- irace::irace(scenario = scenario, parameters = parameters))
  result
}
"""


def _irace_parameters(prob: npb.NoisyProblem) -> str:
    lines = []
    for name, spec in prob.space.items():
        if spec[0] in ("cat", "values"):
            values = ", ".join(f'"{v}"' for v in spec[1])
            lines.append(f'{name} "" c ({values})')
        else:
            lines.append(f'{name} "" i (0, {len(npb._grid(spec)) - 1})')
    return "\n".join(lines) + "\n"


def run_irace(problem: str, budget: int, seed: int) -> dict[str, Any]:
    import rpy2.rinterface as ri
    import rpy2.rinterface_lib.callbacks as rcb
    import rpy2.robjects as ro
    from rpy2.robjects.packages import importr

    rcb.consolewrite_warnerror = lambda text: None  # R's start-up notes; irace's errors still raise
    irace = importr("irace")
    prob = npb.PROBLEMS[problem]
    npb.reset(seed)
    names = list(prob.space)
    log = Log(prob)

    def params_of(values: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, raw in zip(names, values, strict=True):
            spec = prob.space[name]
            if spec[0] in ("cat", "values"):
                out[name] = next(v for v in spec[1] if str(v) == raw)
            else:
                out[name] = npb._grid(spec)[int(float(raw))]
        return out

    @ri.rternalize
    def callback(instance: Any, values: Any) -> Any:
        return ri.FloatSexpVector([1.0 - log.call(params_of(list(values)), int(instance[0]))])  # a cost

    runner = ro.r(_IRACE_RUNNER)(callback, ro.StrVector(names))
    with tempfile.TemporaryDirectory(prefix="sqn-irace-") as out:
        scenario = ro.ListVector({
            "targetRunner": runner, "instances": ro.StrVector([str(j) for j in range(npb.N_CASES)]),
            "maxExperiments": budget * npb.N_CASES, "seed": seed, "deterministic": 0, "logFile": "",
            "execDir": out, "debugLevel": 0, "quiet": True, "parallel": 1,
        })
        parameters = irace.readParameters(text=_irace_parameters(prob))
        result = ro.r(_IRACE_QUIET)(scenario, parameters)
    returned = params_of([str(ro.r("as.character")(result.rx2(n))[0]) for n in names])
    return _result(log, returned, f"{log.calls} irace experiments")
