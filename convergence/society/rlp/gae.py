"""Advantage estimates shared by the society's learners (formulas visible).

* Group-relative advantage (RLP paper, eq. for G thoughts per context):
  ``A_i = G / (G - 1) * (r_i - mean(r))``: unbiased leave-one-out baseline.
* GAE (Schulman et al. 2016): ``delta_t = r_t + gamma * V_{t+1} - V_t`` and
  ``A_t = sum_k (gamma * lambda)^k * delta_{t+k}``, computed backwards.
* Welford running mean/variance for reward normalisation, kept as plain
  numbers so it persists as JSON across runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def group_advantages(rewards: Sequence[float]) -> list[float]:
    """``G/(G-1) * (r_i - mean r)``; zeros for a group of one (no baseline to compare with)."""
    g = len(rewards)
    if g < 2:
        return [0.0] * g
    mean = sum(rewards) / g
    return [g / (g - 1) * (r - mean) for r in rewards]


def gae(
    rewards: Sequence[float], values: Sequence[float], next_value: float, gamma: float, lam: float
) -> list[float]:
    """Generalized advantage estimates along one sequence of steps.

    ``values[t]`` is the value estimate at step t; ``next_value`` bootstraps
    the step after the last (the sequence continues in later generations/runs).
    """
    if len(rewards) != len(values):
        raise ValueError(f"{len(rewards)} rewards but {len(values)} values")
    out = [0.0] * len(rewards)
    running = 0.0
    for t in reversed(range(len(rewards))):
        following = values[t + 1] if t + 1 < len(rewards) else next_value
        delta = rewards[t] + gamma * following - values[t]
        running = delta + gamma * lam * running
        out[t] = running
    return out


@dataclass(slots=True)
class RunningNorm:
    """Online mean/std of rewards (Welford); ``normalize`` uses the stats so far."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def update(self, values: Sequence[float]) -> None:
        for x in values:
            self.count += 1
            d = x - self.mean
            self.mean += d / self.count
            self.m2 += d * (x - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 1.0

    def normalize(self, x: float) -> float:
        return (x - self.mean) / max(self.std, 1e-6)

    def to_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_dict(cls, d: dict[str, float]) -> RunningNorm:
        return cls(int(d.get("count", 0)), float(d.get("mean", 0.0)), float(d.get("m2", 0.0)))
