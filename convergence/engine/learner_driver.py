"""The loop's side of a society learner (``society.learner``): start it from what it
learned in earlier runs of the study, tell it how each generation went, apply its
decision (shares, agents' controls) and persist what it saved, in order with the run.

Kept out of the scheduler (``scheduler.py``), which only says *when* the learner acts.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio
import numpy as np

from convergence import tracing
from convergence.config.models import OptimizationConfig
from convergence.core.budget import Budget
from convergence.core.space import SearchSpace
from convergence.core.types import CaseResult, TrialRecord
from convergence.registry import PluginError
from convergence.society.learner import (
    AgentResult,
    Decision,
    GenerationResult,
    Learner,
    LearnerContext,
    LearnerMemory,
    credit,
    parameter_stats,
    state_dir,
)
from convergence.society.society import AgentReport, Society
from convergence.storage.store import Store

MEMORY_ROWS = 5000
"""Experiences of earlier runs a learner is given at start (the newest)."""

STRIKES = 3
"""Steps in a row a learner may miss (time out, or still be busy with one that did) before it is set aside."""


class LearnerTimeout(Exception):
    """A learner's update did not return within ``society.agent_timeout_seconds``."""


@dataclass(slots=True)
class GenerationFacts:
    """What the loop knows of a finished generation (its trials and calls)."""

    number: int
    reports: dict[str, AgentReport]
    trials: list[TrialRecord]
    results: list[CaseResult]
    started: float
    """``time.perf_counter()`` when its proposals were made."""
    decided_at: int
    controls: dict[str, dict[str, str]] = field(default_factory=dict)


class LearnerDriver:
    """One run's learner, its memory in the store and the decision in force."""

    def __init__(self, learner: Learner, plugin: str, memory: LearnerMemory, store: Store, study_id: int,
                 run_id: int, society: Society, timeout_seconds: float | None = None) -> None:
        self.learner = learner
        self.timeout_seconds = timeout_seconds
        """How long one ``update`` may take (``society.agent_timeout_seconds``); None: no limit."""
        self.busy: threading.Thread | None = None
        """The thread of an update that timed out and has not returned (it cannot be cancelled)."""
        self.strikes = 0
        """Steps missed in a row (timed out, or skipped while the learner was still busy)."""
        self.failed = False
        """Set aside after :data:`STRIKES` missed steps: the run goes on with the shares in force."""
        self.run_id = run_id
        self.plugin = plugin
        self.memory = memory
        self.store = store
        self.study_id = study_id
        self.society = society
        self.key = memory_key(plugin)
        self.decided_at = -1
        """After which generation the decision in force was made (-1: the start)."""
        self.replays = bool(getattr(learner, "replays", False))
        """The learner wants the generations a resumed run replays (it recognises them)."""

    @classmethod
    async def start(cls, plugin: str, options: Mapping[str, Any], *, society: Society, store: Store, study: str,
                    run_id: int, seed: int, opt: OptimizationConfig, db_path: Any,
                    timeout_seconds: float | None = None) -> LearnerDriver:
        """The ``society.learner`` plugin, started from what it learned in earlier runs of the study."""
        from convergence.registry import registry

        study_id = await store.study_id(study)
        key = memory_key(plugin)
        memory = LearnerMemory(await store.agent_memory(study_id, key),
                               await store.experiences(study_id, key, MEMORY_ROWS))
        shares = society.shares
        ctx = LearnerContext(
            agents=list(shares), shares=shares, options=options, seed=seed, study=study,
            state_dir=state_dir(db_path, study), min_improvement=opt.execution.early_stopping.min_improvement,
            run_id=run_id, generations=opt.evolution.generations, controls=society.controls(), memory=memory,
            cost_budget=cost_budget(opt))
        origin = registry().get("learner", plugin).origin
        factory = registry().load("learner", plugin)
        try:
            learner = factory(ctx)
            if not isinstance(learner, Learner):
                raise TypeError(f"its factory returned a {type(learner).__name__}, not a Learner (docs/plugins.md)")
            society.set_shares(valid_shares(learner.initial_shares(), shares))
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"learner {plugin!r} ({origin}) failed to start: {type(exc).__name__}: {exc}"
                              ) from exc
        driver = cls(learner, plugin, memory, store, study_id, run_id, society, timeout_seconds)
        driver.persist()
        return driver

    def persist(self) -> None:
        """Hand what the learner saved and recorded to the store's writer (on the event loop's thread)."""
        saved, records = self.memory.drain()
        for generation, data, reward in records:
            self.store.record_experience(self.study_id, self.key, self.run_id, generation, data, reward)
        if saved is not None:
            self.store.save_agent_memory(self.study_id, self.key, saved)

    @tracing.traced("convergence.learner", inputs=lambda self, result: {
        "learner": self.plugin, "generation": result.generation, "improvement": result.improvement,
        "controls": result.controls}, output=lambda out: out)
    async def step(self, result: GenerationResult) -> dict[str, Any]:
        """The learner reads the generation (in a worker thread) and sets the next shares and controls.

        An update that runs past the time limit is abandoned (its thread cannot be stopped): the shares in
        force stay, the user is told, and after :data:`STRIKES` missed steps in a row the learner is set aside.
        The wait never holds up a cancellation (Ctrl-C ends the run at once)."""
        if self.failed:
            return {"shares": dict(self.society.shares), "controls": {}, "summary": {}}
        if self.busy is not None and self.busy.is_alive():
            return self._missed(result, "is still busy with an update that timed out")
        self.busy = None
        try:
            out = await _in_daemon_thread(self.learner.update, result, self.timeout_seconds,
                                          name=f"convergence-learner-{self.plugin}")
            decision = out if isinstance(out, Decision) else Decision(shares=out)
            shares = valid_shares(decision.shares, self.society.shares)
            controls = {a: dict(c) for a, c in decision.controls.items()}
            self.society.set_controls(controls)
        except LearnerTimeout as exc:
            self.busy = exc.args[0]
            return self._missed(result, f"did not answer within {self.timeout_seconds:g}s")
        except Exception as exc:
            raise PluginError(f"learner {self.plugin!r} failed after generation {result.generation + 1}: "
                              f"{type(exc).__name__}: {exc}") from exc
        self.strikes = 0
        self.society.set_shares(shares)
        self.decided_at = result.generation
        self.persist()
        summary = self.learner.summary()
        detail = {**summary, "controls": self.society.control_values()} if controls else summary
        self.store.record_learner(self.run_id, result.generation, self.learner.name, dict(shares), asdict(result),
                                  detail)
        return {"shares": dict(shares), "controls": controls, "summary": summary}

    def _missed(self, result: GenerationResult, why: str) -> dict[str, Any]:
        """A step the learner missed: the shares and controls in force stay; set aside after STRIKES."""
        self.strikes += 1
        note = (f"learner {self.plugin!r} {why} after generation {result.generation + 1}; the society keeps the "
                f"shares it had")
        if self.strikes >= STRIKES:
            self.failed = True
            note += (f". After {self.strikes} missed steps in a row, learner {self.plugin!r} is set aside for the "
                     f"rest of the run")
        return {"shares": dict(self.society.shares), "controls": {}, "summary": {"message": note}}

    def stop_reason(self) -> str | None:
        """The learner's early-stopping rule; none from a learner set aside or still busy."""
        if self.failed or (self.busy is not None and self.busy.is_alive()):
            return None
        return self.learner.stop_reason()


async def _in_daemon_thread(fn: Callable[[Any], Any], arg: Any, timeout: float | None, *, name: str) -> Any:
    """``fn(arg)`` in a thread of its own, awaited up to ``timeout`` seconds (:class:`LearnerTimeout` with the
    thread after). A daemon thread, not one of anyio's workers: a cancelled or timed-out wait returns at once,
    and a thread that never returns does not keep the process from exiting."""
    done = anyio.Event()
    box: dict[str, Any] = {}
    token = anyio.lowlevel.current_token()

    def work() -> None:
        try:
            box["value"] = fn(arg)
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, raised there
            box["error"] = exc
        with contextlib.suppress(Exception):  # the run already ended (abandoned): nobody waits
            anyio.from_thread.run_sync(done.set, token=token)

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    with anyio.move_on_after(math.inf if timeout is None else timeout):
        await done.wait()
    if not done.is_set():
        raise LearnerTimeout(thread)
    if "error" in box:
        raise box["error"]
    return box["value"]


def memory_key(plugin: str) -> str:
    """The learner's name in ``agent_memory`` / ``agent_experience``."""
    return f"learner:{plugin}"


def generation_result(facts: GenerationFacts, *, best_before: float | None, best: TrialRecord | None,
                      population: Sequence[TrialRecord], history: Sequence[TrialRecord], space: SearchSpace,
                      opt: OptimizationConfig, budget: Budget, cost_unit: str) -> GenerationResult:
    """How the generation went, as a learner reads it (``GenerationResult``)."""
    new = facts.trials
    gains = credit(new, best_before, list(facts.reports))
    agents = {}
    for name, r in facts.reports.items():
        mine = [t for t in new if t.proposer == name]
        agents[name] = AgentResult(
            share=r.share, proposed=len(mine), improvement=gains.get(name, 0.0), in_top=r.in_top,
            cost=sum(trial_cost(t, cost_unit) for t in mine),
            best_score=max((t.score for t in mine if t.usable), default=None))
    b = opt.budget
    used = max(budget.calls / b.max_calls if b.max_calls else 0.0,
               budget.cost_usd / b.max_cost_usd if b.max_cost_usd else 0.0,
               budget.elapsed() / b.max_seconds if b.max_seconds else 0.0)
    progress = max((facts.number + 1) / opt.evolution.generations, used)
    usable = [t.score for t in new if t.usable]
    params = parameter_stats(space, population, history, best)
    calls = [r for r in facts.results if r.repeat == 0]
    failed = [r for r in calls if r.call.error]
    best_score = best.score if best is not None else None
    return GenerationResult(
        generation=facts.number, progress=min(1.0, progress), best_score=best_score,
        improvement=max(0.0, best_score - best_before) if best_score is not None and best_before is not None else 0.0,
        cost_unit=cost_unit, agents=agents,
        mean_score=float(np.mean(usable)) if usable else None, score_std=float(np.std(usable)) if usable else 0.0,
        population_mean=float(np.mean([t.score for t in population])) if population else None,
        diversity=min(1.0, 2.0 * float(np.mean([p.spread for p in params.values()]))) if params else 0.0,
        error_rate=len(failed) / len(calls) if calls else 0.0,
        timeout_rate=sum((r.call.error or "").startswith("timeout") for r in failed) / len(calls) if calls else 0.0,
        seconds=time.perf_counter() - facts.started, calls=len(calls),
        survivors=len({t.config_hash for t in new} & {t.config_hash for t in population}),
        budget_left=max(0.0, 1.0 - used),
        params=params, decided_at=facts.decided_at, controls=facts.controls)


def valid_shares(shares: Any, roster: dict[str, float]) -> dict[str, float]:
    """A learner's shares, checked: a mapping of the roster's agents to finite values >= 0, not all 0."""
    if not isinstance(shares, Mapping):
        raise PluginError(f"shares must be a mapping of agent -> share, got {type(shares).__name__}")
    out = {}
    for name, value in shares.items():
        if name not in roster:
            raise PluginError(f"shares name an agent not in the society: {name!r} (have: {', '.join(roster)})")
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise PluginError(f"share of {name!r} must be a finite number >= 0, got {value!r}")
        out[name] = float(value)
    if sum(out.values()) <= 0 and sum(roster.get(k, 0.0) for k in roster if k not in out) <= 0:
        raise PluginError("shares must not all be 0")
    return out


def cost_unit(opt: OptimizationConfig) -> str:
    """What the run budgets: dollars, seconds or (the default) calls."""
    b = opt.budget
    if b.max_cost_usd is not None:
        return "usd"
    if b.max_seconds is not None and b.max_calls is None:
        return "seconds"
    return "calls"


def cost_budget(opt: OptimizationConfig) -> float | None:
    """The run's budget in its cost unit."""
    b = opt.budget
    return {"usd": b.max_cost_usd, "seconds": b.max_seconds, "calls": b.max_calls}[cost_unit(opt)]


def trial_cost(t: TrialRecord, unit: str) -> float:
    """What a trial cost in the unit the run budgets."""
    if unit == "usd":
        return t.cost_usd
    if unit == "seconds":
        return t.latency_ms * t.n_cases / 1000.0
    return float(t.n_cases + t.repeats)
