"""Pairwise preference ratings of configurations from the self-judge's duels.

Each consistent SAO pair is a duel between the two configurations that wrote its responses.
We rate them with a Bradley-Terry model, P(i beats j) = p_i / (p_i + p_j), fitted by maximum
likelihood over all duels at once with the MM algorithm (Hunter 2004). Unlike Elo, whose
ratings depend on the order duels are played in and on a step size, the fit depends only on
the set of duels. Ties count as half a win for each side. A weak prior - ``prior_strength``
virtual ties of every configuration against a reference of strength 1 - keeps the fit finite
for a configuration that only ever won (or lost) and pulls thinly observed ones toward average.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(slots=True)
class Duel:
    a: str
    """Configuration hash of side A."""
    b: str
    outcome: Literal["A", "B", "tie"]


@dataclass(slots=True)
class Rating:
    config_hash: str
    strength: float
    """Log-strength; the rated configurations average 0."""
    preference: float
    """Probability, in [0, 1], of beating an average configuration (strength 0): sigmoid(strength)."""
    duels: int
    wins: int
    losses: int
    ties: int


def win_probability(r_a: float, r_b: float) -> float:
    """Bradley-Terry probability that a configuration of log-strength ``r_a`` beats one of ``r_b``."""
    return 1.0 / (1.0 + math.exp(r_b - r_a))


def fit_bradley_terry(duels: Sequence[Duel], prior_strength: float = 1.0, iters: int = 200,
                      tol: float = 1e-8) -> dict[str, float]:
    """Log-strength per configuration (mean 0), fitted by MM; deterministic and independent of duel order.

    A duel of a configuration with itself says nothing about it and is ignored. ``prior_strength``
    must be > 0 (it keeps all-win and all-loss records finite). Empty -> {}.
    """
    if prior_strength <= 0:
        raise ValueError(f"prior_strength must be > 0, got {prior_strength}")
    duels = [d for d in duels if d.a != d.b]
    names = sorted({d.a for d in duels} | {d.b for d in duels})
    if not names:
        return {}
    index = {name: i for i, name in enumerate(names)}
    k = len(names)
    games = np.zeros((k, k))
    wins = np.full(k, prior_strength / 2)  # half of the prior's virtual ties are won
    for d in duels:
        i, j = index[d.a], index[d.b]
        games[i, j] += 1
        games[j, i] += 1
        if d.outcome == "A":
            wins[i] += 1
        elif d.outcome == "B":
            wins[j] += 1
        else:
            wins[i] += 0.5
            wins[j] += 0.5
    p = np.ones(k)
    for _ in range(iters):
        denom = (games / (p[:, None] + p[None, :])).sum(axis=1) + prior_strength / (p + 1.0)
        new = wins / denom
        done = float(np.max(np.abs(np.log(new) - np.log(p)))) < tol
        p = new
        if done:
            break
    log_p = np.log(p)
    log_p -= log_p.mean()
    return {name: float(log_p[i]) for i, name in enumerate(names)}


def ratings(duels: Sequence[Duel], prior_strength: float = 1.0) -> dict[str, Rating]:
    """A ``Rating`` per configuration, strongest first (ties in strength by hash)."""
    strengths = fit_bradley_terry(duels, prior_strength)
    tally = {name: [0, 0, 0] for name in strengths}  # wins, losses, ties
    for d in duels:
        if d.a == d.b:
            continue
        if d.outcome == "tie":
            tally[d.a][2] += 1
            tally[d.b][2] += 1
        else:
            winner, loser = (d.a, d.b) if d.outcome == "A" else (d.b, d.a)
            tally[winner][0] += 1
            tally[loser][1] += 1
    order = sorted(strengths, key=lambda name: (-strengths[name], name))
    return {
        name: Rating(config_hash=name, strength=strengths[name], preference=win_probability(strengths[name], 0.0),
                     duels=sum(tally[name]), wins=tally[name][0], losses=tally[name][1], ties=tally[name][2])
        for name in order
    }
