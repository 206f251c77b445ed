"""The proposer interface: how agents of the society contribute to a generation.

A proposer gets a read-only view of the study so far and a slot count, and
returns configurations. It learns from results through :meth:`observe`, which
the loop calls once per generation, in a fixed order, so a seeded run repeats.
Later agents (RLP, SAO, learned schedulers) plug in through the same two calls.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from convergence.core.space import SearchSpace
from convergence.core.types import Config, TestCase, TrialRecord
from convergence.errors import ConvergenceError


@dataclass(slots=True)
class ProposalContext:
    space: SearchSpace
    generation: int
    population: list[TrialRecord]
    """Current survivors, best first."""
    history: list[TrialRecord]
    """Every trial of this run so far with results: complete ones and, since racing and stops cut
    configurations short, abandoned and partial ones (``usable`` tells them apart; ``adjusted`` holds the
    case model's corrected estimate, comparable across them)."""
    rng: np.random.Generator
    seen: set[str] = field(default_factory=set)
    """Hashes already evaluated or proposed; proposers may use it to avoid repeats."""


@runtime_checkable
class Proposer(Protocol):
    name: str

    async def propose(self, ctx: ProposalContext, n: int) -> list[Config]:
        ...

    def observe(self, trials: Sequence[TrialRecord]) -> None:
        ...


@runtime_checkable
class Tunable(Protocol):
    """An agent whose behaviour a society learner can steer between generations
    (PPO's actions): a few named controls, each with a small set of choices."""

    def controls(self) -> dict[str, tuple[str, ...]]:
        """Each control's choices; the first is the agent's configured behaviour."""
        ...

    def set_controls(self, values: Mapping[str, str]) -> None:
        """Use these choices from the next proposal on (controls not named keep theirs)."""
        ...


@runtime_checkable
class TrialMeasure(Protocol):
    """An agent that measures whole configurations beyond their test cases (SAO rates them from
    judged duels). A metric whose ``function`` is one of :meth:`measures` takes its value for a
    configuration from :meth:`trial_value`; the engine asks the society, never an agent by name, and
    refreshes the scores after each generation's learning, since the values move as the agent learns."""

    def measures(self) -> frozenset[str]:
        """The trial-level metric functions this agent provides (e.g. ``sao_preference``)."""
        ...

    def trial_value(self, function: str, config_hash: str) -> float:
        """The configuration's value of ``function`` now."""
        ...


@dataclass(slots=True)
class Proposal:
    config: Config
    config_hash: str
    proposer: str


@dataclass(slots=True)
class TaskAccess:
    """What an agent may use of the user's task (given by the loop through
    ``Society.bind``): the test cases, as examples of its inputs, and a call of
    the target with a configuration on a new input, budgeted, retried and
    counted like every evaluation call; it returns the output as text and
    raises :class:`TargetCallError` when the call failed. ``grade``: the score
    the run's metrics give an output on a test case (its reference answer
    decides). ``render``: the prompt the target sends for a configuration and
    an input, or None when the target cannot say."""

    cases: Sequence[TestCase]
    call: Callable[[Config, object], Awaitable[str]]
    grade: Callable[[TestCase, str], Awaitable[float]] | None = None
    render: Callable[[Config, object], str | None] | None = None


class TargetCallError(ConvergenceError):
    """An agent's target call failed (after retries) or the budget had no call left."""
