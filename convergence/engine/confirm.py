"""The end of a run: confirm the top configurations, then rank every trial by its estimate.

Confirmation spends the calls kept for it (``optimization.selection``) in
rounds. Each round takes the top ``confirm_top`` configurations by estimate
that are still in contention and asks, for each, the cases it skipped
(racing or the budget cut it short) or, for a stochastic target, one more
draw of every case. After a round the scores and the noise model are
refitted; a configuration that a paired one-sided Wilcoxon test (at racing's
``alpha``) shows worse than the leader leaves contention. It ends when the
calls run out, one configuration is left, or there is nothing left to ask.

Draw ``k`` of a case is stored with ``repeat = k``, so a resumed run finds
what it already paid for and asks only what is missing.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np

from convergence.config.models import SelectionConfig
from convergence.core.types import CaseResult, TestCase, TrialRecord
from convergence.engine import selection
from convergence.engine.stochastic import Decision

if TYPE_CHECKING:
    from convergence.evaluation.scorer import Evaluator

AskCase = Callable[[TrialRecord, TestCase, int], Awaitable[CaseResult | None]]
"""Ask one case of a configuration (draw ``repeat``); None when no call could be reserved."""


@dataclass(slots=True)
class Selection:
    """What the end of the run decided, as stored with the run and shown in the report."""

    trials: list[TrialRecord]
    summary: dict[str, Any] = field(default_factory=dict)


class Confirmer:
    def __init__(self, cfg: SelectionConfig, evaluator: Evaluator, cases: Sequence[TestCase], alpha: float,
                 decision: Decision | None = None) -> None:
        self.cfg = cfg
        self.evaluator = evaluator
        self.cases = list(cases)
        self.alpha = alpha
        self.case_ids = [c.id for c in self.cases]
        self.decision = decision or Decision(cfg.stochastic is True, "selection.stochastic in the config")
        """Whether the target is stochastic (``engine/stochastic.py``): fresh draws, or skipped cases only."""
        self.stochastic = bool(self.decision.stochastic)

    async def run(self, trials: list[TrialRecord], results: dict[str, list[CaseResult]], allowance: int,
                  ask: AskCase) -> Selection:
        """``results``: every stored case result by configuration (all draws); ``allowance``: calls to spend."""
        eligible = [t for t in trials if t.status in ("complete", "partial", "abandoned")]
        for t in eligible:  # a resumed run's trials hold the search's draws only: count the stored repeats too
            if any(r.repeat for r in results.get(t.config_hash, [])):
                self._rescore(t, results[t.config_hash])
        scores = {t.config_hash: self._scores(results.get(t.config_hash, [])) for t in eligible}
        model = self._estimate(eligible, scores)
        confirmed: dict[str, TrialRecord] = {}
        settled: set[str] = set()
        spent = 0
        rounds = 0
        while self.cfg.confirm_top and spent < allowance:
            pool = [t for t in selection.rank(eligible) if t.status != "abandoned" and t.config_hash not in settled]
            contenders = pool[: self.cfg.confirm_top]
            leader = contenders[0] if contenders else None
            drawn = rounds or any(t.repeats for t in contenders)  # a resumed run tests before asking again
            for t in contenders[1:]:
                p = selection.worse_p(scores[t.config_hash], scores[leader.config_hash]) if drawn and leader else None
                if p is not None and p < self.alpha:
                    settled.add(t.config_hash)
            contenders = [t for t in contenders if t.config_hash not in settled]
            if len(contenders) < 2 and not any(t.status == "partial" for t in contenders):
                break
            work = [(t, case, k) for t in contenders for case, k in self._todo(scores[t.config_hash])]
            if not work:
                break
            work = work[: allowance - spent]
            rounds += 1
            landed = await _ask_all(work, ask)
            spent += len(landed)
            if not landed:
                break  # the budget (time, cost, a broken target) stopped every call
            for t, r in landed:
                results.setdefault(t.config_hash, []).append(r)
                confirmed[t.config_hash] = t
            for t in {id(t): t for t, _ in landed}.values():
                self._rescore(t, results[t.config_hash])
                scores[t.config_hash] = self._scores(results[t.config_hash])
            model = self._estimate(eligible, scores)
        return Selection(trials, self._summary(eligible, scores, model, confirmed, spent, rounds, allowance))

    def _scores(self, results: list[CaseResult]) -> dict[str, list[float]]:
        """case id -> one score per draw (repeat order), failed calls included (they score what they score)."""
        out: dict[str, list[float]] = {}
        for r in sorted(results, key=lambda r: r.repeat):
            out.setdefault(r.case_id, []).append(self.evaluator.score_means(r.metrics).score)
        return out

    def _todo(self, scores: dict[str, list[float]]) -> list[tuple[TestCase, int]]:
        """The cases to ask next, with the draw number: skipped cases first; then, for a stochastic
        target, one more draw of every case (cases behind the others catch up first)."""
        missing = [(c, 0) for c in self.cases if c.id not in scores]
        if missing or not self.stochastic:
            return missing
        draws = {c.id: len(scores[c.id]) for c in self.cases}
        top = max(draws.values())
        behind = [(c, draws[c.id]) for c in self.cases if draws[c.id] < top]
        return behind or [(c, top) for c in self.cases]

    def _rescore(self, trial: TrialRecord, results: list[CaseResult]) -> None:
        """The trial's score over every draw it has (a skipped case now asked makes it complete)."""
        seen = {r.case_id for r in results}
        agg = self.evaluator.aggregate(results, {k: trial.metrics[k] for k in self.evaluator.trial_level
                                                 if k in trial.metrics})
        trial.score, trial.metrics, trial.normalized, trial.thresholds_passed = (
            agg.score, agg.means, agg.normalized, agg.thresholds_passed)
        trial.n_cases = len(seen)
        trial.repeats = len(results) - len(seen)
        trial.n_errors = sum(1 for r in results if r.call.error)
        trial.cost_usd = sum(r.call.cost_usd for r in results)
        trial.latency_ms = float(np.mean([r.call.wall_ms or r.call.latency_ms for r in results]))
        if trial.status == "partial" and len(seen) == len(self.cases):
            trial.status = "complete"

    def _estimate(self, trials: list[TrialRecord], scores: dict[str, dict[str, list[float]]]
                  ) -> selection.NoiseModel:
        model = selection.fit(trials, scores, self.case_ids)
        for t in trials:  # a trial that ran no case has no score to estimate from (not the run's average)
            t.estimate = (None if not scores[t.config_hash] else model.estimate(t, scores[t.config_hash])
                          if self.cfg.estimate == "shrinkage" else t.score)
        return model

    def _summary(self, trials: list[TrialRecord], scores: dict[str, dict[str, list[float]]],
                 model: selection.NoiseModel, confirmed: dict[str, TrialRecord], spent: int, rounds: int,
                 allowance: int) -> dict[str, Any]:
        ranked = selection.ranking(trials)
        top = []
        bounds = (0.0, sum(max(w, 0.0) for w in self.evaluator.metric_weights().values()))
        for t in ranked[:5]:
            top.append({"config_hash": t.config_hash, "trial_id": t.trial_id, "mean": t.score,
                        "estimate": t.estimate, "n_cases": t.n_cases, "repeats": t.repeats,
                        "ci95": selection.interval(t.score, scores[t.config_hash], bounds),
                        "confirmed": t.config_hash in confirmed})
        p = selection.paired_p(scores[ranked[0].config_hash], scores[ranked[1].config_hash]) \
            if len(ranked) > 1 else None
        return {
            "estimate": self.cfg.estimate, **self.decision.summary(), "confirm_top": self.cfg.confirm_top,
            "case_sd": math.sqrt(model.s_case), "draw_sd": math.sqrt(model.s_draw),
            "spread_sd": math.sqrt(model.tau2), "confirm_calls": spent, "confirm_allowance": allowance,
            "confirm_rounds": rounds, "confirmed": len(confirmed),
            "top": top, "runner_up_p": p, "distinguishable": p is not None and p < 0.05,
            "best": ranked[0].config_hash if ranked else None,
            "ranking": [t.config_hash for t in ranked],
        }


async def _ask_all(work: list[tuple[TrialRecord, TestCase, int]], ask: AskCase) -> list[tuple[TrialRecord, CaseResult]]:
    """Ask every (configuration, case, draw) at once (the loop's concurrency limit paces them)."""
    landed: list[tuple[TrialRecord, CaseResult]] = []

    async def one(t: TrialRecord, case: TestCase, k: int) -> None:
        r = await ask(t, case, k)
        if r is not None:
            landed.append((t, r))

    async with anyio.create_task_group() as tg:
        for t, case, k in work:
            tg.start_soon(one, t, case, k)
    return landed
