"""Evaluating configurations: every (configuration x test case) call of a generation, scored.

Each call waits for a slot of the run's concurrency limit, is reserved against the budget,
counted as paid the moment it goes out (kill-safe), redacted, evaluated and stored as it lands.
With racing, a trial is abandoned once it is shown worse than the incumbent. A trial is scored
the moment its last case lands. Agents' own calls of the target (SAO's duels) go through the
same budget, counter and redaction.
"""

from __future__ import annotations

from typing import Any

import anyio
import numpy as np

from convergence import tracing
from convergence.core.space import SearchSpace
from convergence.core.types import CallResult, CaseResult, TestCase, TrialRecord
from convergence.engine.events import LoopEvents
from convergence.engine.executor import Executor
from convergence.engine.racing import CaseView
from convergence.engine.state import Gen, RunState, Slot
from convergence.evaluation.scorer import Evaluator
from convergence.evaluation.text import to_text
from convergence.society.base import Proposal, TargetCallError
from convergence.society.society import Society
from convergence.storage.store import Store
from convergence.tracing import views as trace_views
from convergence.tracing.redact import Redactor


class TrialRunner:
    """Runs one run's trials: calls, racing, scoring and their storage."""

    def __init__(self, st: RunState, *, space: SearchSpace, cases: list[TestCase], evaluator: Evaluator,
                 store: Store, executor: Executor, society: Society, events: LoopEvents, redactor: Redactor,
                 secrets: bool, concurrency: int) -> None:
        self.st = st
        self.space = space
        self.cases = cases
        self._case_order = {c.id: i for i, c in enumerate(cases)}
        self._case_by_id = {c.id: c for c in cases}
        self.evaluator = evaluator
        self.store = store
        self.executor = executor
        self.society = society
        self.events = events
        self.redactor = redactor
        self.secrets = secrets
        """True when there are secret values to scrub from outputs."""
        self.concurrency = concurrency

    # ------------------------------------------------------------------ generations

    @tracing.traced("convergence.generation", inputs=trace_views.generation_inputs,
                    output=trace_views.generation_output)
    async def run_generation(self, g: Gen) -> list[TrialRecord]:
        """Evaluate one generation's proposals (cached results reused) and store its trials.
        Its calls share the run's concurrency limit with any other generation in flight."""
        st = self.st
        with g.scope:  # cancelled when the run stops while this generation is in flight (async)
            async with anyio.create_task_group() as tg:
                for p in g.proposals:
                    slot = Slot(g.number, p, self.space.resolve(p.config))
                    g.slots.append(slot)
                    hits = st.cached.get(p.config_hash)
                    todo = st.ordered_cases
                    if hits:
                        todo = []
                        for case in st.ordered_cases:
                            hit = hits.get(case.id)
                            if hit is not None:
                                st.cached_hits += 1
                                self._add_result(slot, hit)
                                self.events.case_finished(p, hit, True)
                            else:
                                todo.append(case)
                    slot.pending = len(todo)
                    if todo and not slot.abandoned:
                        st.waiting += len(todo)
                        tg.start_soon(self._eval_trial, slot, todo)
                    else:
                        slot.pending = 0
                        self._complete(slot)
                g.loaded = True
                st.wake.set()  # a resumed run proposes its first new generation once every replay is loaded
        g.trials = self.record_trials(g)
        st.wake.set()
        return g.trials

    def record_trials(self, g: Gen) -> list[TrialRecord]:
        trials = []
        for slot in g.slots:  # proposal order, so the store (and a seeded run) is deterministic
            trial = slot.record or self._complete(slot)
            self.store.record_trial(self.st.run_id, trial)
            trials.append(trial)
        return trials

    def running_low(self) -> bool:
        """True when the calls queued for a slot would run out before the society
        could propose again (its last proposing time at the current call rate)."""
        st = self.st
        ahead = self.concurrency * st.propose_seconds / max(st.case_seconds, 1e-3)
        return st.waiting <= self.concurrency + ahead

    # ------------------------------------------------------------------ trials and calls

    def _complete(self, slot: Slot) -> TrialRecord:
        """Score a trial the moment its last case lands (or it is abandoned) and tell the UI about the live best."""
        st = self.st
        results = slot.results if slot.cut is None else [r for r in slot.results if r.case_id in slot.cut]
        slot.record = trial = self.score(slot.generation, slot.proposal, results)
        if slot.abandoned:
            trial.status = "abandoned"
        if trial.usable and (st.live_best is None or trial.score > st.live_best.score):
            st.live_best = trial
        self.events.trial_finished(trial, st.live_best)
        return trial

    @tracing.traced("convergence.trial", inputs=trace_views.trial_inputs, output=trace_views.trial_output)
    async def _eval_trial(self, slot: Slot, cases: list[TestCase]) -> TrialRecord:
        """One configuration on its pending test cases, in the run's case order. One path, traced or not:
        the trial is the parent of its calls in a trace.

        Work is made as slots free up, not up front: a case's task is created only once it holds a slot of
        the run's concurrency limit, so a run's tasks follow its concurrency, not its test-case file. The
        trials feed the limit one after another in the order they started (``feed_lock``, FIFO), so the
        calls go out in the same order as one queue of every (trial, case) would send them."""
        st = self.st
        left = len(cases)  # counted in ``st.waiting`` until each takes a slot (or is skipped)
        try:
            async with anyio.create_task_group() as tg, st.feed_lock:
                for case in cases:
                    if slot.abandoned or st.budget.exhausted:
                        break  # nothing more of this trial will be called
                    token = object()
                    await st.limiter.acquire_on_behalf_of(token)
                    left -= 1
                    st.waiting -= 1
                    if st.waiting <= self.concurrency or self.running_low():
                        st.wake.set()
                    if not slot.abandoned and not st.all_failed.tripped and st.budget.reserve_call():
                        tg.start_soon(self._eval_case, slot, case, token)
                    else:
                        st.limiter.release_on_behalf_of(token)
                        self._case_done(slot)
        finally:
            st.waiting -= left
        if left:  # the cases never sent (abandoned by racing, or the budget is spent)
            slot.pending -= left - 1
            self._case_done(slot)
        record = slot.record or self.score(slot.generation, slot.proposal, slot.results)
        if st.probe is not None and not slot.abandoned:
            await self._probe(slot)
        return record

    async def _probe(self, slot: Slot) -> None:
        """``selection.stochastic: auto``: ask a few of a finished trial's cases again (draw 1) until the
        target shows itself stochastic or enough identical draws make it deterministic
        (``engine/stochastic.py``: at most 2 per configuration, so the probes see several)."""
        probe = self.st.probe
        assert probe is not None
        h = slot.proposal.config_hash
        todo = probe.take(h, sorted(slot.results, key=lambda r: self._case_order[r.case_id]))
        if not todo:
            return
        landed: list[tuple[CaseResult, CaseResult]] = []
        try:
            landed = await self._ask_again(slot, todo)
        finally:
            probe.landed(h, len(todo), sorted(landed, key=lambda x: self._case_order[x[0].case_id]))
            if not probe.decision.pending and self.st.probe is probe:
                self.decided()

    async def _ask_again(self, slot: Slot, first: list[CaseResult]) -> list[tuple[CaseResult, CaseResult]]:
        """Draw 1 of each of ``first``'s cases, at once (the concurrency limit paces them): (first, again)
        pairs for the calls the budget allowed."""
        st, h = self.st, slot.proposal.config_hash
        landed: list[tuple[CaseResult, CaseResult]] = []

        async def again(r: CaseResult) -> None:
            async with st.limiter:
                if st.all_failed.tripped or not st.budget.reserve_call():
                    return
                result = await self.call(slot.params, self._case_by_id[r.case_id], h, repeat=1)
            landed.append((r, result))
            self.events.case_finished(Proposal(slot.proposal.config, h, "probe"), result, False)

        async with anyio.create_task_group() as tg:
            for r in first:
                tg.start_soon(again, r)
        return landed

    def decided(self) -> None:
        """The probe decided: a deterministic target hands the calls kept for confirmation back to the search."""
        st = self.st
        assert st.decision is not None
        st.probe = None
        if not st.decision.stochastic:
            st.budget.release()
        self.events.message(st.decision.line())

    async def _eval_case(self, slot: Slot, case: TestCase, token: object) -> None:
        """One reserved call holding the slot ``token`` took (released when it lands)."""
        try:
            result = await self.call(slot.params, case, slot.proposal.config_hash)
            self._add_result(slot, result)
            self.events.case_finished(slot.proposal, result, False)
        finally:
            self.st.limiter.release_on_behalf_of(token)
        self._case_done(slot)

    def _case_done(self, slot: Slot) -> None:
        slot.pending -= 1
        if slot.pending == 0 and slot.record is None:
            self._complete(slot)

    async def call(self, params: dict[str, Any], case: TestCase, config_hash: str, repeat: int = 0) -> CaseResult:
        """One reserved call of the target on a test case: counted, charged, redacted, evaluated and stored."""
        st = self.st
        ticket = Ticket(st.budget, self.store)
        try:
            call: CallResult = await self.executor.call(params, case, ticket.attempt)
        finally:
            ticket.close()
        st.budget.charge(call.cost_usd)
        st.case_seconds += 0.1 * ((call.wall_ms or call.latency_ms) / 1000.0 - st.case_seconds)
        if call.error is not None:
            call.error = self.redactor.text(call.error)
            st.all_failed.failed(call.error, config_hash, case.id, len(self.cases))
        else:
            st.all_failed.any_success = True
        if self.secrets and call.output is not None:
            call.output = self.redactor.exact_deep(call.output)
        metrics = await self.evaluator.evaluate(case, call)
        result = CaseResult(case.id, call, metrics, repeat)
        self.store.record_case(st.run_id, config_hash, result)
        return result

    async def agent_call(self, config: dict[str, Any], task_input: object) -> str:
        """An agent's call of the target on a new input (SAO's duels): budgeted, counted, retried
        and redacted like an evaluation call, but not a test-case result."""
        st = self.st
        if st.all_failed.tripped or not st.budget.reserve_call():
            raise TargetCallError("the run's call budget is spent")
        ticket = Ticket(st.budget, self.store)
        try:
            call = await self.executor.call(self.space.resolve(config), TestCase("sao", task_input), ticket.attempt)
        finally:
            ticket.close()
        st.budget.charge(call.cost_usd)
        if call.error is not None:
            raise TargetCallError(self.redactor.text(call.error))
        output = self.redactor.exact_deep(call.output) if self.secrets else call.output
        return to_text(output)

    async def grade(self, case: TestCase, output: str) -> float:
        """The run's score of ``output`` on ``case`` by its per-case metrics (SAO's duels on test cases).
        No latency or cost is known, so both sides get the same: only the quality metrics differ."""
        metrics = await self.evaluator.evaluate(case, CallResult(output=output))
        return self.evaluator.score_means(metrics).score

    def render(self, config: dict[str, Any], task_input: object) -> str | None:
        """The prompt the target sends for ``config`` on ``task_input``; None when it cannot say."""
        render = getattr(getattr(self.executor, "target", None), "messages_for", None)
        if render is None:
            return None
        try:
            messages = render(self.space.resolve(config), TestCase("sao", task_input))
        except Exception:  # noqa: BLE001 - a template error shows up in the call itself
            return None
        return "\n\n".join(f"[{m.get('role', 'user')}]\n{m.get('content', '')}" if len(messages) > 1
                            else str(m.get("content", "")) for m in messages)

    def view(self, slot: Slot, case_id: str) -> CaseView:
        """A case's score as racing compares it (computed when first needed: a look or an incumbent)."""
        view = slot.views.get(case_id)
        if view is None:
            assert self.st.racer is not None
            view = slot.views[case_id] = self.st.racer.view(slot.by_case[case_id])
        return view

    def case_scores(self, slot: Slot) -> dict[str, list[float]]:
        """The first-draw score of each case the trial is scored on (an abandoned one: the prefix racing
        judged), in the run's case order: the trial's row of the case model (engine/case_model.py)."""
        results = sorted((r for r in slot.results if r.repeat == 0 and (slot.cut is None or r.case_id in slot.cut)),
                         key=lambda r: self._case_order[r.case_id])
        return {r.case_id: [view.score if (view := slot.views.get(r.case_id)) is not None
                            else self.evaluator.score_means(r.metrics).score] for r in results}

    def _add_result(self, slot: Slot, result: CaseResult) -> None:
        """Keep a case result; with racing, abandon the trial once it is shown worse than the incumbent.

        Deterministic whatever order the results land in: the test looks at the longest prefix of
        the run's case order that has landed, and an abandoned trial is scored on that prefix only
        (calls already in flight still land and are stored, so a resume never pays for them again)."""
        slot.results.append(result)
        racer, order = self.st.racer, self.st.ordered_cases
        if racer is None or slot.abandoned:
            return
        slot.by_case[result.case_id] = result
        while slot.prefix < len(order) and order[slot.prefix].id in slot.by_case:
            slot.prefix += 1
            if slot.prefix not in racer.looks or racer.incumbent is None:
                continue
            prefix = {c.id: self.view(slot, c.id) for c in order[: slot.prefix]}
            reason = racer.verdict(prefix, len(self.cases), slot.proposal.config_hash)
            if reason is not None:
                slot.abandoned = True
                slot.abandon_reason = reason
                slot.cut = set(prefix)
                return

    # ------------------------------------------------------------------ scores

    def score(self, gen: int, p: Proposal, case_results: list[CaseResult]) -> TrialRecord:
        # results arrive in completion order; fix the order so float sums (and a seeded run) repeat
        case_results = sorted(case_results, key=lambda r: self._case_order[r.case_id])
        n_errors = sum(1 for r in case_results if r.call.error)
        trial = TrialRecord(
            config=p.config, config_hash=p.config_hash, generation=gen, proposer=p.proposer,
            n_cases=len(case_results), n_errors=n_errors,
        )
        if len(case_results) < len(self.cases):
            trial.status = "partial"
        elif case_results and n_errors == len(case_results):
            trial.status = "failed"
        if case_results:
            agg = self.evaluator.aggregate(case_results, self.trial_values(p.config_hash))
            trial.score = agg.score
            trial.metrics = agg.means
            trial.normalized = agg.normalized
            trial.thresholds_passed = agg.thresholds_passed
            trial.cost_usd = sum(r.call.cost_usd for r in case_results)
            trial.latency_ms = float(np.mean([r.call.wall_ms or r.call.latency_ms for r in case_results]))
        return trial

    def trial_values(self, config_hash: str) -> dict[str, float]:
        """Values of the trial-level metrics for one configuration, as the society's agents measure them
        (SAO's preference rating from judged duels)."""
        if not self.evaluator.trial_level:
            return {}
        return self.society.trial_values(self.evaluator.trial_level, config_hash)

    def rescore(self, trials: list[TrialRecord]) -> bool:
        """Refresh trial-level metric values (the SAO preference rating changes as the judge
        compares more configurations) and the scores that include them; changed trials are stored."""
        if not self.evaluator.trial_level:
            return False
        changed = False
        for t in trials:
            values = self.trial_values(t.config_hash)
            if all(t.metrics.get(k) == v for k, v in values.items()):
                continue
            agg = self.evaluator.score_means({**t.metrics, **values})
            t.score, t.metrics, t.normalized, t.thresholds_passed = (agg.score, agg.means, agg.normalized,
                                                                     agg.thresholds_passed)
            self.store.record_trial(self.st.run_id, t)
            changed = True
        return changed


class Ticket:
    """One reserved call. Each attempt is counted as paid right before it goes
    out (after the rate limiter) in the run's kill-safe counter
    (``Store.count_call``), so the run's totals hold every call the target
    received even if this process is killed mid-call. No attempt waits for the
    disk. A reservation that never went out is released."""

    __slots__ = ("budget", "sent", "store")

    def __init__(self, budget: Any, store: Store) -> None:
        self.budget = budget
        self.store = store
        self.sent = False

    async def attempt(self) -> None:
        budget = self.budget
        if not self.sent:
            self.sent = True
            budget.pending -= 1
        self.store.count_call(budget.calls + 1)  # raises first if the lease was lost: nothing goes out
        budget.calls += 1

    def close(self) -> None:
        if not self.sent:
            self.sent = True
            self.budget.pending -= 1
