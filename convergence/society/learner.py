"""What a society learner sees and does: after each generation it reads how every
agent did and returns the next generation's shares (and, optionally, the
agents' controls: a :class:`Decision`).

A learner is a plugin (``learner`` entry of the registry) chosen with
``society.learner: {plugin: NAME, ...options}``. Its entry is a factory
``make(context: LearnerContext) -> Learner``. The loop calls ``update`` in a
thread of its own (learning must not stall evaluation), for at most
``society.agent_timeout_seconds`` (past that the step is missed and the shares
in force stay; three missed in a row set the learner aside), and applies the shares it
returns through ``Society.set_shares`` and the controls through each
:class:`~convergence.society.base.Tunable` agent; ``stop_reason`` lets a
learner's predictor stop the run early, with a reason the user sees.

Generations are numbered from 0. A resumed run replays its stored generations
from 0; a learner with a true ``replays`` attribute is given them again (it
recognises them by ``(context.run_id, generation)`` in its
:class:`LearnerMemory`, and learns the generation the crash cut short), others
only see the generations proposed after the resume.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from convergence.core.space import SearchSpace
from convergence.core.types import TrialRecord
from convergence.storage.store import ExperienceRow


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
class ParamStat:
    """One search parameter, on its [0, 1] coordinate (``Dimension.unit``)."""

    spread: float
    """Standard deviation of the population's values: how far the search still disagrees."""
    importance: float
    """|Spearman correlation| of the value with the score over the run's trials so far."""
    best: float
    """The run's best configuration's value."""


@dataclass(slots=True, frozen=True)
class GenerationResult:
    generation: int
    """0 for the first generation."""
    progress: float
    """How far through the run (0..1): the largest of generations, calls, cost and time used."""
    best_score: float | None
    """The run's best score after the generation."""
    improvement: float
    """How much the generation raised the run's best score."""
    cost_unit: str
    """calls | usd | seconds."""
    agents: dict[str, AgentResult]
    mean_score: float | None = None
    """Mean score of the generation's usable trials."""
    score_std: float = 0.0
    population_mean: float | None = None
    """Mean score of the run's surviving population after the generation."""
    diversity: float = 0.0
    """Mean over parameters of the population's spread (0: converged)."""
    error_rate: float = 0.0
    """Share of the generation's target calls that failed (after retries)."""
    timeout_rate: float = 0.0
    """Share of them that failed by timing out."""
    seconds: float = 0.0
    """Wall time from the generation's proposals to its last trial."""
    calls: int = 0
    """Case results of the generation (its calls; on resume, also results reused from the store)."""
    survivors: int = 0
    """How many of the generation's trials are in the surviving population after it."""
    budget_left: float = 1.0
    """1 - progress through the budget (calls, cost, time; generations not counted)."""
    params: dict[str, ParamStat] = field(default_factory=dict)
    decided_at: int = -1
    """After which generation the learner made the decision this generation ran under (-1: the start)."""
    controls: dict[str, dict[str, str]] = field(default_factory=dict)
    """The agents' controls this generation ran under."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GenerationResult:
        """Back from the stored form (``learner_log.result_json``): replayed by offline training."""
        extra = {k: d[k] for k in ("mean_score", "score_std", "population_mean", "diversity", "error_rate",
                                   "timeout_rate", "seconds", "calls", "survivors", "budget_left", "decided_at",
                                   "controls") if k in d}
        return cls(generation=int(d["generation"]), progress=float(d["progress"]), best_score=d.get("best_score"),
                   improvement=float(d["improvement"]), cost_unit=str(d["cost_unit"]),
                   agents={k: AgentResult(**v) for k, v in d["agents"].items()},
                   params={k: ParamStat(**v) for k, v in d.get("params", {}).items()}, **extra)


@dataclass(slots=True, frozen=True)
class Decision:
    """What a learner may return instead of bare shares: shares and agents' controls."""

    shares: Mapping[str, float]
    controls: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """agent -> control -> choice, from ``LearnerContext.controls``; controls not named keep theirs."""


class LearnerMemory:
    """A learner's state and experience in the run's database (``agent_memory`` and
    ``agent_experience``, under ``learner:<plugin>``), kept across runs of the study.

    Loaded before the learner starts; what it saves or records from its worker thread is
    buffered here and handed to the store by the loop after each update, so it is committed
    in order with the run's rows (a killed run keeps exactly what the learner had seen)."""

    def __init__(self, state: dict[str, Any] | None = None, experiences: Sequence[ExperienceRow] = ()) -> None:
        self.state = state
        self.experiences: list[ExperienceRow] = list(experiences)
        """Oldest first: earlier runs' and, on resume, this run's before the crash."""
        self._lock = threading.Lock()
        self._saved: str | None = None
        """The last saved state, as JSON: encoded by ``save`` in the learner's thread (a checkpoint of
        weights can be megabytes; the loop only hands the text to the store)."""
        self._records: list[tuple[int, dict[str, Any], float | None]] = []

    def save(self, state: dict[str, Any]) -> None:
        """Replace the stored state (JSON-safe; bytes must be encoded by the learner). Encoded here, in
        the caller's thread, so later changes to the learner's own objects do not reach what is stored."""
        text = json.dumps(state, separators=(",", ":"), default=str)
        with self._lock:
            self.state, self._saved = state, text

    def record(self, generation: int, data: dict[str, Any], reward: float | None) -> None:
        """Append one experience of this run."""
        with self._lock:
            self._records.append((generation, data, reward))

    def drain(self) -> tuple[str | None, list[tuple[int, dict[str, Any], float | None]]]:
        """What was saved and recorded since the last drain (the loop persists it)."""
        with self._lock:
            saved, records = self._saved, self._records
            self._saved, self._records = None, []
        return saved, records


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
    run_id: int = 0
    generations: int = 1
    """Generations the run plans (``evolution.generations``)."""
    controls: Mapping[str, Mapping[str, Sequence[str]]] = field(default_factory=dict)
    """agent -> control -> its choices (the first is the agent's configured behaviour)."""
    cost_budget: float | None = None
    """The run's budget in ``GenerationResult.cost_unit`` (max calls, dollars or seconds); None: unbounded."""
    memory: LearnerMemory = field(default_factory=LearnerMemory)


@runtime_checkable
class Learner(Protocol):
    name: str

    def initial_shares(self) -> Mapping[str, float]:
        """Shares for the first generation (learned in earlier runs of the study, or the roster's)."""
        ...

    def update(self, result: GenerationResult) -> Mapping[str, float] | Decision:
        """Learn from a generation; the next generation's shares (or a :class:`Decision`). Runs in a worker
        thread."""
        ...

    def stop_reason(self) -> str | None:
        """Why to stop the run now (e.g. predicted improvement per remaining budget too small), or None."""
        ...

    def summary(self) -> dict[str, Any]:
        """What to show in the report and traces (algorithm, losses, predictions). Keys the report reads:
        ``algorithm``; ``action`` (the decision, name -> choice); ``metrics`` (an update's learning metrics);
        ``message`` (a line shown to the user now, e.g. after an update)."""
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


def parameter_stats(space: SearchSpace, population: Sequence[TrialRecord], history: Sequence[TrialRecord],
                    best: TrialRecord | None, window: int = 200) -> dict[str, ParamStat]:
    """Per parameter: the population's spread, its rank correlation with the score over the
    last ``window`` trials, and the best configuration's value; all on [0, 1] coordinates."""
    from scipy.stats import spearmanr

    recent = [t for t in history if t.usable][-window:]
    scores = np.asarray([t.score for t in recent], dtype=float)
    out = {}
    for name, d in space.dims.items():
        pop = [d.unit(t.config[name]) for t in population if name in t.config]
        spread = float(np.std(pop)) if len(pop) > 1 else 0.0
        importance = 0.0
        if len(recent) >= 5 and np.ptp(scores) > 0:
            xs = np.asarray([d.unit(t.config[name]) if name in t.config else 0.0 for t in recent])
            if np.ptp(xs) > 0:
                rho = spearmanr(xs, scores).statistic
                importance = abs(float(rho)) if np.isfinite(rho) else 0.0
        at = d.unit(best.config[name]) if best is not None and name in best.config else 0.0
        out[name] = ParamStat(spread=spread, importance=importance, best=at)
    return out
