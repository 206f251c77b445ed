"""The search space: sampling, mutation, crossover and canonical hashing.

Configurations hold *labels* for categorical parameters (the mapping key, or
the value itself for a plain list) so they hash stably and read well in
reports; :meth:`SearchSpace.resolve` turns labels into the values a target gets.
All randomness comes from a caller-supplied ``numpy.random.Generator`` so a
seed fixes the whole run.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from convergence.config.models import CategoricalParam, ContinuousParam, DiscreteParam, SearchSpaceConfig
from convergence.core.types import Config


@lru_cache(maxsize=256)
def _decimals(step: float) -> int:
    """Digits to round a stepped value to, so 0.1 * 3 snaps to 0.3, not 0.30000000000000004."""
    return max(0, -math.floor(math.log10(step)) + 2)


def _label(value: Any) -> Any:
    """A JSON-friendly, hashable label for a list-style categorical value."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return json.dumps(value, sort_keys=True)


@dataclass(frozen=True, slots=True)
class Dimension:
    name: str
    kind: str  # "categorical" | "continuous" | "integer" | "values"
    choices: tuple[Any, ...] = ()
    """categorical: labels; values: the explicit numeric values."""
    values: tuple[Any, ...] = ()
    """categorical: resolved values aligned with ``choices``."""
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    log: bool = False

    @property
    def is_numeric_range(self) -> bool:
        return self.kind in ("continuous", "integer")

    def snap(self, x: float) -> float | int:
        x = min(max(x, self.low), self.high)
        if self.kind == "integer":
            step = int(self.step or 1)
            return int(self.low + round((x - self.low) / step) * step)
        if self.step:
            x = self.low + round((x - self.low) / self.step) * self.step
            x = min(max(x, self.low), self.high)
            return round(x, _decimals(self.step))
        return float(x)

    def sample(self, rng: np.random.Generator) -> Any:
        if self.kind in ("categorical", "values"):
            return self.choices[int(rng.integers(len(self.choices)))]
        if self.log:
            return self.snap(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        if self.kind == "integer":
            return self.snap(float(rng.integers(int(self.low), int(self.high) + 1)))
        return self.snap(float(rng.uniform(self.low, self.high)))

    def mutate(self, current: Any, rng: np.random.Generator, scale: float = 0.15) -> Any:
        """Gaussian for numbers (in log space for log scales), neighbour or
        random choice for categorical/explicit values."""
        if self.kind in ("categorical", "values"):
            n = len(self.choices)
            if n == 1:
                return current
            idx = self.choices.index(current) if current in self.choices else 0
            if rng.random() < 0.5:
                step = 1 if rng.random() < 0.5 else -1
                return self.choices[(idx + step) % n]
            other = [c for c in self.choices if c != current]
            return other[int(rng.integers(len(other)))]
        if self.log:
            lo, hi = math.log(self.low), math.log(self.high)
            x = math.log(max(float(current), self.low)) + rng.normal(0, scale * (hi - lo or 1.0))
            return self.snap(math.exp(min(max(x, lo), hi)))
        width = (self.high - self.low) or 1.0
        return self.snap(float(current) + float(rng.normal(0, scale * width)))

    def arms(self, bins: int) -> list[Any]:
        """Discrete arms for the bandit: the choices, or equal-width bins (``(lo, hi)`` tuples)."""
        if self.kind in ("categorical", "values"):
            return list(self.choices)
        if self.kind == "integer" and (self.high - self.low) / (self.step or 1) + 1 <= bins:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step and (self.high - self.low) / self.step + 1 <= bins:
            n = round((self.high - self.low) / self.step) + 1
            return [self.snap(self.low + i * self.step) for i in range(n)]
        lo, hi = (math.log(self.low), math.log(self.high)) if self.log else (self.low, self.high)
        edges = np.linspace(lo, hi, bins + 1)
        return [(float(edges[i]), float(edges[i + 1])) for i in range(bins)]

    def arm_of(self, value: Any, bins: int, arms: list[Any] | None = None) -> int:
        """Index of the arm holding ``value``; pass ``arms`` (from :meth:`arms`) to skip rebuilding them."""
        arms = self.arms(bins) if arms is None else arms
        if arms and isinstance(arms[0], tuple):
            x = math.log(value) if self.log else float(value)
            for i, (_lo, hi) in enumerate(arms):
                if x <= hi:
                    return i
            return len(arms) - 1
        if value in arms:
            return arms.index(value)
        # numeric value from an off-grid source (e.g. warm start): nearest arm
        return int(np.argmin([abs(float(a) - float(value)) for a in arms]))

    def sample_in_arm(self, arm: Any, rng: np.random.Generator) -> Any:
        if isinstance(arm, tuple):
            x = rng.uniform(arm[0], arm[1])
            return self.snap(math.exp(x) if self.log else x)
        return arm

    def unit(self, value: Any) -> float:
        """Where ``value`` lies in the dimension, on [0, 1] (log scale for log ranges; a choice's index):
        a space-independent coordinate for learners' statistics."""
        if self.kind in ("categorical", "values"):
            n = len(self.choices)
            return self.choices.index(value) / (n - 1) if n > 1 and value in self.choices else 0.0
        lo, hi, x = self.low, self.high, float(value)
        if self.log:
            lo, hi, x = math.log(lo), math.log(hi), math.log(max(x, self.low))
        return min(max((x - lo) / (hi - lo), 0.0), 1.0) if hi > lo else 0.0

    def contains(self, value: Any) -> bool:
        if self.kind in ("categorical", "values"):
            return value in self.choices
        try:
            return self.low <= float(value) <= self.high
        except (TypeError, ValueError):
            return False


class SearchSpace:
    def __init__(self, dims: Iterable[Dimension]):
        self.dims: dict[str, Dimension] = {d.name: d for d in dims}

    @classmethod
    def from_config(cls, cfg: SearchSpaceConfig) -> SearchSpace:
        dims = []
        for name, p in cfg.parameters.items():
            if isinstance(p, CategoricalParam):
                if isinstance(p.values, dict):
                    dims.append(Dimension(name, "categorical", tuple(p.values), tuple(p.values.values())))
                else:
                    dims.append(Dimension(name, "categorical", tuple(_label(v) for v in p.values), tuple(p.values)))
            elif isinstance(p, ContinuousParam):
                dims.append(Dimension(name, "continuous", low=p.min, high=p.max, step=p.step, log=p.log))
            elif isinstance(p, DiscreteParam):
                if p.values is not None:
                    dims.append(Dimension(name, "values", tuple(p.values), tuple(p.values)))
                else:
                    assert p.min is not None and p.max is not None
                    dims.append(Dimension(name, "integer", low=p.min, high=p.max, step=p.step))
        return cls(dims)

    @property
    def names(self) -> list[str]:
        return list(self.dims)

    def size(self) -> float:
        """Number of distinct configurations (inf if any dimension is continuous without step)."""
        total = 1.0
        for d in self.dims.values():
            if d.kind in ("categorical", "values"):
                total *= len(d.choices)
            elif d.kind == "integer":
                total *= (d.high - d.low) // (d.step or 1) + 1
            elif d.step:
                total *= round((d.high - d.low) / d.step) + 1
            else:
                return math.inf
        return total

    def sample(self, rng: np.random.Generator) -> Config:
        return {name: d.sample(rng) for name, d in self.dims.items()}

    def mutate(self, config: Config, rng: np.random.Generator, rate: float) -> Config:
        out = dict(config)
        for name, d in self.dims.items():
            if rng.random() < rate:
                out[name] = d.mutate(out[name], rng)
        return out

    def crossover(self, a: Config, b: Config, rng: np.random.Generator) -> Config:
        """Uniform crossover: each gene from either parent with equal odds."""
        return {name: (a[name] if rng.random() < 0.5 else b[name]) for name in self.dims}

    def resolve(self, config: Config) -> Config:
        """Labels -> the values the target receives."""
        out: Config = {}
        for name, value in config.items():
            d = self.dims.get(name)
            if d is not None and d.kind == "categorical":
                out[name] = d.values[d.choices.index(value)]
            else:
                out[name] = value
        return out

    def contains(self, config: Config) -> bool:
        return set(config) == set(self.dims) and all(self.dims[k].contains(v) for k, v in config.items())

    def canonical(self, config: Config) -> Config:
        """Snap numbers onto the grid so equal configurations compare equal."""
        out: Config = {}
        for name, d in self.dims.items():
            v = config[name]
            out[name] = d.snap(float(v)) if d.is_numeric_range else v
        return out


_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)


def config_hash(config: Config) -> str:
    """Stable identity of a configuration (used for de-duplication and resume)."""
    return hashlib.sha1(_CANONICAL_JSON.encode(config).encode()).hexdigest()[:16]
