"""Everything one run knows while it runs, in one place.

:class:`RunState` is the run's search state and bookkeeping (opened by the
session, advanced by the scheduler and the trial runner, read by the
end-of-run selection); :class:`Gen` is one generation in flight and
:class:`Slot` one trial in flight. Nothing here does I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from convergence.core.budget import Budget, EarlyStopper
from convergence.core.types import CaseResult, TestCase, TrialRecord
from convergence.society.base import Proposal
from convergence.society.society import AgentReport

if TYPE_CHECKING:
    from convergence.engine.case_model import CaseFit
    from convergence.engine.learner_driver import LearnerDriver
    from convergence.engine.racing import CaseView, Racer
    from convergence.engine.stochastic import Decision, Probe


@dataclass(slots=True, eq=False)
class Slot:
    """One trial in flight: its results so far and how many cases are still out."""

    generation: int
    proposal: Proposal
    params: dict[str, Any]
    results: list[CaseResult] = field(default_factory=list)
    pending: int = 0
    record: TrialRecord | None = None
    by_case: dict[str, CaseResult] = field(default_factory=dict)
    views: dict[str, CaseView] = field(default_factory=dict)
    """Racing: each case's score and normalised metrics (filled when a look or the incumbent needs them)."""
    prefix: int = 0
    """Racing: how many cases of the run's case order have landed without a gap."""
    abandoned: bool = False
    abandon_reason: str | None = None
    cut: set[str] | None = None
    """The cases an abandoned trial is scored on (the prefix racing judged)."""


@dataclass(slots=True, eq=False)
class Gen:
    """One generation: its proposals, what the society did for it, its trials once all are done."""

    number: int
    proposals: list[Proposal]
    reports: dict[str, AgentReport]
    slots: list[Slot] = field(default_factory=list)
    trials: list[TrialRecord] | None = None
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    started: float = 0.0
    """``time.perf_counter()`` when its proposals were asked for."""
    decided_at: int = -1
    """After which generation the society learner made the decision it was proposed under."""
    controls: dict[str, dict[str, str]] = field(default_factory=dict)
    """The agents' controls it was proposed under."""
    loaded: bool = False
    """Its slots exist and hold the results the store already had (a resumed run's replay)."""


@dataclass(slots=True)
class FailureWatch:
    """Trips when every call so far failed with one and the same error: a broken
    target (URL, server down, bad key), not a bad configuration or a bad test case.

    That takes the same error on at least two configurations and two test cases,
    or, for an error that names the target rather than a configuration
    (:data:`BROKEN_TARGET`: connection refused, DNS, authentication, an import
    that fails), on the first :data:`MIN_FAILED_CALLS` calls of the first
    configuration already (its cases go out first, so a second configuration's
    first call can be a whole test set away). One success, or a second kind of
    error, and it never trips: a target with occasional failures keeps running.
    Once tripped no new call starts; calls in flight finish, and one success
    among them un-trips it (the run goes on)."""

    any_success: bool = False
    error: str | None = None
    configs: set[str] = field(default_factory=set)
    cases: set[str] = field(default_factory=set)
    calls: int = 0
    """Failed calls counted (all with ``error``)."""
    mixed: bool = False
    hit: bool = False

    @property
    def tripped(self) -> bool:
        return self.hit and not self.any_success

    def failed(self, error: str, config_hash: str, case_id: str, n_cases: int) -> None:
        """Record a failed call (its error text already redacted)."""
        if self.any_success or self.mixed or self.hit:
            return
        if self.error is None:
            self.error = error
        elif error != self.error:
            self.mixed = True
            return
        self.calls += 1
        self.configs.add(config_hash)
        self.cases.add(case_id)
        cases = len(self.cases) >= min(2, n_cases)
        self.hit = cases and (len(self.configs) >= MIN_FAILED_CONFIGS or (
            self.calls >= min(MIN_FAILED_CALLS, n_cases) and BROKEN_TARGET.search(error) is not None))

    def reason(self) -> str:
        """The run's stop reason: the prefix and the error alone (a resumed run reads the error back)."""
        return f"{ALL_FAILED_PREFIX}{self.error}"


MIN_FAILED_CONFIGS = 2
MIN_FAILED_CALLS = 4
BROKEN_TARGET = re.compile(
    r"ConnectionError|ConnectError|ConnectionRefused|APIConnectionError|connection refused|"
    r"Name or service not known|nodename nor servname|getaddrinfo|AuthenticationError|PermissionDenied|"
    r"\bhttp_40[137]\b|ModuleNotFoundError|ImportError|No module named",
    re.IGNORECASE)
"""Errors that name the target, not a configuration: the same one on every call means the target is broken."""
ALL_FAILED_PREFIX = "every call failed with the same error, stopped early: "


@dataclass(slots=True, eq=False)
class RunState:
    """One run's state: what the session opened (or took over from a killed run), the search so far,
    and the scheduler's bookkeeping. Shared by the generations in flight (async mode)."""

    run_id: int
    seed: int
    budget: Budget
    stopper: EarlyStopper
    cached: dict[str, dict[str, CaseResult]]
    """A resumed run's finished case results, by configuration hash and case id (never paid again)."""
    stored_gens: dict[int, list[dict[str, Any]]]
    """A resumed run's stored proposals per generation (replayed, not proposed again)."""
    stored_context: dict[int, dict[str, Any]]
    """Per stored generation, the learner's decision it was proposed under."""
    ordered_cases: list[TestCase]
    """The run's case order (seeded when racing: every configuration meets the cases in this order)."""
    limiter: anyio.CapacityLimiter
    all_failed: FailureWatch
    feed_lock: anyio.Lock = field(default_factory=anyio.Lock)
    """Held by the trial feeding the concurrency limit; trials take turns in the order they started."""
    warm: list[dict[str, Any]] = field(default_factory=list)
    racer: Racer | None = None
    decision: Decision | None = None
    """Whether the target is stochastic, and how that was decided (``engine/stochastic.py``)."""
    probe: Probe | None = None
    """``selection.stochastic: auto`` still probing: asks finished cases again."""
    learner: LearnerDriver | None = None
    population: list[TrialRecord] = field(default_factory=list)
    """Survivors, best first (the proposers' parents)."""
    history: list[TrialRecord] = field(default_factory=list)
    """Every usable trial of finished generations."""
    tried: list[TrialRecord] = field(default_factory=list)
    """Every trial with results of finished generations (complete, abandoned, partial): what the agents see."""
    case_scores: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    """Per configuration hash, the first-draw score of each case it is scored on (the case model's data)."""
    case_fit: CaseFit | None = None
    """The case model fitted at the last generation's end (None before the first)."""
    seen: set[str] = field(default_factory=set)
    best: TrialRecord | None = None
    live_best: TrialRecord | None = None
    """The best trial scored so far (shown live; the run's best is chosen at the end)."""
    in_flight: list[Gen] = field(default_factory=list)
    wake: anyio.Event = field(default_factory=anyio.Event)
    """Set by a finished generation or a queue running low: the scheduler looks again."""
    propose_seconds: float = 0.0
    """How long the society took to propose last (async mode asks it that far ahead)."""
    case_seconds: float = 1.0
    """Moving average of a call's wall time (seconds)."""
    waiting: int = 0
    """Case calls queued for a slot of the concurrency limit."""
    cached_hits: int = 0
    gens_run: int = 0
