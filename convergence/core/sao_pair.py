"""One SAO preference pair: what the store keeps, what export writes.

A pair is a prompt written from a persona, two responses (A and B), and two
judgments of them by the self-judge: the first with A shown first, the second
with the two swapped (its verdict mapped back to the original labels). Only a
verdict that holds in both orders counts (``outcome`` A or B); the quality
filters that failed are listed in ``failed_filters`` (empty: the pair passed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Verdict = Literal["A", "B", "tie"]
"""What one judgment says, in the pair's own labels (A = ``response_a``)."""
Outcome = Literal["A", "B", "tie", "inconsistent", "unparseable"]
"""The swap rule's result over both judgments."""

FILTERS = ("unparseable", "inconsistent", "tie", "too_short", "too_long", "duplicate_prompt",
           "duplicate_responses", "response_error", "disagrees_with_metric")
"""Quality filters, in the order they are checked and counted."""


@dataclass(slots=True)
class SAOPair:
    persona: str
    prompt: str
    """The task input as text (what the user's target received, rendered for export)."""
    response_a: str
    response_b: str
    verdict_1: Verdict | None
    """First judgment (A shown first); None: unparseable."""
    verdict_2: Verdict | None
    """Second judgment (B shown first), mapped back to the original labels; None: unparseable."""
    outcome: Outcome
    failed_filters: list[str] = field(default_factory=list)
    prompt_input: Any = None
    """The task input in the shape of the study's test cases (a dict for dict inputs)."""
    config_a: dict[str, Any] | None = None
    """Configuration of the target that wrote ``response_a`` (loop); None standalone."""
    config_b: dict[str, Any] | None = None
    hash_a: str | None = None
    hash_b: str | None = None
    source: str = "standalone"
    """loop (a written prompt) | test_case (a test case's input: ``reference`` says what the metrics
    prefer) | standalone | import"""
    model: str = ""
    """The society LLM that wrote the prompt and judged."""
    run_id: int | None = None
    generation: int | None = None
    judgments: list[str] = field(default_factory=list)
    """The judge's raw texts (first, second) for inspection."""
    id: int | None = None
    created_at: float | None = None
    reference: Verdict | None = None
    """On a test case with a reference answer: which response the run's metrics score higher (A, B or
    tie); None for a written prompt, which has no reference. A kept pair must agree with it."""
    prompts: list[str] | None = None
    """What the models of A and B actually received (the target's rendered prompt), when the target
    can say; None when unknown (a Python or HTTP target, an imported or standalone pair)."""

    @property
    def judged(self) -> bool:
        """The verdicts came from a judgment (not an imported file, which states a preference unjudged)."""
        return self.source != "import"

    @property
    def kept(self) -> bool:
        """Consistent (A or B in both orders) and passed every filter: goes into an export by default."""
        return self.outcome in ("A", "B") and not self.failed_filters

    @property
    def chosen(self) -> str | None:
        if self.outcome == "A":
            return self.response_a
        if self.outcome == "B":
            return self.response_b
        return None

    @property
    def rejected(self) -> str | None:
        if self.outcome == "A":
            return self.response_b
        if self.outcome == "B":
            return self.response_a
        return None
