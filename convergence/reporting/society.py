"""The agent society's part of a report: who proposed what, and how it did.

Built from the run's society log (one row per agent and generation, see
``Store.society_log``) and its trials (each names its proposer). Pure, like
the rest of reporting: rows are anything shaped like a ``SocietyRow``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from convergence.core.types import TrialRecord

THOUGHT_CHARS = 100
"""A thought is kept to its first this many characters (whitespace collapsed)."""


class SocietyEntry(Protocol):
    """One agent in one generation: ``convergence.storage.store.SocietyRow``."""

    @property
    def generation(self) -> int: ...
    @property
    def agent(self) -> str: ...
    @property
    def share(self) -> float: ...
    @property
    def asked(self) -> int: ...
    @property
    def proposed(self) -> int: ...
    @property
    def status(self) -> str: ...
    @property
    def seconds(self) -> float: ...
    @property
    def detail(self) -> dict[str, Any] | None: ...


@dataclass(slots=True, frozen=True)
class AgentGeneration:
    """One agent in one generation. Scores are over its complete trials (NaN if none)."""

    generation: int
    share: float
    asked: int
    proposed: int
    status: str
    """ok | failed | timeout | idle"""
    seconds: float
    in_top_k: int | None
    n_trials: int
    mean_score: float
    best_score: float


@dataclass(slots=True, frozen=True)
class ThoughtSummary:
    """One thought of a reasoning agent, in short."""

    generation: int
    strategy: str
    text: str
    """The thought's first :data:`THOUGHT_CHARS` characters."""
    proposals: int
    outcomes: list[str]
    """Per evaluated proposal: best | high | low | failed."""
    reward: float | None


@dataclass(slots=True)
class ReasoningSummary:
    """What a reasoning (RLP-like) agent thought and learned over the run."""

    answers: int
    invalid: int
    repaired: int
    parse_rate: float | None
    """1 - invalid / answers over the run (None: it never answered)."""
    mean_reward: float | None
    reward_method: str
    """How rewards were computed, e.g. ``prompt`` (exact log-probs), ``top_logprobs``, ``rank_fallback``."""
    policy: dict[str, float]
    """The final strategy -> probability."""
    llm_seconds: float
    notes: list[str]
    thoughts: list[ThoughtSummary]


@dataclass(slots=True)
class AgentSummary:
    """One agent over the run."""

    name: str
    asked: int
    proposed: int
    n_trials: int
    """Complete trials of the configurations it proposed."""
    mean_score: float
    best_score: float
    failures: int
    timeouts: int
    last_error: str | None
    seconds: float
    in_top_k: int | None
    """How many of the run's top k configurations it proposed, as of its last generation."""
    top_k: int | None
    generations: list[AgentGeneration] = field(default_factory=list)
    reasoning: ReasoningSummary | None = None


@dataclass(slots=True)
class SocietyReport:
    enabled: bool
    """``society.enabled`` was on; False: the agents are ``optimization.algorithm``'s numeric roster."""
    top_k: int | None
    """k of the top-k counts: the population size."""
    agents: list[AgentSummary]


def _scores(trials: Sequence[TrialRecord]) -> list[float]:
    return [t.score for t in trials if t.usable and math.isfinite(t.score)]


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _short(text: object, limit: int = THOUGHT_CHARS) -> str:
    s = " ".join(str(text or "").split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _reasoning(rows: Sequence[SocietyEntry]) -> ReasoningSummary | None:
    """The reasoning part, when any of the agent's rows has ``thoughts``."""
    details = [(r.generation, r.detail or {}) for r in rows]
    if not any("thoughts" in d for _, d in details):
        return None
    thoughts: list[ThoughtSummary] = []
    methods: list[str] = []
    notes: list[str] = []
    gen_means: list[float] = []
    policy: dict[str, float] = {}
    for gen, d in details:
        for t in d.get("thoughts") or []:
            if isinstance(t, dict):
                outcomes = t.get("outcomes")
                thoughts.append(ThoughtSummary(
                    gen, str(t.get("strategy", "")), _short(t.get("thought")), int(t.get("proposals") or 0),
                    [str(o) for o in outcomes] if isinstance(outcomes, list) else [], _number(t.get("reward"))))
        methods += [m for m in str(d.get("reward_method") or "").split("/") if m and m not in methods]
        notes += [str(n) for n in d.get("notes") or [] if str(n) not in notes]
        if (mean := _number(d.get("mean_reward"))) is not None:
            gen_means.append(mean)
        if isinstance(d.get("policy"), dict) and d["policy"]:
            policy = {str(k): float(v) for k, v in d["policy"].items() if _number(v) is not None}
    answers = sum(int(d.get("answers") or 0) for _, d in details)
    invalid = sum(int(d.get("invalid") or 0) for _, d in details)
    rewards = [t.reward for t in thoughts if t.reward is not None]
    mean_reward = _mean(rewards) if rewards else (_mean(gen_means) if gen_means else None)
    return ReasoningSummary(
        answers=answers, invalid=invalid, repaired=sum(int(d.get("repaired") or 0) for _, d in details),
        parse_rate=1.0 - invalid / answers if answers else None, mean_reward=mean_reward,
        reward_method="/".join(methods), policy=policy,
        llm_seconds=sum(_number(d.get("llm_seconds")) or 0.0 for _, d in details), notes=notes, thoughts=thoughts)


def _agent(name: str, rows: Sequence[SocietyEntry], trials: Sequence[TrialRecord]) -> AgentSummary:
    mine = [t for t in trials if t.proposer == name]
    gens = []
    for r in rows:
        scores = _scores([t for t in mine if t.generation == r.generation])
        top = (r.detail or {}).get("in_top_k")
        gens.append(AgentGeneration(r.generation, r.share, r.asked, r.proposed, r.status, r.seconds,
                                    top if isinstance(top, int) else None, len(scores), _mean(scores),
                                    max(scores) if scores else math.nan))
    errors = [str(e) for r in rows if (e := (r.detail or {}).get("error"))]
    last = (rows[-1].detail or {}) if rows else {}
    scores = _scores(mine)
    return AgentSummary(
        name=name, asked=sum(r.asked for r in rows), proposed=sum(r.proposed for r in rows),
        n_trials=len(scores), mean_score=_mean(scores), best_score=max(scores) if scores else math.nan,
        failures=sum(1 for r in rows if r.status == "failed"),
        timeouts=sum(1 for r in rows if r.status == "timeout"),
        last_error=errors[-1] if errors else None, seconds=sum(r.seconds for r in rows),
        in_top_k=last.get("in_top_k") if isinstance(last.get("in_top_k"), int) else None,
        top_k=last.get("top_k") if isinstance(last.get("top_k"), int) else None,
        generations=gens, reasoning=_reasoning(rows),
    )


def summarize_society(rows: Sequence[SocietyEntry], trials: Sequence[TrialRecord], *,
                      enabled: bool = True) -> SocietyReport | None:
    """Per-agent summaries in order of first appearance; None without rows."""
    if not rows:
        return None
    by_agent: dict[str, list[SocietyEntry]] = {}
    for r in sorted(rows, key=lambda r: r.generation):  # stable: keeps the log's agent order
        by_agent.setdefault(r.agent, []).append(r)
    agents = [_agent(name, agent_rows, trials) for name, agent_rows in by_agent.items()]
    top_k = max((a.top_k for a in agents if a.top_k is not None), default=None)
    return SocietyReport(enabled=enabled, top_k=top_k, agents=agents)
