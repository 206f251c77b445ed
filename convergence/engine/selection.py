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

      est[i] = m0 + w[i] * (m[i] - m0),   w[i] = tau^2 / (tau^2 + sigma^2 / n[i])

  with ``tau^2`` the spread of the true scores (variance of the means less
  the noise). A mean over many draws keeps its value; one over few is pulled
  in. Confirmation draws (cases asked again) add to ``n[i]``.

The report shows, for the top configurations, a 95 % t-interval of the mean
over test cases and a paired Wilcoxon signed-rank test of the best against
the runner-up on the cases both ran: "distinguishable" when p < 0.05.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from convergence.core.types import TrialRecord

CaseScores = Mapping[str, Sequence[float]]
"""case id -> the configuration's score on that case, one per draw (repeat 0 first)."""


@dataclass(slots=True, frozen=True)
class NoiseModel:
    """What the run's case results say about noise (see the module docstring)."""

    sigma2: float
    """Variance of one case score around the configuration's true score."""
    tau2: float
    """Variance of true scores across configurations."""
    m0: float
    """The average score the estimates shrink toward."""
    case_effect: dict[str, float]
    """How much easier than average each case is (score units)."""

    def weight(self, n: int) -> float:
        """How much of a mean over ``n`` draws the estimate keeps."""
        if self.sigma2 <= 0 or n <= 0:
            return 1.0 if n > 0 else 0.0
        return self.tau2 / (self.tau2 + self.sigma2 / n)

    def estimate(self, trial: TrialRecord, scores: CaseScores) -> float:
        """The trial's true score, corrected for the difficulty of the cases it ran and shrunk by its draws."""
        n = sum(len(v) for v in scores.values())
        if not scores or n == 0:
            return self.m0
        difficulty = sum(self.case_effect.get(c, 0.0) * len(v) for c, v in scores.items()) / n
        return self.m0 + self.weight(n) * (trial.score - difficulty - self.m0)


def fit(trials: Sequence[TrialRecord], scores: Mapping[str, CaseScores], case_ids: Sequence[str]) -> NoiseModel:
    """Fit the noise model on the trials that ran every case (first draws only)."""
    full = [t for t in trials if all(scores.get(t.config_hash, {}).get(c) for c in case_ids)]
    if not full:
        means = [t.score for t in trials]
        return NoiseModel(0.0, 0.0, float(np.mean(means)) if means else 0.0, {})
    x = np.array([[scores[t.config_hash][c][0] for c in case_ids] for t in full], dtype=float)
    grand = float(x.mean())
    col = x.mean(axis=0) - grand
    row = x.mean(axis=1) - grand
    effects = dict(zip(case_ids, (float(v) for v in col), strict=True))
    n_rows, n_cols = x.shape
    df = (n_rows - 1) * (n_cols - 1)
    if df >= 2:
        resid = x - row[:, None] - col[None, :] - grand
        sigma2 = float((resid**2).sum() / df)
    else:  # one case or one configuration: only repeated draws say how noisy a case score is
        sigma2 = _within_draws(scores)
    m = np.array([t.score for t in full], dtype=float)
    m0 = float(m.mean())
    noise = float(np.mean([sigma2 / max(1, _draws(scores[t.config_hash])) for t in full]))
    tau2 = max(float(m.var(ddof=1)) - noise, 0.0) if len(full) > 1 else 0.0
    if sigma2 > 0 and tau2 == 0.0:
        tau2 = 1e-12  # every difference is within noise: estimates collapse toward the average, ties by mean
    return NoiseModel(sigma2, tau2, m0, effects)


def _draws(scores: CaseScores) -> int:
    return sum(len(v) for v in scores.values())


def _within_draws(scores: Mapping[str, CaseScores]) -> float:
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


def interval(scores: CaseScores, level: float = 0.95) -> tuple[float, float] | None:
    """A t-interval of the mean over test cases (None with fewer than two cases)."""
    values = list(case_means(scores).values())
    if len(values) < 2:
        return None
    from scipy.stats import t

    mean = float(np.mean(values))
    half = float(t.ppf(0.5 + level / 2, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values)))
    return mean - half, mean + half


def paired_p(a: CaseScores, b: CaseScores) -> float | None:
    """Two-sided Wilcoxon signed-rank p of a vs b on the cases both ran (None: no test possible)."""
    ma, mb = case_means(a), case_means(b)
    diffs = [ma[c] - mb[c] for c in ma if c in mb]
    if len(diffs) < 2 or not any(diffs):
        return None if len(diffs) < 2 else 1.0
    from scipy.stats import wilcoxon

    return float(wilcoxon(diffs, zero_method="wilcox").pvalue)


def worse_p(a: CaseScores, leader: CaseScores) -> float | None:
    """One-sided Wilcoxon p that ``a`` is worse than ``leader`` on the cases both ran."""
    ma, ml = case_means(a), case_means(leader)
    diffs = [ma[c] - ml[c] for c in ma if c in ml]
    if len(diffs) < 5 or not any(diffs):
        return None
    from scipy.stats import wilcoxon

    return float(wilcoxon(diffs, alternative="less", zero_method="wilcox").pvalue)


def rank(trials: Sequence[TrialRecord]) -> list[TrialRecord]:
    """Best first by merit (the estimate once the run has made one, else the mean); ties keep evaluation order."""
    return sorted(trials, key=lambda t: -t.merit)
