"""The RLP agent: thinks before proposing, learns which reasoning pays.

Per generation (every ``think_every``-th): G = min(RLPConfig.G, slots)
strategies are sampled from the learned policy; for each, the society LLM
writes a thought about a digest of the study, then answers with
configuration(s) right after the thought (so the thought steers them), the
answer constrained to the strategy's part of the search space (JSON schema ->
llama.cpp grammar on the embedded model, ``response_format`` elsewhere; a
strict parser with one repair attempt). Invalid answers are counted and
never evaluated.

After evaluation each proposal's outcome is put into words (``best``: the
best score so far; ``high``: at least the median of the run so far; ``low``;
``failed``) and the thought's reward is its information gain about those
outcomes (see :mod:`convergence.society.rlp.mixin`). Providers with no
log-probs at all: reward = the documented rank fallback, the proposals' mean
rank in the run so far mapped to [-1, 1] (best = 1), and the run output says so.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from convergence.config.society import RLPConfig
from convergence.core.space import SearchSpace, config_hash
from convergence.core.types import Config, TrialRecord
from convergence.llm.agent_client import AgentLLMError, LLMClient
from convergence.society.answer import AnswerError, answer_schema, parse_answer
from convergence.society.base import ProposalContext
from convergence.society.digest import config_text, study_digest
from convergence.society.memory import AgentMemory
from convergence.society.rlp.mixin import (
    Experience,
    InformationGain,
    RLPMixin,
    Thought,
    experience_from_record,
    experience_record,
)
from convergence.society.strategies import STRATEGIES, cue, nearest_unseen
from convergence.tracing import traced

OUTCOME_LEGEND = ("Outcome words: best = the best score so far, high = in the top half of the run, "
                  "low = in the bottom half, failed = every call failed.")
GOAL = "We tune the parameters of a call to get the highest score."


@dataclass(slots=True)
class _Pending:
    thought: Thought
    configs: list[Config]
    hashes: list[str]
    reference: list[float]
    """Scores of the run before this generation (what an outcome is relative to)."""
    known: dict[str, TrialRecord]
    """Answers that repeat an evaluated configuration: their outcome is already measured."""


@dataclass(slots=True)
class StepReport:
    """What the console and the report show about one RLP generation."""

    thoughts: list[dict[str, Any]] = field(default_factory=list)
    answers: int = 0
    invalid: int = 0
    repaired: int = 0
    moved: int = 0
    """Answers that repeated a seen configuration and moved to its nearest unseen neighbour."""
    method: str = ""
    mean_reward: float | None = None
    llm_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


class RLPAgent(RLPMixin):
    name = "rlp"
    role = "reasoning: writes a thought before proposing; rewarded by the thought's information gain"
    uses_llm = True

    def __init__(self, cfg: RLPConfig, llm: LLMClient, space: SearchSpace, answer_tokens: int = 256,
                 answer_temperature: float = 0.7):
        super().__init__(config=cfg, llm_provider=llm)
        self.memory_key = f"rlp:{llm.model}"
        """Memory is per model: log-probs (and so rewards) of different models are not comparable."""
        self.space = space
        self.answer_tokens = answer_tokens
        self.answer_temperature = answer_temperature
        self.memory: AgentMemory | None = None
        self._pending: dict[int, list[_Pending]] = {}
        self.report = StepReport()
        self.totals = {"answers": 0, "invalid": 0, "repaired": 0, "moved": 0, "proposals": 0}
        self._warned_no_logprobs = False

    @property
    def llm_cost_usd(self) -> float:
        return self.rlp_llm.cost_usd

    # ------------------------------------------------------------------ memory

    async def restore(self, memory: AgentMemory) -> None:
        """Policy, normaliser and replay buffer from earlier runs of the study."""
        self.memory = memory
        state = await memory.load()
        rows = await memory.experiences(self.rlp_config.buffer_size)
        experiences = [experience_from_record(r.data) for r in rows]
        if state is not None:
            self.load_rlp_state(state, experiences)
        else:
            self.rlp_buffer.extend(experiences)

    # ------------------------------------------------------------------ proposing

    def _thinks(self, generation: int) -> bool:
        return generation % self.rlp_config.think_every == 0

    async def propose(self, ctx: ProposalContext, n: int) -> list[Config]:
        self.report = StepReport()
        if n <= 0 or not self._thinks(ctx.generation):
            return []
        start_seconds = self.rlp_llm.seconds
        digest = study_digest(self.space, ctx.history) + "\n" + OUTCOME_LEGEND
        g = min(self.rlp_config.G, n)
        per_thought = [n // g + (1 if i < n % g else 0) for i in range(g)]
        picks = self.sample_strategies(ctx.rng, g)
        reference = [t.score for t in ctx.history if t.usable]
        history = {t.config_hash: t for t in ctx.history}
        taken = set(ctx.seen)
        pending: list[_Pending] = []
        out: list[Config] = []
        for i, ((strategy, prob), k) in enumerate(zip(picks, per_thought, strict=True)):
            seed = int(ctx.rng.integers(2**31))
            self.rlp_cues[strategy] = cue(STRATEGIES[strategy], ctx.history)
            thought = await self.generate_internal_reasoning(
                {"Goal": GOAL}, digest, strategy=strategy, behaviour_prob=prob, seed=seed)
            allowed = STRATEGIES[strategy].restrict(self.space, ctx.history)
            configs = []
            for c in await self._answer(thought, k, allowed, seed + i + 1):
                c = self._off_repeats(c, allowed, taken, ctx)
                taken.add(config_hash(self.space.canonical(c)))
                configs.append(c)
            hashes = [config_hash(self.space.canonical(c)) for c in configs]
            known = {h: history[h] for h in hashes if h in history}
            pending.append(_Pending(thought, configs, hashes, reference, known))
            out.extend(configs)
            self.report.thoughts.append({"strategy": strategy, "thought": thought.text, "proposals": len(configs)})
        self._pending[ctx.generation] = pending
        self.report.llm_seconds = round(self.rlp_llm.seconds - start_seconds, 3)
        self.totals["proposals"] += len(out)
        return out

    async def _answer(self, thought: Thought, k: int, allowed: dict[str, Any], seed: int) -> list[Config]:
        """``k`` configurations answering after the thought; one repair attempt
        when the answer does not parse; [] (counted) when it still does not."""
        schema = answer_schema(self.space, k, allowed)
        names = ", ".join(self.space.dims)
        base = thought.prompt or self.thought_prompt({"Goal": GOAL}, thought.context, thought.strategy)
        head = f"{base} {thought.text}\n"
        what = "Configuration" if k == 1 else f"{k} configurations"
        prompt = f"{head}{what} (JSON with {names}):"
        self.report.answers += 1
        self.totals["answers"] += 1
        text = ""
        for attempt in range(2):
            try:
                done = await self.rlp_llm.complete(prompt, max_tokens=self.answer_tokens * k,
                                                   temperature=self.answer_temperature, seed=seed + attempt,
                                                   schema=schema)
                text = done.text
                configs = parse_answer(text, self.space, k)
            except AnswerError as exc:
                if attempt == 0:
                    prompt = (f"{prompt} {text.strip()[:300]}\nThat answer is invalid ({exc}). "
                              f"{what} (valid JSON with {names}):")
                    continue
                self.report.invalid += 1
                self.totals["invalid"] += 1
                return []
            allowed_ok = all(allowed.get(n) is None or c[n] in (allowed[n] or []) for c in configs for n in c)
            if not allowed_ok:
                # a provider without structured output strayed from the strategy's region: still in the space
                self.report.notes.append("answer outside the strategy's region (kept: it is in the space)")
            if attempt:
                self.report.repaired += 1
                self.totals["repaired"] += 1
            return configs
        return []

    def _off_repeats(self, config: Config, allowed: dict[str, Any], taken: set[str], ctx: ProposalContext) -> Config:
        """An answer that repeats a configuration already evaluated or proposed
        moves to its nearest unseen neighbour in the strategy's region (counted),
        so the slot measures something new; it stays as it is when there is none."""
        if config_hash(self.space.canonical(config)) not in taken:
            return config
        moved = nearest_unseen(self.space, config, allowed, taken, ctx.rng)
        if moved is None:
            return config
        self.report.moved += 1
        self.totals["moved"] += 1
        return moved

    def observe(self, trials: Sequence[TrialRecord]) -> None:
        """Learning needs LLM log-probs, so it happens in :meth:`learn` (async)."""

    # ------------------------------------------------------------------ learning

    @staticmethod
    def outcome_word(trial: TrialRecord, reference: list[float]) -> str:
        if trial.status == "failed":
            return "failed"
        if not reference or trial.score >= max(reference):
            return "best"
        return "high" if trial.score >= statistics.median(reference) else "low"

    @staticmethod
    def rank_reward(trial: TrialRecord, reference: list[float]) -> float:
        """The fallback reward: the trial's rank among the run's scores, in [-1, 1]."""
        if trial.status == "failed":
            return -1.0
        if not reference:
            return 0.0
        below = sum(1 for s in reference if s < trial.score)
        ties = sum(1 for s in reference if s == trial.score)
        return 2.0 * (below + 0.5 * ties) / len(reference) - 1.0

    async def learn(self, trials: Sequence[TrialRecord], generation: int, run_id: int | None = None) -> None:
        pending = self._pending.pop(generation, None)
        if not pending:
            return
        await self._learn_step(pending, {t.config_hash: t for t in trials}, generation, run_id)

    @traced("convergence.rlp.step",
            inputs=lambda self, pending, by_hash, generation, run_id: {
                "generation": generation,
                "thoughts": [{"strategy": p.thought.strategy, "thought": p.thought.text,
                              "proposals": p.configs} for p in pending]},
            output=lambda out: out)
    async def _learn_step(self, pending: list[_Pending], by_hash: dict[str, TrialRecord], generation: int,
                          run_id: int | None) -> dict[str, Any]:
        """Outcomes -> information-gain rewards -> policy update -> memory."""
        measured: list[tuple[int, _Pending, list[tuple[Config, TrialRecord]], list[float], list[str],
                             list[InformationGain]]] = []
        for i, p in enumerate(pending):
            evaluated = [(c, by_hash.get(h) or p.known[h]) for c, h in zip(p.configs, p.hashes, strict=True)
                         if h in by_hash or h in p.known]
            evaluated = [(c, t) for c, t in evaluated if t.status != "partial"]
            if not evaluated:
                continue  # cut by the budget: nothing was measured
            reference = p.reference + [t.score for t in by_hash.values() if t.usable]
            outcomes = [self.outcome_word(t, reference) for _, t in evaluated]
            gains = []
            if self.rlp_config.use_logprobs:
                for (c, _), word in zip(evaluated, outcomes, strict=True):
                    gains.append(await self.information_gain_reward(p.thought, config_text(c), word))
            measured.append((i, p, evaluated, reference, outcomes, gains))
        # one unit per step: information gain for every thought, or the rank fallback for every thought
        exact = bool(measured) and all(g and all(x.value is not None for x in g) for *_, g in measured)
        methods = {x.method for *_, g in measured for x in g} if exact else {"rank_fallback"}
        method = "/".join(sorted(methods))
        if not exact and measured and self.rlp_config.use_logprobs and not self._warned_no_logprobs:
            self._warned_no_logprobs = True
            detail = next((x.detail for *_, g in measured for x in g if x.value is None), "")
            self.report.notes.append(f"{self.rlp_llm.model} gave no usable log-probs ({detail[:120]}); "
                                     f"RLP reward = rank fallback")
        thoughts: list[Thought] = []
        rewards: list[float | None] = []
        extras: list[dict[str, Any]] = []
        rows: list[dict[str, Any]] = []
        for i, p, evaluated, reference, outcomes, gains in measured:
            if exact:
                reward = sum(float(x) for x in gains) / len(gains)
            else:
                reward = sum(self.rank_reward(t, reference) for _, t in evaluated) / len(evaluated)
            if i < len(self.report.thoughts):
                rows.append(self.report.thoughts[i])
            thoughts.append(p.thought)
            rewards.append(reward)
            extras.append({
                "generation": generation, "run_id": run_id, "context": p.thought.context,
                "proposals": [c for c, _ in evaluated], "outcomes": outcomes,
                "scores": [t.score for _, t in evaluated], "method": method,
                "logp_with": [g.with_thought for g in gains], "logp_without": [g.without_thought for g in gains],
            })
        if not thoughts:
            return {"experiences": 0}
        info = self.update_rlp_policy(thoughts, rewards, data=extras, method=method)
        new = self.rlp_last
        self._record(new, generation, run_id)
        self.report.method = method
        self.report.mean_reward = info.get("mean_reward")
        for row, e in zip(rows, new, strict=False):
            row["reward"] = e.reward
            row["advantage"] = e.advantage
            row["outcomes"] = e.data.get("outcomes")
        return {"rewards": rewards, "method": self.report.method, "policy": info.get("policy"),
                "outcomes": [e["outcomes"] for e in extras]}

    def _record(self, new: list[Experience], generation: int, run_id: int | None) -> None:
        if self.memory is None:
            return
        for e in new:
            self.memory.record(run_id, generation, experience_record(e), e.reward)
        self.memory.prune(self.rlp_config.buffer_size)
        self.memory.save(self.rlp_state())

    # ------------------------------------------------------------------ reporting

    def summary(self) -> dict[str, Any]:
        """This generation's facts for the console, the store and the report."""
        r = self.report
        stats = self.get_rlp_stats()
        return {
            "thoughts": r.thoughts, "answers": r.answers, "invalid": r.invalid, "repaired": r.repaired,
            "moved": r.moved,
            "reward_method": r.method, "mean_reward": r.mean_reward, "llm_seconds": r.llm_seconds,
            "notes": r.notes, "policy": stats["policy"], "buffer_size": stats["buffer_size"],
            "updates": stats["updates"], "trend": stats["trend"],
        }


def parse_rate(totals: dict[str, int]) -> float | None:
    answers = totals.get("answers", 0)
    return None if not answers else 1.0 - totals.get("invalid", 0) / answers


__all__ = ["AgentLLMError", "RLPAgent", "parse_rate"]
