"""What a run tells whoever watches it (the CLI's live view, a notebook, the metrics exporter)."""

from __future__ import annotations

from typing import Protocol

from convergence.core.types import CaseResult, TrialRecord
from convergence.society.base import Proposal
from convergence.society.society import AgentReport


class LoopEvents(Protocol):
    """Progress hooks for the CLI or a notebook; all optional."""

    def generation_started(self, generation: int, total: int, n_trials: int, n_cases: int) -> None: ...
    def case_finished(self, trial: Proposal, result: CaseResult, cached: bool) -> None: ...
    def trial_finished(self, trial: TrialRecord, best: TrialRecord | None) -> None: ...
    def generation_finished(self, generation: int, best: TrialRecord | None, new: list[TrialRecord]) -> None: ...
    def society_step(self, generation: int, reports: dict[str, AgentReport], new: list[TrialRecord]) -> None: ...
    def message(self, text: str) -> None: ...


class NoEvents:
    """Events nobody listens to (the default)."""

    def generation_started(self, generation: int, total: int, n_trials: int, n_cases: int) -> None:
        pass

    def case_finished(self, trial: Proposal, result: CaseResult, cached: bool) -> None:
        pass

    def trial_finished(self, trial: TrialRecord, best: TrialRecord | None) -> None:
        pass

    def generation_finished(self, generation: int, best: TrialRecord | None, new: list[TrialRecord]) -> None:
        pass

    def society_step(self, generation: int, reports: dict[str, AgentReport], new: list[TrialRecord]) -> None:
        pass

    def message(self, text: str) -> None:
        pass
