"""A run's life in the store: open a new run or take over the study's unfinished one, and finish it.

Opening commits the run row, its lease and its test cases before the first call; a resumed run
gets back everything it already paid for (case results, proposals per generation, the learner's
decisions, calls and cost so far) and must keep the settings that shaped its results (the run
fingerprint). Finishing stores the status, the stop reason and the totals, also when the run
ends on an error or an interruption.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np

from convergence.core.budget import Budget, EarlyStopper
from convergence.core.fingerprint import changed_sections, dumps as fp_dumps, run_fingerprint
from convergence.core.types import CaseResult, TestCase
from convergence.engine.racing import Racer
from convergence.engine.state import ALL_FAILED_PREFIX, FailureWatch, RunState
from convergence.engine.stochastic import Decision, Probe, from_config
from convergence.errors import ConvergenceError
from convergence.storage.store import LeaseLostError, RunInUseError, Store
from convergence.tracing.redact import Redactor

if TYPE_CHECKING:
    from convergence.config.loader import LoadedConfig
    from convergence.config.models import ConvergenceConfig
    from convergence.evaluation.scorer import Evaluator


class ResumeError(ConvergenceError):
    """The run cannot be resumed (nothing to resume, config changed, run in use)."""


class RunSession:
    """Opens and finishes one run of ``loaded``'s study in ``store``."""

    def __init__(self, loaded: LoadedConfig, store: Store, cases: list[TestCase], evaluator: Evaluator,
                 redactor: Redactor, message: Callable[[str], None],
                 as_written: ConvergenceConfig | None = None) -> None:
        self.loaded = loaded
        self.cfg = loaded.config
        self.as_written = as_written or loaded.config
        """The config as written (``budget_plan`` not applied): what the run fingerprint hashes, so a
        budget may change under ``--resume`` as it always could."""
        self.opt = loaded.config.optimization
        self.store = store
        self.cases = cases
        self.evaluator = evaluator
        self.redactor = redactor
        self.message = message
        """``LoopEvents.message``: one line for the user."""

    async def open(self, resume: bool) -> RunState:
        """A new run, or the study's unfinished one with what it already paid for (``resume``)."""
        study = self.cfg.study_name
        budget = Budget(self.opt.budget)
        stored_context: dict[int, dict[str, Any]] = {}
        fp = run_fingerprint(self.as_written, self.loaded.written, self.cases)
        prev = await self.store.latest_unfinished_run(study) if resume else None
        if resume and prev is None:
            runs = await self.store.list_runs(study, limit=1)
            if runs:
                raise ResumeError(
                    f"run {runs[0].id} of study '{study}' is {runs[0].status} ({runs[0].stop_reason}); "
                    f"nothing to resume: run without --resume to start a new run (its report files, if "
                    f"missing, are written by `convergence report {runs[0].id}`)"
                )
            self.message(f"no earlier run of study '{study}' in {self.store.path}: starting a new run")
        cached: dict[str, dict[str, CaseResult]] = {}
        stored_gens: dict[int, list[dict[str, Any]]] = {}
        if prev is None:
            seed = self.opt.seed if self.opt.seed is not None else secrets.randbits(32)
            run_id = await self.store.start_run(study, self.loaded.written, seed, str(self.loaded.path.resolve()),
                                                fingerprint=fp_dumps(fp))
            await self.store.save_test_cases(run_id, self.cases)
        else:
            assert prev.seed is not None
            changed = changed_sections(prev.fingerprint, fp)
            if changed:
                raise ResumeError(
                    f"{self.loaded.path} changed since run {prev.id} started: {', '.join(changed)}. A resumed run "
                    f"must keep them (budgets, concurrency, timeouts, retries, selection and outputs may change); "
                    f"restore them, or run without --resume to start a new run"
                )
            try:
                await self.store.acquire_run(prev.id)
            except RunInUseError as exc:
                raise ResumeError(str(exc)) from None
            run_id, seed = prev.id, prev.seed
            cached = await self.store.case_results(prev.id)
            if prev.status == "failed" and (prev.stop_reason or "").startswith(ALL_FAILED_PREFIX):
                # the run stopped because the target was broken; the user fixed it: call those cases again
                outage = (prev.stop_reason or "")[len(ALL_FAILED_PREFIX):]
                cached = {h: kept for h, by_case in cached.items()
                          if (kept := {c: r for c, r in by_case.items() if r.call.error != outage})}
            gens = await self.store.generations(prev.id)
            stored_gens = {g.number: g.proposals for g in gens}
            stored_context = {g.number: g.context for g in gens if g.context is not None}
            # Every call the run ever started (re-paid ones included) and every second it ran.
            budget.prior_seconds = prev.elapsed_seconds
            stored = [r.call for by_case in cached.values() for r in by_case.values()]
            # the killed process's counter holds the attempts it sent after its last commit
            budget.calls = max(prev.total_calls, self.store.paid_calls(prev.id) or 0,
                               sum(c.attempts for c in stored))
            budget.cost_usd = max(prev.total_cost_usd, sum(c.cost_usd for c in stored))
            self.message(
                f"resuming run {prev.id}: {sum(len(v) for v in cached.values())} finished case results reused "
                f"({prev.total_calls} calls, {prev.elapsed_seconds:.1f}s so far)"
            )
        decision, probe = await self._stochastic(prev.id if prev is not None else None, cached)
        sel = self.opt.selection
        # kept for confirmation while the target may be stochastic: a probe that finds it deterministic
        # hands the calls back to the search (``Budget.release``)
        if sel.confirm_top and decision.stochastic is not False and self.opt.budget.max_calls is not None:
            budget.held = round(sel.confirm_share * self.opt.budget.max_calls)
        racer = Racer(self.opt.racing, self.evaluator, len(self.cases)) if self.opt.racing.enabled else None
        # racing compares configurations on the same cases in the same order: one seeded order for the run
        order = np.random.default_rng([seed, 2**31]).permutation(len(self.cases)) if racer else None
        return RunState(
            run_id=run_id, seed=seed, budget=budget, stopper=EarlyStopper(self.opt.execution.early_stopping),
            cached=cached, stored_gens=stored_gens, stored_context=stored_context,
            ordered_cases=[self.cases[int(i)] for i in order] if order is not None else list(self.cases),
            limiter=anyio.CapacityLimiter(self.opt.execution.concurrency),
            all_failed=FailureWatch(any_success=any(r.call.ok for by_case in cached.values()
                                                    for r in by_case.values())),
            racer=racer, decision=decision, probe=probe,
        )

    async def _stochastic(self, prev_run: int | None, cached: dict[str, dict[str, CaseResult]]
                          ) -> tuple[Decision, Probe | None]:
        """What the config says about the target's draws; with ``auto`` and nothing said, a probe that
        starts from the draws a resumed run already paid for (probes and confirmation draws alike)."""
        decision = from_config(self.cfg)
        if not decision.pending:
            self.message(decision.line())
            return decision, None
        probe = Probe(decision, self.evaluator)
        if prev_run is not None:
            probe.absorb(cached, await self.store.repeat_results(prev_run))
            if not decision.pending:
                self.message(decision.line() + " (stored draws)")
                return decision, None
        return decision, probe

    async def warm_start(self, st: RunState, space_contains: Any) -> None:
        """The best configurations of the study's earlier runs seed a new run's first generation."""
        study = self.cfg.study_name
        if self.opt.warm_start and not st.stored_gens.get(0):
            st.warm = [c for c in await self.store.best_configs(study, self.opt.warm_start, exclude_run=st.run_id)
                       if space_contains(c)]
            if st.warm:
                self.message(f"warm start: {len(st.warm)} best configuration(s) from earlier runs of '{study}'")

    async def finish(self, st: RunState, status: str, stop_reason: str) -> float:
        """Store the run's end; its elapsed seconds (the number stored)."""
        budget = st.budget
        elapsed = budget.elapsed()
        await self.store.finish_run(st.run_id, status, stop_reason, total_calls=budget.calls,
                                    total_cost_usd=budget.cost_usd, elapsed_seconds=elapsed)
        return elapsed

    async def fail(self, st: RunState, exc: BaseException) -> BaseException:
        """Store how the run ended on ``exc``; the exception to raise (our own error out of task groups)."""
        leaf = _leaf(exc)
        status, reason = _interruption(leaf)
        with anyio.CancelScope(shield=True):
            await self.store.finish_run(
                st.run_id, status, self.redactor.text(reason)[:500], total_calls=st.budget.calls,
                total_cost_usd=st.budget.cost_usd, elapsed_seconds=st.budget.elapsed(),
            )
        return leaf if leaf is not exc and isinstance(leaf, ConvergenceError) else exc


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
