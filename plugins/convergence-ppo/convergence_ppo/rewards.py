"""The reward of a decision, from the generation that ran under it: a scalar in [-1, 1].

    r = quality_weight    * min(1, improvement / gain_scale)      the run's best went up
      + survival_weight   * survivors / trials                    its trials made the population
      + efficiency_weight * clip(1 - cost / expected_cost, -1, 1) cheaper (or faster) than expected
      - error_penalty     * error_rate                            calls that failed
      - timeout_penalty   * timeout_rate                          calls that timed out

``expected_cost`` is ``time_budget_seconds`` per generation when set (efficiency against time),
else the run's budget per generation (``max_calls`` / ``max_cost_usd`` / ``max_seconds`` over
``evolution.generations``; against ``max_seconds`` the cost is the generation's wall time); with
neither the efficiency term is 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from convergence.society.learner import GenerationResult


class RewardConfig(BaseModel):
    """``reward:`` of the learner's options: the weights of the terms above."""

    model_config = ConfigDict(extra="forbid")

    quality_weight: float = Field(0.6, ge=0)
    survival_weight: float = Field(0.3, ge=0)
    efficiency_weight: float = Field(0.1, ge=0)
    error_penalty: float = Field(0.5, ge=0)
    timeout_penalty: float = Field(0.3, ge=0)
    gain_scale: float = Field(0.02, gt=0)
    """An improvement of the best score this large earns the whole quality term. Linear below it (steps
    smaller than this add up to the run's total improvement), capped above it: one large jump earns no
    more than a step of ``gain_scale`` (one lucky generation does not dominate a rollout)."""
    time_budget_seconds: float | None = Field(None, gt=0)
    """Expected wall time of a generation; None: use the run's budget per generation."""

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


@dataclass(slots=True)
class RewardExtractor:
    cfg: RewardConfig
    expected_cost: float | None = None
    """The run's budget per generation in its cost unit (set by the learner from the loop's result)."""

    def parts(self, r: GenerationResult) -> dict[str, float]:
        """Each term of the reward (weighted), for the report and the tests."""
        c = self.cfg
        trials = sum(a.proposed for a in r.agents.values())
        scale = c.gain_scale
        if c.time_budget_seconds:
            efficiency = 1.0 - r.seconds / c.time_budget_seconds
        elif self.expected_cost and r.cost_unit == "seconds":  # a time budget: the generation's wall time
            efficiency = 1.0 - r.seconds / self.expected_cost
        elif self.expected_cost:
            efficiency = 1.0 - sum(a.cost for a in r.agents.values()) / self.expected_cost
        else:
            efficiency = 0.0
        return {
            "quality": c.quality_weight * min(1.0, max(0.0, r.improvement) / scale),
            "survival": c.survival_weight * (r.survivors / trials if trials else 0.0),
            "efficiency": c.efficiency_weight * max(-1.0, min(1.0, efficiency)),
            "errors": -c.error_penalty * r.error_rate,
            "timeouts": -c.timeout_penalty * r.timeout_rate,
        }

    def reward(self, r: GenerationResult) -> float:
        return max(-1.0, min(1.0, sum(self.parts(r).values())))
