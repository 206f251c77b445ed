"""Run budgets (calls, cost, seconds) and early stopping."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

from convergence.config.models import BudgetConfig, EarlyStoppingConfig

_MAX_CALLS = "budget: max_calls"
"""How every stop reason for ``max_calls`` starts (``release`` and ``calls_spent`` recognise it)."""

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Budget:
    """Counts what the run has spent. ``reserve_call`` is checked before every
    target call so first attempts never exceed ``max_calls``, even under
    concurrency (retries of a started call still go out and are counted)."""

    cfg: BudgetConfig
    calls: int = 0
    """Attempts that went out to the target (retries included)."""
    pending: int = 0
    """Reserved calls that have not gone out yet (waiting for the rate limiter or the disk)."""
    cost_usd: float = 0.0
    prior_seconds: float = 0.0
    started: float = field(default_factory=time.monotonic)
    exhausted: str | None = None
    held: int = 0
    """Calls of ``max_calls`` kept back from the search (to confirm the best at the end)."""

    def release(self) -> None:
        """Hand the held-back calls to what comes after the search."""
        if self.held and self.exhausted and self.exhausted.startswith(_MAX_CALLS):
            self.exhausted = None
        self.held = 0

    def elapsed(self) -> float:
        return self.prior_seconds + (time.monotonic() - self.started)

    def remaining_seconds(self) -> float | None:
        if self.cfg.max_seconds is None:
            return None
        return max(0.0, self.cfg.max_seconds - self.elapsed())

    def calls_spent(self, queued: int = 0) -> bool:
        """Every call ``max_calls`` allows the search is made, reserved or ``queued`` (waiting for a slot of
        the concurrency limit: async mode): a new generation could make none, so none is proposed (an LLM
        agent's proposing costs too). Marks the budget exhausted once nothing is queued."""
        if self.exhausted:
            return self.exhausted.startswith(_MAX_CALLS)
        if not self._calls_full(queued):
            return False
        if not queued:
            self._calls_exhausted()
        return True

    def _calls_full(self, queued: int = 0) -> bool:
        """The search's part of ``max_calls`` (the calls held back aside) is made, reserved or queued."""
        return self.cfg.max_calls is not None and self.calls + self.pending + queued >= self.cfg.max_calls - self.held

    def _calls_exhausted(self) -> None:
        kept = f" ({self.held} kept to confirm the best)" if self.held else ""
        self.exhausted = f"{_MAX_CALLS} ({self.cfg.max_calls}) reached{kept}"

    def reserve_call(self) -> bool:
        if self.exhausted:
            return False
        if self._calls_full():
            self._calls_exhausted()
            return False
        if self.cfg.max_cost_usd is not None and self.cost_usd >= self.cfg.max_cost_usd:
            self.exhausted = f"budget: max_cost_usd (${self.cfg.max_cost_usd}) reached"
            return False
        remaining = self.remaining_seconds()
        if remaining is not None and remaining <= 0:
            self.exhausted = f"budget: max_seconds ({self.cfg.max_seconds}s) reached"
            return False
        self.pending += 1
        return True

    def charge(self, cost_usd: float) -> None:
        """Record the cost of a finished call (its attempts were counted as they went out). A NaN,
        infinite or negative cost is left out (and logged): one would poison the total, the
        ``max_cost_usd`` check and the stored run. Targets' costs are checked before they get here
        (``targets.base.checked_call``); this guards every other source."""
        if 0.0 <= cost_usd < math.inf:
            self.cost_usd += cost_usd
        else:
            log.warning("a cost of %r USD was left out of the run's total (not a finite number >= 0)", cost_usd)


@dataclass(slots=True)
class EarlyStopper:
    cfg: EarlyStoppingConfig
    best: float | None = None
    stale: int = 0

    def update(self, best_score: float | None) -> bool:
        """Feed the best score after a generation; True means stop now."""
        if best_score is None:
            self.stale += 1
        elif self.best is None or best_score >= self.best + self.cfg.min_improvement:
            self.best = best_score
            self.stale = 0
        else:
            self.best = max(self.best, best_score)
            self.stale += 1
        return self.cfg.enabled and self.stale >= self.cfg.patience
