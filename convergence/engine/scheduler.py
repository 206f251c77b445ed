"""The generation scheduler: when a generation starts, and what happens once it is done.

A generation's proposals come from the society (or, in a resumed run, from the store: the run
replays them) and are stored before any of their calls. Generational mode runs one generation at
a time; async mode starts the next one whenever the calls queued for the concurrency limit would
run out before the society could propose again. A finished generation updates the population,
lets the agents observe and learn, gives a society learner its step, and checks the stop rules
(budget, a broken target, early stopping).
"""

from __future__ import annotations

import math
import time
from functools import partial

import anyio
import numpy as np

from convergence import tracing
from convergence.config.models import OptimizationConfig
from convergence.core.space import SearchSpace, config_hash
from convergence.core.types import TrialRecord
from convergence.engine import case_model
from convergence.engine.events import LoopEvents
from convergence.engine.learner_driver import GenerationFacts, cost_unit, generation_result
from convergence.engine.state import Gen, RunState
from convergence.engine.trials import TrialRunner
from convergence.society.base import Proposal, ProposalContext
from convergence.society.society import AgentReport, Society
from convergence.storage.store import Store
from convergence.tracing import views as trace_views
from convergence.tracing.redact import Redactor

MAX_IN_FLIGHT = 16
"""Async mode: generations evaluating at once. More than two lets the next generations fill the slots
while the oldest one's slowest calls finish (long-tailed latencies, few calls per slot per generation).
benchmarks/throughput.py --only tails, C = 256, share of a bare pool: lognormal sigma 0.8 reached 72 % with
2 in flight (a quick run), 97 % with 8; lognormal sigma 1.2 reached 67.5 % with 8 and 96.9 % with 16
(2026-11-25, load average 3). New generations start only when slots would otherwise idle; the cap bounds
how stale a proposal can be."""

MODELLED = ("complete", "abandoned", "partial")
"""Trials the case model fits and the agents see (a failed one, every case errored, measures nothing)."""


class GenerationScheduler:
    """Starts and finishes the generations of one run."""

    def __init__(self, st: RunState, *, opt: OptimizationConfig, space: SearchSpace, society: Society,
                 store: Store, runner: TrialRunner, events: LoopEvents, redactor: Redactor) -> None:
        self.st = st
        self.opt = opt
        self.space = space
        self.society = society
        self.store = store
        self.runner = runner
        self.events = events
        self.redactor = redactor

    async def run(self) -> tuple[str, str]:
        """Every generation until the last, a stop rule or the time budget: (status, stop reason)."""
        st, evo, budget = self.st, self.opt.evolution, self.st.budget
        status, stop_reason = "finished", f"completed {evo.generations} generation(s)"
        asynchronous = self.opt.execution.mode == "async"
        in_flight = st.in_flight
        next_gen = 0
        starting = True
        remaining = budget.remaining_seconds()
        with anyio.move_on_after(remaining if remaining is not None else math.inf) as scope:
            async with anyio.create_task_group() as tg:
                while True:
                    st.wake = anyio.Event()  # set by a finished generation or a queue running low
                    # a spent budget starts no new generation (with generations "until the budget is
                    # spent", async mode would otherwise propose ones that cannot make a call); spent also
                    # when every call is made or reserved, though no reservation has failed yet
                    if starting and next_gen < evo.generations and (next_gen in st.stored_gens or not (
                            budget.exhausted or budget.calls_spent(st.waiting))) and (not in_flight or (
                            asynchronous and len(in_flight) < MAX_IN_FLIGHT and self.runner.running_low()
                            and (next_gen in st.stored_gens or not self._replay_unsettled()))):
                        g = await self.start_generation(next_gen)
                        if g is None:
                            starting = False
                            stop_reason = "search space exhausted: every configuration was evaluated"
                            continue
                        next_gen += 1
                        in_flight.append(g)
                        tg.start_soon(self.runner.run_generation, g)
                        continue
                    if in_flight and in_flight[0].trials is not None:
                        st.gens_run += 1
                        verdict = await self.finish_generation(in_flight.pop(0))
                        if verdict is not None and starting:
                            # stop: nothing new starts, and a generation already in flight (async) is
                            # cut short (what it finished is kept as partial trials)
                            status, stop_reason = verdict
                            starting = False
                            for g in in_flight:
                                g.scope.cancel()
                        continue
                    if not in_flight:
                        break
                    await st.wake.wait()
        if status == "finished" and starting and next_gen < evo.generations and budget.exhausted:
            status, stop_reason = "stopped", budget.exhausted  # the budget ended it, not the generations
        if scope.cancelled_caught:
            if not budget.exhausted:
                budget.exhausted = f"budget: max_seconds ({self.opt.budget.max_seconds}s) reached"
            status, stop_reason = "stopped", budget.exhausted
            for g in in_flight:  # cut short: what they finished is stored as partial trials
                g.trials = g.trials or self.runner.record_trials(g)
                st.gens_run += 1
                await self.finish_generation(g)
        return status, stop_reason

    def _replay_unsettled(self) -> bool:
        """A resumed run (async): a replayed generation has not loaded its stored results yet, or the oldest
        one in flight is complete but not finished. The first new generation waits for both, so it is
        proposed from everything stored (population, elites, history) like the run before the kill."""
        in_flight, stored = self.st.in_flight, self.st.stored_gens
        if any(g.number in stored and not g.loaded for g in in_flight):
            return True
        return bool(in_flight) and in_flight[0].number in stored and in_flight[0].trials is not None

    # ------------------------------------------------------------------ starting

    async def start_generation(self, gen: int) -> Gen | None:
        """A generation's proposals (replayed when stored: a resumed run repeats them), stored
        before any of their calls; None when the search space is exhausted."""
        st, evo = self.st, self.opt.evolution
        self.society.reports = {}
        started_at = time.perf_counter()
        context = st.stored_context.get(gen)
        if gen in st.stored_gens:
            proposals = [Proposal(p["config"], p["hash"], p["proposer"]) for p in st.stored_gens[gen]]
        else:
            context = None
            # async: the trials of generations still in flight that are already complete count too
            done = [t for g in st.in_flight for slot in g.slots if (t := slot.record) is not None and t.usable]
            population = sorted(st.population + done, key=lambda t: -t.score)[: evo.population_size]
            n_new = evo.population_size - (0 if gen == 0 else min(evo.elite_size, len(population)))
            proposals = self._warm_proposals() if gen == 0 else []
            rng = np.random.default_rng([st.seed, gen])
            ctx = ProposalContext(self.space, gen, population, st.tried + done, rng, st.seen)
            started = time.perf_counter()
            proposals += await self._propose(gen, ctx, n_new - len(proposals))
            st.propose_seconds = time.perf_counter() - started
            if not proposals:
                return None
            if st.learner is not None:
                context = {"decided_at": st.learner.decided_at, "controls": self.society.control_values()}
            self.store.record_generation_start(
                st.run_id, gen, [{"config": p.config, "hash": p.config_hash, "proposer": p.proposer}
                                 for p in proposals], context)
        # the learner's decision it was proposed under (a restarted one: the decision it first ran under)
        decided_at = int(context["decided_at"]) if context else (
            st.learner.decided_at if st.learner is not None else -1)
        controls = context["controls"] if context else self.society.control_values()
        st.seen.update(p.config_hash for p in proposals)
        self.events.generation_started(gen, evo.generations, len(proposals), len(self.runner.cases))
        return Gen(gen, proposals, self.society.reports, started=started_at, decided_at=decided_at,
                   controls=controls)

    def _warm_proposals(self) -> list[Proposal]:
        out = []
        for c in self.st.warm[: self.opt.evolution.population_size]:
            c = self.space.canonical(c)
            h = config_hash(c)
            if h not in self.st.seen:
                self.st.seen.add(h)
                out.append(Proposal(c, h, "warm_start"))
        return out

    @tracing.traced("convergence.propose", inputs=trace_views.propose_inputs, output=trace_views.proposals_view)
    async def _propose(self, gen: int, ctx: ProposalContext, n: int) -> list[Proposal]:
        """The society's new proposals for one generation (a step of its own in a trace);
        what its LLM calls cost is charged to the run's budget."""
        spent = self.society.llm_cost_usd()
        try:
            return await self.society.propose(ctx, n)
        finally:
            self.st.budget.charge(self.society.llm_cost_usd() - spent)

    # ------------------------------------------------------------------ finishing

    async def finish_generation(self, g: Gen) -> tuple[str, str] | None:
        """Select, let agents observe and learn, check the stop rules; (status, reason) to stop."""
        st, evo, budget = self.st, self.opt.evolution, self.st.budget
        new = g.trials or []
        usable = [t for t in new if t.usable]
        st.history.extend(usable)
        self._refit(g)
        self.society.observe(new)
        st.population[:] = sorted(st.population + usable, key=lambda t: -t.score)[: evo.population_size]
        best_before = st.best.score if st.best is not None else None
        gen_best = max(usable, key=lambda t: t.score, default=None)
        if gen_best is not None and (st.best is None or gen_best.score > st.best.score):
            st.best = gen_best
        mean = float(np.mean([t.score for t in usable])) if usable else None
        self.store.record_generation_end(st.run_id, g.number, gen_best.score if gen_best else None, mean, len(new))
        self.events.generation_finished(g.number, st.best, new)
        if g.reports:
            self.society.reports = g.reports
            await self._society_learns(g.number, new)
            if self.runner.rescore(st.history):  # a trial-level metric (sao_preference) moved
                st.population.sort(key=lambda t: -t.score)
                st.best = max(st.history, key=lambda t: t.score, default=st.best)
        if st.learner is not None and not budget.exhausted and (g.reports or st.learner.replays):
            await self._learner_step(g, new, best_before)
        if st.all_failed.tripped:
            return "failed", st.all_failed.reason()
        if budget.exhausted:
            return "stopped", budget.exhausted
        # a learner's prediction is an early-stopping rule: off with early stopping
        why = (st.learner.stop_reason()
               if st.learner is not None and self.opt.execution.early_stopping.enabled else None)
        if why and g.number < evo.generations - 1:
            return "finished", f"early stopping: {why}"
        if st.stopper.update(st.best.score if st.best else None) and g.number < evo.generations - 1:
            return "finished", (f"early stopping: no improvement >= {self.opt.execution.early_stopping.min_improvement}"
                                f" for {st.stopper.stale} generation(s)")
        return None

    def _refit(self, g: Gen) -> None:
        """The case model refitted on every trial with results, each one's ``adjusted`` value refreshed (agents
        learn from it), and racing's incumbent chosen by it. Only between generations: a seeded run repeats."""
        st = self.st
        for slot in g.slots:
            t = slot.record
            if t is not None and t.n_cases and t.status in MODELLED:
                st.tried.append(t)
                st.case_scores[t.config_hash] = self.runner.case_scores(slot)
                if st.racer is not None and t.usable:
                    st.racer.add(t, {r.case_id: self.runner.view(slot, r.case_id) for r in slot.results})
        st.case_fit = case_model.fit(st.case_scores, [c.id for c in st.ordered_cases])
        case_model.adjust(st.tried, st.case_fit)
        if st.racer is not None:
            st.racer.refit(st.case_fit)

    async def _learner_step(self, g: Gen, new: list[TrialRecord], best_before: float | None) -> None:
        """The society learner's step on a finished generation (its shares and controls for the next ones).

        A resumed run's replayed generation has no society reports (nothing was proposed): a learner that
        asks for them (``replays``) still sees it, recognises what it learned, and learns what the crash
        cut short."""
        st = self.st
        assert st.learner is not None
        facts = GenerationFacts(g.number, g.reports or self._replayed_reports(g), new,
                                [r for s in g.slots for r in s.results], g.started, g.decided_at, g.controls)
        # summarised in a worker thread (scipy's rank correlations per parameter), from snapshots of
        # what generations still in flight (async) keep changing on the loop
        result = await anyio.to_thread.run_sync(partial(
            generation_result, facts, best_before=best_before, best=st.best, population=list(st.population),
            history=list(st.history), space=self.space, opt=self.opt, budget=st.budget,
            cost_unit=cost_unit(self.opt)))
        step = await st.learner.step(result)
        if isinstance(note := step["summary"].get("message"), str):
            self.events.message(note)
        show = getattr(self.events, "shares", None)
        if show is not None:
            show(self.society.shares)

    def _top(self) -> list[TrialRecord]:
        return sorted(self.st.history, key=lambda t: -t.score)[: self.opt.evolution.population_size]

    def _replayed_reports(self, g: Gen) -> dict[str, AgentReport]:
        """What each agent proposed in a generation a resumed run replays (the society did not propose it),
        with its place in the run's top k as ``_society_learns`` counts it."""
        top = self._top()
        return {name: AgentReport(name, share, asked=count, proposed=count, status="replayed",
                                  in_top=sum(t.proposer == name for t in top))
                for name, share in self.society.shares.items()
                for count in [sum(p.proposer == name for p in g.proposals)]}

    async def _society_learns(self, gen: int, new: list[TrialRecord]) -> None:
        """Agents learn from the generation's outcomes; what each did, and how many
        of its proposals are in the run's top k (k = population size), is stored and shown.
        Nothing is learned once the budget is spent (learning calls the LLM too)."""
        st = self.st
        if not st.budget.exhausted:
            spent = self.society.llm_cost_usd()
            await self.society.learn(new, gen, st.run_id)
            st.budget.charge(self.society.llm_cost_usd() - spent)
        top = self._top()
        for name, r in self.society.reports.items():
            r.in_top = sum(1 for t in top if t.proposer == name)
            if r.error:
                r.error = self.redactor.text(r.error)
            if r.detail.get("notes"):
                r.detail["notes"] = [self.redactor.text(n) for n in r.detail["notes"]]
            detail = {**r.detail, "in_top_k": r.in_top, "top_k": len(top)}
            if r.error:
                detail["error"] = r.error
            self.store.record_society(st.run_id, gen, name, share=r.share, asked=r.asked, proposed=r.proposed,
                                      status=r.status, seconds=round(r.seconds, 3), detail=detail)
        step = getattr(self.events, "society_step", None)
        if step is not None:
            try:
                step(gen, self.society.reports, new)
            except Exception as exc:  # noqa: BLE001 - a display hook must never stop the run
                self.events.message(f"society display failed: {type(exc).__name__}: {exc}")
