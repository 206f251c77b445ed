"""Parameter importance: how much of the score's spread each parameter explains.

A simple, honest estimate, not fANOVA: for each parameter on its own, group the
usable trials by its value (numeric parameters with many distinct values go
into quantile bins) and take the share of score variance explained by the
group means, corrected for the chance spread that many small groups show
(epsilon squared: ``(SS_between - (k-1) * MS_within) / SS_total``, floored at
0). The shares are then normalised to sum to 1. Interactions between
parameters are not separated, and the trials come from an optimizer, not a
designed experiment, so read the numbers as a ranking, not a decomposition.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from convergence.core.types import TrialRecord

_MISSING = "<missing>"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _group_keys(values: list[Any], bins: int) -> list[Any]:
    """One group key per trial: the value itself, or a quantile bin index for
    numeric parameters with more than ``bins`` distinct values (trials
    without the parameter form their own group)."""
    present = [v for v in values if v is not _MISSING]
    if present and all(_is_number(v) for v in present) and len(set(present)) > bins:
        edges = np.quantile(np.asarray(present, dtype=float), np.linspace(0.0, 1.0, bins + 1))[1:-1]
        return [v if v is _MISSING else int(np.searchsorted(edges, float(v), side="right")) for v in values]
    return [
        v if isinstance(v, (str, int, float, bool)) or v is None else json.dumps(v, sort_keys=True, default=str)
        for v in values
    ]


def explained_share(scores: np.ndarray, keys: Sequence[Any]) -> float:
    """Epsilon squared of ``scores`` grouped by ``keys``: 0 when the groups
    explain no more than chance, towards 1 when they explain everything."""
    n = len(scores)
    groups: dict[Any, list[float]] = {}
    for k, s in zip(keys, scores, strict=True):
        groups.setdefault(k, []).append(float(s))
    k = len(groups)
    ss_total = float(np.sum((scores - scores.mean()) ** 2))
    if k < 2 or n - k < 1 or ss_total <= 0.0:
        return 0.0
    mean = scores.mean()
    ss_between = sum(len(g) * (float(np.mean(g)) - mean) ** 2 for g in groups.values())
    ms_within = (ss_total - ss_between) / (n - k)
    return max(0.0, (ss_between - (k - 1) * ms_within) / ss_total)


def parameter_importance(
    trials: Sequence[TrialRecord], parameters: Sequence[str], bins: int = 4
) -> dict[str, float]:
    """Parameter -> share of importance (summing to 1, most important first).
    All zeros when nothing explains the score (too few trials, no variance)."""
    usable = [t for t in trials if t.usable and math.isfinite(t.score)]
    scores = np.array([t.score for t in usable], dtype=float)
    raw: dict[str, float] = {}
    for p in parameters:
        values = [t.config.get(p, _MISSING) for t in usable]
        raw[p] = explained_share(scores, _group_keys(values, bins)) if len(usable) > 2 else 0.0
    total = sum(raw.values())
    shares = {p: (float(v / total) if total > 0 else 0.0) for p, v in raw.items()}
    return dict(sorted(shares.items(), key=lambda kv: -kv[1]))
