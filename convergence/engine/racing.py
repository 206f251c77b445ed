"""Racing over test cases: stop paying for a configuration once it is shown worse.

Every configuration meets the test cases in one seeded order shared by the
run, so its first n results pair with the incumbent's results on the same n
cases. At fixed looks (n = ``min_cases``, then about 1.25x more each time)
a one-sided Wilcoxon signed-rank test on the paired per-case score
differences asks whether the newcomer is worse than the incumbent (the best
complete configuration so far). It is abandoned when

* the test rejects at level ``alpha / looks`` (Bonferroni over the looks, so
  a configuration at least as good as the incumbent is abandoned with
  probability at most ``alpha``, whatever the number of looks), and
* it is dominated: no better than the incumbent, on the same cases, on any
  metric the user weights (so a slower-but-more-accurate or cheaper-but-worse
  configuration that might sit on the Pareto front is not cut).

A case's score is the same weighted, normalised combination the trial's
score uses, computed from that case alone. Trial-level metrics
(``sao_preference``) do not take part: they have no per-case value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from convergence.config.models import RacingConfig
from convergence.core.types import CaseResult, TrialRecord
from convergence.engine.signed_rank import signed_rank_p

if TYPE_CHECKING:
    from convergence.evaluation.scorer import Evaluator


@dataclass(slots=True, frozen=True)
class CaseView:
    """One case of one configuration, as racing compares it."""

    score: float
    normalized: dict[str, float]


def looks(min_cases: int, n_cases: int) -> list[int]:
    """Case counts at which the test is made: ``min_cases``, then x1.25 (at least +1), below ``n_cases``."""
    out: list[int] = []
    n = min_cases
    while n < n_cases:
        out.append(n)
        n = max(n + 1, math.ceil(n * 1.25))
    return out


class Racer:
    def __init__(self, cfg: RacingConfig, evaluator: Evaluator, n_cases: int) -> None:
        self.cfg = cfg
        self.evaluator = evaluator
        self.looks = set(looks(cfg.min_cases, n_cases))
        self.level = cfg.alpha / max(1, len(self.looks))
        """The per-look significance level."""
        weights = evaluator.metric_weights()
        self.metrics = [m for m, w in weights.items() if w > 0 and m not in evaluator.trial_level]
        self.incumbent: tuple[TrialRecord, dict[str, CaseView]] | None = None
        self.abandoned = 0

    def view(self, result: CaseResult) -> CaseView:
        agg = self.evaluator.score_means(result.metrics)
        return CaseView(agg.score, agg.normalized)

    def add(self, trial: TrialRecord, views: dict[str, CaseView]) -> None:
        """A complete configuration: the incumbent when it beats the current one."""
        if len(views) and (self.incumbent is None or trial.score > self.incumbent[0].score):
            self.incumbent = (trial, dict(views))

    def verdict(self, views: dict[str, CaseView], n_cases: int) -> str | None:
        """Why to abandon a configuration with these case results so far, or None to go on."""
        if self.incumbent is None or len(views) not in self.looks:
            return None
        incumbent = self.incumbent[1]
        paired = [c for c in views if c in incumbent]
        if len(paired) < self.cfg.min_cases:
            return None
        diffs = [views[c].score - incumbent[c].score for c in paired]
        if not any(diffs):
            return None
        p = signed_rank_p(diffs, "less")
        if not p < self.level:
            return None
        for m in self.metrics:  # dominated on every weighted objective, or kept (it may be on the Pareto front)
            if sum(views[c].normalized.get(m, 0.0) - incumbent[c].normalized.get(m, 0.0) for c in paired) > 0:
                return None
        self.abandoned += 1
        return (f"worse than the incumbent on {len(paired)} of {n_cases} paired cases "
                f"(Wilcoxon p={p:.2g} < {self.level:.2g})")
