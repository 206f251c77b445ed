"""What the policy sees and what it can do.

Observation: a fixed-size vector whatever the search space or roster, normalised online
(running mean and variance, clipped to +-5: :class:`convergence.core.rl.RunningNorm`). Nothing in
it is a wall-clock time unless the run's budget is (``max_seconds``: progress and budget left), so
a seeded generational run makes the same decisions again:

* run: progress through generations/budget, budget left, best score, the generation's
  improvement, mean and spread of its scores, the population's mean, diversity, error and
  timeout rates, calls per trial (racing cuts it), the share of its trials that survived into the
  population, generations since the last improvement, and the last three improvements;
* parameters, summarised to five numbers: mean and max of the population's spread, mean and max
  of |rank correlation| with the score, and how far the best sits from the middle of its ranges;
* each agent of the roster (fixed per study): its share, its share of the run's top
  configurations, its credited improvement and whether it found the generation's best;
* the last action, one-hot per head.

Actions: one discrete head per decision (see :class:`ActionSpace`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from convergence.core.rl import RunningNorm as RunningNorm  # its old home: re-exported
from convergence.society.learner import GenerationResult

RUN_FEATURES = 16
PARAM_FEATURES = 5
AGENT_FEATURES = 4


@dataclass(frozen=True, slots=True)
class Head:
    """One decision: its name (``boost`` or ``<agent>.<control>``) and its choices."""

    name: str
    choices: tuple[str, ...]


class ActionSpace:
    """The decisions the policy makes after every generation.

    * ``boost``: ``none`` or an agent; that agent gets ``boost`` (a share, default 0.4) of the next
      generation's slots on top of the roster's shares scaled by ``1 - boost``.
    * ``<agent>.<control>`` for every control of a tunable agent (``evolution.operator``:
      blend | local | reset | crossover; ``evolution.strength``: medium | small | large;
      ``bandit.exploration``: configured | exploit | explore).

    ``actions`` (an option) keeps only the named heads; the others stay at their first choice.
    """

    def __init__(self, agents: Sequence[str], controls: Mapping[str, Mapping[str, Sequence[str]]],
                 only: Sequence[str] | None = None) -> None:
        heads = [Head("boost", ("none", *agents))] if len(agents) > 1 else []
        heads += [Head(f"{a}.{c}", tuple(choices)) for a, cs in controls.items() for c, choices in cs.items()]
        names = [h.name for h in heads]
        if only is not None:
            unknown = [n for n in only if n not in names]
            if unknown:
                raise ValueError(f"actions: unknown decision(s) {unknown}; this society has {names}")
            heads = [h for h in heads if h.name in only]
        if not heads:
            raise ValueError("the policy has nothing to decide: a single agent with no controls")
        self.heads = heads
        self.agents = list(agents)

    @property
    def sizes(self) -> list[int]:
        return [len(h.choices) for h in self.heads]

    def labels(self, action: Sequence[int]) -> dict[str, str]:
        return {h.name: h.choices[int(i)] for h, i in zip(self.heads, action, strict=True)}

    def one_hot(self, action: Sequence[int] | None) -> np.ndarray:
        out = np.zeros(sum(self.sizes))
        if action is not None:
            offset = 0
            for size, i in zip(self.sizes, action, strict=True):
                out[offset + int(i)] = 1.0
                offset += size
        return out

    def decide(self, action: Sequence[int], base: Mapping[str, float], boost: float
               ) -> tuple[dict[str, float], dict[str, dict[str, str]]]:
        """Shares and controls for the chosen action."""
        chosen = self.labels(action)
        total = sum(base.values()) or 1.0
        shares = {a: base.get(a, 0.0) / total for a in self.agents}
        target = chosen.get("boost", "none")
        if target != "none":
            shares = {a: (1 - boost) * s + (boost if a == target else 0.0) for a, s in shares.items()}
        controls: dict[str, dict[str, str]] = {}
        for name, choice in chosen.items():
            if name != "boost":
                agent, _, control = name.partition(".")
                controls.setdefault(agent, {})[control] = choice
        return shares, controls


class ObservationEncoder:
    """``GenerationResult`` -> a fixed-size vector (raw; normalise with :class:`RunningNorm`)."""

    def __init__(self, agents: Sequence[str], actions: ActionSpace) -> None:
        self.agents = list(agents)
        self.actions = actions
        self.dim = RUN_FEATURES + PARAM_FEATURES + AGENT_FEATURES * len(self.agents) + sum(actions.sizes)

    def encode(self, r: GenerationResult, recent: Sequence[float], stale: int, last_action: Sequence[int] | None
               ) -> np.ndarray:
        proposed = sum(a.proposed for a in r.agents.values())
        last3 = list(recent[-3:])
        last3 = [0.0] * (3 - len(last3)) + last3
        run = [r.progress, r.budget_left, r.best_score or 0.0, r.improvement, r.mean_score or 0.0, r.score_std,
               r.population_mean or 0.0, r.diversity, r.error_rate, r.timeout_rate,
               r.calls / proposed if proposed else 0.0,
               r.survivors / proposed if proposed else 0.0, min(stale, 20) / 20.0, *last3]
        ps = list(r.params.values())
        spread = [p.spread for p in ps] or [0.0]
        imp = [p.importance for p in ps] or [0.0]
        edge = [abs(p.best - 0.5) for p in ps] or [0.0]
        params = [float(np.mean(spread)), float(np.max(spread)), float(np.mean(imp)), float(np.max(imp)),
                  float(np.mean(edge))]
        top = sum(a.in_top for a in r.agents.values()) or 1
        agents: list[float] = []
        for name in self.agents:
            a = r.agents.get(name)
            if a is None:
                agents += [0.0] * AGENT_FEATURES
                continue
            found_best = a.best_score is not None and r.best_score is not None and a.best_score >= r.best_score
            agents += [a.share, a.in_top / top, a.improvement, float(found_best)]
        x = np.asarray(run + params + agents, dtype=float)
        return np.concatenate([x, self.actions.one_hot(last_action)])
