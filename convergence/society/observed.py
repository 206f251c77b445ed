"""What an agent learns from a trial: its value and how much it weighs.

Racing abandons a configuration after a few test cases, and a budget can cut
one short (``partial``); both still say a lot, because per-case results pair
across configurations. The run's case model turns every trial with results
into ``adjusted``, an estimate of its true score with the case difficulty
removed (engine/case_model.py); before its first fit, the raw ``score``
stands in. A trial's precision grows with the cases it ran: weight
``w = n_cases + repeats`` (1 when unknown, e.g. a warm-start record).
"""

from __future__ import annotations

import math

from convergence.core.types import TrialRecord

RESULT_STATUSES = frozenset({"complete", "abandoned", "partial"})
"""Statuses whose trials carry a result (``failed``: every case errored, nothing to learn)."""


def learned_value(t: TrialRecord) -> float | None:
    """``adjusted`` when the case model has fitted it, else ``score``; None when the trial has no result
    (failed, or an abandoned / partial trial that ran no case) or the value is not finite."""
    if t.status not in RESULT_STATUSES or (t.status != "complete" and t.n_cases <= 0):
        return None
    value = t.adjusted if t.adjusted is not None else t.score
    return float(value) if math.isfinite(value) else None


def weight(t: TrialRecord) -> float:
    """The trial's precision in cases: its value's noise variance is ``sigma^2 / w``."""
    return float(t.n_cases + t.repeats) if t.n_cases + t.repeats > 0 else 1.0
