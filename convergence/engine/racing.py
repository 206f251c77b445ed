"""Racing over test cases: stop paying for a configuration once it is shown worse.

Every configuration meets the test cases in one seeded order shared by the run. The run's case
model (engine/case_model.py, refitted at each generation's end on every trial with results)
knows how hard each case is (``c[j]``) and how far one case strays from a configuration's true
score (``s = s_case + s_draw``). So the first n results of a configuration in flight give a
case-corrected mean

    m = mean_{j <= n} (x[j] - c[j]),        Var m = s / n + Var(c-bar)

comparable with every configuration of the run, not only with one incumbent on the same cases.
The incumbent is the complete configuration with the best shrunk estimate ``theta`` (not the
highest raw mean: that is the luckiest draw), with posterior variance ``v``. At each look
(n = ``min_cases``, then about 1.25x more each time) the configuration is abandoned when

* it is worse by more than z standard errors (a sequential normal test on case-corrected data):

      theta - m > z sqrt(s / n + Var(c-bar) + v),        z = Phi^-1(1 - alpha / looks)

  (Bonferroni over the looks: under the model a configuration at least as good as the incumbent
  is abandoned with probability at most ``alpha``, whatever the number of looks), and
* it is dominated: no better than the incumbent, on the same cases, on any metric the user
  weights (so a slower-but-more-accurate or cheaper-but-worse configuration that might sit on the
  Pareto front is not cut).

Before the first generation with a complete configuration nothing is abandoned. When the model
cannot measure noise (one configuration so far: no residual degrees of freedom) or finds none
(``s`` = 0: a deterministic target whose cases shift every configuration alike), the
configuration's own scatter of ``x - c`` stands in for ``s`` with Student's t quantile on n - 1
degrees of freedom for z (against a single incumbent this is the paired t-test).

A case's score is the same weighted, normalised combination the trial's score uses, computed
from that case alone. Trial-level metrics (``sao_preference``) do not take part: they have no
per-case value. The model and the incumbent change only between generations, so a seeded
generational run repeats its verdicts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING

import numpy as np

from convergence.config.models import RacingConfig
from convergence.core.types import CaseResult, TrialRecord
from convergence.engine.case_model import CaseFit

if TYPE_CHECKING:
    from convergence.evaluation.scorer import Evaluator


@dataclass(slots=True, frozen=True)
class CaseView:
    """One case of one configuration, as racing compares it."""

    score: float
    normalized: dict[str, float]


@dataclass(slots=True, frozen=True)
class Abandon:
    """One racing verdict: what was abandoned, against which incumbent, after how many cases."""

    config_hash: str
    incumbent: str
    n_cases: int


def looks(min_cases: int, n_cases: int) -> list[int]:
    """Case counts at which the test is made: ``min_cases``, then x1.25 (at least +1), below ``n_cases``."""
    out: list[int] = []
    n = min_cases
    while n < n_cases:
        out.append(n)
        n = max(n + 1, math.ceil(n * 1.25))
    return out


class Racer:
    def __init__(self, cfg: RacingConfig, evaluator: Evaluator, n_cases: int) -> None:
        self.cfg = cfg
        self.evaluator = evaluator
        self.looks = set(looks(cfg.min_cases, n_cases))
        self.z = NormalDist().inv_cdf(1 - cfg.alpha / max(1, len(self.looks)))
        """Standard errors a configuration must fall below the incumbent by (per-look level alpha / looks)."""
        weights = evaluator.metric_weights()
        self.metrics = [m for m, w in weights.items() if w > 0 and m not in evaluator.trial_level]
        self.complete: dict[str, tuple[TrialRecord, dict[str, CaseView]]] = {}
        """Every complete configuration so far, with its cases (the incumbent is one of them)."""
        self.incumbent: tuple[TrialRecord, dict[str, CaseView]] | None = None
        self.fit: CaseFit | None = None
        self.value = 0.0
        """The incumbent's shrunk estimate ``theta``."""
        self.value_var = 0.0
        """Its posterior variance ``v``."""
        self.abandoned = 0
        self.abandons: list[Abandon] = []

    def view(self, result: CaseResult) -> CaseView:
        agg = self.evaluator.score_means(result.metrics)
        return CaseView(agg.score, agg.normalized)

    def add(self, trial: TrialRecord, views: dict[str, CaseView]) -> None:
        """A complete configuration: a candidate incumbent at the next :meth:`refit`."""
        if len(views):
            self.complete[trial.config_hash] = (trial, dict(views))

    def refit(self, case_fit: CaseFit | None) -> None:
        """The generation's case model: the incumbent is the complete configuration with the best
        shrunk estimate (then the best corrected mean, then the earliest)."""
        self.fit = case_fit
        self.incumbent = None
        if case_fit is None:
            return
        fitted = [h for h in self.complete if h in case_fit.mean]
        if not fitted:
            return
        # with no detectable spread every shrunk estimate is the same: the corrected mean breaks the tie
        # (as in selection), then the earliest (max keeps the first of equals)
        best = max(fitted, key=lambda h: (case_fit.shrunk(h), case_fit.mean[h]))
        self.incumbent = self.complete[best]
        self.value = case_fit.shrunk(best)
        self.value_var = case_fit.posterior_variance(best)

    def verdict(self, views: dict[str, CaseView], n_cases: int, config_hash: str = "") -> str | None:
        """Why to abandon a configuration with these case results so far, or None to go on."""
        if self.incumbent is None or self.fit is None or len(views) not in self.looks:
            return None
        incumbent = self.incumbent[1]
        paired = [c for c in views if c in incumbent]
        if len(paired) < self.cfg.min_cases:
            return None
        fit, ids = self.fit, list(views)
        m = fit.corrected({c: views[c].score for c in ids})
        s, z = fit.model.s_case + fit.model.s_draw, self.z
        if fit.df >= 1 and s > 0:
            se = math.sqrt(s / len(ids) + fit.effect_variance(ids) + self.value_var)
        elif fit.df >= 1:  # noise measured, and none (a deterministic, additive target): any shortfall is real
            se = math.sqrt(self.value_var)
        else:  # noise not measured (one configuration): its own scatter about the model, Student's t
            se = math.sqrt(_scatter([views[c].score - fit.model.case_effect.get(c, 0.0) for c in ids]) / len(ids)
                           + self.value_var)
            from scipy.stats import t as student_t  # imported lazily (engine/warmup.py)

            z = float(student_t.isf(self.cfg.alpha / max(1, len(self.looks)), len(ids) - 1))
            if se == 0:  # nothing measured the noise: a shortfall on a few cases proves nothing
                return None
        if not self.value - m > z * se:
            return None
        for metric in self.metrics:  # dominated on every weighted objective, or kept (it may be on the Pareto front)
            if sum(views[c].normalized.get(metric, 0.0) - incumbent[c].normalized.get(metric, 0.0) for c in paired) > 0:
                return None
        self.abandoned += 1
        self.abandons.append(Abandon(config_hash, self.incumbent[0].config_hash, len(ids)))
        return (f"case-corrected mean {m:.3g} below the incumbent's estimate {self.value:.3g} by more than "
                f"{z:.2f} x {se:.2g} after {len(ids)} of {n_cases} cases")


def _scatter(values: Sequence[float]) -> float:
    return float(np.var(values, ddof=1)) if len(values) > 1 else 0.0
