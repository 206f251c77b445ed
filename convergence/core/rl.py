"""Running normalisation and generalised advantage estimation, shared by RLP and the learner
plugins (PPO, synergy). The formulas, CleanRL-style:

Running mean and variance (Welford), of a number or of each feature of a vector; per value x::

    n    <- n + 1
    d     = x - mean
    mean <- mean + d / n
    m2   <- m2 + d * (x - mean)

    var  = m2 / n                     (population; what observations are scaled by)
    std  = sqrt(m2 / (n - 1))         (sample; 0 before two values)

GAE (Schulman et al. 2016), backwards over one sequence of steps::

    nonterminal_t = 1 - done_t                         (1 everywhere without dones)
    delta_t = r_t + gamma * V_{t+1} * nonterminal_t - V_t        (V_T = next_value)
    A_t     = delta_t + gamma * lambda * nonterminal_t * A_{t+1}  (A_T = 0)
    returns = A + V
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

OBS_PRIOR = 1e-4
"""A vector's starting weight (CleanRL's ``RunningMeanStd``): mean 0 and variance 1 count as
this many observations, so the first division is finite and real observations dominate at once."""


class Steps(Protocol):
    """One value per step: a list of floats, a 1-d array or tensor."""

    def __len__(self) -> int: ...
    def __getitem__(self, t: int, /) -> Any: ...


class RunningNorm:
    """Running mean and variance (Welford, see the module), persisted as JSON.

    ``RunningNorm()``: one number (rewards, credits), starting empty (``count`` 0; ``mean`` and
    ``m2`` plain floats). ``RunningNorm(dim)``: ``dim`` features (observations), numpy arrays,
    starting from the prior ``OBS_PRIOR`` (mean 0, variance 1).

    Two ways to scale a value, for the two uses:

    * :meth:`normalize` (a reward): ``(x - mean) / max(std, 1e-6)``, ``std`` taken as 1 before two
      values;
    * :meth:`__call__` (an observation, CleanRL's ``NormalizeObservation``):
      ``clip((x - mean) / sqrt(var + 1e-8), -clip, clip)``.
    """

    __slots__ = ("clip", "count", "m2", "mean")

    def __init__(self, dim: int | None = None, clip: float = 5.0) -> None:
        self.clip = clip
        """Observations: the bound of :meth:`__call__`'s output (+-5, as CleanRL)."""
        self.count: float
        self.mean: Any
        self.m2: Any
        if dim is None:
            self.count, self.mean, self.m2 = 0, 0.0, 0.0
        else:
            self.count, self.mean, self.m2 = OBS_PRIOR, np.zeros(dim), np.full(dim, OBS_PRIOR)

    @property
    def is_vector(self) -> bool:
        return isinstance(self.mean, np.ndarray)

    def update(self, values: Sequence[float] | np.ndarray) -> None:
        """Add values: numbers for a number's statistics (any shape, flattened); for a vector's,
        one observation (``dim``) or a batch of them (``k x dim``), one at a time."""
        if self.is_vector:
            for row in np.asarray(values, dtype=np.float64).reshape(-1, self.mean.shape[0]):
                self.count += 1
                dv = row - self.mean
                self.mean = self.mean + dv / self.count
                self.m2 = self.m2 + dv * (row - self.mean)
            return
        for v in np.asarray(values, dtype=np.float64).ravel():
            x = float(v)
            self.count += 1
            d = x - self.mean
            self.mean += d / self.count
            self.m2 += d * (x - self.mean)

    @property
    def var(self) -> Any:
        """Population variance ``m2 / n`` (0 for an empty number)."""
        return self.m2 / self.count if self.count > 0 else 0.0

    @property
    def std(self) -> float:
        """Sample standard deviation ``sqrt(m2 / (n - 1))``; 0 before two values."""
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 0.0

    def normalize(self, x: float) -> float:
        """A reward in units of the spread so far: ``(x - mean) / max(std, 1e-6)`` (std 1 before two values)."""
        std = self.std if self.count > 1 else 1.0
        return float((x - self.mean) / max(std, 1e-6))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """An observation scaled per feature: ``clip((x - mean) / sqrt(var + 1e-8), -clip, clip)``."""
        return np.clip((x - self.mean) / np.sqrt(self.var + 1e-8), -self.clip, self.clip)

    def to_dict(self) -> dict[str, Any]:
        """A number: ``{count, mean, m2}``. A vector: ``{mean, var, count, m2}`` as lists (``var`` for
        readers of exported policies; ``m2`` so that a reload continues exactly)."""
        if self.is_vector:
            return {"mean": self.mean.tolist(), "var": self.var.tolist(), "count": float(self.count),
                    "m2": self.m2.tolist()}
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_dict(cls, d: Any, clip: float = 5.0) -> RunningNorm:
        """The inverse of :meth:`to_dict`. A vector's state needs ``mean``, ``count`` and ``m2`` or
        ``var`` (older states: ``m2 = var * count``), else ``KeyError``. A number's missing fields
        take their empty values; an unreadable or impossible one (not finite, negative) loads empty."""
        if isinstance(d, Mapping) and isinstance(d.get("mean"), list):
            out = cls(len(d["mean"]), clip)
            out.mean, out.count = np.asarray(d["mean"], dtype=np.float64), float(d["count"])
            out.m2 = np.asarray(d["m2"] if "m2" in d else np.asarray(d["var"], dtype=np.float64) * out.count,
                                dtype=np.float64)
            return out
        out = cls(clip=clip)
        try:
            count, mean, m2 = int(d.get("count", 0)), float(d.get("mean", 0.0)), float(d.get("m2", 0.0))
        except (AttributeError, TypeError, ValueError):
            return out
        if count >= 0 and math.isfinite(mean) and math.isfinite(m2) and m2 >= 0:
            out.count, out.mean, out.m2 = count, mean, m2
        return out

    def load(self, d: Mapping[str, Any]) -> None:
        """Replace this state by a saved one (:meth:`from_dict`)."""
        other = RunningNorm.from_dict(d, self.clip)
        self.count, self.mean, self.m2 = other.count, other.mean, other.m2

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RunningNorm):
            return NotImplemented
        return (self.count == other.count and bool(np.array_equal(self.mean, other.mean))
                and bool(np.array_equal(self.m2, other.m2)))

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"RunningNorm(count={self.count!r}, mean={self.mean!r}, m2={self.m2!r})"


def gae(rewards: Steps, values: Steps, next_value: Any, gamma: float, lam: float,
        dones: Steps | None = None) -> list[Any]:
    """Generalised advantage estimates ``A_t`` along one sequence of steps (see the module).

    ``values[t]`` is the value estimate at step t; ``next_value`` bootstraps the step after the
    last (the sequence continues later). ``dones[t]`` = 1 when step t ended its episode: nothing
    after it is credited to it. Elementwise: floats give floats, 0-d tensors give 0-d tensors in
    their own precision (the caller stacks them).
    """
    n = len(rewards)
    if len(values) != n or (dones is not None and len(dones) != n):
        raise ValueError(f"{n} rewards but {len(values)} values" + ("" if dones is None else f", {len(dones)} dones"))
    out: list[Any] = [0.0] * n
    running: Any = 0.0
    for t in reversed(range(n)):
        following = next_value if t == n - 1 else values[t + 1]
        nonterminal = 1.0 if dones is None else 1.0 - dones[t]
        delta = rewards[t] + gamma * following * nonterminal - values[t]
        running = delta + gamma * lam * nonterminal * running
        out[t] = running
    return out
