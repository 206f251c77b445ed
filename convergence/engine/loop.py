"""The optimization loop.

One generation: proposals -> de-duplicate against the run -> evaluate every
(configuration x test case) under one concurrency limit -> score -> select
(elites survive without re-evaluation) -> proposers observe -> agents learn
(RLP's rewards; SAO's duels, which call the target through ``_agent_call`` and
may move trial-level metrics, so scores are refreshed) -> early stopping and
budget checks. Every case result is persisted as it lands, and each
generation's proposals are persisted before evaluation, so ``resume`` replays
the run exactly and only pays for what never finished.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import anyio
import numpy as np

from convergence import tracing
from convergence.config.loader import LoadedConfig
from convergence.core.budget import Budget, EarlyStopper
from convergence.core.fingerprint import changed_sections, dumps as fp_dumps, run_fingerprint
from convergence.core.space import SearchSpace, config_hash
from convergence.core.types import CallResult, CaseResult, TestCase, TrialRecord
from convergence.engine.confirm import Confirmer
from convergence.engine.executor import Executor, build_executor
from convergence.engine.learning import GenerationFacts, LearnerDriver, cost_unit, generation_result
from convergence.engine.racing import CaseView, Racer
from convergence.engine.selection import rank
from convergence.errors import ConvergenceError
from convergence.society.base import Proposal, ProposalContext, TaskAccess
from convergence.society.society import AgentReport, Society
from convergence.storage.store import LeaseLostError, RunInUseError, Store
from convergence.targets.base import Target
from convergence.tracing import views as trace_views
from convergence.tracing.redact import Redactor, config_secret_names, secret_env_values


class LoopEvents(Protocol):
    """Progress hooks for the CLI or a notebook; all optional."""

    def generation_started(self, generation: int, total: int, n_trials: int, n_cases: int) -> None: ...
    def case_finished(self, trial: Proposal, result: CaseResult, cached: bool) -> None: ...
    def trial_finished(self, trial: TrialRecord, best: TrialRecord | None) -> None: ...
    def generation_finished(self, generation: int, best: TrialRecord | None, new: list[TrialRecord]) -> None: ...
    def society_step(self, generation: int, reports: dict[str, AgentReport], new: list[TrialRecord]) -> None: ...
    def message(self, text: str) -> None: ...


class _NoEvents:
    def generation_started(self, generation: int, total: int, n_trials: int, n_cases: int) -> None:
        pass

    def case_finished(self, trial: Proposal, result: CaseResult, cached: bool) -> None:
        pass

    def trial_finished(self, trial: TrialRecord, best: TrialRecord | None) -> None:
        pass

    def generation_finished(self, generation: int, best: TrialRecord | None, new: list[TrialRecord]) -> None:
        pass

    def society_step(self, generation: int, reports: dict[str, AgentReport], new: list[TrialRecord]) -> None:
        pass

    def message(self, text: str) -> None:
        pass


@dataclass(slots=True)
class RunOutcome:
    run_id: int
    study: str
    status: str
    stop_reason: str
    best: TrialRecord | None
    trials: list[TrialRecord]
    generations_run: int
    total_calls: int
    total_cost_usd: float
    elapsed_seconds: float
    cached_cases: int = 0
    resumed: bool = False
    output_files: list[str] = field(default_factory=list)
    all_failed_error: str | None = None
    """Set when the run stopped because every call failed with this error."""


class Optimizer:
    """Runs one study from a loaded config. Targets, evaluator and store are
    injectable so tests and embedding applications can reuse them."""

    def __init__(
        self,
        loaded: LoadedConfig,
        store: Store,
        *,
        target: Target | None = None,
        cases: list[TestCase] | None = None,
        events: LoopEvents | None = None,
        society: Society | None = None,
        executor: Executor | None = None,
    ):
        from convergence.evaluation.cases import TestCaseError, load_test_cases
        from convergence.evaluation.scorer import Evaluator

        self.loaded = loaded
        self.cfg = loaded.config
        self.store = store
        self.events: LoopEvents = events or _NoEvents()
        self.space = SearchSpace.from_config(self.cfg.search_space)
        self.cases = cases if cases is not None else load_test_cases(self.cfg.evaluation.test_cases, loaded.base_dir)
        if not self.cases:
            raise TestCaseError("no test cases: the optimization needs at least one")
        self.evaluator = Evaluator(self.cfg.evaluation, loaded.base_dir)
        self._case_order = {c.id: i for i, c in enumerate(self.cases)}
        self.society = society or Society.from_config(self.cfg, self.space)
        self._target = target
        self._executor = executor
        self.opt = self.cfg.optimization
        self._propose_seconds = 0.0
        """How long the society took to propose last (async mode asks it that far ahead)."""
        self._case_seconds = 1.0
        """Moving average of a call's wall time (seconds)."""
        self._waiting = 0
        """Case calls queued for a slot of the concurrency limit."""
        self._live_best: TrialRecord | None = None
        self._wake = anyio.Event()
        self._in_flight: list[_Gen] = []
        self.on_run_started: Callable[[int], None] | None = None
        """Called with the run id once the run row is committed (the CLI's resume hint)."""
        self._written: dict[str, Any] = loaded.written
        """The config as written (``${VAR}`` references, not their values): what is stored and traced."""
        self._secrets = secret_env_values(extra_names=config_secret_names(self._written))
        self._redactor = Redactor(self._secrets)
        """Scrubs error texts (and outputs, for exact secret values) before they are stored or shown."""

    # ------------------------------------------------------------------ public

    async def run(self, *, resume: bool = False) -> RunOutcome:
        self.executor = self._executor or await build_executor(self.loaded, self._target)
        outcome: RunOutcome | None = None
        error: BaseException | None = None
        try:
            outcome = await self._run(resume)
            return outcome
        except BaseException as exc:
            error = exc
            raise
        finally:
            if tracing.current_run() is not None:
                with anyio.CancelScope(shield=True):
                    await tracing.end_run(outcome, error)
            if self._executor is None:
                with anyio.CancelScope(shield=True):
                    await self.executor.aclose()

    # ------------------------------------------------------------------ internals

    async def _open_run(
        self, study: str, resume: bool
    ) -> tuple[int, int, Budget, dict[str, dict[str, CaseResult]], dict[int, list[dict[str, Any]]]]:
        """Start a new run, or take over the study's unfinished one with
        everything it already paid for: (run id, seed, budget so far, cached
        case results, stored proposals per generation). Either way the run
        row, its lease and its test cases are committed before the first call."""
        budget = Budget(self.opt.budget)
        self._stored_context: dict[int, dict[str, Any]] = {}
        """Per stored generation, the learner's decision it was proposed under (a resumed run)."""
        fp = run_fingerprint(self.cfg, self._written, self.cases)
        prev = await self.store.latest_unfinished_run(study) if resume else None
        if resume and prev is None:
            runs = await self.store.list_runs(study, limit=1)
            if runs:
                raise ResumeError(
                    f"run {runs[0].id} of study '{study}' is {runs[0].status} ({runs[0].stop_reason}); "
                    f"nothing to resume: run without --resume to start a new run"
                )
            self.events.message(f"no earlier run of study '{study}' in {self.store.path}: starting a new run")
        if prev is None:
            seed = self.opt.seed if self.opt.seed is not None else secrets.randbits(32)
            run_id = await self.store.start_run(study, self._written, seed, str(self.loaded.path.resolve()),
                                                fingerprint=fp_dumps(fp))
            await self.store.save_test_cases(run_id, self.cases)
            return run_id, seed, budget, {}, {}
        assert prev.seed is not None
        changed = changed_sections(prev.fingerprint, fp)
        if changed:
            raise ResumeError(
                f"{self.loaded.path} changed since run {prev.id} started: {', '.join(changed)}. A resumed run must "
                f"keep them (budgets, concurrency, timeouts, retries, selection and outputs may change); restore them, "
                f"or run without --resume to start a new run"
            )
        try:
            await self.store.acquire_run(prev.id)
        except RunInUseError as exc:
            raise ResumeError(str(exc)) from None
        cached = await self.store.case_results(prev.id)
        if prev.status == "failed" and (prev.stop_reason or "").startswith(_ALL_FAILED_PREFIX):
            # the run stopped because the target was broken; the user fixed it: call those cases again
            outage = (prev.stop_reason or "")[len(_ALL_FAILED_PREFIX):]
            cached = {h: kept for h, by_case in cached.items()
                      if (kept := {c: r for c, r in by_case.items() if r.call.error != outage})}
        gens = await self.store.generations(prev.id)
        stored_gens = {g.number: g.proposals for g in gens}
        self._stored_context = {g.number: g.context for g in gens if g.context is not None}
        # Every call the run ever started (re-paid ones included) and every second it ran.
        budget.prior_seconds = prev.elapsed_seconds
        stored = [r.call for by_case in cached.values() for r in by_case.values()]
        # the killed process's counter holds the attempts it sent after its last commit
        budget.calls = max(prev.total_calls, self.store.paid_calls(prev.id) or 0, sum(c.attempts for c in stored))
        budget.cost_usd = max(prev.total_cost_usd, sum(c.cost_usd for c in stored))
        self.events.message(
            f"resuming run {prev.id}: {sum(len(v) for v in cached.values())} finished case results reused "
            f"({prev.total_calls} calls, {prev.elapsed_seconds:.1f}s so far)"
        )
        return prev.id, prev.seed, budget, cached, stored_gens

    async def _run(self, resume: bool) -> RunOutcome:
        study = self.cfg.study_name
        run_id, seed, budget, cached, stored_gens = await self._open_run(study, resume)
        self.run_id = run_id
        self.budget = budget
        if self.on_run_started is not None:
            self.on_run_started(run_id)
        self.store.track_run(run_id, lambda: (budget.calls, budget.cost_usd, budget.elapsed()))
        self._all_failed = _FailureWatch(
            any_success=any(r.call.ok for by_case in cached.values() for r in by_case.values()))
        await tracing.start_run(self.cfg.tracing.weave, self.store, study=study, run_id=run_id, seed=seed,
                                config=self._written, resume=resume, notify=self.events.message)
        await self.society.attach(self.store, await self.store.study_id(study))
        for problem in self.society.memory_errors:
            self.events.message(self._redactor.text(problem))
        self.society.time_left = budget.remaining_seconds
        self.society.bind(TaskAccess(self.cases, self._agent_call))
        self._learner: LearnerDriver | None = None
        warm = []
        if self.opt.warm_start and not stored_gens.get(0):
            warm = [c for c in await self.store.best_configs(study, self.opt.warm_start, exclude_run=run_id)
                    if self.space.contains(c)]
            if warm:
                self.events.message(f"warm start: {len(warm)} best configuration(s) from earlier runs of '{study}'")

        evo = self.opt.evolution
        st = _Study(EarlyStopper(self.opt.execution.early_stopping), seed, cached, stored_gens, warm)
        self._study = st
        stop_reason = f"completed {evo.generations} generation(s)"
        status = "finished"
        gens_run = 0
        self._cached_hits = 0
        sel = self.opt.selection
        if sel.confirm_top and sel.stochastic and self.opt.budget.max_calls is not None:
            budget.held = round(sel.confirm_share * self.opt.budget.max_calls)
        self._racer = Racer(self.opt.racing, self.evaluator, len(self.cases)) if self.opt.racing.enabled else None
        # racing compares configurations on the same cases in the same order: one seeded order for the run
        order = np.random.default_rng([seed, 2**31]).permutation(len(self.cases)) if self._racer else None
        self._ordered_cases = [self.cases[int(i)] for i in order] if order is not None else list(self.cases)
        self._limiter = anyio.CapacityLimiter(self.opt.execution.concurrency)
        asynchronous = self.opt.execution.mode == "async"
        in_flight: list[_Gen] = []
        self._in_flight = in_flight
        next_gen = 0
        starting = True
        try:
            if (lcfg := self.cfg.society.learner) is not None:
                self._learner = await LearnerDriver.start(
                    lcfg.plugin, lcfg.options, society=self.society, store=self.store, study=study, run_id=run_id,
                    seed=seed, opt=self.opt, db_path=self.loaded.db_path)
            async with self.store.writing():
                remaining = budget.remaining_seconds()
                with anyio.move_on_after(remaining if remaining is not None else math.inf) as scope:
                    async with anyio.create_task_group() as tg:
                        while True:
                            self._wake = anyio.Event()  # set by a finished generation or a queue running low
                            if starting and next_gen < evo.generations and (not in_flight or (
                                    asynchronous and len(in_flight) < MAX_IN_FLIGHT and self._running_low())):
                                g = await self._start_generation(next_gen, st)
                                if g is None:
                                    starting = False
                                    stop_reason = "search space exhausted: every configuration was evaluated"
                                    continue
                                next_gen += 1
                                in_flight.append(g)
                                tg.start_soon(self._run_generation, g)
                                continue
                            if in_flight and in_flight[0].trials is not None:
                                gens_run += 1
                                verdict = await self._finish_generation(in_flight.pop(0), st)
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
                            await self._wake.wait()
                if scope.cancelled_caught:
                    if not budget.exhausted:
                        budget.exhausted = f"budget: max_seconds ({self.opt.budget.max_seconds}s) reached"
                    status, stop_reason = "stopped", budget.exhausted
                    for g in in_flight:  # cut short: what they finished is stored as partial trials
                        g.trials = g.trials or self._record_trials(g)
                        gens_run += 1
                        await self._finish_generation(g, st)
                if not self._all_failed.tripped:
                    await self._select(st)
        except BaseException as exc:
            leaf = _leaf(exc)
            status, reason = _interruption(leaf)
            with anyio.CancelScope(shield=True):
                await self.store.finish_run(
                    run_id, status, self._redactor.text(reason)[:500], total_calls=budget.calls,
                    total_cost_usd=budget.cost_usd, elapsed_seconds=budget.elapsed(),
                )
            if leaf is not exc and isinstance(leaf, ConvergenceError):
                raise leaf from None  # one clear error, not task groups' ExceptionGroup wrapping
            raise
        elapsed = budget.elapsed()
        await self.store.finish_run(
            run_id, status, stop_reason, total_calls=budget.calls, total_cost_usd=budget.cost_usd,
            elapsed_seconds=elapsed,
        )
        trials = await self.store.trials(run_id)
        return RunOutcome(
            run_id=run_id, study=study, status=status, stop_reason=stop_reason, best=st.best, trials=trials,
            generations_run=gens_run, total_calls=budget.calls, total_cost_usd=budget.cost_usd,
            elapsed_seconds=elapsed, cached_cases=self._cached_hits, resumed=resume,
            all_failed_error=self._all_failed.error if self._all_failed.tripped else None,
        )

    async def _select(self, st: _Study) -> None:
        """Confirm the top configurations with the calls kept for it, give every trial its
        noise-aware estimate (stored), and make the best by estimate the run's best."""
        sel = self.opt.selection
        await self.store.flush()
        trials = await self.store.trials(self.run_id)
        results = {h: list(by_case.values()) for h, by_case in (await self.store.case_results(self.run_id)).items()}
        for h, extra in (await self.store.repeat_results(self.run_id)).items():
            results.setdefault(h, []).extend(extra)
        held = self.budget.held
        self.budget.release()
        max_calls = self.opt.budget.max_calls
        if max_calls is None:  # the share of all calls (a deterministic target: at most the skipped cases)
            allowance = math.ceil(sel.confirm_share / (1 - sel.confirm_share) * self.budget.calls)
        elif sel.stochastic:  # the calls the search left for it
            allowance = min(held, max(0, max_calls - self.budget.calls))
        else:  # only skipped cases, with whatever the search left
            allowance = max(0, max_calls - self.budget.calls)

        async def ask(trial: TrialRecord, case: TestCase, repeat: int) -> CaseResult | None:
            async with self._limiter:  # max_seconds and max_cost_usd are checked by reserve_call
                if self._all_failed.tripped or not self.budget.reserve_call():
                    return None
                result = await self._call(self.space.resolve(trial.config), case, trial.config_hash, repeat)
            self.events.case_finished(Proposal(trial.config, trial.config_hash, "confirmation"), result, False)
            return result

        confirmer = Confirmer(sel, self.evaluator, self._ordered_cases, self.opt.racing.alpha)
        outcome = await confirmer.run(trials, results, allowance if sel.confirm_top else 0, ask)
        for t in outcome.trials:
            self.store.record_trial(self.run_id, t)
        self.store.save_selection(self.run_id, outcome.summary)
        best = rank([t for t in outcome.trials if t.usable])
        st.best = best[0] if best else None
        summary = outcome.summary
        if summary["confirm_calls"]:
            self.events.message(
                f"confirmed the top {summary['confirmed']} configuration(s) with {summary['confirm_calls']} call(s)")
        if summary["runner_up_p"] is not None:
            self.events.message(
                f"best vs runner-up: {'distinguishable' if summary['distinguishable'] else 'within noise'} "
                f"(paired Wilcoxon p={summary['runner_up_p']:.2g})")

    def _replayed_reports(self, g: _Gen, history: list[TrialRecord]) -> dict[str, AgentReport]:
        """What each agent proposed in a generation a resumed run replays (the society did not propose it),
        with its place in the run's top k as ``_society_learns`` counts it."""
        top = sorted(history, key=lambda t: -t.score)[: self.opt.evolution.population_size]
        return {name: AgentReport(name, share, asked=count, proposed=count, status="replayed",
                                  in_top=sum(t.proposer == name for t in top))
                for name, share in self.society.shares.items()
                for count in [sum(p.proposer == name for p in g.proposals)]}

    async def _society_learns(self, gen: int, new: list[TrialRecord], history: list[TrialRecord]) -> None:
        """Agents learn from the generation's outcomes; what each did, and how many
        of its proposals are in the run's top k (k = population size), is stored and shown.
        Nothing is learned once the budget is spent (learning calls the LLM too)."""
        if not self.budget.exhausted:
            spent = self.society.llm_cost_usd()
            await self.society.learn(new, gen, self.run_id)
            self.budget.charge(self.society.llm_cost_usd() - spent)
        top = sorted(history, key=lambda t: -t.score)[: self.opt.evolution.population_size]
        for name, r in self.society.reports.items():
            r.in_top = sum(1 for t in top if t.proposer == name)
            if r.error:
                r.error = self._redactor.text(r.error)
            if r.detail.get("notes"):
                r.detail["notes"] = [self._redactor.text(n) for n in r.detail["notes"]]
            detail = {**r.detail, "in_top_k": r.in_top, "top_k": len(top)}
            if r.error:
                detail["error"] = r.error
            self.store.record_society(self.run_id, gen, name, share=r.share, asked=r.asked, proposed=r.proposed,
                                      status=r.status, seconds=round(r.seconds, 3), detail=detail)
        step = getattr(self.events, "society_step", None)
        if step is not None:
            try:
                step(gen, self.society.reports, new)
            except Exception as exc:  # noqa: BLE001 - a display hook must never stop the run
                self.events.message(f"society display failed: {type(exc).__name__}: {exc}")

    def _rescore(self, trials: list[TrialRecord]) -> bool:
        """Refresh trial-level metric values (the SAO preference rating changes as the judge
        compares more configurations) and the scores that include them; changed trials are stored."""
        if not self.evaluator.trial_level:
            return False
        changed = False
        for t in trials:
            values = self._trial_values(t.config_hash)
            if all(t.metrics.get(k) == v for k, v in values.items()):
                continue
            agg = self.evaluator.score_means({**t.metrics, **values})
            t.score, t.metrics, t.normalized, t.thresholds_passed = (agg.score, agg.means, agg.normalized,
                                                                     agg.thresholds_passed)
            self.store.record_trial(self.run_id, t)
            changed = True
        return changed

    def _trial_values(self, config_hash: str) -> dict[str, float]:
        """Values of the trial-level metrics for one configuration (today: ``sao_preference``)."""
        if not self.evaluator.trial_level:
            return {}
        sao = self.society.agent("sao")
        preference = getattr(sao, "preference", None)
        return {name: float(preference(config_hash)) if preference is not None else 0.5
                for name in self.evaluator.trial_level}

    async def _agent_call(self, config: dict[str, Any], task_input: object) -> str:
        """An agent's call of the target on a new input (SAO's duels): budgeted, counted, retried
        and redacted like an evaluation call, but not a test-case result."""
        from convergence.evaluation.text import to_text
        from convergence.society.base import TargetCallError

        if self._all_failed.tripped or not self.budget.reserve_call():
            raise TargetCallError("the run's call budget is spent")
        ticket = _Ticket(self.budget, self.store)
        try:
            call = await self.executor.call(self.space.resolve(config), TestCase("sao", task_input), ticket.attempt)
        finally:
            ticket.close()
        self.budget.charge(call.cost_usd)
        if call.error is not None:
            raise TargetCallError(self._redactor.text(call.error))
        output = self._redactor.exact_deep(call.output) if self._secrets else call.output
        return to_text(output)

    def _warm_proposals(self, warm: list[dict[str, Any]], seen: set[str]) -> list[Proposal]:
        out = []
        for c in warm[: self.opt.evolution.population_size]:
            c = self.space.canonical(c)
            h = config_hash(c)
            if h not in seen:
                seen.add(h)
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
            self.budget.charge(self.society.llm_cost_usd() - spent)

    # ------------------------------------------------------------------ generations

    async def _start_generation(self, gen: int, st: _Study) -> _Gen | None:
        """A generation's proposals (replayed when stored: a resumed run repeats them), stored
        before any of their calls; None when the search space is exhausted."""
        evo = self.opt.evolution
        self.society.reports = {}
        started_at = time.perf_counter()
        context = self._stored_context.get(gen)
        if gen in st.stored_gens:
            proposals = [Proposal(p["config"], p["hash"], p["proposer"]) for p in st.stored_gens[gen]]
        else:
            context = None
            # async: the trials of generations still in flight that are already complete count too
            done = [t for g in self._in_flight for slot in g.slots if (t := slot.record) is not None and t.usable]
            population = sorted(st.population + done, key=lambda t: -t.score)[: evo.population_size]
            n_new = evo.population_size - (0 if gen == 0 else min(evo.elite_size, len(population)))
            proposals = self._warm_proposals(st.warm, st.seen) if gen == 0 else []
            rng = np.random.default_rng([st.seed, gen])
            ctx = ProposalContext(self.space, gen, population, st.history + done, rng, st.seen)
            started = time.perf_counter()
            proposals += await self._propose(gen, ctx, n_new - len(proposals))
            self._propose_seconds = time.perf_counter() - started
            if not proposals:
                return None
            if self._learner is not None:
                context = {"decided_at": self._learner.decided_at, "controls": self.society.control_values()}
            self.store.record_generation_start(
                self.run_id, gen, [{"config": p.config, "hash": p.config_hash, "proposer": p.proposer}
                                   for p in proposals], context)
        # the learner's decision it was proposed under (a restarted one: the decision it first ran under)
        decided_at = int(context["decided_at"]) if context else (
            self._learner.decided_at if self._learner is not None else -1)
        controls = context["controls"] if context else self.society.control_values()
        st.seen.update(p.config_hash for p in proposals)
        self.events.generation_started(gen, evo.generations, len(proposals), len(self.cases))
        return _Gen(gen, proposals, self.society.reports, started=started_at, decided_at=decided_at,
                    controls=controls)

    def _running_low(self) -> bool:
        """True when the calls queued for a slot would run out before the society
        could propose again (its last proposing time at the current call rate)."""
        c = self.opt.execution.concurrency
        ahead = c * self._propose_seconds / max(self._case_seconds, 1e-3)
        return self._waiting <= c + ahead

    @tracing.traced("convergence.generation", inputs=trace_views.generation_inputs,
                    output=trace_views.generation_output)
    async def _run_generation(self, g: _Gen) -> list[TrialRecord]:
        """Evaluate one generation's proposals (cached results reused) and store its trials.
        Its calls share the run's concurrency limit with any other generation in flight."""
        cached = self._study.cached
        with g.scope:  # cancelled when the run stops while this generation is in flight (async)
            async with anyio.create_task_group() as tg:
                for p in g.proposals:
                    slot = _Slot(g.number, p, self.space.resolve(p.config))
                    g.slots.append(slot)
                    hits = cached.get(p.config_hash, {})
                    todo = []
                    for case in self._ordered_cases:
                        hit = hits.get(case.id)
                        if hit is not None:
                            self._cached_hits += 1
                            self._add_result(slot, hit)
                            self.events.case_finished(p, hit, True)
                        else:
                            todo.append(case)
                    slot.pending = len(todo)
                    if todo and not slot.abandoned:
                        tg.start_soon(self._eval_trial, slot, todo)
                    else:
                        slot.pending = 0
                        self._complete(slot)
        g.trials = self._record_trials(g)
        self._wake.set()
        return g.trials

    def _record_trials(self, g: _Gen) -> list[TrialRecord]:
        trials = []
        for slot in g.slots:  # proposal order, so the store (and a seeded run) is deterministic
            trial = slot.record or self._complete(slot)
            self.store.record_trial(self.run_id, trial)
            trials.append(trial)
        return trials

    async def _finish_generation(self, g: _Gen, st: _Study) -> tuple[str, str] | None:
        """Select, let agents observe and learn, check the stop rules; (status, reason) to stop."""
        evo = self.opt.evolution
        new = g.trials or []
        usable = [t for t in new if t.usable]
        st.history.extend(usable)
        if self._racer is not None:  # the incumbent changes only between generations: a seeded run repeats
            for slot in g.slots:
                if slot.record is not None and slot.record.usable:
                    self._racer.add(slot.record, {r.case_id: self._view(slot, r.case_id) for r in slot.results})
        self.society.observe(new)
        st.population[:] = sorted(st.population + usable, key=lambda t: -t.score)[: evo.population_size]
        best_before = st.best.score if st.best is not None else None
        gen_best = max(usable, key=lambda t: t.score, default=None)
        if gen_best is not None and (st.best is None or gen_best.score > st.best.score):
            st.best = gen_best
        mean = float(np.mean([t.score for t in usable])) if usable else None
        self.store.record_generation_end(self.run_id, g.number, gen_best.score if gen_best else None, mean, len(new))
        self.events.generation_finished(g.number, st.best, new)
        if g.reports:
            self.society.reports = g.reports
            await self._society_learns(g.number, new, st.history)
            if self._rescore(st.history):  # a trial-level metric (sao_preference) moved
                st.population.sort(key=lambda t: -t.score)
                st.best = max(st.history, key=lambda t: t.score, default=st.best)
        if self._learner is not None and not self.budget.exhausted and (g.reports or self._learner.replays):
            # a resumed run's replayed generation has no society reports (nothing was proposed): a learner that
            # asks for them (``replays``) still sees it, recognises what it learned, and learns what the crash
            # cut short
            facts = GenerationFacts(g.number, g.reports or self._replayed_reports(g, st.history), new,
                                    [r for s in g.slots for r in s.results], g.started, g.decided_at, g.controls)
            # summarised in a worker thread (scipy's rank correlations per parameter), from snapshots of
            # what generations still in flight (async) keep changing on the loop
            result = await anyio.to_thread.run_sync(partial(
                generation_result, facts, best_before=best_before, best=st.best, population=list(st.population),
                history=list(st.history), space=self.space, opt=self.opt, budget=self.budget,
                cost_unit=cost_unit(self.opt)))
            step = await self._learner.step(result)
            if isinstance(note := step["summary"].get("message"), str):
                self.events.message(note)
            show = getattr(self.events, "shares", None)
            if show is not None:
                show(self.society.shares)
        if self._all_failed.tripped:
            return "failed", self._all_failed.reason()
        if self.budget.exhausted:
            return "stopped", self.budget.exhausted
        # a learner's prediction is an early-stopping rule: off with early stopping
        why = (self._learner.learner.stop_reason()
               if self._learner is not None and self.opt.execution.early_stopping.enabled else None)
        if why and g.number < evo.generations - 1:
            return "finished", f"early stopping: {why}"
        if st.stopper.update(st.best.score if st.best else None) and g.number < evo.generations - 1:
            return "finished", (f"early stopping: no improvement >= {self.opt.execution.early_stopping.min_improvement}"
                                f" for {st.stopper.stale} generation(s)")
        return None

    # ------------------------------------------------------------------ trials and calls

    def _complete(self, slot: _Slot) -> TrialRecord:
        """Score a trial the moment its last case lands (or it is abandoned) and tell the UI about the live best."""
        results = slot.results if slot.cut is None else [r for r in slot.results if r.case_id in slot.cut]
        slot.record = trial = self._score(slot.generation, slot.proposal, results)
        if slot.abandoned:
            trial.status = "abandoned"
        if trial.usable and (self._live_best is None or trial.score > self._live_best.score):
            self._live_best = trial
        self.events.trial_finished(trial, self._live_best)
        return trial

    @tracing.traced("convergence.trial", inputs=trace_views.trial_inputs, output=trace_views.trial_output)
    async def _eval_trial(self, slot: _Slot, cases: list[TestCase]) -> TrialRecord:
        """One configuration on its pending test cases, in the run's case order, each call waiting
        for a slot of the run's concurrency limit (FIFO). One path, traced or not: the trial is
        the parent of its calls in a trace."""
        async with anyio.create_task_group() as tg:
            for case in cases:
                self._waiting += 1
                tg.start_soon(self._eval_case, slot, case)
        return slot.record or self._score(slot.generation, slot.proposal, slot.results)

    async def _eval_case(self, slot: _Slot, case: TestCase) -> None:
        queued = True
        try:
            async with self._limiter:
                queued = False
                self._waiting -= 1
                if self._waiting <= self.opt.execution.concurrency or self._running_low():
                    self._wake.set()
                if not slot.abandoned and not self._all_failed.tripped and self.budget.reserve_call():
                    await self._call_case(slot, case)
        finally:
            if queued:
                self._waiting -= 1
        slot.pending -= 1
        if slot.pending == 0 and slot.record is None:
            self._complete(slot)

    async def _call_case(self, slot: _Slot, case: TestCase) -> None:
        result = await self._call(slot.params, case, slot.proposal.config_hash)
        self._add_result(slot, result)
        self.events.case_finished(slot.proposal, result, False)

    async def _call(self, params: dict[str, Any], case: TestCase, config_hash: str, repeat: int = 0) -> CaseResult:
        """One reserved call of the target on a test case: counted, charged, redacted, evaluated and stored."""
        ticket = _Ticket(self.budget, self.store)
        try:
            call: CallResult = await self.executor.call(params, case, ticket.attempt)
        finally:
            ticket.close()
        self.budget.charge(call.cost_usd)
        self._case_seconds += 0.1 * ((call.wall_ms or call.latency_ms) / 1000.0 - self._case_seconds)
        if call.error is not None:
            call.error = self._redactor.text(call.error)
            self._all_failed.failed(call.error, config_hash, case.id, len(self.cases))
        else:
            self._all_failed.any_success = True
        if self._secrets and call.output is not None:
            call.output = self._redactor.exact_deep(call.output)
        metrics = await self.evaluator.evaluate(case, call)
        result = CaseResult(case.id, call, metrics, repeat)
        self.store.record_case(self.run_id, config_hash, result)
        return result

    def _view(self, slot: _Slot, case_id: str) -> CaseView:
        """A case's score as racing compares it (computed when first needed: a look or an incumbent)."""
        view = slot.views.get(case_id)
        if view is None:
            assert self._racer is not None
            view = slot.views[case_id] = self._racer.view(slot.by_case[case_id])
        return view

    def _add_result(self, slot: _Slot, result: CaseResult) -> None:
        """Keep a case result; with racing, abandon the trial once it is shown worse than the incumbent.

        Deterministic whatever order the results land in: the test looks at the longest prefix of
        the run's case order that has landed, and an abandoned trial is scored on that prefix only
        (calls already in flight still land and are stored, so a resume never pays for them again)."""
        slot.results.append(result)
        if self._racer is None or slot.abandoned:
            return
        slot.by_case[result.case_id] = result
        while slot.prefix < len(self._ordered_cases) and self._ordered_cases[slot.prefix].id in slot.by_case:
            slot.prefix += 1
            if slot.prefix not in self._racer.looks or self._racer.incumbent is None:
                continue
            prefix = {c.id: self._view(slot, c.id) for c in self._ordered_cases[: slot.prefix]}
            reason = self._racer.verdict(prefix, len(self.cases))
            if reason is not None:
                slot.abandoned = True
                slot.abandon_reason = reason
                slot.cut = set(prefix)
                return

    def _score(self, gen: int, p: Proposal, case_results: list[CaseResult]) -> TrialRecord:
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
            agg = self.evaluator.aggregate(case_results, self._trial_values(p.config_hash))
            trial.score = agg.score
            trial.metrics = agg.means
            trial.normalized = agg.normalized
            trial.thresholds_passed = agg.thresholds_passed
            trial.cost_usd = sum(r.call.cost_usd for r in case_results)
            trial.latency_ms = float(np.mean([r.call.wall_ms or r.call.latency_ms for r in case_results]))
        return trial


@dataclass(slots=True, eq=False)
class _Slot:
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
class _Gen:
    """One generation: its proposals, what the society did for it, its trials once all are done."""

    number: int
    proposals: list[Proposal]
    reports: dict[str, AgentReport]
    slots: list[_Slot] = field(default_factory=list)
    trials: list[TrialRecord] | None = None
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    started: float = 0.0
    """``time.perf_counter()`` when its proposals were asked for."""
    decided_at: int = -1
    """After which generation the society learner made the decision it was proposed under."""
    controls: dict[str, dict[str, str]] = field(default_factory=dict)
    """The agents' controls it was proposed under."""


@dataclass(slots=True, eq=False)
class _Study:
    """The run's search state, shared by the generations in flight."""

    stopper: EarlyStopper
    seed: int
    cached: dict[str, dict[str, CaseResult]]
    stored_gens: dict[int, list[dict[str, Any]]]
    warm: list[dict[str, Any]]
    population: list[TrialRecord] = field(default_factory=list)
    """Survivors, best first (the proposers' parents)."""
    history: list[TrialRecord] = field(default_factory=list)
    """Every usable trial of finished generations."""
    seen: set[str] = field(default_factory=set)
    best: TrialRecord | None = None


MAX_IN_FLIGHT = 16
"""Async mode: generations evaluating at once. More than two lets the next generations fill the slots
while the oldest one's slowest calls finish (long-tailed latencies, few calls per slot per generation).
benchmarks/throughput.py --only tails, C = 256, share of a bare pool: lognormal sigma 0.8 reached 72 % with
2 in flight (a quick run), 97 % with 8; lognormal sigma 1.2 reached 67.5 % with 8 and 96.9 % with 16
(2026-11-25, load average 3). New generations start only when slots would otherwise idle; the cap bounds
how stale a proposal can be."""


class ResumeError(ConvergenceError):
    """The run cannot be resumed (nothing to resume, config changed, run in use)."""


@dataclass(slots=True)
class _FailureWatch:
    """Trips when every call so far failed with one and the same error across
    at least three configurations and two test cases: a broken target (URL,
    server down, bad key), not a bad configuration or a bad test case. Once
    tripped no new call starts; calls in flight finish, and one success among
    them un-trips it (the run goes on)."""

    any_success: bool = False
    error: str | None = None
    configs: set[str] = field(default_factory=set)
    cases: set[str] = field(default_factory=set)
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
        self.configs.add(config_hash)
        self.cases.add(case_id)
        self.hit = len(self.configs) >= _MIN_FAILED_CONFIGS and len(self.cases) >= min(2, n_cases)

    def reason(self) -> str:
        return f"{_ALL_FAILED_PREFIX}{self.error}"


_MIN_FAILED_CONFIGS = 3
_ALL_FAILED_PREFIX = "every call failed with the same error, stopped early: "


class _Ticket:
    """One reserved call. Each attempt is counted as paid right before it goes
    out (after the rate limiter) in the run's kill-safe counter
    (``Store.count_call``), so the run's totals hold every call the target
    received even if this process is killed mid-call. No attempt waits for the
    disk. A reservation that never went out is released."""

    __slots__ = ("budget", "sent", "store")

    def __init__(self, budget: Budget, store: Store) -> None:
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


def _leaf(exc: BaseException) -> BaseException:
    """The one exception inside nested exception groups (task groups wrap what a worker raised): our own
    error when the group holds only one, counting repeats of one error (several calls that hit the same
    fatal backend error at once) as one; else the group itself."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    ours = exc.subgroup(lambda e: isinstance(e, ConvergenceError))
    leaves = _leaves(ours if ours is not None else exc)
    if len({(type(e), str(e)) for e in leaves}) == 1:
        return leaves[0]
    return exc


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for e in group.exceptions:
        out.extend(_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    return out


def _interruption(exc: BaseException) -> tuple[str, str]:
    """(status, readable stop reason) for an exception that ended a run."""
    if isinstance(exc, (KeyboardInterrupt, anyio.get_cancelled_exc_class())):
        return "interrupted", "interrupted (Ctrl-C or cancelled); finished results are stored, resume with --resume"
    if isinstance(exc, LeaseLostError):
        return "interrupted", str(exc)
    return "failed", f"{type(exc).__name__}: {exc}"


async def optimize(
    config_path: str, *, resume: bool = False, events: LoopEvents | None = None, write_outputs: bool = True
) -> RunOutcome:
    """Programmatic entry point: ``await optimize("optimization.yaml")``."""
    from convergence.config.loader import load_config
    from convergence.config.preflight import check

    loaded = load_config(config_path)
    cases = check(loaded).cases  # what `convergence validate` checks, before the first call
    store = await Store.open(loaded.db_path)
    try:
        outcome = await Optimizer(loaded, store, cases=cases, events=events).run(resume=resume)
        if write_outputs:
            from convergence.reporting.outputs import write_outputs as _write

            outcome.output_files = [str(p) for p in await _write(loaded, store, outcome.run_id)]
        return outcome
    finally:
        await store.close()
