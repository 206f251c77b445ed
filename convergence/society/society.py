"""The society: proposers work concurrently, each on its share of the slots;
their proposals are merged in a fixed order and de-duplicated against
everything the study has already seen.

An agent that raises or runs past ``society.agent_timeout_seconds`` yields
its slots to the others for that generation (reported, the run goes on).
LLM agents are asked once per generation; the numeric agents fill what
they leave (and re-propose duplicates), so a slow LLM agent delays a
generation by at most its timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from convergence.config.models import ConvergenceConfig, OptimizationConfig
from convergence.config.society import ALGORITHM_AGENTS, SocietyConfig
from convergence.core.space import SearchSpace, config_hash
from convergence.core.types import Config, TrialRecord
from convergence.society.base import Proposal, ProposalContext, Proposer, TaskAccess, TrialMeasure, Tunable
from convergence.tracing import traced


def allot(n: int, shares: Sequence[float]) -> list[int]:
    """Split ``n`` slots by ``shares`` (largest remainder; deterministic)."""
    total = sum(shares)
    if n <= 0 or total <= 0:
        return [0] * len(shares)
    exact = [n * s / total for s in shares]
    base = [int(x) for x in exact]
    order = sorted(range(len(shares)), key=lambda i: (-(exact[i] - base[i]), i))
    for i in order[: n - sum(base)]:
        base[i] += 1
    return base


@traced(
    lambda proposer, ctx, k: f"convergence.propose.{proposer.name}",
    inputs=lambda proposer, ctx, k: {"agent": proposer.name, "generation": ctx.generation, "slots": k},
    output=lambda configs: {"n": len(configs), "configs": configs},
)
async def agent_step(proposer: Proposer, ctx: ProposalContext, k: int) -> list[Config]:
    """One agent's turn: a traced unit so Weave shows who proposed what."""
    return await proposer.propose(ctx, k)


@dataclass(slots=True)
class AgentReport:
    """What one agent did in one generation (console, store, report)."""

    agent: str
    share: float
    asked: int = 0
    proposed: int = 0
    status: str = "idle"
    """ok | failed | timeout | idle (asked for nothing, or chose not to propose)"""
    seconds: float = 0.0
    error: str | None = None
    in_top: int = 0
    """How many of the run's top-k configurations this agent proposed (set by the loop)."""
    detail: dict[str, Any] = field(default_factory=dict)


NEUTRAL_TRIAL_VALUE = 0.5
"""A trial-level metric's value when no agent measures it (SAO's rating of a configuration it never judged)."""


class Society:
    def __init__(self, members: list[tuple[Proposer, float]], space: SearchSpace, *,
                 timeout_seconds: float | None = None):
        self.members = members
        self.space = space
        self.timeout_seconds = timeout_seconds
        self.reports: dict[str, AgentReport] = {}
        """The last generation's report per agent."""
        self.memory_errors: list[str] = []
        self.time_left: Callable[[], float | None] = lambda: None
        """The run's remaining seconds (the loop sets it): no agent outlives the run's budget."""

    def _limit(self) -> float:
        limits = [x for x in (self.timeout_seconds, self.time_left()) if x is not None]
        return max(0.0, min(limits)) if limits else float("inf")

    def llm_cost_usd(self) -> float:
        """What the agents' LLM calls cost so far (charged to the run's budget by the loop)."""
        return sum(float(getattr(p, "llm_cost_usd", 0.0)) for p, _ in self.members)

    def bind(self, task: TaskAccess) -> None:
        """Agents that work on the user's task itself (SAO) get its test cases and a target call."""
        for proposer, _ in self.members:
            bind = getattr(proposer, "bind", None)
            if bind is not None:
                bind(task)

    def agent(self, name: str) -> Proposer | None:
        return next((p for p, _ in self.members if p.name == name), None)

    def trial_values(self, metrics: Mapping[str, str], config_hash: str) -> dict[str, float]:
        """Each trial-level metric's value (metric name -> its function) for one configuration, from the
        agent that measures that function; :data:`NEUTRAL_TRIAL_VALUE` when no agent of the roster does."""
        out = {}
        for name, function in metrics.items():
            agent = next((p for p, _ in self.members if isinstance(p, TrialMeasure) and function in p.measures()),
                         None)
            out[name] = float(agent.trial_value(function, config_hash)) if agent is not None else NEUTRAL_TRIAL_VALUE
        return out

    @classmethod
    def from_config(cls, cfg: OptimizationConfig | ConvergenceConfig, space: SearchSpace) -> Society:
        """The roster of ``optimization.algorithm``, or the enabled society's agents."""
        opt = cfg.optimization if isinstance(cfg, ConvergenceConfig) else cfg
        soc = cfg.society if isinstance(cfg, ConvergenceConfig) else SocietyConfig()
        roster = soc.roster(opt.algorithm) if soc.enabled else ALGORITHM_AGENTS[opt.algorithm]
        members = [(build_agent(name, cfg, space), share) for name, share in roster.items()]
        return cls(members, space, timeout_seconds=soc.agent_timeout_seconds if soc.enabled else None)

    def set_shares(self, shares: dict[str, float]) -> None:
        """Learners (synergy, PPO) re-weight who proposes what through this."""
        self.members = [(p, shares.get(p.name, s)) for p, s in self.members]

    def controls(self) -> dict[str, dict[str, tuple[str, ...]]]:
        """What a learner may steer: agent -> control -> its choices (agents that are ``Tunable``)."""
        return {p.name: p.controls() for p, _ in self.members if isinstance(p, Tunable) and p.controls()}

    def control_values(self) -> dict[str, dict[str, str]]:
        """The choice each tunable agent uses now."""
        return {p.name: {c: str(getattr(p, c, choices[0])) for c, choices in p.controls().items()}
                for p, _ in self.members if isinstance(p, Tunable) and p.controls()}

    def set_controls(self, values: Mapping[str, Mapping[str, str]]) -> None:
        """Apply a learner's choices; each is checked against the agent's own list first."""
        known = self.controls()
        for agent, chosen in values.items():
            if agent not in known:
                raise ValueError(f"controls name an agent that has none: {agent!r} (have: {', '.join(known)})")
            for control, choice in chosen.items():
                choices = known[agent].get(control)
                if choices is None or choice not in choices:
                    raise ValueError(f"{agent}.{control} = {choice!r} is not one of {list(choices or ())}")
        for p, _ in self.members:
            if p.name in values and isinstance(p, Tunable):
                p.set_controls(values[p.name])

    @property
    def shares(self) -> dict[str, float]:
        total = sum(s for _, s in self.members) or 1.0
        return {p.name: s / total for p, s in self.members}

    async def attach(self, store: Any, study_id: int) -> None:
        """Give agents with memory their persisted state (policy, replay buffer)."""
        from convergence.society.memory import AgentMemory

        for proposer, _ in self.members:
            restore = getattr(proposer, "restore", None)
            if restore is None:
                continue
            key = getattr(proposer, "memory_key", proposer.name)
            try:
                await restore(AgentMemory(store, study_id, key))
            except Exception as exc:  # noqa: BLE001 - an unreadable memory must not stop the run
                report = self.reports.setdefault(proposer.name, AgentReport(proposer.name, self.shares[proposer.name]))
                report.error = f"its stored memory could not be loaded ({type(exc).__name__}: {exc}); starting fresh"
                self.memory_errors.append(f"{proposer.name}: {report.error}")

    async def propose(self, ctx: ProposalContext, n: int, *, max_rounds: int = 5) -> list[Proposal]:
        """Up to ``n`` new, distinct, in-space proposals. Duplicates are asked
        for again (a few rounds, numeric agents only), then filled by random
        sampling; fewer than ``n`` only when the space is exhausted."""
        out: list[Proposal] = []
        seen = set(ctx.seen)
        shares = self.shares
        reports = {p.name: AgentReport(p.name, shares[p.name]) for p, _ in self.members}
        out_of_play: set[str] = set()
        for round_ in range(max_rounds):
            need = n - len(out)
            if need <= 0:
                break
            active = [(p, s) for p, s in self.members if p.name not in out_of_play
                      and (round_ == 0 or not getattr(p, "uses_llm", False))]
            if not active:
                break
            counts = allot(need, [s for _, s in active])
            results: list[list[Config]] = [[] for _ in active]
            # one child generator per member and round: results do not depend on scheduling
            rngs = ctx.rng.spawn(len(self.members))
            by_name = {p.name: rngs[i] for i, (p, _) in enumerate(self.members)}
            async with anyio.create_task_group() as tg:
                for i, ((proposer, _), k) in enumerate(zip(active, counts, strict=True)):
                    if k:
                        sub = ProposalContext(ctx.space, ctx.generation, ctx.population, ctx.history,
                                              by_name[proposer.name], seen)
                        tg.start_soon(self._run_agent, proposer, sub, k, results, i, reports[proposer.name],
                                      round_ == 0)
            for (proposer, _), configs in zip(active, results, strict=True):
                report = reports[proposer.name]
                if report.status in ("failed", "timeout"):
                    out_of_play.add(proposer.name)
                for c in configs:
                    if self._take(c, proposer.name, seen, out, n):
                        report.proposed += 1
            if round_ == max_rounds - 1 or len(out) >= n:
                break
        attempts = 0
        while len(out) < n and attempts < 50 * n and len(seen) < self.space.size():
            self._take(self.space.sample(ctx.rng), "random", seen, out, n)
            attempts += 1
        for proposer, _ in self.members:
            summary = getattr(proposer, "summary", None)
            if summary is not None and reports[proposer.name].asked:  # not asked: nothing new to say
                reports[proposer.name].detail = summary()
        self.reports = reports
        return out

    async def _run_agent(self, proposer: Proposer, ctx: ProposalContext, k: int, results: list[list[Config]],
                         i: int, report: AgentReport, first: bool) -> None:
        """One agent's turn, bounded by the society's timeout; its failure is
        reported, never raised (the others' proposals stand). ``asked`` counts
        the agent's share of the first round (re-asks for duplicates are not slots)."""
        if first:
            report.asked = k
        start = time.perf_counter()
        limit = self._limit()
        try:
            with anyio.move_on_after(limit) as scope:
                results[i] = await agent_step(proposer, ctx, k)
            if scope.cancelled_caught:
                report.status, report.error = "timeout", f"no proposals within {limit:g}s"
            elif report.status not in ("failed", "timeout"):
                report.status = "ok" if results[i] else "idle"
        except Exception as exc:  # noqa: BLE001 - an agent's bug must not stop the run
            report.status, report.error = "failed", f"{type(exc).__name__}: {str(exc)[:300]}"
        report.seconds += time.perf_counter() - start

    async def learn(self, trials: Sequence[TrialRecord], generation: int, run_id: int | None = None) -> None:
        """Agents that learn from outcomes with I/O (LLM log-probs) do it here,
        concurrently and under the same timeout; failures are reported."""

        async def one(proposer: Proposer) -> None:
            learn = getattr(proposer, "learn", None)
            if learn is None:
                return
            report = self.reports.setdefault(proposer.name, AgentReport(proposer.name, self.shares[proposer.name]))
            start = time.perf_counter()
            limit = self._limit()
            try:
                with anyio.move_on_after(limit) as scope:
                    await learn(trials, generation, run_id)
                if scope.cancelled_caught:
                    report.error = f"learning took longer than {limit:g}s (skipped this generation)"
            except Exception as exc:  # noqa: BLE001 - an agent's bug must not stop the run
                report.error = f"learning failed: {type(exc).__name__}: {str(exc)[:300]}"
            report.seconds += time.perf_counter() - start
            summary = getattr(proposer, "summary", None)
            if summary is not None and (report.asked or getattr(proposer, "learns_unasked", False)):
                report.detail = summary()

        async with anyio.create_task_group() as tg:
            for proposer, _ in self.members:
                tg.start_soon(one, proposer)

    def _take(self, config: Config, proposer: str, seen: set[str], out: list[Proposal], n: int) -> bool:
        if len(out) >= n or not self.space.contains(config):
            return False
        c = self.space.canonical(config)
        h = config_hash(c)
        if h in seen:
            return False
        seen.add(h)
        out.append(Proposal(c, h, proposer))
        return True

    def observe(self, trials: Sequence[TrialRecord]) -> None:
        for proposer, _ in self.members:
            proposer.observe(trials)


def build_agent(name: str, cfg: OptimizationConfig | ConvergenceConfig, space: SearchSpace) -> Proposer:
    """An agent by name, built-in or plugged in, through the registry's factory (a ``sampler`` plugin
    runs as an agent of the same name through Optuna)."""
    from convergence.registry import PluginError, registry
    from convergence.society.builtin_agents import AgentContext

    reg = registry()
    ctx = AgentContext(name, cfg, space)
    if reg.find("agent", name) is None and reg.find("sampler", name) is not None:
        from convergence.society.optuna_agents import OptunaProposer

        make_sampler = reg.load("sampler", name)
        return OptunaProposer(name, space, seed=ctx.seed, sampler=make_sampler)
    agent = reg.load("agent", name)(ctx)
    for attr in ("name", "propose", "observe"):
        if not hasattr(agent, attr):
            raise PluginError(f"agent {name!r} ({reg.get('agent', name).origin}): what its factory returned "
                              f"has no {attr!r}; an agent implements the Proposer protocol (docs/plugins.md)")
    return agent
