"""The input of every report: one run, read back from the store.

Reporting is pure: it turns a :class:`RunReport` into files and never talks to
the database, so the storage layer builds this object and tests can build it
from hand-made :class:`TrialRecord` objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from convergence.core.types import Config, TrialRecord
from convergence.engine import selection
from convergence.reporting.sao import SAOReport
from convergence.reporting.society import SocietyReport


@dataclass(slots=True, frozen=True)
class GenerationSummary:
    """One generation at a glance. Scores are over usable trials (NaN if none)."""

    number: int
    best_score: float
    mean_score: float
    n_trials: int
    n_new: int
    """Trials whose configuration had not been evaluated in an earlier generation."""


def shown_score(t: TrialRecord) -> float | None:
    """The score a table shows: None for a trial that ran no case (its 0.0 is no measurement)."""
    return None if t.n_cases == 0 and not t.repeats else t.score


def _scored(t: TrialRecord) -> bool:
    return t.usable and math.isfinite(t.score)


def summarize_generations(trials: list[TrialRecord]) -> list[GenerationSummary]:
    """Per-generation summaries derived from the trials themselves, for callers
    (and the storage layer) that do not keep generation rows."""
    seen: set[str] = set()
    out: list[GenerationSummary] = []
    for number in sorted({t.generation for t in trials}):
        gen = [t for t in trials if t.generation == number]
        scores = [t.score for t in gen if _scored(t)]
        new = {t.config_hash for t in gen} - seen
        seen |= {t.config_hash for t in gen}
        out.append(
            GenerationSummary(
                number=number,
                best_score=max(scores) if scores else math.nan,
                mean_score=sum(scores) / len(scores) if scores else math.nan,
                n_trials=len(gen),
                n_new=sum(1 for t in gen if t.config_hash in new),
            )
        )
    return out


@dataclass(slots=True)
class RunReport:
    """Everything a report shows about one run. ``trials`` are in evaluation
    order; the best and the ranking are :func:`convergence.engine.selection.rank`'s,
    the same as the run's outcome, the export, warm start and the CLI."""

    run_id: int
    study: str
    status: str
    stop_reason: str | None
    started_at: str
    finished_at: str | None
    seed: int | None
    trials: list[TrialRecord]
    generations: list[GenerationSummary] = field(default_factory=list)
    metric_directions: dict[str, str] = field(default_factory=dict)
    """metric -> ``higher_is_better`` | ``lower_is_better``."""
    metric_weights: dict[str, float] = field(default_factory=dict)
    metric_functions: dict[str, str] = field(default_factory=dict)
    """metric -> the function computing it (``latency``, ``cost``, ``contains`` ...),
    when known; the report uses it to avoid showing the same quantity twice."""
    parameters: list[str] = field(default_factory=list)
    parameter_descriptions: dict[str, str] = field(default_factory=dict)
    """parameter -> its ``description`` in the search space (only those that have one)."""
    description: str | None = None
    """The target's ``description`` (the-convergence's ``api.description``), when given."""
    resolved_best: Config | None = None
    """The best configuration's values as the target receives them (labels
    resolved); what export writes."""
    total_calls: int = 0
    total_cost_usd: float = 0.0
    elapsed_seconds: float = 0.0
    society: SocietyReport | None = None
    """What each agent of the society proposed and how it did (None: no society log)."""
    sao: SAOReport | None = None
    """The self-judge's pairs, consistency and preference ratings (None: the run made no SAO pairs)."""
    learner: list[dict[str, Any]] | None = None
    """The society learner's decisions, one per generation (None: no ``society.learner``)."""
    selection: dict[str, Any] | None = None
    """How the best was chosen: estimates, confirmation, the top configurations' intervals, the
    best-vs-runner-up test (engine/confirm.py); None for runs that made no selection."""

    @property
    def usable(self) -> list[TrialRecord]:
        """Complete trials with a finite score: the only ones that can win."""
        return selection.usable(self.trials)

    @property
    def ranked(self) -> list[TrialRecord]:
        """Usable trials, best first (:func:`convergence.engine.selection.rank`: merit, then mean score,
        then evaluation order)."""
        return selection.ranking(self.trials)

    @property
    def best(self) -> TrialRecord | None:
        """The run's best configuration (:func:`convergence.engine.selection.best`)."""
        return selection.best(self.trials)

    @property
    def worst(self) -> TrialRecord | None:
        ranked = self.ranked
        return ranked[-1] if ranked else None

    def generation_summaries(self) -> list[GenerationSummary]:
        """The stored summaries, or ones derived from the trials when absent."""
        return self.generations or summarize_generations(self.trials)
