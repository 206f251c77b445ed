"""RLP: reasoning before acting, rewarded by information gain (arXiv 2510.01265).

The paper rewards a thought ``c`` by how much it raises the log-likelihood
of what comes next::

    r(c) = log p(x | context, c) - log p(x | context)         # information gain, in nats

with the second term from a no-think baseline (in the paper an EMA teacher
of the policy's own weights). Our language model is frozen, so its EMA is
itself: the baseline is the *same model, same prompt, without the thought*.
``x`` is the measured outcome of what the thought led to, put into words.

What learns (the LLM's weights do not) is a policy over reasoning
strategies: softmax logits ``theta`` over ``RLPConfig.strategies``. Per step
(one generation of an agent, G thoughts):

1. rewards are normalised online: ``r_hat = (r - mean) / std`` (Welford),
2. group advantage ``A_i = G/(G-1) * (r_hat_i - mean_j r_hat_j)``,
3. a temporal advantage by GAE over the agent's sequence of steps:
   ``R_t = mean_i r_hat_i``, ``V_t`` = EMA of past ``R`` (the critic),
   ``delta_t = R_t + gamma V_{t+1} - V_t``, ``A_t = sum_k (gamma lambda)^k delta_{t+k}``,
4. each thought's advantage ``A_i + A_t`` updates ``theta`` with the PPO
   clipped surrogate over the recent window of steps, using the probability
   the strategy had when it was sampled:
   ``rho = pi(a) / mu(a)``; ``L = mean min(rho A, clip(rho, 1-eps, 1+eps) A)``;
   ``grad_theta = mean [unclipped] * rho * A * (onehot(a) - pi)``.

High-advantage thoughts are replayed as in-context examples in later
prompts. When a provider has no log-probs the reward is ``None`` and the
caller says so (the society's agent then uses its documented rank fallback).

Async-first public API (as in the seed)::

    rlp = RLPMixin(config=RLPConfig(G=4), llm_provider="local/gemma-3-270m")
    thought = await rlp.generate_internal_reasoning({"goal": "max accuracy"}, context)
    reward = await rlp.information_gain_reward(thought, prediction="temperature=0.2", outcome="high")
    rlp.update_rlp_policy(thought=thought, reward=reward)
    rlp.get_rlp_stats()
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from convergence.config.society import RLPConfig
from convergence.core.rl import RunningNorm, gae
from convergence.llm.agent_client import LLMClient, as_client
from convergence.society.rlp.gae import group_advantages
from convergence.society.strategies import STRATEGIES

__all__ = ["Experience", "InformationGain", "LLMClient", "RLPConfig", "RLPMixin", "StrategyPolicy", "Thought"]

WINDOW = 8
"""Steps of recent experience the policy re-learns from at each update (PPO-style reuse, clipped)."""
EXPLORE = 0.05
"""Share of the uniform distribution mixed into sampling, so no strategy is ever ruled out for good."""
VALUE_RATE = 0.1
"""EMA rate of the critic V (the mean normalised step reward)."""
DEFAULT_CUES: dict[str, str] = {name: s.cue.replace(": {weakest}", "") for name, s in STRATEGIES.items()}
"""The strategies' cues without a study to fill in (the society's agent fills ``{weakest}``)."""


@dataclass(slots=True)
class Thought:
    text: str
    strategy: str
    context: str = ""
    """What the thought was conditioned on (the information gain is measured with the same context)."""
    behaviour_prob: float = 1.0
    """The probability its strategy had when it was sampled (for the clipped policy update)."""
    seconds: float = 0.0
    prompt: str = ""
    """The prompt the thought continued (an answer continues it too); empty for a hand-made thought."""

    def __str__(self) -> str:
        return self.text


@dataclass(slots=True)
class InformationGain:
    """``value = with_thought - without_thought`` in nats; ``None`` when the provider gave no log-probs."""

    value: float | None
    with_thought: float | None
    without_thought: float | None
    method: str
    """prompt (exact) | top_logprobs | top_logprobs_bound | none"""
    detail: str = ""

    def __float__(self) -> float:
        if self.value is None:
            raise ValueError(f"no information gain measured ({self.method}: {self.detail})")
        return self.value


@dataclass(slots=True)
class Experience:
    step: int
    strategy: str
    thought: str
    reward: float
    behaviour_prob: float
    value: float = 0.0
    advantage: float = 0.0
    normalized: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)
    """Caller's extras (context digest, proposals, outcome, log-probs)."""


class StrategyPolicy:
    """A softmax over reasoning strategies: what RLP learns."""

    def __init__(self, names: Sequence[str], logits: Sequence[float] | None = None):
        self.names = list(names)
        self.logits = np.zeros(len(self.names)) if logits is None else np.asarray(logits, dtype=float)

    def probs(self) -> np.ndarray:
        z = np.exp(self.logits - self.logits.max())
        return z / z.sum()

    def behaviour(self) -> np.ndarray:
        """What sampling uses: the policy mixed with a little uniform exploration."""
        return (1 - EXPLORE) * self.probs() + EXPLORE / len(self.names)

    def sample(self, rng: np.random.Generator, n: int) -> list[tuple[str, float]]:
        mu = self.behaviour()
        picks = rng.choice(len(self.names), size=n, p=mu)
        return [(self.names[int(i)], float(mu[int(i)])) for i in picks]

    def update(self, experiences: Sequence[Experience], lr: float, clip: float) -> dict[str, float]:
        """One clipped policy-gradient ascent step on the logits (formula in the module docstring)."""
        if not experiences:
            return {"clipped": 0.0, "grad_norm": 0.0}
        pi = self.probs()
        grad = np.zeros_like(self.logits)
        clipped = 0
        for e in experiences:
            if e.strategy not in self.names:
                continue
            a = self.names.index(e.strategy)
            rho = pi[a] / max(e.behaviour_prob, 1e-8)
            if (e.advantage > 0 and rho > 1 + clip) or (e.advantage < 0 and rho < 1 - clip):
                clipped += 1  # the clipped term is flat: no gradient
                continue
            onehot = np.zeros_like(pi)
            onehot[a] = 1.0
            grad += rho * e.advantage * (onehot - pi)
        grad /= len(experiences)
        self.logits = np.clip(self.logits + lr * grad, -10.0, 10.0)
        return {"clipped": clipped / len(experiences), "grad_norm": float(np.linalg.norm(grad))}

    def as_dict(self) -> dict[str, float]:
        return {n: float(p) for n, p in zip(self.names, self.probs(), strict=True)}


class RLPMixin:
    """Adds RLP to an agent class: thoughts, their information-gain reward,
    and a learned policy over reasoning strategies. Cooperative: call
    ``super().__init__`` chains work when mixed into a user's agent."""

    def __init__(self, config: RLPConfig | None = None, llm_provider: str | LLMClient | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rlp_config = config or RLPConfig()
        self.rlp_llm = as_client(llm_provider, self.rlp_config.model_name or "local/gemma-3-270m")
        self.rlp_policy = StrategyPolicy(self.rlp_config.strategies)
        self.rlp_norms: dict[str, RunningNorm] = {}
        """One reward normaliser per measurement method (nats and rank rewards never mix)."""
        self.rlp_last: list[Experience] = []
        """The experiences the last update created."""
        self.rlp_buffer: deque[Experience] = deque(maxlen=self.rlp_config.buffer_size)
        self.rlp_value = 0.0
        self.rlp_step = 0
        self.rlp_updates = 0
        self.rlp_trajectory: list[tuple[int, float, float]] = []
        """(step, mean normalised reward R_t, value V_t) of recent steps, for GAE."""
        self.rlp_cues: dict[str, str] = dict(DEFAULT_CUES)

    # ------------------------------------------------------------------ thinking

    def sample_strategies(self, rng: np.random.Generator, n: int) -> list[tuple[str, float]]:
        """``n`` strategies from the policy, with the probability each had."""
        return self.rlp_policy.sample(rng, n)

    def examples(self, k: int | None = None) -> list[Experience]:
        """The highest-advantage thoughts in the buffer (replayed in prompts)."""
        k = self.rlp_config.examples if k is None else k
        if k <= 0:
            return []
        good = [e for e in self.rlp_buffer if e.advantage > 0 and e.thought.strip()]
        return sorted(good, key=lambda e: -e.advantage)[:k]

    def thought_prompt(self, state: Mapping[str, Any], context: str, strategy: str) -> str:
        lines = [context.rstrip()]
        lines += [f"{k}: {v}" for k, v in state.items()]
        shown = self.examples()
        if shown:
            lines.append("Earlier thoughts that proved informative:")
            lines += [f"- ({e.strategy}) {e.thought}" for e in shown]
        lines.append(f"Plan: {self.rlp_cues.get(strategy, strategy)}")
        lines.append("Thought:")
        return "\n".join(lines)

    async def generate_internal_reasoning(
        self, state: Mapping[str, Any], context: str, *, strategy: str | None = None,
        behaviour_prob: float | None = None, seed: int | None = None,
    ) -> Thought:
        """One thought (at most ``thought_length`` tokens) about ``context``
        under a strategy (sampled from the policy when not given)."""
        if strategy is None:
            strategy, behaviour_prob = self.sample_strategies(np.random.default_rng(seed), 1)[0]
        elif behaviour_prob is None:
            behaviour_prob = float(self.rlp_policy.behaviour()[self.rlp_policy.names.index(strategy)]) \
                if strategy in self.rlp_policy.names else 1.0
        start = time.perf_counter()
        prompt = self.thought_prompt(state, context, strategy)
        done = await self.rlp_llm.complete(
            prompt, max_tokens=self.rlp_config.thought_length,
            temperature=self.rlp_config.temperature, stop=["\n\n", "\nConfiguration", "\nPlan:", "\nOutcome"],
            seed=seed,
        )
        text = " ".join(done.text.split())
        return Thought(text, strategy, context, float(behaviour_prob), time.perf_counter() - start, prompt)

    # ------------------------------------------------------------------ reward

    @staticmethod
    def outcome_prompts(context: str, thought: str, prediction: str) -> tuple[str, str]:
        """(with the thought, without it): the same text but for the thought line."""
        head = context.rstrip() + "\n" if context.strip() else ""
        tail = f"Configuration: {prediction}\nOutcome:"
        return f"{head}Thought: {thought}\n{tail}", f"{head}{tail}"

    async def information_gain_reward(
        self, thought: Thought | str, prediction: str, outcome: str, *, context: str | None = None
    ) -> InformationGain:
        """``log p(outcome | context, thought, prediction) - log p(outcome | context, prediction)``."""
        if not self.rlp_config.use_logprobs:
            return InformationGain(None, None, None, "disabled", "use_logprobs is false")
        text = str(thought)
        ctx = context if context is not None else (thought.context if isinstance(thought, Thought) else "")
        with_prompt, without_prompt = self.outcome_prompts(ctx, text, prediction)
        continuation = " " + outcome.strip()
        w = await self.rlp_llm.logprob(with_prompt, continuation)
        if w.value is None:
            return InformationGain(None, None, None, w.method, w.detail)
        wo = await self.rlp_llm.logprob(without_prompt, continuation)
        if wo.value is None:
            return InformationGain(None, w.value, None, wo.method, wo.detail)
        if w.method != wo.method or w.method.endswith("_bound"):
            # an upper bound minus a value (or a bound) is not a measurement of anything
            return InformationGain(None, w.value, wo.value, "top_logprobs_bound",
                                   "the outcome was not among the provider's top log-probs")
        return InformationGain(w.value - wo.value, w.value, wo.value, w.method)

    # ------------------------------------------------------------------ learning

    def update_rlp_policy(
        self,
        thought: Thought | Sequence[Thought],
        reward: float | InformationGain | Sequence[float | InformationGain | None] | None,
        state: Mapping[str, Any] | None = None,
        *,
        data: Sequence[dict[str, Any]] | None = None,
        method: str | None = None,
    ) -> dict[str, Any]:
        """Learn from one step (a group of thoughts and their rewards): push
        experiences, compute advantages, update the strategy policy. Thoughts
        whose reward is ``None`` are skipped; ``state`` is kept with each
        experience. ``method`` names the rewards' unit (default: the
        information gain's method, or ``reward``); each unit has its own
        normaliser. Returns the step's statistics."""
        thoughts = [thought] if isinstance(thought, Thought) else list(thought)
        rewards = list(reward) if isinstance(reward, Sequence) else [reward]
        if len(rewards) != len(thoughts):
            raise ValueError(f"{len(thoughts)} thoughts but {len(rewards)} rewards")
        extras = list(data) if data is not None else [{} for _ in thoughts]
        if state is not None:
            extras = [{**d, "state": dict(state)} for d in extras]
        if method is None:
            method = next((r.method for r in rewards if isinstance(r, InformationGain)), "reward")
        kept = [(t, _as_float(r), d) for t, r, d in zip(thoughts, rewards, extras, strict=True)
                if _as_float(r) is not None]
        self.rlp_last = []
        if not kept:
            return {"step": self.rlp_step, "experiences": 0}
        raw = [r for _, r, _ in kept if r is not None]
        if self.rlp_config.normalize_rewards:
            norm = self.rlp_norms.setdefault(method, RunningNorm())
            norm.update(raw)
            normalized = [norm.normalize(r) for r in raw]
        else:
            normalized = list(raw)
        group = group_advantages(normalized)
        step, value = self.rlp_step, self.rlp_value
        step_reward = float(np.mean(normalized))
        self.rlp_trajectory = [*self.rlp_trajectory, (step, step_reward, value)][-WINDOW:]
        self.rlp_value = value + VALUE_RATE * (step_reward - value)
        temporal = gae([r for _, r, _ in self.rlp_trajectory], [v for _, _, v in self.rlp_trajectory],
                       self.rlp_value, self.rlp_config.gamma, self.rlp_config.gae_lambda)
        by_step = {s: a for (s, _, _), a in zip(self.rlp_trajectory, temporal, strict=True)}
        new: list[Experience] = []
        for (t, r, d), n, g in zip(kept, normalized, group, strict=True):
            assert r is not None
            new.append(Experience(step, t.strategy, t.text, r, t.behaviour_prob, value, g + by_step[step], n,
                                  dict(d)))
        # earlier steps in the window get their GAE refreshed now that later rewards are known
        for e in self.rlp_buffer:
            if e.step in by_step and e.step != step:
                e.advantage = e.data.get("group_advantage", 0.0) + by_step[e.step]
        for e, g in zip(new, group, strict=True):
            e.data["group_advantage"] = g
        self.rlp_buffer.extend(new)
        self.rlp_last = new
        window = [e for e in self.rlp_buffer if e.step in by_step]
        info = self.rlp_policy.update(window, self.rlp_config.learning_rate, self.rlp_config.clip)
        self.rlp_step += 1
        self.rlp_updates += 1
        return {"step": step, "experiences": len(new), "mean_reward": float(np.mean(raw)),
                "advantages": [e.advantage for e in new], "policy": self.rlp_policy.as_dict(), **info}

    def get_rlp_stats(self) -> dict[str, Any]:
        """Mean reward, its trend, buffer size, updates and the strategy policy."""
        rewards = [e.reward for e in self.rlp_buffer]
        recent, before = rewards[-10:], rewards[-20:-10]
        trend = "stable"
        if recent and before:
            diff = float(np.mean(recent) - np.mean(before))
            spread = float(np.std(rewards[-20:])) or 1.0
            trend = "improving" if diff > 0.25 * spread else "declining" if diff < -0.25 * spread else "stable"
        return {
            "mean_reward": float(np.mean(rewards)) if rewards else None,
            "recent_mean_reward": float(np.mean(recent)) if recent else None,
            "trend": trend,
            "buffer_size": len(self.rlp_buffer),
            "updates": self.rlp_updates,
            "policy": self.rlp_policy.as_dict(),
            "llm_calls": self.rlp_llm.calls,
            "llm_seconds": round(self.rlp_llm.seconds, 3),
        }

    rlp_stats = get_rlp_stats

    # ------------------------------------------------------------------ persistence

    def rlp_state(self) -> dict[str, Any]:
        """What persists between runs besides the buffer: the policy, the
        reward normaliser, the critic and the recent trajectory."""
        return {"logits": self.rlp_policy.logits.tolist(), "names": self.rlp_policy.names,
                "norms": {k: n.to_dict() for k, n in self.rlp_norms.items()}, "value": self.rlp_value,
                "step": self.rlp_step, "updates": self.rlp_updates,
                "trajectory": [list(x) for x in self.rlp_trajectory]}

    def load_rlp_state(self, state: Mapping[str, Any], experiences: Sequence[Experience] = ()) -> None:
        names = list(state.get("names", []))
        logits = dict(zip(names, state.get("logits", []), strict=False))
        self.rlp_policy.logits = np.array([float(logits.get(n, 0.0)) for n in self.rlp_policy.names])
        self.rlp_norms = {k: RunningNorm.from_dict(v) for k, v in dict(state.get("norms", {})).items()}
        self.rlp_value = float(state.get("value", 0.0))
        self.rlp_step = int(state.get("step", 0))
        self.rlp_updates = int(state.get("updates", 0))
        self.rlp_trajectory = [(int(s), float(r), float(v)) for s, r, v in state.get("trajectory", [])]
        self.rlp_buffer.clear()
        self.rlp_buffer.extend(experiences)


def _as_float(r: float | InformationGain | None) -> float | None:
    if r is None:
        return None
    if isinstance(r, InformationGain):
        return r.value
    value = float(r)
    return value if math.isfinite(value) else None


def experience_record(e: Experience) -> dict[str, Any]:
    """An experience as stored (JSON)."""
    return asdict(e)


def experience_from_record(d: Mapping[str, Any]) -> Experience:
    return Experience(**{k: d[k] for k in Experience.__dataclass_fields__ if k in d})
