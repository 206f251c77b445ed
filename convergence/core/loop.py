"""The optimization loop.

One generation: proposals -> de-duplicate against the run -> evaluate every
(configuration x test case) under one concurrency limit -> score -> select
(elites survive without re-evaluation) -> proposers observe -> early stopping
and budget checks. Every case result is persisted as it lands, and each
generation's proposals are persisted before evaluation, so ``resume`` replays
the run exactly and only pays for what never finished.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import numpy as np

from convergence import tracing
from convergence.config.loader import LoadedConfig, resolve_path
from convergence.core.budget import Budget, EarlyStopper
from convergence.core.fingerprint import changed_sections, dumps as fp_dumps, run_fingerprint
from convergence.core.space import SearchSpace, config_hash
from convergence.core.types import CallResult, CaseResult, TestCase, TrialRecord
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
        self.opt = self.cfg.optimization
        self.on_run_started: Callable[[int], None] | None = None
        """Called with the run id once the run row is committed (the CLI's resume hint)."""
        self._written: dict[str, Any] = loaded.written
        """The config as written (``${VAR}`` references, not their values): what is stored and traced."""
        self._secrets = secret_env_values(extra_names=config_secret_names(self._written))
        self._redactor = Redactor(self._secrets)
        """Scrubs error texts (and outputs, for exact secret values) before they are stored or shown."""

    # ------------------------------------------------------------------ public

    async def run(self, *, resume: bool = False) -> RunOutcome:
        from convergence.targets.factory import build_target
        from convergence.targets.runner import CallRunner

        tcfg = self.cfg.resolved_target
        target = self._target or build_target(tcfg, self.loaded.base_dir, self.opt.execution.concurrency)
        self.runner = CallRunner(
            target, retry=tcfg.retry, timeout_seconds=tcfg.timeout_seconds,
            rate_limit_per_second=tcfg.rate_limit_per_second,
        )
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
            if self._target is None:
                with anyio.CancelScope(shield=True):
                    await target.aclose()

    # ------------------------------------------------------------------ internals

    async def _open_run(
        self, study: str, resume: bool
    ) -> tuple[int, int, Budget, dict[str, dict[str, CaseResult]], dict[int, list[dict[str, Any]]]]:
        """Start a new run, or take over the study's unfinished one with
        everything it already paid for: (run id, seed, budget so far, cached
        case results, stored proposals per generation). Either way the run
        row, its lease and its test cases are committed before the first call."""
        budget = Budget(self.opt.budget)
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
                f"keep them (budgets, concurrency, timeouts, retries and outputs may change); restore them, "
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
        stored_gens = {g.number: g.proposals for g in await self.store.generations(prev.id)}
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
        warm = []
        if self.opt.warm_start and not stored_gens.get(0):
            warm = [c for c in await self.store.best_configs(study, self.opt.warm_start, exclude_run=run_id)
                    if self.space.contains(c)]
            if warm:
                self.events.message(f"warm start: {len(warm)} best configuration(s) from earlier runs of '{study}'")

        stopper = EarlyStopper(self.opt.execution.early_stopping)
        evo = self.opt.evolution
        population: list[TrialRecord] = []
        history: list[TrialRecord] = []
        seen: set[str] = set()
        best: TrialRecord | None = None
        stop_reason = f"completed {evo.generations} generation(s)"
        status = "finished"
        gens_run = 0
        self._cached_hits = 0
        try:
            async with self.store.writing():
                for gen in range(evo.generations):
                    rng = np.random.default_rng([seed, gen])
                    self.society.reports = {}
                    if gen in stored_gens:
                        proposals = [Proposal(p["config"], p["hash"], p["proposer"]) for p in stored_gens[gen]]
                    else:
                        n_new = evo.population_size - (0 if gen == 0 else min(evo.elite_size, len(population)))
                        proposals = self._warm_proposals(warm, seen) if gen == 0 else []
                        ctx = ProposalContext(self.space, gen, population, history, rng, seen)
                        proposals += await self._propose(gen, ctx, n_new - len(proposals))
                        if not proposals:
                            stop_reason = "search space exhausted: every configuration was evaluated"
                            break
                        self.store.record_generation_start(
                            run_id, gen, [{"config": p.config, "hash": p.config_hash, "proposer": p.proposer}
                                          for p in proposals]
                        )
                    seen.update(p.config_hash for p in proposals)
                    self.events.generation_started(gen, evo.generations, len(proposals), len(self.cases))
                    new = await self._evaluate_generation(gen, proposals, cached, best)
                    gens_run += 1
                    usable = [t for t in new if t.usable]
                    history.extend(usable)
                    self.society.observe(new)
                    population = sorted(population + usable, key=lambda t: -t.score)[: evo.population_size]
                    gen_best = max(usable, key=lambda t: t.score, default=None)
                    if gen_best is not None and (best is None or gen_best.score > best.score):
                        best = gen_best
                    mean = float(np.mean([t.score for t in usable])) if usable else None
                    self.store.record_generation_end(
                        run_id, gen, gen_best.score if gen_best else None, mean, len(new)
                    )
                    self.events.generation_finished(gen, best, new)
                    if self.society.reports:
                        await self._society_learns(gen, new, history)
                        if self._rescore(history):  # a trial-level metric (sao_preference) moved
                            population.sort(key=lambda t: -t.score)
                            best = max(history, key=lambda t: t.score, default=best)
                    if self._all_failed.tripped:
                        stop_reason = self._all_failed.reason()
                        status = "failed"
                        break
                    if budget.exhausted:
                        stop_reason = budget.exhausted
                        status = "stopped"
                        break
                    if stopper.update(best.score if best else None) and gen < evo.generations - 1:
                        stop_reason = (
                            f"early stopping: no improvement >= {self.opt.execution.early_stopping.min_improvement} "
                            f"for {stopper.stale} generation(s)"
                        )
                        break
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
            run_id=run_id, study=study, status=status, stop_reason=stop_reason, best=best, trials=trials,
            generations_run=gens_run, total_calls=budget.calls, total_cost_usd=budget.cost_usd,
            elapsed_seconds=elapsed, cached_cases=self._cached_hits, resumed=resume,
            all_failed_error=self._all_failed.error if self._all_failed.tripped else None,
        )

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
            call = await self.runner.run(self.space.resolve(config), TestCase("sao", task_input), ticket.attempt)
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

    @tracing.traced("convergence.generation", inputs=trace_views.generation_inputs,
                    output=trace_views.generation_output)
    async def _evaluate_generation(
        self, gen: int, proposals: Sequence[Proposal], cached: dict[str, dict[str, CaseResult]],
        best: TrialRecord | None,
    ) -> list[TrialRecord]:
        self._live_best = best
        slots = [_Slot(gen, p, self.space.resolve(p.config)) for p in proposals]
        jobs: list[tuple[_Slot, TestCase]] = []
        for slot in slots:
            hits = cached.get(slot.proposal.config_hash, {})
            for case in self.cases:
                hit = hits.get(case.id)
                if hit is not None:
                    self._cached_hits += 1
                    slot.results.append(hit)
                    self.events.case_finished(slot.proposal, hit, True)
                else:
                    jobs.append((slot, case))
                    slot.pending += 1
            if not slot.pending:
                self._complete(slot)
        remaining = self.budget.remaining_seconds()
        with anyio.move_on_after(remaining if remaining is not None else math.inf) as scope:
            if jobs and tracing.active():
                await self._eval_traced(jobs)
            elif jobs:
                # `concurrency` long-lived workers pull (config x case) jobs in
                # order from one shared iterator: the same cap and FIFO start
                # order as one task per job behind a CapacityLimiter, without
                # creating a task and a limiter wait for every evaluation.
                queue = iter(jobs)
                async with anyio.create_task_group() as tg:
                    for _ in range(min(self.opt.execution.concurrency, len(jobs))):
                        tg.start_soon(self._eval_worker, queue)
        if scope.cancelled_caught and not self.budget.exhausted:
            self.budget.exhausted = f"budget: max_seconds ({self.opt.budget.max_seconds}s) reached"
        trials: list[TrialRecord] = []
        for slot in slots:  # proposal order, so the store (and a seeded run) is deterministic
            trial = slot.record or self._complete(slot)
            self.store.record_trial(self.run_id, trial)
            trials.append(trial)
        return trials

    def _complete(self, slot: _Slot) -> TrialRecord:
        """Score a trial the moment its last case lands (inside the generation,
        where the loop has idle time) and tell the UI about the live best."""
        slot.record = trial = self._score(slot.generation, slot.proposal, slot.results)
        if trial.usable and (self._live_best is None or trial.score > self._live_best.score):
            self._live_best = trial
        self.events.trial_finished(trial, self._live_best)
        return trial

    async def _eval_worker(self, jobs: Iterator[tuple[_Slot, TestCase]]) -> None:
        """One concurrency slot: evaluate jobs until the shared iterator is empty."""
        for slot, case in jobs:
            await self._eval_case(slot, case)

    async def _eval_traced(self, jobs: list[tuple[_Slot, TestCase]]) -> None:
        """Traced runs only: one task per trial, so each trial is the parent of its
        case calls in Weave; one limiter of ``concurrency`` slots for the whole generation."""
        limiter = anyio.CapacityLimiter(self.opt.execution.concurrency)
        by_trial: dict[int, tuple[_Slot, list[TestCase]]] = {}
        for slot, case in jobs:
            by_trial.setdefault(id(slot), (slot, []))[1].append(case)
        async with anyio.create_task_group() as tg:
            for slot, cases in by_trial.values():
                tg.start_soon(self._eval_trial, slot, cases, limiter)

    @tracing.traced("convergence.trial", inputs=trace_views.trial_inputs, output=trace_views.trial_output)
    async def _eval_trial(self, slot: _Slot, cases: list[TestCase], limiter: anyio.CapacityLimiter) -> TrialRecord:
        """One configuration on its pending test cases; returns its score so the trace shows it."""

        async def one(case: TestCase) -> None:
            async with limiter:
                await self._eval_case(slot, case)

        async with anyio.create_task_group() as tg:
            for case in cases:
                tg.start_soon(one, case)
        return slot.record or self._score(slot.generation, slot.proposal, slot.results)

    async def _eval_case(self, slot: _Slot, case: TestCase) -> None:
        if not self._all_failed.tripped and self.budget.reserve_call():
            ticket = _Ticket(self.budget, self.store)
            try:
                call: CallResult = await self.runner.run(slot.params, case, ticket.attempt)
            finally:
                ticket.close()
            self.budget.charge(call.cost_usd)
            if call.error is not None:
                call.error = self._redactor.text(call.error)
                self._all_failed.failed(call.error, slot.proposal.config_hash, case.id, len(self.cases))
            else:
                self._all_failed.any_success = True
            if self._secrets and call.output is not None:
                call.output = self._redactor.exact_deep(call.output)
            metrics = await self.evaluator.evaluate(case, call)
            result = CaseResult(case.id, call, metrics)
            slot.results.append(result)
            self.store.record_case(self.run_id, slot.proposal.config_hash, result)
            self.events.case_finished(slot.proposal, result, False)
        slot.pending -= 1
        if slot.pending == 0:
            self._complete(slot)

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
    """The one exception inside nested single-member exception groups (task
    groups wrap what a worker raised), or the first of our own errors in a group."""
    while isinstance(exc, BaseExceptionGroup):
        ours = exc.subgroup(lambda e: isinstance(e, ConvergenceError))
        group = ours if ours is not None else exc
        if len(group.exceptions) != 1:
            return exc
        exc = group.exceptions[0]
    return exc


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
    store = await Store.open(resolve_path(loaded.base_dir, loaded.config.storage.path))
    try:
        outcome = await Optimizer(loaded, store, cases=cases, events=events).run(resume=resume)
        if write_outputs:
            from convergence.outputs import write_outputs as _write

            outcome.output_files = [str(p) for p in await _write(loaded, store, outcome.run_id)]
        return outcome
    finally:
        await store.close()
