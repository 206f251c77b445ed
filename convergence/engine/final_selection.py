"""The end of a run: confirm the top configurations, estimate every trial's true score, pick the best.

The calls kept for confirmation (``selection.confirm_share``) re-measure the leaders; every trial
then gets its noise-aware estimate (stored), and the run's best is the first of
:func:`convergence.engine.selection.rank`, the one definition of "best" that the report, the
export, warm start and the CLI share.
"""

from __future__ import annotations

import math

from convergence.config.models import OptimizationConfig
from convergence.core.space import SearchSpace
from convergence.core.types import CaseResult, TestCase, TrialRecord
from convergence.engine.confirm import Confirmer
from convergence.engine.events import LoopEvents
from convergence.engine.selection import best
from convergence.engine.state import RunState
from convergence.engine.trials import TrialRunner
from convergence.evaluation.scorer import Evaluator
from convergence.society.base import Proposal
from convergence.storage.store import Store


def confirmation_allowance(opt: OptimizationConfig, st: RunState) -> int:
    """How many calls confirmation may make (the budget's kept calls released first)."""
    sel, budget = opt.selection, st.budget
    held = budget.held
    budget.release()
    max_calls = opt.budget.max_calls
    if max_calls is None:  # the share of all calls (a deterministic target: at most the skipped cases)
        return math.ceil(sel.confirm_share / (1 - sel.confirm_share) * budget.calls)
    if st.decision is not None and st.decision.stochastic:  # the calls the search left for it
        return min(held, max(0, max_calls - budget.calls))
    return max(0, max_calls - budget.calls)  # only skipped cases, with whatever the search left


async def select_best(st: RunState, *, opt: OptimizationConfig, space: SearchSpace, evaluator: Evaluator,
                      store: Store, runner: TrialRunner, events: LoopEvents) -> None:
    """Confirm the top configurations with the calls kept for it, give every trial its noise-aware
    estimate (stored), and make the run's best (``st.best``) the first of
    :func:`convergence.engine.selection.ranking`; the selection summary stores that ranking (``best``,
    ``ranking``: configuration hashes, best first) for warm start."""
    sel = opt.selection
    await store.flush()
    trials = await store.trials(st.run_id)
    results = {h: list(by_case.values()) for h, by_case in (await store.case_results(st.run_id)).items()}
    if st.probe is not None:  # the search ended before the probe could decide: what it saw decides
        st.probe.settle()
        runner.decided()
    if st.decision is None or st.decision.stochastic:  # a deterministic target's repeats (probes) say nothing new
        for h, extra in (await store.repeat_results(st.run_id)).items():
            results.setdefault(h, []).extend(extra)
    for t in trials:  # an abandoned trial counts the prefix racing judged, not the calls that landed after
        if t.status == "abandoned" and t.config_hash in results:
            judged = {c.id for c in st.ordered_cases[: t.n_cases]}
            results[t.config_hash] = [r for r in results[t.config_hash] if r.case_id in judged]
    allowance = confirmation_allowance(opt, st)

    async def ask(trial: TrialRecord, case: TestCase, repeat: int) -> CaseResult | None:
        async with st.limiter:  # max_seconds and max_cost_usd are checked by reserve_call
            if st.all_failed.tripped or not st.budget.reserve_call():
                return None
            result = await runner.call(space.resolve(trial.config), case, trial.config_hash, repeat)
        events.case_finished(Proposal(trial.config, trial.config_hash, "confirmation"), result, False)
        return result

    confirmer = Confirmer(sel, evaluator, st.ordered_cases, opt.racing.alpha, decision=st.decision)
    outcome = await confirmer.run(trials, results, allowance if sel.confirm_top else 0, ask)
    for t in outcome.trials:
        store.record_trial(st.run_id, t)
    store.save_selection(st.run_id, outcome.summary)
    st.best = best(outcome.trials)  # the first of the stored ``ranking``: what warm start reads back
    summary = outcome.summary
    if summary["confirm_calls"]:
        events.message(f"confirmed the top {summary['confirmed']} configuration(s) with {summary['confirm_calls']} "
                       f"call(s)")
    if summary["runner_up_p"] is not None:
        events.message(
            f"best vs runner-up: {'distinguishable' if summary['distinguishable'] else 'within noise'} "
            f"(paired Wilcoxon p={summary['runner_up_p']:.2g})")
