"""PPO (clipped surrogate, GAE, value loss, entropy bonus, gradient clipping, early stop on KL),
one readable file in the manner of CleanRL's ``ppo.py``, for a policy with several discrete
action heads (one per decision the society learner makes; log-probabilities and entropies add
up over heads, as in CleanRL's multi-discrete PPO).

    delta_t = r_t + gamma * V(s_{t+1}) * (1 - done_t) - V(s_t)
    A_t     = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}          (GAE)
    R_t     = A_t + V(s_t)                                                (value target)
    ratio   = exp(log pi(a|s) - log pi_old(a|s))
    L_pi    = mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)))   (A normalised over the rollout,
                                                                   when it holds MIN_NORMALISE or more)
    L       = L_pi - c_ent * entropy + c_v * 0.5 * mean((V(s) - R)^2)
    approx KL = mean((ratio - 1) - log ratio)   (Schulman's k3 estimator; stops the epochs above target_kl)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from torch import nn
from torch.distributions import Categorical

from convergence.core.rl import gae

MIN_NORMALISE = 4
"""Fewest decisions in a rollout whose advantages are normalised (a run's last, short rollout keeps its
own scale: rewards are in [-1, 1] already)."""


class PPOConfig(BaseModel):
    """The trainer's settings (``society.learner`` options of the same names)."""

    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(3e-3, gt=0, le=1)
    """Adam's step. Higher than the usual 3e-4: a study gives a few hundred decisions, not millions
    (benchmarks/ppo_rigged.py: 1e-2 oscillated, 3e-3 learned on 3 of 3 seeds within 30 runs)."""
    clip_epsilon: float = Field(0.2, gt=0, lt=1)
    value_loss_coef: float = Field(0.5, ge=0)
    entropy_coef: float = Field(0.01, ge=0)
    max_grad_norm: float = Field(0.5, gt=0)
    gamma: float = Field(0.5, ge=0, le=1)
    """Discount per generation: a decision pays off mostly in the generation that runs under it. With 0.9
    the advantages carried the noise of many later decisions, and 2 of 3 rigged seeds drifted to a worse
    choice; with 0.5 all three learned."""
    gae_lambda: float = Field(0.95, ge=0, le=1)
    epochs: StrictInt = Field(4, ge=1, le=100)
    minibatch_size: StrictInt = Field(16, ge=1)
    target_kl: float | None = Field(0.05, gt=0)
    """Stop the update's epochs once the approximate KL to the old policy passes this (None: never)."""
    rollout: StrictInt = Field(8, ge=2)
    """Decisions between updates (on-policy: each update learns from the decisions since the last)."""
    hidden: StrictInt = Field(64, ge=4, le=4096)
    prior: float | None = Field(0.6, gt=0, lt=1)
    """A new policy's probability of keeping each agent's configured behaviour (the first choice of every
    decision): untrained, it mostly does what fixed shares would, and moves away as that pays. None: uniform."""

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


def layer_init(layer: nn.Linear, std: float = float(np.sqrt(2)), bias: float = 0.0) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


class Policy(nn.Module):
    """Separate actor and critic MLPs (tanh); the actor has one logit head per decision."""

    def __init__(self, obs_dim: int, head_sizes: Sequence[int], hidden: int = 64, prior: float | None = None) -> None:
        """``prior``: the untrained policy's probability of each head's first choice (the agents' configured
        behaviour), set through the output bias; None: uniform."""
        super().__init__()
        self.head_sizes = list(head_sizes)
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden)), nn.Tanh(),
            layer_init(nn.Linear(hidden, hidden)), nn.Tanh(),
            layer_init(nn.Linear(hidden, 1), std=1.0))
        self.actor = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden)), nn.Tanh(),
            layer_init(nn.Linear(hidden, hidden)), nn.Tanh(),
            layer_init(nn.Linear(hidden, sum(self.head_sizes)), std=0.01))
        if prior is not None:
            with torch.no_grad():
                bias = self.actor[-1].bias
                offset = 0
                for n in self.head_sizes:  # softmax: p0 = e^b / (e^b + n - 1)
                    if n > 1:
                        bias[offset] = float(np.log(prior * (n - 1) / (1 - prior)))
                    offset += n

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)

    def heads(self, obs: torch.Tensor) -> list[Categorical]:
        logits = self.actor(obs)
        return [Categorical(logits=part) for part in torch.split(logits, self.head_sizes, dim=-1)]

    def act(self, obs: torch.Tensor, action: torch.Tensor | None = None, generator: torch.Generator | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(action, log-prob, entropy, value); samples an action (with ``generator``) unless one is given."""
        dists = self.heads(obs)
        if action is None:
            action = torch.stack([torch.multinomial(d.probs, 1, generator=generator).squeeze(-1) for d in dists],
                                 dim=-1)
        logp = torch.stack([d.log_prob(action[..., i]) for i, d in enumerate(dists)], dim=-1).sum(-1)
        entropy = torch.stack([d.entropy() for d in dists], dim=-1).sum(-1)
        return action, logp, entropy, self.value(obs)


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, next_value: float,
                gamma: float, gae_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns (:func:`convergence.core.rl.gae` on tensors). ``dones[t]`` = 1 when decision t
    ended its episode (a run), so nothing after it is credited to it; ``next_value`` bootstraps the last
    decision when it did not end one."""
    advantages = torch.zeros_like(rewards)
    for t, a in enumerate(gae(rewards, values, next_value, gamma, gae_lambda, dones)):
        advantages[t] = a
    return advantages, advantages + values


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, clip_epsilon: float) -> torch.Tensor:
    """PPO's policy loss (to minimise): the pessimistic of the unclipped and clipped objectives."""
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1 - clip_epsilon, 1 + clip_epsilon)
    return torch.max(pg1, pg2).mean()


def ppo_update(policy: Policy, optimizer: torch.optim.Optimizer, cfg: PPOConfig, obs: torch.Tensor,
               actions: torch.Tensor, old_logp: torch.Tensor, old_values: torch.Tensor, rewards: torch.Tensor,
               dones: torch.Tensor, next_value: float, generator: torch.Generator | None = None) -> dict[str, float]:
    """One PPO update on a rollout; the learning metrics."""
    with torch.no_grad():
        advantages, returns = compute_gae(rewards, old_values, dones, next_value, cfg.gamma, cfg.gae_lambda)
    n = obs.shape[0]
    # normalised once over the rollout (every minibatch on one scale), and only when there are enough
    # decisions to estimate a spread: two would always become +-0.71, however close they were
    if n >= MIN_NORMALISE:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    mb = max(1, min(cfg.minibatch_size, n))
    stats: dict[str, list[float]] = {k: [] for k in ("policy_loss", "value_loss", "entropy", "approx_kl",
                                                     "clip_fraction", "grad_norm", "grad_norm_clipped")}
    epochs_run = 0
    stopped_early = False
    for _ in range(cfg.epochs):
        epochs_run += 1
        order = torch.randperm(n, generator=generator)
        kls = []
        for start in range(0, n, mb):
            idx = order[start:start + mb]
            _, logp, entropy, value = policy.act(obs[idx], actions[idx])
            logratio = logp - old_logp[idx]
            ratio = logratio.exp()
            with torch.no_grad():
                approx_kl = ((ratio - 1) - logratio).mean()
                clipfrac = ((ratio - 1.0).abs() > cfg.clip_epsilon).float().mean()
            pg_loss = clipped_surrogate(ratio, advantages[idx], cfg.clip_epsilon)
            v_loss = 0.5 * ((value - returns[idx]) ** 2).mean()
            ent = entropy.mean()
            loss = pg_loss - cfg.entropy_coef * ent + cfg.value_loss_coef * v_loss
            optimizer.zero_grad()
            loss.backward()
            grad_norm = float(nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm))
            clipped = float(torch.norm(torch.stack([p.grad.detach().norm() for p in policy.parameters()
                                                    if p.grad is not None])))
            optimizer.step()
            for k, v in (("policy_loss", pg_loss.item()), ("value_loss", v_loss.item()), ("entropy", ent.item()),
                         ("approx_kl", approx_kl.item()), ("clip_fraction", clipfrac.item()),
                         ("grad_norm", grad_norm), ("grad_norm_clipped", clipped)):
                stats[k].append(v)
            kls.append(approx_kl.item())
        if cfg.target_kl is not None and float(np.mean(kls)) > cfg.target_kl:
            stopped_early = True
            break
    with torch.no_grad():
        y, pred = returns.numpy(), old_values.numpy()
        var_y = float(np.var(y))
        explained = 0.0 if var_y == 0 else 1.0 - float(np.var(y - pred)) / var_y
    out = {k: float(np.mean(v)) for k, v in stats.items()}
    out["grad_norm"] = float(np.max(stats["grad_norm"]))
    out["grad_norm_clipped"] = float(np.max(stats["grad_norm_clipped"]))
    out.update(mean_reward=float(rewards.mean()), epochs=float(epochs_run), kl_stop=float(stopped_early),
               explained_variance=explained, samples=float(n))
    return out
