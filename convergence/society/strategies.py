"""RLP's reasoning strategies: what a thought is asked to consider, and where
its answer may land.

A strategy is a cue for the thought *and* a restriction of the answer's
schema, so the policy over strategies (what RLP learns) changes what is
proposed even when the LLM's thought is weak: ``exploit`` answers near the
best configuration, ``explore`` among values never tried, ``recombine``
among the values of the top configurations; ``fix_weakest`` names the best
configuration's weakest metric; ``free`` is the whole space. Without
history (or when a restriction would leave nothing), the whole space.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from convergence.core.space import Dimension, SearchSpace
from convergence.core.types import TrialRecord
from convergence.society.answer import grid

Allowed = dict[str, list[Any] | None]


@dataclass(frozen=True, slots=True)
class Strategy:
    name: str
    cue: str
    """What the thought is asked to reason about (``{weakest}`` is filled in)."""
    restrict: Callable[[SearchSpace, Sequence[TrialRecord]], Allowed]


def _best(history: Sequence[TrialRecord], k: int) -> list[TrialRecord]:
    return sorted((t for t in history if t.usable), key=lambda t: -t.score)[:k]


def _neighbours(d: Dimension, value: Any, values: list[Any], runners_up: Sequence[Any]) -> list[Any]:
    """The best's value and its grid neighbours; for an unordered choice (no
    neighbours) the values of the next-best configurations, so a small
    categorical space still leaves room for a new configuration."""
    if value not in values:
        return values
    if d.kind == "categorical":
        return [v for v in values if v == value or v in runners_up]
    i = values.index(value)
    return values[max(0, i - 1): i + 2]


def _exploit(space: SearchSpace, history: Sequence[TrialRecord]) -> Allowed:
    top = _best(history, 3)
    if not top:
        return {}
    out: Allowed = {}
    for name, d in space.dims.items():
        values = grid(d)
        runners_up = [t.config.get(name) for t in top[1:]]
        out[name] = _neighbours(d, top[0].config.get(name), values, runners_up) if values else None
    return out


def _explore(space: SearchSpace, history: Sequence[TrialRecord]) -> Allowed:
    out: Allowed = {}
    for name, d in space.dims.items():
        values = grid(d)
        if not values:
            out[name] = None
            continue
        used = Counter(t.config.get(name) for t in history)
        fewest = min(used.get(v, 0) for v in values)
        out[name] = [v for v in values if used.get(v, 0) == fewest]
    return out


def _recombine(space: SearchSpace, history: Sequence[TrialRecord]) -> Allowed:
    top = _best(history, 3)
    if len(top) < 2:
        return {}
    out: Allowed = {}
    for name, d in space.dims.items():
        values = grid(d)
        seen = [v for v in (values or []) if any(t.config.get(name) == v for t in top)]
        out[name] = seen or None
    return out


def _whole(space: SearchSpace, history: Sequence[TrialRecord]) -> Allowed:
    return {}


STRATEGIES: dict[str, Strategy] = {
    "exploit": Strategy("exploit", "Refine the best configuration: keep what works and change one value slightly.",
                        _exploit),
    "explore": Strategy("explore", "Probe values that have not been tried yet, to learn what they do.", _explore),
    "recombine": Strategy("recombine", "Combine the strengths of the top configurations.", _recombine),
    "fix_weakest": Strategy("fix_weakest", "Improve the weakest metric of the best configuration: {weakest}.",
                            _whole),
    "free": Strategy("free", "Decide what is most worth trying next.", _whole),
}


def weakest_metric(history: Sequence[TrialRecord]) -> str:
    """The best configuration's lowest normalised metric, in words."""
    best = _best(history, 1)
    if not best or not best[0].normalized:
        return "none measured yet"
    name, value = min(best[0].normalized.items(), key=lambda kv: kv[1])
    return f"{name} (normalised {value:.2f} of 1)"


def cue(strategy: Strategy, history: Sequence[TrialRecord]) -> str:
    return strategy.cue.format(weakest=weakest_metric(history)) if "{weakest}" in strategy.cue else strategy.cue


def nearest_unseen(space: SearchSpace, config: dict[str, Any], allowed: Allowed, seen: set[str],
                   rng: Any) -> dict[str, Any] | None:
    """The configuration closest to ``config`` (one parameter changed, to a grid
    neighbour first) that is in the strategy's region and not in ``seen``;
    None when every one-step change is seen too. An LLM's answer that repeats
    an evaluated configuration moves here instead of wasting its slot."""
    from convergence.core.space import config_hash

    names = list(space.dims)
    for i in rng.permutation(len(names)):
        name = names[int(i)]
        d = space.dims[name]
        values = allowed.get(name) or grid(d)
        if not values or config[name] not in values:
            continue
        at = values.index(config[name])
        # nearest first: the neighbours at distance 1, then 2, ...
        for v in sorted((v for v in values if v != config[name]), key=lambda v: abs(values.index(v) - at)):
            candidate = {**config, name: v}
            if config_hash(space.canonical(candidate)) not in seen:
                return candidate
    return None
