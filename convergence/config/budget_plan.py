"""Defaults that follow the budget: a run given ``budget.max_calls`` and no length spends its budget.

A user who writes only ``budget: {max_calls: N}`` asked for N calls. The fixed defaults (8
configurations x 5 generations, early stopping after 3 stale generations) would spend 40
configurations' worth and stop, whatever N is; Optuna, irace and SMAC spend the budget. So when
``max_calls`` is set and the user did not set ``evolution.generations``, the run is sized by the
budget, once the test cases are known (``n_cases``):

* generations: until the budget is spent (the cap is ``max_calls``: every generation pays at least
  one call, so the cap is never what stops the run);
* population, unless set: ``round(1.25 * sqrt(B))`` clipped to [6, 30], with ``B = max_calls /
  n_cases`` the budget in whole-configuration evaluations. Population ~ generations ~ sqrt(B)
  balances how many configurations each generation compares against how many times the society
  learns (``benchmarks/search_quality.py``'s ``population_for`` uses the same ``1.25 * sqrt(B)``);
  at least 6 so every default agent gets a slot in a generation, at most 30 so a long budget still
  means many generations of learning;
* early stopping, unless ``execution.early_stopping`` (or ``evolution.early_stopping_generations``)
  is set: off, since the user asked for the budget to be spent.

Without ``max_calls`` nothing changes. ``elite_size`` keeps its value (1 by default).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from convergence.config.loader import LoadedConfig
    from convergence.config.models import ConvergenceConfig

POPULATION_MIN, POPULATION_MAX = 6, 30
"""The population a budget may set (see the module docstring)."""


def budget_population(max_calls: int, n_cases: int) -> int:
    """``round(1.25 * sqrt(max_calls / n_cases))`` clipped to [6, 30]."""
    b = max_calls / max(n_cases, 1)
    return min(max(round(1.25 * math.sqrt(b)), POPULATION_MIN), POPULATION_MAX)


@dataclass(frozen=True, slots=True)
class BudgetPlan:
    """What the budget set (None / False: the config's own value stands)."""

    population: int | None = None
    """The population from the budget."""
    generations: int | None = None
    """The generation cap when the run goes on until the budget is spent."""
    early_stopping_off: bool = False

    @property
    def derived(self) -> bool:
        return self.population is not None or self.generations is not None or self.early_stopping_off

    def notes(self) -> list[str]:
        """What the console, ``validate`` and ``--dry-run`` say about it."""
        out = []
        if self.population is not None:
            out.append(f"population {self.population} (from the budget)")
        if self.generations is not None:
            out.append("generations: until the budget is spent")
        if self.early_stopping_off:
            out.append("early stopping off (the budget sets the run's length)")
        return out


def budget_plan(cfg: ConvergenceConfig, n_cases: int) -> BudgetPlan:
    """What ``max_calls`` sets for a run of ``cfg`` on ``n_cases`` test cases (see the module docstring)."""
    opt = cfg.optimization
    evo, ex = opt.evolution, opt.execution
    max_calls = opt.budget.max_calls
    if max_calls is None or "generations" in evo.model_fields_set:
        return BudgetPlan()
    population = None
    if "population_size" not in evo.model_fields_set and ex.experiments_per_generation is None:
        population = max(budget_population(max_calls, n_cases), evo.elite_size + 1)
    early_set = "early_stopping" in ex.model_fields_set or evo.early_stopping_generations is not None
    return BudgetPlan(population=population, generations=min(max_calls, 100_000),
                      early_stopping_off=not early_set and ex.early_stopping.enabled)


def apply_plan(cfg: ConvergenceConfig, plan: BudgetPlan) -> ConvergenceConfig:
    """A copy of ``cfg`` with what ``plan`` sets (``cfg`` itself when it sets nothing)."""
    if not plan.derived:
        return cfg
    opt = cfg.optimization
    evo = opt.evolution.model_copy(update={
        k: v for k, v in (("population_size", plan.population), ("generations", plan.generations)) if v is not None})
    ex = opt.execution
    if plan.early_stopping_off:
        ex = ex.model_copy(update={"early_stopping": ex.early_stopping.model_copy(update={"enabled": False})})
    return cfg.model_copy(update={"optimization": opt.model_copy(update={"evolution": evo, "execution": ex})})


def with_budget_plan(loaded: LoadedConfig, n_cases: int) -> tuple[LoadedConfig, BudgetPlan]:
    """``loaded`` with its budget-driven defaults resolved for ``n_cases`` test cases, and what they are."""
    plan = budget_plan(loaded.config, n_cases)
    return dataclasses.replace(loaded, config=apply_plan(loaded.config, plan)), plan
