"""Thompson sampling on a Bayesian linear model of configuration effects: the ``surrogate`` agent.

Why: per-case results pair across configurations, so the run's case model
gives every trial, abandoned and partial ones included, a case-corrected value
(``adjusted``, society/observed.py). A configuration racing dropped after 6
cases is then a noisy but unbiased measurement: a model that weighs each trial
by the cases it ran learns from all of them. Racing sees many configurations
on few cases; this agent turns that breadth into a model of which values (and
which pairs of values) pay.

Model. A configuration ``x`` maps to one-hot features ``phi(x)``:

* a main effect per value of every parameter (numeric ranges binned like the
  bandit's arms: ``Dimension.arms(BINS)``);
* an interaction per pair of values of every two parameters with a list of
  choices (categorical, explicit values): "prompt A is good only with model B".

Each trial ``i`` with a result gives ``y_i`` (its learned value) and ``w_i``
(the cases it ran, its precision)::

    y_i - ybar = phi(x_i)^T beta + eps_i,      eps_i ~ N(0, sigma^2 / w_i)
    beta_main ~ N(0, MAIN_PRIOR s_y^2),        beta_pair ~ N(0, PAIR_PRIOR s_y^2)

``ybar``, ``s_y^2``: the weighted mean and variance of ``y``. Interactions
shrink more than main effects (hierarchical ridge): the model explains by a
main effect what a main effect explains. Whitened (``z_i = sqrt(w_i)(y_i -
ybar)``, rows ``X_i = sqrt(w_i) phi(x_i)``), with ``S0`` the diagonal prior
covariance, in the dual (n trials, fewer than the D features)::

    K = X S0 X^T + sigma^2 I,     alpha = K^{-1} z,     E[beta] = S0 X^T alpha
    residuals = z - X E[beta] = sigma^2 alpha,          dof = n - tr(hat) = sigma^2 tr(K^{-1})
    sigma^2 <- (|residuals|^2 + NU0 sigma0^2) / (dof + NU0)   (SIGMA_ROUNDS rounds; sigma0^2 = s_y^2 mean(w))

or, with more trials than features, the same posterior in the primal::

    A = X^T X + sigma^2 S0^{-1},  E[beta] = A^{-1} X^T z,  Cov[beta] = sigma^2 A^{-1},
    dof = n - D + sigma^2 tr(A^{-1} S0^{-1})

Thompson sampling, one exact posterior draw per proposal (dual: Matheron's rule; primal: ``A = L L^T``)::

    u ~ N(0, S0),  e ~ N(0, sigma^2 I),   beta~ = u + S0 X^T K^{-1} (z - X u - e)
    xi ~ N(0, I),                         beta~ = E[beta] + sigma L^{-T} xi

Candidates: ``POOL_RANDOM`` random configurations, ``POOL_MUTANTS`` one- or
two-gene mutations and ``POOL_CROSSOVERS`` crossovers of the ``TOP_K`` trials
of highest posterior mean, and every one-parameter neighbour of the best of
them (each other value, or bin). Proposal ``j`` is the unseen candidate of
highest ``phi(c)^T beta~_j``, distinct within the batch. Cost per generation:
O(n D m + m^3) with m = min(n, D), in a worker thread, on one BLAS thread; all randomness from
the generation's rng.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np
from scipy.linalg import cho_solve, cholesky, solve_triangular

from convergence.core.blas import one_blas_thread
from convergence.core.space import SearchSpace, config_hash
from convergence.core.types import Config, TrialRecord
from convergence.society.base import ProposalContext
from convergence.society.observed import learned_value, weight

BINS = 5
"""Bins of a numeric range (its main effect is one value per bin)."""
MAIN_PRIOR = 0.5
"""Prior variance of a main effect, as a share of the values' variance ``s_y^2``."""
PAIR_PRIOR = 0.125
"""Prior variance of an interaction, as a share of ``s_y^2``: pairs shrink more."""
NU0 = 2.0
"""Pseudo-observations of the prior guess of the noise variance."""
SIGMA_ROUNDS = 3
"""Refits that re-estimate the noise variance from the residuals."""
MIN_TRIALS = 3
"""Fewer trials with results: random proposals (nothing to fit yet)."""
POOL_RANDOM = 128
POOL_MUTANTS = 64
POOL_CROSSOVERS = 32
TOP_K = 5


class Features:
    """The one-hot encoding ``phi``: main effects of every parameter, interactions of pairs of listed choices."""

    def __init__(self, space: SearchSpace, bins: int = BINS):
        self.space = space
        self.bins = bins
        self.arms = {name: d.arms(bins) for name, d in space.dims.items()}
        self.offsets: dict[str, int] = {}
        at = 0
        for name, arms in self.arms.items():
            self.offsets[name], at = at, at + len(arms)
        self.n_main = at
        listed = [name for name, d in space.dims.items() if d.kind in ("categorical", "values") and len(d.choices) > 1]
        self.pairs: list[tuple[str, str, int]] = []
        for a, b in itertools.combinations(listed, 2):
            self.pairs.append((a, b, at))
            at += len(self.arms[a]) * len(self.arms[b])
        self.size = at
        self.is_pair = np.arange(self.size) >= self.n_main

    def fits(self, config: Config) -> bool:
        """The configuration is of this space (a warm-start record may come from an older one)."""
        return all(name in config and d.contains(config[name]) for name, d in self.space.dims.items())

    def index(self, config: Config) -> np.ndarray:
        """The indices of the features that are 1 for ``config``."""
        arm = {name: d.arm_of(config[name], self.bins, self.arms[name]) for name, d in self.space.dims.items()}
        main = [self.offsets[name] + i for name, i in arm.items()]
        pair = [at + arm[a] * len(self.arms[b]) + arm[b] for a, b, at in self.pairs]
        return np.asarray(main + pair, dtype=np.intp)

    def matrix(self, indices: Sequence[np.ndarray]) -> np.ndarray:
        phi = np.zeros((len(indices), self.size))
        if indices:
            phi[np.arange(len(indices))[:, None], np.stack(indices)] = 1.0
        return phi


@dataclass(slots=True)
class Posterior:
    """The model's posterior over ``beta`` given whitened data (see the module docstring), in the dual
    (n x n, when there are fewer trials than features) or the primal (D x D) form."""

    X: np.ndarray
    z: np.ndarray
    s0: np.ndarray
    sigma2: float
    chol: np.ndarray
    """Lower Cholesky factor of ``K = X S0 X^T + sigma^2 I`` (dual) or ``A = X^T X + sigma^2 S0^{-1}`` (primal)."""
    primal: bool

    @classmethod
    def fit(cls, phi: np.ndarray, y: np.ndarray, w: np.ndarray, is_pair: np.ndarray, *,
            primal: bool | None = None) -> Posterior:
        """``primal``: None picks the smaller system (both give the same posterior)."""
        ybar = float(np.average(y, weights=w))
        var_y = max(float(np.average((y - ybar) ** 2, weights=w)), 1e-4)
        s0 = np.where(is_pair, PAIR_PRIOR, MAIN_PRIOR) * var_y
        sw = np.sqrt(w)
        X, z = phi * sw[:, None], (y - ybar) * sw
        n, size = X.shape
        primal = size < n if primal is None else primal
        gram = X.T @ X if primal else (X * s0) @ X.T
        ridge = 1.0 / s0 if primal else np.ones(n)
        eye = np.eye(len(ridge))
        sigma0 = sigma2 = var_y * float(w.mean())
        for _ in range(SIGMA_ROUNDS):
            chol = cholesky(gram + sigma2 * np.diag(ridge), lower=True)
            inv = np.square(solve_triangular(chol, eye, lower=True)).sum(axis=0)  # diag of the system's inverse
            if primal:  # residuals z - X m, m = A^{-1} X^T z; dof = n - D + sigma^2 tr(A^{-1} S0^{-1})
                resid2 = float(np.square(z - X @ cho_solve((chol, True), X.T @ z)).sum())
                dof = n - size + sigma2 * float((inv / s0).sum())
            else:
                alpha = cho_solve((chol, True), z)
                resid2, dof = sigma2**2 * float(alpha @ alpha), sigma2 * float(inv.sum())
            sigma2 = (resid2 + NU0 * sigma0) / (dof + NU0)
        return cls(X, z, s0, sigma2, cholesky(gram + sigma2 * np.diag(ridge), lower=True), primal)

    def mean(self) -> np.ndarray:
        if self.primal:
            return cho_solve((self.chol, True), self.X.T @ self.z)
        return self.s0 * (self.X.T @ cho_solve((self.chol, True), self.z))

    def draw(self, rng: np.random.Generator, k: int) -> np.ndarray:
        """``k`` exact posterior draws of ``beta`` (columns): ``m + sigma L^{-T} xi`` (primal, covariance
        ``sigma^2 A^{-1}``) or Matheron's rule (dual)."""
        if self.primal:
            xi = rng.standard_normal((self.s0.size, k))
            return self.mean()[:, None] + np.sqrt(self.sigma2) * solve_triangular(self.chol.T, xi, lower=False)
        u = rng.standard_normal((self.s0.size, k)) * np.sqrt(self.s0)[:, None]
        e = rng.standard_normal((self.z.size, k)) * np.sqrt(self.sigma2)
        return u + self.s0[:, None] * (self.X.T @ cho_solve((self.chol, True), self.z[:, None] - self.X @ u - e))


class SurrogateProposer:
    """Thompson sampling on a Bayesian linear model of main effects and pairwise interactions, fitted
    to every trial's case-corrected value weighted by the cases it ran (see the module docstring)."""

    name = "surrogate"

    def __init__(self, space: SearchSpace):
        self.space = space
        self.features = Features(space)
        self._trials: dict[str, TrialRecord] = {}
        """Trials with results by configuration hash (the latest record of each); ``adjusted`` is re-read
        at each proposal, as the case model refreshes it."""
        self._index: dict[str, np.ndarray] = {}

    def observe(self, trials: Sequence[TrialRecord]) -> None:
        for t in trials:
            if learned_value(t) is not None and self.features.fits(t.config):
                self._trials[t.config_hash] = t

    async def propose(self, ctx: ProposalContext, n: int) -> list[Config]:
        if n <= 0:
            return []
        trials = dict(self._trials)
        for t in ctx.history:  # warm-start results, which the loop does not pass to observe
            if t.config_hash not in trials and learned_value(t) is not None and self.features.fits(t.config):
                trials[t.config_hash] = t
        return await anyio.to_thread.run_sync(self._propose, list(trials.values()), frozenset(ctx.seen), ctx.rng, n)

    def _propose(self, trials: list[TrialRecord], seen: frozenset[str], rng: np.random.Generator,
                 n: int) -> list[Config]:
        with one_blas_thread():  # small matrices: one thread is fast, many contend (core/blas.py)
            return self._thompson(trials, seen, rng, n)

    def _thompson(self, trials: list[TrialRecord], seen: frozenset[str], rng: np.random.Generator,
                 n: int) -> list[Config]:
        values = [learned_value(t) for t in trials]
        data = [(t, v) for t, v in zip(trials, values, strict=True) if v is not None]
        if len(data) < MIN_TRIALS:
            pool = [self.space.sample(rng) for _ in range(POOL_RANDOM)]
            return self._distinct(pool, seen)[:n]
        for t, _ in data:
            if t.config_hash not in self._index:
                self._index[t.config_hash] = self.features.index(t.config)
        phi = self.features.matrix([self._index[t.config_hash] for t, _ in data])
        post = Posterior.fit(phi, np.asarray([v for _, v in data]), np.asarray([weight(t) for t, _ in data]),
                             self.features.is_pair)
        order = np.argsort(-(phi @ post.mean()), kind="stable")
        top = [data[int(i)][0].config for i in order[:TOP_K]]
        candidates = self._distinct(self._pool(top, rng), seen)
        if not candidates:
            return []
        scores = self.features.matrix([self.features.index(c) for c in candidates]) @ post.draw(rng, n)
        out: list[Config] = []
        for j in range(n):
            i = int(np.argmax(scores[:, j]))
            if scores[i, j] == -np.inf:
                break
            out.append(candidates[i])
            scores[i, :] = -np.inf
        return out

    def _pool(self, top: list[Config], rng: np.random.Generator) -> list[Config]:
        space, names = self.space, self.space.names
        pool: list[Config] = []
        best = top[0]
        for name, d in space.dims.items():  # every one-parameter neighbour of the best
            for arm in self.features.arms[name]:
                value = d.sample_in_arm(arm, rng)
                if value != best[name]:
                    pool.append({**best, name: value})
        for _ in range(POOL_MUTANTS):
            child = dict(top[int(rng.integers(len(top)))])
            for _ in range(1 + int(rng.random() < 0.5)):
                name = names[int(rng.integers(len(names)))]
                child[name] = space.dims[name].mutate(child[name], rng)
            pool.append(child)
        if len(top) > 1:
            for _ in range(POOL_CROSSOVERS):
                a, b = rng.choice(len(top), size=2, replace=False)
                pool.append(space.crossover(top[int(a)], top[int(b)], rng))
        pool.extend(space.sample(rng) for _ in range(POOL_RANDOM))
        return pool

    def _distinct(self, pool: list[Config], seen: frozenset[str]) -> list[Config]:
        """Canonical, not seen, each once (in pool order)."""
        out: list[Config] = []
        taken = set(seen)
        for c in pool:
            c = self.space.canonical(c)
            h = config_hash(c)
            if h not in taken:
                taken.add(h)
                out.append(c)
        return out

    def summary(self) -> dict[str, Any]:
        """For the society report: what the model is fitted to."""
        return {"trials": len(self._trials), "features": self.features.size}
