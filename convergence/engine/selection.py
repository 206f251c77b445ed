"""Noise-aware selection: which configuration the run returns as best.

A configuration's score is a mean over a few dozen test cases, so the highest
mean is often the luckiest draw. We rank by an estimate of the true score
instead, from a two-way model of the per-case scores

    x[i, j] = mu[i] + c[j] + e[i, j],      e ~ (0, sigma^2)

(configuration i, case j; every configuration meets the same cases, so the
case effects ``c`` are shared and cancel in comparisons):

* ``sigma^2`` is the residual variance of the additive fit over the
  configurations that ran every case (configuration x case interaction plus,
  for a stochastic target, the draw-to-draw noise);
* a configuration that ran only some cases (racing abandoned it, the budget
  cut it) has its mean corrected by the difficulty of the cases it ran;
* the estimate shrinks each corrected mean toward the run's average
  (empirical Bayes, normal-normal):

      est[i] = m0 + w[i] * (m[i] - m0),   w[i] = tau^2 / (tau^2 + v[i])
      v[i]   = s_case / cases[i] + s_draw / draws[i]

  with ``tau^2`` the spread of the true scores (variance of the means less
  the noise). ``sigma^2`` splits into the configuration x case interaction
  ``s_case`` (only more cases average it out) and the draw-to-draw noise
  ``s_draw`` of a stochastic target (the pooled variance of cases asked more
  than once; more draws average it out). A mean over many cases keeps its
  value; one over few is pulled in. With no detectable spread (``tau^2`` = 0)
  every estimate is ``m0`` and the mean breaks the tie. With one case or one
  configuration the residual has no degrees of freedom: only repeated draws
  measure noise (a deterministic target then gets no shrinkage).

:func:`rank` turns the estimates into the run's one ranking (merit, then mean score, then evaluation
order) and :func:`best` takes its first usable trial: every place that shows or uses "the best"
(``RunOutcome.best``, the report, the export, warm start, the CLI's tables) goes through them.

The report shows, for the top configurations, a 95 % t-interval over test
cases (the spread of per-case scores, centred on the configuration's score,
clipped to the range the score can take: 0 to the sum of the metric weights)
and a paired Wilcoxon signed-rank test of the best against the runner-up on
the cases both ran: "distinguishable" when p < 0.05.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from convergence.core.types import TrialRecord
from convergence.engine.signed_rank import signed_rank_p

CaseScores = Mapping[str, Sequence[float]]
"""case id -> the configuration's score on that case, one per draw (repeat 0 first)."""


@dataclass(slots=True, frozen=True)
class NoiseModel:
    """What the run's case results say about noise (see the module docstring)."""

    s_case: float
    """Configuration x case interaction: how far one case's score strays from the configuration's true
    score whatever the draw (what more cases, not more draws, average out)."""
    s_draw: float
    """Draw-to-draw variance of one case's score (0 for a deterministic target; known once a case is
    drawn again)."""
    tau2: float
    """Variance of true scores across configurations."""
    m0: float
    """The average score the estimates shrink toward."""
    case_effect: dict[str, float]
    """How much easier than average each case is (score units)."""

    def noise(self, n_cases: int, n_draws: int) -> float:
        """Variance of a mean over ``n_cases`` cases and ``n_draws`` draws in all."""
        if n_cases <= 0:
            return math.inf
        return self.s_case / n_cases + self.s_draw / max(n_draws, 1)

    def weight(self, n_cases: int, n_draws: int | None = None) -> float:
        """How much of a mean the estimate keeps (1: no noise; 0: no spread of true scores)."""
        noise = self.noise(n_cases, n_cases if n_draws is None else n_draws)
        if noise == 0:
            return 1.0
        if self.tau2 == 0 or math.isinf(noise):
            return 0.0
        return self.tau2 / (self.tau2 + noise)

    def estimate(self, trial: TrialRecord, scores: CaseScores) -> float:
        """The trial's true score, corrected for the difficulty of the cases it ran and shrunk by its noise."""
        n = sum(len(v) for v in scores.values())
        if not scores or n == 0:
            return self.m0
        difficulty = sum(self.case_effect.get(c, 0.0) * len(v) for c, v in scores.items()) / n
        return self.m0 + self.weight(len(scores), n) * (trial.score - difficulty - self.m0)


def fit(trials: Sequence[TrialRecord], scores: Mapping[str, CaseScores], case_ids: Sequence[str]) -> NoiseModel:
    """Fit the noise model on the trials that ran every case (first draws), with the draw-to-draw
    variance from cases asked more than once."""
    s_draw = within_draws(scores)
    full = [t for t in trials if all(scores.get(t.config_hash, {}).get(c) for c in case_ids)]
    if not full:
        means = [t.score for t in trials]
        return NoiseModel(0.0, s_draw, 0.0, float(np.mean(means)) if means else 0.0, {})
    x = np.array([[scores[t.config_hash][c][0] for c in case_ids] for t in full], dtype=float)
    grand = float(x.mean())
    col = x.mean(axis=0) - grand
    row = x.mean(axis=1) - grand
    effects = dict(zip(case_ids, (float(v) for v in col), strict=True))
    n_rows, n_cols = x.shape
    df = (n_rows - 1) * (n_cols - 1)
    # the residual of first draws holds the interaction and one draw's noise; without enough of them
    # (one case, or one configuration) only repeated draws say anything about noise
    resid2 = float(((x - row[:, None] - col[None, :] - grand) ** 2).sum() / df) if df >= 2 else s_draw
    s_case = max(resid2 - s_draw, 0.0)
    model = NoiseModel(s_case, s_draw, 0.0, 0.0, effects)
    m = np.array([t.score for t in full], dtype=float)
    tau2 = spread(m, [model.noise(len(scores[t.config_hash]), _draws(scores[t.config_hash])) for t in full])
    return NoiseModel(s_case, s_draw, tau2, float(m.mean()), effects)


def spread(means: Sequence[float] | np.ndarray, noises: Sequence[float]) -> float:
    """``tau^2``, the variance of true scores: the variance of the means less their average noise
    (0 with fewer than two means)."""
    if len(means) < 2:
        return 0.0
    return max(float(np.var(np.asarray(means, dtype=float), ddof=1)) - float(np.mean(noises)), 0.0)


def _draws(scores: CaseScores) -> int:
    return sum(len(v) for v in scores.values())


def within_draws(scores: Mapping[str, CaseScores]) -> float:
    """Pooled variance of repeated draws of the same configuration on the same case (0 without repeats)."""
    ss, df = 0.0, 0
    for by_case in scores.values():
        for draws in by_case.values():
            if len(draws) > 1:
                ss += float(np.var(draws) * len(draws))
                df += len(draws) - 1
    return ss / df if df else 0.0


def case_means(scores: CaseScores) -> dict[str, float]:
    """One value per case: the mean of its draws."""
    return {c: float(np.mean(v)) for c, v in scores.items() if len(v)}


def half_width(scores: CaseScores, level: float = 0.95) -> float | None:
    """Half the width of a t-interval of the mean over test cases (None with fewer than two cases)."""
    values = list(case_means(scores).values())
    if len(values) < 2:
        return None
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values)))


def interval(score: float, scores: CaseScores, bounds: tuple[float, float],
             level: float = 0.95) -> list[float] | None:
    """The ``level`` t-interval of ``score`` over test cases, clipped to the range the score can take
    (``bounds``: 0 to the sum of the metric weights, each normalised metric being in [0, 1]): a score
    bounded by 1 never gets an interval above 1. None with fewer than two cases."""
    half = half_width(scores, level)
    if half is None:
        return None
    low, high = bounds
    return [min(max(score - half, low), high), max(min(score + half, high), low)]


def paired_p(a: CaseScores, b: CaseScores) -> float | None:
    """Two-sided Wilcoxon signed-rank p of a vs b on the cases both ran (None: no test possible)."""
    ma, mb = case_means(a), case_means(b)
    diffs = [ma[c] - mb[c] for c in ma if c in mb]
    if len(diffs) < 2:
        return None
    return signed_rank_p(diffs, "two-sided")


def worse_p(a: CaseScores, leader: CaseScores) -> float | None:
    """One-sided Wilcoxon p that ``a`` is worse than ``leader`` on the cases both ran."""
    ma, ml = case_means(a), case_means(leader)
    diffs = [ma[c] - ml[c] for c in ma if c in ml]
    if len(diffs) < 5 or not any(diffs):
        return None
    return signed_rank_p(diffs, "less")


def usable(trials: Sequence[TrialRecord]) -> list[TrialRecord]:
    """The trials that may be a run's best: complete (every test case ran) with a finite score."""
    return [t for t in trials if t.usable and math.isfinite(t.score)]


def _desc(value: float) -> float:
    """A sort key for "higher first" that puts NaN last, as the lowest value."""
    return -value if not math.isnan(value) else math.inf


def rank_key(trial: TrialRecord) -> tuple[float, float, int, bool, int]:
    """Where ``trial`` stands in :func:`rank` (lower first). Exposed so every place that orders trials
    orders them by this one rule."""
    stored = trial.trial_id is not None
    return (_desc(trial.merit), _desc(trial.score), trial.generation, not stored,
            trial.trial_id if trial.trial_id is not None else 0)


def rank(trials: Sequence[TrialRecord]) -> list[TrialRecord]:
    """THE ranking of a run's trials, best first: the one definition of "best" that the run's outcome
    (``RunOutcome.best``), the report, the export (``best_config.yaml``), warm start, the table printed
    after ``convergence optimize``, ``convergence runs`` and ``convergence show`` share.

    The order is total and deterministic:

    1. merit, higher first: the noise-aware estimate once the run has made one, else the mean score
       (``TrialRecord.merit``);
    2. on equal merit (with no detectable spread of true scores every estimate is the same), the mean
       score, higher first;
    3. then evaluation order: the earlier generation first, then the trial stored first
       (``trial_id``); trials not stored yet come after stored ones, in the order given.

    A NaN merit or score counts as the lowest. ``rank`` orders whatever it is given; a run's best
    comes from its usable trials only (:func:`ranking`, :func:`best`)."""
    return sorted(trials, key=rank_key)  # sorted() is stable: unstored trials keep the order given


def ranking(trials: Sequence[TrialRecord]) -> list[TrialRecord]:
    """The run's usable trials (:func:`usable`), best first by :func:`rank`."""
    return rank(usable(trials))


def best(trials: Sequence[TrialRecord]) -> TrialRecord | None:
    """The run's best configuration: the first of :func:`ranking` (None: no usable trial)."""
    ranked = ranking(trials)
    return ranked[0] if ranked else None
