"""Plain data passed between the loop, targets, evaluation and storage.

Dataclasses with slots: these objects are created per test-case call (up to
thousands per second), so they stay small and cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Config = dict[str, Any]
"""A configuration: parameter name -> chosen value (categorical labels, not
resolved values, so it stays small, hashable and readable)."""


@dataclass(slots=True, frozen=True)
class TestCase:
    __test__ = False  # not a pytest test class, despite the name

    id: str
    input: Any
    expected: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def variables(self) -> dict[str, Any]:
        """Template variables: ``input``, ``expected``, ``metadata`` and, when
        the input is a mapping, each of its keys."""
        out: dict[str, Any] = {}
        if isinstance(self.input, dict):
            out.update(self.input)
        out["input"] = self.input
        out["expected"] = self.expected
        out["metadata"] = self.metadata
        out["case_id"] = self.id
        return out


@dataclass(slots=True)
class CallResult:
    """What one target call produced. ``error`` set means the call failed
    (after retries); the case then scores as a failure."""

    output: Any = None
    latency_ms: float = 0.0
    cost_usd: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 1
    error: str | None = None
    raw: Any = None
    wall_ms: float = 0.0
    """Wall time from the start of the first attempt to the end of the last,
    failed attempts and backoff sleeps included (``latency_ms`` is the last
    attempt alone); equals ``latency_ms`` for a single attempt. Set on failed
    calls too. 0.0 when unknown (e.g. results stored before it existed)."""

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class CaseResult:
    case_id: str
    call: CallResult
    metrics: dict[str, float]
    """Raw metric values (e.g. accuracy 1.0, latency_ms 830.0)."""
    repeat: int = 0
    """0: the search's call of this case; 1, 2 ...: fresh draws that confirm a top configuration."""


@dataclass(slots=True)
class TrialRecord:
    """One configuration evaluated on the test cases."""

    config: Config
    config_hash: str
    generation: int
    proposer: str
    score: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    """Per-metric mean of raw values over the test cases."""
    normalized: dict[str, float] = field(default_factory=dict)
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    n_cases: int = 0
    n_errors: int = 0
    status: str = "complete"
    """complete | partial (budget or time cut it short) | failed (every case errored) |
    abandoned (racing stopped it once it was shown worse than the incumbent; ``n_cases`` it used)."""
    trial_id: int | None = None
    thresholds_passed: bool = True
    repeats: int = 0
    """Confirmation draws (cases asked again) included in ``score`` and ``metrics``."""
    estimate: float | None = None
    """Noise-aware estimate of the true score (see engine/selection.py): what ranks the run's best;
    None before the run's selection (then ``score`` ranks)."""
    adjusted: float | None = None
    """Case-difficulty-corrected estimate of the true score from the run's case model (engine/case_model.py),
    refreshed at each generation's end for every trial with results, abandoned and partial ones included:
    what the agents learn from. None before the first fit (agents then use ``score``)."""

    @property
    def usable(self) -> bool:
        return self.status == "complete"

    @property
    def merit(self) -> float:
        """What ranks the trial: its noise-aware estimate once the run has made one, else its score."""
        return self.estimate if self.estimate is not None else self.score
