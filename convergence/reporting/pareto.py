"""Pareto front over the per-metric means.

A trial is on the front when no other usable trial is at least as good on
every metric and strictly better on one. Trials are sorted best-first
lexicographically, so any dominator of a point comes before it and only the
front found so far must be checked: O(n * front) vectorised, fine for 10k.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from convergence.core.types import TrialRecord

LOWER = "lower_is_better"


def non_dominated(values: np.ndarray) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``values`` (n x m), every
    column to be maximised. Equal rows do not dominate each other."""
    values = np.asarray(values, dtype=float)
    n = values.shape[0]
    mask = np.zeros(n, dtype=bool)
    if n == 0:
        return mask
    if values.ndim != 2 or values.shape[1] == 0:
        mask[:] = True
        return mask
    # Best first, lexicographically over all columns (np.lexsort keys go last-first).
    order = np.lexsort(tuple(-values[:, j] for j in reversed(range(values.shape[1]))))
    if values.shape[1] == 2:
        return _sweep_2d(values, order)
    front = np.empty_like(values)
    k = 0
    for i in order:
        x = values[i]
        if k:
            f = front[:k]
            if np.any(np.all(f >= x, axis=1) & np.any(f > x, axis=1)):
                continue
        front[k] = x
        k += 1
        mask[i] = True
    return mask


def _sweep_2d(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    """O(n log n) for two objectives. In best-first order a point is dominated
    iff an earlier point with a larger first value reaches its second value,
    or the first point with the same first value beats its second value."""
    mask = np.zeros(values.shape[0], dtype=bool)
    reach: float | None = None  # max second value over strictly larger first values
    group_x: float | None = None
    group_top = -np.inf  # the first (largest) second value of the current group
    for i in order:
        x, y = float(values[i, 0]), float(values[i, 1])
        if x != group_x:
            if group_x is not None:
                reach = group_top if reach is None else max(reach, group_top)
            group_x, group_top = x, y
        if (reach is not None and y <= reach) or y < group_top:
            continue
        mask[i] = True
    return mask


def objective_matrix(
    trials: Sequence[TrialRecord], directions: Mapping[str, str]
) -> tuple[list[str], np.ndarray]:
    """Metric names and a matrix to maximise: lower-is-better metrics are
    negated; a missing or non-finite mean counts as the worst possible value."""
    names = [m for m in directions if any(m in t.metrics for t in trials)]
    mat = np.full((len(trials), len(names)), -np.inf)
    for i, t in enumerate(trials):
        for j, m in enumerate(names):
            v = t.metrics.get(m)
            if v is None or not math.isfinite(v):
                continue
            mat[i, j] = -v if directions[m] == LOWER else v
    return names, mat


def pareto_front(trials: Sequence[TrialRecord], directions: Mapping[str, str]) -> list[TrialRecord]:
    """Usable trials not dominated on the metrics in ``directions``, in their
    original order. With no metric to compare, the score is the objective."""
    usable = [t for t in trials if t.usable and math.isfinite(t.score)]
    names, mat = objective_matrix(usable, directions)
    if not names:
        mat = np.array([[t.score] for t in usable], dtype=float).reshape(len(usable), 1)
    mask = non_dominated(mat)
    return [t for t, keep in zip(usable, mask, strict=True) if keep]
