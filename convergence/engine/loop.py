"""The optimization loop: :class:`Optimizer` (``convergence.api.optimize`` is the one way in).

One generation: proposals -> de-duplicate against the run -> evaluate every
(configuration x test case) under one concurrency limit -> score -> select
(elites survive without re-evaluation) -> proposers observe -> agents learn
(RLP's rewards; SAO's duels, which call the target through the trial runner and
may move trial-level metrics, so scores are refreshed) -> early stopping and
budget checks. Every case result is persisted as it lands, and each
generation's proposals are persisted before evaluation, so ``resume`` replays
the run exactly and only pays for what never finished.

The parts, each in its own module: the run session (``session.py``: open, resume,
finish), the generation scheduler (``scheduler.py``), the trial runner
(``trials.py``: calls, racing, scores) and the end-of-run selection
(``final_selection.py``), sharing one :class:`~convergence.engine.state.RunState`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from convergence import tracing
from convergence.config.budget_plan import with_budget_plan
from convergence.config.loader import LoadedConfig
from convergence.core.space import SearchSpace
from convergence.core.types import TestCase, TrialRecord
from convergence.engine.events import LoopEvents, NoEvents
from convergence.engine.executor import Executor, LocalExecutor, build_executor
from convergence.engine.final_selection import select_best
from convergence.engine.learner_driver import LearnerDriver
from convergence.engine.scheduler import MAX_IN_FLIGHT, GenerationScheduler
from convergence.engine.selection import best
from convergence.engine.session import ResumeError, RunSession
from convergence.engine.trials import TrialRunner
from convergence.engine.warmup import llm_users, warm_up
from convergence.society.base import TaskAccess
from convergence.society.society import Society
from convergence.storage.store import Store
from convergence.targets.base import Target
from convergence.tracing.output_guard import guard_logs
from convergence.tracing.redact import redactor_for

if TYPE_CHECKING:
    from convergence.engine.state import RunState

__all__ = ["MAX_IN_FLIGHT", "LoopEvents", "Optimizer", "ResumeError", "RunOutcome"]


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

        self.cases = cases if cases is not None else load_test_cases(loaded.config.evaluation.test_cases,
                                                                     loaded.base_dir)
        if not self.cases:
            raise TestCaseError("no test cases: the optimization needs at least one")
        self.as_written = loaded.config
        """The config as the user wrote it (what a resumed run must keep: the run fingerprint)."""
        self.loaded, self.budget_plan = with_budget_plan(loaded, len(self.cases))
        """The config with what ``budget.max_calls`` sets resolved (``config/budget_plan.py``)."""
        self.cfg = self.loaded.config
        self.opt = self.cfg.optimization
        self.store = store
        self.events: LoopEvents = events or NoEvents()
        self.space = SearchSpace.from_config(self.cfg.search_space)
        self.evaluator = Evaluator(self.cfg.evaluation, loaded.base_dir)
        self.society = society or Society.from_config(self.cfg, self.space)
        self._target = target
        self._executor = executor
        self.on_run_started: Callable[[int], None] | None = None
        """Called with the run id once the run row is committed (the CLI's resume hint)."""
        self._redactor = redactor_for(self.loaded.written, self.loaded.raw)
        self._secrets = self._redactor.values
        guard_logs(self._redactor)  # a library's or the judge's log line quoting a key
        """Scrubs error texts (and outputs, for exact secret values) before they are stored or shown."""
        self.state: RunState | None = None
        """The run's state once it is open (for a notebook that wants to look inside)."""

    async def run(self, *, resume: bool = False) -> RunOutcome:
        executor = self._executor or await build_executor(self.loaded, self._target)
        outcome: RunOutcome | None = None
        error: BaseException | None = None
        try:
            outcome = await self._run(executor, resume)
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
                    await executor.aclose()

    async def _run(self, executor: Executor, resume: bool) -> RunOutcome:
        """Open the run, run its generations, select the best, finish: the session, the scheduler,
        the trial runner and the end-of-run selection share one :class:`RunState`."""
        study, store, events = self.cfg.study_name, self.store, self.events
        session = RunSession(self.loaded, store, self.cases, self.evaluator, self._redactor, events.message,
                             as_written=self.as_written)
        self.state = st = await session.open(resume)
        if self.on_run_started is not None:
            self.on_run_started(st.run_id)
        budget = st.budget
        store.track_run(st.run_id, lambda: (budget.calls, budget.cost_usd, budget.elapsed()))
        try:  # from here on a failure (a damaged stored value, a full disk) is stored as the run's end
            await tracing.start_run(self.cfg.tracing.weave, store, study=study, run_id=st.run_id, seed=st.seed,
                                    config=self.loaded.written, resume=resume, notify=events.message)
            runner = TrialRunner(st, space=self.space, cases=self.cases, evaluator=self.evaluator, store=store,
                                 executor=executor, society=self.society, events=events, redactor=self._redactor,
                                 secrets=bool(self._secrets), concurrency=self.opt.execution.concurrency)
            await self.society.attach(store, await store.study_id(study))
            for problem in self.society.memory_errors:
                events.message(self._redactor.text(problem))
            self.society.time_left = budget.remaining_seconds
            self.society.bind(TaskAccess(self.cases, runner.agent_call, runner.grade, runner.render))
            await session.warm_start(st, self.space.contains)
            scheduler = GenerationScheduler(st, opt=self.opt, space=self.space, society=self.society, store=store,
                                            runner=runner, events=events, redactor=self._redactor)
            if (lcfg := self.cfg.society.learner) is not None:
                st.learner = await LearnerDriver.start(
                    lcfg.plugin, lcfg.options, society=self.society, store=store, study=study, run_id=st.run_id,
                    seed=st.seed, opt=self.opt, db_path=self.loaded.db_path,
                    timeout_seconds=self.cfg.society.agent_timeout_seconds)
            async with store.writing():  # the lease's heartbeat runs while the model loads
                await warm_up(llm_users(self.loaded, self.space, (p for p, _ in self.society.members),
                                        target_in_process=isinstance(executor, LocalExecutor)), events.message)
                status, stop_reason = await scheduler.run()
                if not st.all_failed.tripped:
                    await select_best(st, opt=self.opt, space=self.space, evaluator=self.evaluator, store=store,
                                      runner=runner, events=events)
                else:  # a broken target: nothing to confirm, the best of what scored (same ranking)
                    st.best = best(st.history)
        except BaseException as exc:
            error = await session.fail(st, exc)
            if error is not exc:
                raise error from None  # one clear error, not task groups' ExceptionGroup wrapping
            raise
        elapsed = await session.finish(st, status, stop_reason)
        return RunOutcome(
            run_id=st.run_id, study=study, status=status, stop_reason=stop_reason, best=st.best,
            trials=await store.trials(st.run_id), generations_run=st.gens_run, total_calls=budget.calls,
            total_cost_usd=budget.cost_usd, elapsed_seconds=elapsed, cached_cases=st.cached_hits,
            resumed=resume, all_failed_error=st.all_failed.error if st.all_failed.tripped else None,
        )
