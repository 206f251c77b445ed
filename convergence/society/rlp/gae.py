"""RLP's advantage estimates (formulas visible).

* Group-relative advantage (RLP paper, eq. for G thoughts per context):
  ``A_i = G / (G - 1) * (r_i - mean(r))``: unbiased leave-one-out baseline.
* GAE and the running reward normalisation (Welford) are the shared ones of
  :mod:`convergence.core.rl`, re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence

from convergence.core.rl import RunningNorm, gae

__all__ = ["RunningNorm", "gae", "group_advantages"]


def group_advantages(rewards: Sequence[float]) -> list[float]:
    """``G/(G-1) * (r_i - mean r)``; zeros for a group of one (no baseline to compare with)."""
    g = len(rewards)
    if g < 2:
        return [0.0] * g
    mean = sum(rewards) / g
    return [g / (g - 1) * (r - mean) for r in rewards]
