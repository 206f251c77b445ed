"""What a society learner sees and does: after each generation it reads how every
agent did and returns the next generation's shares.

A learner is a plugin (``learner`` entry of the registry) chosen with
``society.learner: {plugin: NAME, ...options}``. Its entry is a factory
``make(context: LearnerContext) -> Learner``. The loop calls ``update`` in a
worker thread (learning must not stall evaluation) and applies the shares it
returns through ``Society.set_shares``; ``stop_reason`` lets a learner's
predictor stop the run early, with a reason the user sees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from convergence.core.types import TrialRecord


@dataclass(slots=True, frozen=True)
class AgentResult:
    """One agent in one generation."""

    share: float
    """Its share of the generation's slots."""
    proposed: int
    """Configurations of its that were evaluated (usable or not)."""
    improvement: float
    """How much its best proposal raised the run's best score (0 when it did not)."""
    in_top: int
    """Its proposals among the run's top k (k = population size)."""
    cost: float
    """What its proposals cost, in the unit the run budgets (calls, dollars or seconds)."""
    best_score: float | None
    """Its best proposal's score this generation."""


@dataclass(slots=True, frozen=True)
class GenerationResult:
    generation: int
    progress: float
    """How far through the run (0..1): the largest of generations, calls, cost and time used."""
    best_score: float | None
    """The run's best score after the generation."""
    improvement: float
    """How much the generation raised the run's best score."""
    cost_unit: str
    """calls | usd | seconds."""
    agents: dict[str, AgentResult]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GenerationResult:
        """Back from the stored form (``learner_log.result_json``): replayed by offline training."""
        return cls(generation=int(d["generation"]), progress=float(d["progress"]), best_score=d.get("best_score"),
                   improvement=float(d["improvement"]), cost_unit=str(d["cost_unit"]),
                   agents={k: AgentResult(**v) for k, v in d["agents"].items()})


@dataclass(slots=True, frozen=True)
class LearnerContext:
    """What a learner's factory gets."""

    agents: Sequence[str]
    shares: Mapping[str, float]
    """The roster's starting shares."""
    options: Mapping[str, Any]
    """``society.learner`` without ``plugin``."""
    seed: int
    study: str
    state_dir: Path
    """Where the learner may keep files (learned weights and their change log), per study."""
    min_improvement: float
    """``early_stopping.min_improvement``: the improvement worth the rest of the budget."""


@runtime_checkable
class Learner(Protocol):
    name: str

    def initial_shares(self) -> Mapping[str, float]:
        """Shares for the first generation (learned in earlier runs of the study, or the roster's)."""
        ...

    def update(self, result: GenerationResult) -> Mapping[str, float]:
        """Learn from a generation; the next generation's shares. Runs in a worker thread."""
        ...

    def stop_reason(self) -> str | None:
        """Why to stop the run now (e.g. predicted improvement per remaining budget too small), or None."""
        ...

    def summary(self) -> dict[str, Any]:
        """What to show in the report and traces (algorithm, losses, predictions)."""
        ...


def state_dir(db_path: Path, study: str) -> Path:
    """Where a study's learner keeps its files: ``<database folder>/learners/<study>``."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in study)[:100] or "study"
    return db_path.parent / "learners" / safe


def credit(trials: Sequence[TrialRecord], best_before: float | None, agents: Sequence[str]) -> dict[str, float]:
    """Per agent: how far its best usable trial of the generation rose above the run's best before it."""
    base = best_before if best_before is not None else min((t.score for t in trials if t.usable), default=0.0)
    out = dict.fromkeys(agents, 0.0)
    for t in trials:
        if t.usable and t.proposer in out:
            out[t.proposer] = max(out[t.proposer], t.score - base)
    return out
