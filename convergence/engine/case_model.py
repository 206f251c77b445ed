"""The run's case model: every trial's score corrected for the difficulty of the cases it ran.

Racing cuts configurations after a few cases and a stop cuts the last ones short, so the run's
per-case scores form a sparse matrix. Cases are met in one seeded order shared by the run, so a
cut trial holds the first cases of that order: its raw mean says as much about those cases'
difficulty as about the configuration. The same two-way additive model as the end-of-run
selection (engine/selection.py)

    x[i, j] = mu[i] + c[j] + e[i, j],      e ~ (0, s_case + s_draw)

is fitted on the first draws of EVERY trial with results (complete, abandoned, partial) by
alternating least squares (``sum_j c[j] = 0``):

    mu[i] = mean_{j in J(i)} (x[i, j] - c[j]),      c[j] = mean_{i in I(j)} (x[i, j] - mu[i])

(a complete matrix is solved by the first sweep: row and column means). Each trial then gets

* its corrected mean ``m[i] = mu[i]`` (the mean of ``x - c`` over its cases),
* the variance of that mean ``v[i] = s_case / cases[i] + s_draw / draws[i]``, with ``s_case`` the
  residual variance ``SS_res / (N - rows - cols + 1)`` less the draw noise,
* a shrunk estimate ``m0 + w[i] (m[i] - m0)``, ``w[i] = tau^2 / (tau^2 + v[i])`` (selection's
  normal-normal shrinkage: :class:`convergence.engine.selection.NoiseModel`),

which is what the agents learn from (``TrialRecord.adjusted``) and what racing compares a
configuration in flight with (engine/racing.py). It is refitted at each generation's end from
stored data in a fixed order, so a seeded generational run repeats it exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from convergence.core.types import TrialRecord
from convergence.engine.selection import CaseScores, NoiseModel, spread, within_draws

SWEEPS = 200
"""Most alternating-least-squares sweeps (a complete matrix needs one; a few cut rows, a handful)."""
TOL = 1e-12


@dataclass(slots=True, frozen=True)
class CaseFit:
    """The fitted case model (see the module docstring)."""

    model: NoiseModel
    """``s_case``, ``s_draw``, ``tau2``, ``m0`` and the case effects ``c``."""
    mean: dict[str, float]
    """Corrected mean per configuration hash."""
    cases: dict[str, int]
    """Cases each configuration ran."""
    draws: dict[str, int]
    """Draws each configuration made (cases asked again count once more)."""
    per_case: dict[str, int]
    """How many configurations ran each case (the precision of its effect)."""
    df: int
    """Residual degrees of freedom: the noise is measured only when positive."""

    def variance(self, config_hash: str) -> float:
        """Variance of the configuration's corrected mean (``s_case / cases + s_draw / draws``)."""
        return self.model.noise(self.cases.get(config_hash, 0), self.draws.get(config_hash, 0))

    def shrunk(self, config_hash: str) -> float:
        """The configuration's corrected mean shrunk toward ``m0`` by its noise."""
        m = self.mean[config_hash]
        model = self.model
        return model.m0 + model.weight(self.cases[config_hash], self.draws[config_hash]) * (m - model.m0)

    def posterior_variance(self, config_hash: str) -> float:
        """Variance left in :meth:`shrunk` (normal-normal: ``w v``)."""
        v = self.variance(config_hash)
        return 0.0 if math.isinf(v) else self.model.weight(self.cases[config_hash], self.draws[config_hash]) * v

    def corrected(self, scores: Mapping[str, float]) -> float:
        """The corrected mean of one draw per case: ``mean_j (x[j] - c[j])`` (a case never fitted counts 0)."""
        effect = self.model.case_effect
        return float(np.mean([x - effect.get(c, 0.0) for c, x in scores.items()]))

    def effect_variance(self, case_ids: Sequence[str]) -> float:
        """Variance the estimated case effects add to a corrected mean over ``case_ids``:
        ``(s_case + s_draw) mean_j (1 / K_j) / n`` with ``K_j`` configurations behind ``c[j]``."""
        if not case_ids:
            return math.inf
        s = self.model.s_case + self.model.s_draw
        return s * float(np.mean([1.0 / max(self.per_case.get(c, 0), 1) for c in case_ids])) / len(case_ids)


def additive(rows: np.ndarray, cols: np.ndarray, x: np.ndarray, n_rows: int, n_cols: int
             ) -> tuple[np.ndarray, np.ndarray, float]:
    """Least-squares fit of ``x = mu[row] + c[col]`` on the observed cells, ``c`` centred:
    (mu, c, residual sum of squares). Alternating least squares (see the module docstring)."""
    n_row = np.bincount(rows, minlength=n_rows).astype(float)
    n_col = np.bincount(cols, minlength=n_cols).astype(float)
    c = np.zeros(n_cols)
    mu = np.zeros(n_rows)
    for _ in range(SWEEPS):
        mu = np.bincount(rows, weights=x - c[cols], minlength=n_rows) / np.maximum(n_row, 1)
        new = np.bincount(cols, weights=x - mu[rows], minlength=n_cols) / np.maximum(n_col, 1)
        new[n_col == 0] = 0.0
        shift = float(new[n_col > 0].mean()) if (n_col > 0).any() else 0.0
        new[n_col > 0] -= shift
        done = float(np.max(np.abs(new - c))) < TOL
        c = new
        if done:
            break
    mu = np.bincount(rows, weights=x - c[cols], minlength=n_rows) / np.maximum(n_row, 1)
    resid = x - mu[rows] - c[cols]
    return mu, c, float(resid @ resid)


def fit(scores: Mapping[str, CaseScores], case_ids: Sequence[str]) -> CaseFit | None:
    """The case model of the configurations in ``scores`` (config hash -> case id -> draws, repeat 0
    first; only first draws enter the additive fit), in the order given; None without any score."""
    hashes = [h for h, by_case in scores.items() if any(len(v) for v in by_case.values())]
    if not hashes:
        return None
    col_of = {c: j for j, c in enumerate(case_ids)}
    rows, cols, vals = [], [], []
    for i, h in enumerate(hashes):
        for case, draws in scores[h].items():
            if len(draws) and case in col_of:
                rows.append(i)
                cols.append(col_of[case])
                vals.append(float(draws[0]))
    r, k, x = np.array(rows, dtype=int), np.array(cols, dtype=int), np.array(vals, dtype=float)
    mu, c, ss = additive(r, k, x, len(hashes), len(case_ids))
    used = np.bincount(k, minlength=len(case_ids))
    df = len(x) - len(hashes) - int((used > 0).sum()) + 1
    s_draw = within_draws(scores)
    # without residual degrees of freedom only repeated draws say anything about noise
    resid2 = ss / df if df >= 1 else s_draw
    s_case = max(resid2 - s_draw, 0.0)
    effects = {cid: float(c[j]) for j, cid in enumerate(case_ids) if used[j] > 0}
    n_cases = {h: sum(1 for d in scores[h].values() if len(d)) for h in hashes}
    n_draws = {h: sum(len(d) for d in scores[h].values()) for h in hashes}
    noise = NoiseModel(s_case, s_draw, 0.0, 0.0, effects)
    tau2 = spread(mu, [noise.noise(n_cases[h], n_draws[h]) for h in hashes])
    model = NoiseModel(s_case, s_draw, tau2, float(mu.mean()), effects)
    return CaseFit(model, {h: float(m) for h, m in zip(hashes, mu, strict=True)}, n_cases, n_draws,
                   {cid: int(used[j]) for j, cid in enumerate(case_ids)}, df)


def adjust(trials: Sequence[TrialRecord], case_fit: CaseFit | None) -> None:
    """Set ``adjusted`` (the shrunk corrected estimate) on every trial the model has fitted."""
    if case_fit is None:
        return
    for t in trials:
        if t.config_hash in case_fit.mean:
            t.adjusted = case_fit.shrunk(t.config_hash)
