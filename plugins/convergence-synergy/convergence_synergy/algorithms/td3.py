"""TD3: twin delayed deep deterministic policy gradient (Fujimoto et al. 2018).

Action: the logits ``a in [-BOUND, BOUND]^n`` of the next free allocation, ``v' = softmax(a)``,
from a deterministic actor ``mu(s) = BOUND * tanh(net(s))`` (anchored to the starting shares at
the start of a run: ``base.anchor_bias``). Reward: ``reward(v')`` by the generation's credits (``allocation.reward``).
Behaviour: ``a = clip(mu(s) + N(0, (explore_noise * BOUND)^2), -BOUND, BOUND)``.

Learning, on minibatches from a replay buffer::

    eps  = clip(N(0, (target_noise * BOUND)^2), -noise_clip * BOUND, noise_clip * BOUND)
    a'   = clip(mu_target(s') + eps, -BOUND, BOUND)                (target policy smoothing)
    y    = r + gamma * min(Q1_target(s', a'), Q2_target(s', a'))  (twin critics)
    critic loss = (Q1(s, a) - y)^2 + (Q2(s, a) - y)^2
    every ``policy_delay`` critic updates (delayed policy updates):
        actor loss = -Q1(s, mu(s)) + saturation * mean(relu(|net(s)| - 2)^2)
                     (the second term keeps the actor out of tanh's flat ends, where its gradient vanishes
                      and an agent pushed to its floor could never come back)
        targets <- tau * online + (1 - tau) * targets               (actor and both critics)

Counterfactual transitions: ``counterfactual`` random actions per generation, uniform in the box.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convergence_synergy.algorithms.base import (
    ReplayBuffer,
    Step,
    anchor_bias,
    clip_grads,
    last_linear,
    mlp,
    polyak,
    saturation_penalty,
    set_lr,
    weight_penalty,
)
from convergence_synergy.algorithms.sac import QNetwork
from convergence_synergy.allocation import BOUND, bounded_logits, softmax, to_shares


@dataclass(slots=True)
class TD3Config:
    lr: float = 3e-3
    """Learning rate of the critics; the actor's is ``lr / 3`` unless ``actor_lr`` is set."""
    actor_lr: float | None = None
    actor_eps: float = 1.0
    """Adam's epsilon for the actor. Adam's usual 1e-8 makes its steps sign-like: a critic that is
    still nearly flat (a few generations in) would move the shares as fast as a steep one. With
    ~1 the steps are proportional to the critic's slope, i.e. to the evidence."""
    gamma: float = 0.5
    hidden: int = 64
    tau: float = 0.05
    policy_delay: int = 2
    target_noise: float = 0.2
    """Std of the target policy smoothing noise, as a fraction of BOUND."""
    noise_clip: float = 0.5
    """Bound of the smoothing noise, as a fraction of BOUND."""
    saturation: float = 1.0
    explore_noise: float = 0.02
    """Std of the behaviour noise, as a fraction of BOUND."""
    batch_size: int = 64
    gradient_steps: int = 32
    buffer_size: int = 10_000
    counterfactual: int = 8
    structured_critic: bool = True
    """Q-networks of the reward's form (see ``sac.QNetwork``), or plain MLPs of state and shares."""
    reward_scale: float = 10.0
    kl_cost: float = 1.3
    """Cost of leaving the starting shares (KL), in normalised credit: see ``allocation.reward``."""
    prior_generations: int = 8
    """Neutral generations the replay buffer starts with (see ``base.neutral_step``)."""
    weight_decay: float = 0.0
    """L2 penalty on the Q-networks' weights, not biases (``base.weight_penalty``)."""
    max_grad_norm: float = 10.0


class DeterministicActor(nn.Module):
    def __init__(self, state_dim: int, n_actions: int, hidden: int, bound: float, generator: torch.Generator):
        super().__init__()
        self.net = mlp([state_dim, hidden, hidden, n_actions], generator, zero_last=True)  # anchored later
        self.bound = bound

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.bound * torch.tanh(self.net(state))


def smoothed_target_action(actor_target: nn.Module, next_states: torch.Tensor, noise_std: float, noise_clip: float,
                           max_action: float, generator: torch.Generator) -> torch.Tensor:
    """``a' = clip(mu_target(s') + clip(N(0, noise_std^2), -noise_clip, noise_clip), -max_action, max_action)``."""
    with torch.no_grad():
        mu = actor_target(next_states)
        noise = (torch.randn(mu.shape, generator=generator) * noise_std).clamp(-noise_clip, noise_clip)
        return (mu + noise).clamp(-max_action, max_action)


def td_target(rewards: torch.Tensor, next_q1: torch.Tensor, next_q2: torch.Tensor, gamma: float) -> torch.Tensor:
    """``y = r + gamma * min(Q1_target, Q2_target)(s', a')``."""
    return rewards + gamma * torch.min(next_q1, next_q2)


class TD3:
    name = "td3"

    def __init__(self, n_agents: int, state_dim: int, floor: float, config: TD3Config,
                 generator: torch.Generator) -> None:
        self.n = n_agents
        self.cfg = config
        self.gen = generator
        self.actor_lr = config.actor_lr if config.actor_lr is not None else config.lr / 3
        h, m = config.hidden, BOUND
        self.actor = DeterministicActor(state_dim, n_agents, h, m, generator)
        self.floor = floor
        self.q1 = QNetwork(state_dim, n_agents, h, m, generator, config.structured_critic, floor)
        self.q2 = QNetwork(state_dim, n_agents, h, m, generator, config.structured_critic, floor)
        self.actor_target = copy.deepcopy(self.actor)
        self.q1_target, self.q2_target = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.q_optimizer = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=config.lr, foreach=True)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=self.actor_lr, eps=config.actor_eps,
                                                foreach=True)
        self.buffer = ReplayBuffer(config.buffer_size, state_dim, (n_agents,))
        self.q_params = [*self.q1.parameters(), *self.q2.parameters()]
        self.actor_params = list(self.actor.parameters())
        self.critic_updates = 0
        self.actor_updates = 0

    def null_action(self, v: np.ndarray) -> Any:
        return bounded_logits(v)

    def anchor(self, state: torch.Tensor, v: np.ndarray) -> None:
        """Anchor the actor and its target copy to the starting shares."""
        for actor in (self.actor, self.actor_target):
            with torch.no_grad():
                pre = actor.net(state)
            anchor_bias(last_linear(actor.net), pre, bounded_logits(v), BOUND)
        for q in (self.q1, self.q2, self.q1_target, self.q2_target):
            q.set_reference(to_shares(v, self.floor))

    def act(self, state: torch.Tensor, v: np.ndarray) -> tuple[np.ndarray, Any]:
        m = BOUND
        with torch.no_grad():
            noise = torch.randn(self.n, generator=self.gen) * self.cfg.explore_noise * m
            a = (self.actor(state) + noise).clamp(-m, m)
        a_np = a.double().numpy()
        return softmax(a_np), a_np

    def critic_step(self, s: torch.Tensor, a: torch.Tensor, r: torch.Tensor, s2: torch.Tensor) -> float:
        cfg, m = self.cfg, BOUND
        a2 = smoothed_target_action(self.actor_target, s2, cfg.target_noise * m, cfg.noise_clip * m, m, self.gen)
        with torch.no_grad():
            y = td_target(r, self.q1_target(s2, a2), self.q2_target(s2, a2), cfg.gamma)
        q_loss = F.mse_loss(self.q1(s, a), y) + F.mse_loss(self.q2(s, a), y)
        if cfg.weight_decay:
            q_loss = q_loss + cfg.weight_decay * weight_penalty(self.q1, self.q2)
        self.q_optimizer.zero_grad()
        q_loss.backward()
        clip_grads(self.q_params, cfg.max_grad_norm)
        self.q_optimizer.step()
        self.critic_updates += 1
        return float(q_loss.detach())

    def actor_step(self, s: torch.Tensor) -> float:
        pre = self.actor.net(s)
        pi_loss = -self.q1(s, BOUND * torch.tanh(pre)).mean() + self.cfg.saturation * saturation_penalty(pre)
        self.actor_optimizer.zero_grad()
        pi_loss.backward()
        clip_grads(self.actor_params, self.cfg.max_grad_norm)
        self.actor_optimizer.step()
        polyak(self.actor_target, self.actor, self.cfg.tau)
        polyak(self.q1_target, self.q1, self.cfg.tau)
        polyak(self.q2_target, self.q2, self.cfg.tau)
        self.actor_updates += 1
        return float(pi_loss.detach())

    def train_batch(self, s: torch.Tensor, a: torch.Tensor, r: torch.Tensor, s2: torch.Tensor) -> dict[str, float]:
        """One critic update, and an actor + target update every ``policy_delay`` critic updates."""
        out = {"q_loss": self.critic_step(s, a, r, s2)}
        if self.critic_updates % self.cfg.policy_delay == 0:
            out["actor_loss"] = self.actor_step(s)
        return out

    def remember(self, step: Step) -> None:
        """The transition taken, and ``counterfactual`` random actions with their own reward and next state."""
        self.buffer.add(step.state, step.action, step.reward(step.v_next), step.next_state)
        for _ in range(self.cfg.counterfactual):
            a = (torch.rand(self.n, generator=self.gen, dtype=torch.float64) * 2 - 1) * BOUND
            v_a = softmax(a.numpy())
            self.buffer.add(step.state, a, step.reward(v_a), step.reencode(v_a))

    def prior(self, step: Step) -> None:
        for _ in range(self.cfg.prior_generations):
            self.remember(step)

    def learn(self, step: Step) -> dict[str, float]:
        cfg = self.cfg
        self.remember(step)
        q_losses, pi_losses = [], []
        for _ in range(cfg.gradient_steps):
            res = self.train_batch(*self.buffer.sample(cfg.batch_size, self.gen))
            q_losses.append(res["q_loss"])
            if "actor_loss" in res:
                pi_losses.append(res["actor_loss"])
        out = {"q_loss": float(np.mean(q_losses)) if q_losses else 0.0, "actor_updates": float(self.actor_updates)}
        if pi_losses:
            out["actor_loss"] = float(np.mean(pi_losses))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"actor": self.actor.state_dict(), "actor_target": self.actor_target.state_dict(),
                "q1": self.q1.state_dict(), "q2": self.q2.state_dict(), "q1_target": self.q1_target.state_dict(),
                "q2_target": self.q2_target.state_dict(), "q_optimizer": self.q_optimizer.state_dict(),
                "actor_optimizer": self.actor_optimizer.state_dict(), "critic_updates": self.critic_updates,
                "actor_updates": self.actor_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("actor", "actor_target", "q1", "q2", "q1_target", "q2_target"):
            getattr(self, name).load_state_dict(state[name])
        self.q_optimizer.load_state_dict(state["q_optimizer"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        set_lr(self.q_optimizer, self.cfg.lr)
        set_lr(self.actor_optimizer, self.actor_lr)
        self.critic_updates = int(state.get("critic_updates", 0))
        self.actor_updates = int(state.get("actor_updates", 0))
