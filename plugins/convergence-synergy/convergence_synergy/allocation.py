"""Shares over agents, with a floor so that no agent starves.

Every agent keeps at least ``floor`` of each generation's slots (so its credit
can still be measured); the rest, ``1 - n * floor``, is split by a
distribution ``v`` over the agents, the *free part*::

    shares = floor + (1 - n * floor) * v          (v >= 0, sum v = 1)

The learners act on ``v``: Double DQN mixes it towards one agent; the
actor-critic, SAC and TD3 output its logits, bounded to ``[-BOUND, BOUND]``
(``v = softmax(logits)``; the largest share ratio is then ``exp(2 * BOUND)``).
Whatever they do, the shares stay a distribution with every agent at or above
the floor.

The reward of an allocation is what the agents' measured credits say it earned (the credits are
per unit of cost, so they do not depend on how many slots an agent had), less a KL cost for
leaving the run's starting shares ``ref``::

    reward(w) = scale * ( sum_i w_i * credit_i  -  kl_cost * KL(w || ref) )

The allocation that maximises the expected reward is ``w* ~ ref * exp(E[credit] / kl_cost)`` (up
to the floors): credits are normalised (units of their standard deviation), so a difference of
a few generations' noise moves the shares a little and a lasting one a lot, and when the
evidence goes away the shares go back. Without the KL term a greedy learner puts everything on
whichever agent got lucky first.

Because the credits are measured per agent, the reward of *any* allocation follows from one
generation: the off-policy learners use that for actions they did not take.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

BOUND = 3.0
"""The continuous learners' logits lie in ``[-BOUND, BOUND]`` (``BOUND * tanh(.)``)."""


def effective_floor(n_agents: int, floor: float) -> float:
    """The floor, lowered when there are so many agents that the floors would take over half the slots."""
    if n_agents <= 0:
        raise ValueError("no agents")
    if not 0.0 <= floor < 1.0:
        raise ValueError(f"floor must be in [0, 1), got {floor}")
    return min(floor, 0.5 / n_agents)


def to_shares(v: np.ndarray, floor: float) -> np.ndarray:
    """Shares from the free part: ``floor + (1 - n * floor) * v``."""
    n = len(v)
    return floor + (1.0 - n * floor) * np.asarray(v, dtype=np.float64)


def free_part(shares: np.ndarray, floor: float) -> np.ndarray:
    """The free part of a vector of (relative) shares: normalised, then what lies above the floor.

    Shares under the floor are raised to it; all-zero shares give the uniform split.
    """
    w = np.asarray(shares, dtype=np.float64)
    n = len(w)
    total = w.sum()
    if not np.isfinite(total) or total <= 0:
        return np.full(n, 1.0 / n)
    w = w / total
    above = np.clip(w - floor, 0.0, None)
    s = above.sum()
    return above / s if s > 0 else np.full(n, 1.0 / n)


def shares_vector(agents: Sequence[str], shares: Mapping[str, float]) -> np.ndarray:
    return np.array([float(shares.get(a, 0.0)) for a in agents], dtype=np.float64)


def as_mapping(agents: Sequence[str], w: np.ndarray) -> dict[str, float]:
    return {a: float(x) for a, x in zip(agents, w, strict=True)}


def shift(v: np.ndarray, agent: int, step: float) -> np.ndarray:
    """Move ``step`` of the free slots to ``agent``, taken from the others in proportion to theirs:
    ``v' = (1 - step) * v + step * e_agent``."""
    out = (1.0 - step) * np.asarray(v, dtype=np.float64)
    out[agent] += step
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) - np.max(logits)
    e = np.exp(z)
    return e / e.sum()


def bounded_logits(v: np.ndarray, bound: float = BOUND, margin: float = 0.98) -> np.ndarray:
    """Logits within ``[-margin * bound, margin * bound]`` whose softmax is (close to) ``v``: what a
    continuous learner's policy is anchored to at the start of a run."""
    logits = np.log(np.clip(np.asarray(v, dtype=np.float64), 1e-12, None))
    top, span = logits.max(), 2 * margin * bound
    logits = np.maximum(logits, top - span)
    return logits - (top + logits.min()) / 2


def kl(p: np.ndarray, q: np.ndarray) -> float:
    """``KL(p || q) = sum_i p_i * log(p_i / q_i)`` (p, q > 0: shares with a floor)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, None)
    q = np.clip(np.asarray(q, dtype=np.float64), 1e-12, None)
    return float(np.sum(p * np.log(p / q)))


def reward(v: np.ndarray, credits: np.ndarray, floor: float, scale: float, kl_cost: float = 0.0,
           reference: np.ndarray | None = None) -> float:
    """``scale * (shares . credits - kl_cost * KL(shares || reference))`` for the free part ``v``
    (``credits`` must be filled for agents that had no measurement: see ``credit.fill``)."""
    w = to_shares(v, floor)
    out = float(np.dot(w, credits))
    if kl_cost and reference is not None:
        out -= kl_cost * kl(w, reference)
    return scale * out
