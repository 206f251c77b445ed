"""The PPO society learner: after every generation the policy reads the study's state and
decides the next generation's shares (which agent gets extra slots) and the agents' controls
(the evolutionary agent's mutation operator and strength, the bandit's explore/exploit); the
reward of each decision comes from the generation that ran under it, and every ``rollout``
decisions a PPO update learns from them. The policy, its optimiser and the observation
normaliser are saved in the study's database after every generation; the next run of the
study starts from them.

Options (``society.learner: {plugin: ppo, ...}``): the :class:`PPOConfig` fields
(``learning_rate``, ``clip_epsilon``, ``value_loss_coef``, ``entropy_coef``, ``max_grad_norm``,
``gamma``, ``gae_lambda``, ``epochs``, ``minibatch_size``, ``target_kl``, ``rollout``, ``hidden``),
``reward: {...}`` (:class:`RewardConfig`), ``actions: [...]`` (the decisions to learn; default
all), ``boost`` (the extra share, default 0.4), ``prior`` (a new policy's probability of each agent's
configured behaviour, default 0.6; None: uniform).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from pydantic import Field, ValidationError

from convergence.core.rl import RunningNorm
from convergence.society.learner import Decision, GenerationResult, LearnerContext
from convergence_ppo.buffer import ReflectionBuffer
from convergence_ppo.encoding import ActionSpace, ObservationEncoder
from convergence_ppo.ppo import Policy, PPOConfig, ppo_update
from convergence_ppo.rewards import RewardConfig, RewardExtractor

HISTORY = 500
"""Update metrics kept in the saved state (``convergence ppo stats`` shows them)."""


def _b64(obj: Any) -> str:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return base64.b64encode(buf.getvalue()).decode()


def _unb64(text: str) -> Any:
    return torch.load(io.BytesIO(base64.b64decode(text)), weights_only=True)


class LearnerOptions(PPOConfig):
    """``society.learner`` for ``plugin: ppo``: the PPOConfig fields plus these."""

    reward: RewardConfig = Field(default_factory=RewardConfig)
    actions: list[str] | None = Field(None, min_length=1)
    """The decisions to learn (ActionSpace's head names); the others stay at their first choice."""
    boost: float = Field(0.4, gt=0, lt=1)


def parse_options(options: Mapping[str, Any]) -> tuple[PPOConfig, RewardConfig, list[str] | None, float]:
    """``society.learner`` options -> (PPOConfig, RewardConfig, actions, boost); an error names the option."""
    try:
        opts = LearnerOptions.model_validate(dict(options))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'options'}: {e['msg']}" for e in exc.errors())
        raise ValueError(problems) from None
    ppo = PPOConfig.model_validate(opts.model_dump(include=set(PPOConfig.model_fields)))
    return ppo, opts.reward, opts.actions, opts.boost


class PPOLearner:
    name = "ppo"
    replays = True
    """A resumed run passes its replayed generations: the buffer recognises them (same decisions, nothing
    learned twice) and learns the one the crash cut short."""

    def __init__(self, ctx: LearnerContext) -> None:
        self.ctx = ctx
        self.cfg, reward_cfg, only, self.boost = parse_options(ctx.options)
        self.actions = ActionSpace(list(ctx.agents), ctx.controls, only)
        self.encoder = ObservationEncoder(list(ctx.agents), self.actions)
        self.norm = RunningNorm(self.encoder.dim)
        budget = ctx.cost_budget / ctx.generations if ctx.cost_budget else None
        self.rewards = RewardExtractor(reward_cfg, budget)
        self.signature = {"agents": list(ctx.agents), "heads": [[h.name, list(h.choices)] for h in self.actions.heads],
                          "obs_dim": self.encoder.dim, "hidden": self.cfg.hidden}
        with torch.random.fork_rng():
            torch.manual_seed(ctx.seed)
            self.policy = Policy(self.encoder.dim, self.actions.sizes, self.cfg.hidden, self.cfg.prior)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.cfg.learning_rate, eps=1e-5)
        self.generator = torch.Generator().manual_seed(ctx.seed * 1_000_003 + ctx.run_id)
        self.updates = 0
        self.decisions = 0
        self.history: list[dict[str, Any]] = []
        self.policy_id = f"run{ctx.run_id}"
        """Which policy a row's decisions came from: a new policy never trains on another's rows."""
        self.note = "new policy"
        state = ctx.memory.state
        if state is not None and state.get("signature") == self.signature:
            self._load(state)
            self.note = f"policy of earlier runs: {self.updates} update(s), {self.decisions} decision(s)"
            if state.get("run_id") == ctx.run_id and "generator" in state:  # resumed: continue the same stream
                self.generator.set_state(_unb64(state["generator"]))
                self.note = f"resumed: {self.updates} update(s), {self.decisions} decision(s)"
        elif state is not None:
            self.note = "the stored policy was for another roster, action set or network size: new policy"
        self.buffer = ReflectionBuffer(ctx.memory, ctx.run_id)
        self.consumed = {r.data["transition"]["decided_at"] for r in self.buffer.rows
                         if r.run_id == ctx.run_id and r.data.get("transition") is not None}
        self.improvements: list[float] = []
        self.stale = 0
        self.last_action: list[int] | None = None
        self._summary: dict[str, Any] = {"algorithm": "ppo", "note": self.note}

    # ------------------------------------------------------------------ Learner protocol

    def initial_shares(self) -> Mapping[str, float]:
        return dict(self.ctx.shares)

    def stop_reason(self) -> str | None:
        return None

    def summary(self) -> dict[str, Any]:
        return dict(self._summary)

    def update(self, result: GenerationResult) -> Decision:
        run, g = self.ctx.run_id, result.generation
        self._track(result)
        replay = self.buffer.get(run, g)
        if replay is not None:  # a resumed run replays a generation it already learned from
            action = replay.data["chosen"]["action"]
            self.last_action = action
            self._summary = {**replay.data.get("summary", {}), "replayed": True}
            return self._decision(action)
        terminal = result.progress >= 1.0 or g >= self.ctx.generations - 1
        reward = self.rewards.reward(result)
        transition = self._transition(result, terminal)
        x = self.encoder.encode(result, self.improvements, self.stale, self.last_action)
        self.norm.update(x)
        obs = self.norm(x)
        obs_t = torch.as_tensor(obs, dtype=torch.float32)
        # the row is stored when the loop drains the memory after this returns: what is set in it below
        # (the decision, the summary with the update's metrics) goes with it
        data: dict[str, Any] = {"transition": transition, "update": self.updates, "policy": self.policy_id,
                                "reward_parts": self.rewards.parts(result) if transition else None}
        self.buffer.add(g, data, reward if transition is not None else None)
        metrics = None
        batch = self.buffer.transitions(self.updates, self.policy_id)
        if len(batch) >= self.cfg.rollout or (terminal and len(batch) >= 2):
            with torch.no_grad():  # bootstrap with the critic the rollout was collected under (as CleanRL)
                next_value = 0.0 if terminal else float(self.policy.value(obs_t))
            metrics = self._train(next_value)
        with torch.no_grad():  # the next decision comes from the updated policy
            action_t, logp, _, value = self.policy.act(obs_t, generator=self.generator)
            probs = [d.probs.tolist() for d in self.policy.heads(obs_t)]
        action = [int(a) for a in action_t]
        labels = self.actions.labels(action)
        data["chosen"] = {"obs": obs.tolist(), "action": action, "logp": float(logp), "value": float(value),
                          "decided_at": g, "labels": labels}
        self.decisions += 1
        self.last_action = action
        summary: dict[str, Any] = {
            "algorithm": "ppo", "note": self.note, "updates": self.updates,
            "reward": reward if transition is not None else None, "action": labels,
            "probabilities": {h.name: dict(zip(h.choices, p, strict=True))
                              for h, p in zip(self.actions.heads, probs, strict=True)}}
        if metrics is not None:
            summary["metrics"] = metrics
        data["summary"] = summary  # a resumed run that replays this generation shows it as it was
        self._summary = summary
        if metrics is not None:
            self._summary = {**summary, "message": (
                f"ppo update {self.updates}: policy loss {metrics['policy_loss']:+.3f}, value loss "
                f"{metrics['value_loss']:.3f}, entropy {metrics['entropy']:.2f}, approx KL {metrics['approx_kl']:.4f}"
                f", clip {metrics['clip_fraction']:.0%}, epochs {metrics['epochs']:.0f}, grad norm "
                f"{metrics['grad_norm']:.2f}, explained variance {metrics['explained_variance']:+.2f}, "
                f"mean reward {metrics['mean_reward']:+.3f}")}
        self.ctx.memory.save(self.state())
        return self._decision(action)

    # ------------------------------------------------------------------ internals

    def _track(self, r: GenerationResult) -> None:
        self.improvements.append(r.improvement)
        self.stale = 0 if r.improvement > 0 else self.stale + 1

    def _transition(self, result: GenerationResult, terminal: bool) -> dict[str, Any] | None:
        """The decision this generation ran under, rewarded now (None: the run's start, or already rewarded
        by an earlier generation that ran under it, in async mode)."""
        d = result.decided_at
        if d < 0 or d in self.consumed:
            return None
        src = self.buffer.get(self.ctx.run_id, d)
        if src is None:
            return None
        self.consumed.add(d)
        c = src.data["chosen"]
        return {"obs": c["obs"], "action": c["action"], "logp": c["logp"], "value": c["value"], "decided_at": d,
                "labels": c.get("labels"), "done": terminal}

    def _train(self, next_value: float) -> dict[str, float]:
        b = self.buffer.get_ppo_batch(recent_only=True, update=self.updates, policy=self.policy_id)
        metrics = ppo_update(
            self.policy, self.optimizer, self.cfg,
            obs=torch.as_tensor(np.asarray(b["observations"]), dtype=torch.float32),
            actions=torch.as_tensor(np.asarray(b["actions"]), dtype=torch.long),
            old_logp=torch.as_tensor(b["log_probs"], dtype=torch.float32),
            old_values=torch.as_tensor(b["values"], dtype=torch.float32),
            rewards=torch.as_tensor(b["rewards"], dtype=torch.float32),
            dones=torch.as_tensor(b["dones"], dtype=torch.float32),
            next_value=next_value, generator=self.generator)
        self.updates += 1
        self.history = (self.history + [{"update": self.updates, "run_id": self.ctx.run_id, **metrics}])[-HISTORY:]
        return metrics

    def _decision(self, action: list[int]) -> Decision:
        shares, controls = self.actions.decide(action, self.ctx.shares, self.boost)
        return Decision(shares=shares, controls=controls)

    def state(self) -> dict[str, Any]:
        """What the study keeps (JSON): the signature it fits, the weights, the optimiser, the normaliser."""
        return {"signature": self.signature, "policy_id": self.policy_id, "run_id": self.ctx.run_id,
                "generator": _b64(self.generator.get_state()), "policy": _b64(self.policy.state_dict()),
                "optimizer": _b64(self.optimizer.state_dict()), "norm": self.norm.to_dict(),
                "updates": self.updates, "decisions": self.decisions, "history": list(self.history),
                "config": self.cfg.to_dict()}

    def _load(self, state: Mapping[str, Any]) -> None:
        self.policy.load_state_dict(_unb64(state["policy"]))
        self.optimizer.load_state_dict(_unb64(state["optimizer"]))
        for group in self.optimizer.param_groups:  # this run's learning_rate, not the stored one
            group["lr"] = self.cfg.learning_rate
        self.norm.load(state["norm"])
        self.policy_id = str(state.get("policy_id", self.policy_id))
        self.updates = int(state["updates"])
        self.decisions = int(state["decisions"])
        self.history = list(state.get("history", []))


def make_learner(ctx: LearnerContext) -> PPOLearner:
    """Entry point ``learner.ppo``."""
    return PPOLearner(ctx)


def _check_options(options: Mapping[str, Any]) -> None:
    """``convergence validate`` calls this (see docs/plugins.md): a bad option fails before the run."""
    parse_options(options)


make_learner.check_options = _check_options  # type: ignore[attr-defined]
