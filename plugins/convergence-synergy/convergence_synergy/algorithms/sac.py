"""Soft Actor-Critic (Haarnoja et al. 2018) over the logits of the shares.

Action: the logits ``a in [-BOUND, BOUND]^n`` of the next free allocation, ``v' = softmax(a)``.
Reward: ``reward(v')`` by the generation's credits (``allocation.reward``).

Policy: a tanh-squashed Gaussian (its mean anchored to the starting shares at the start of a
run: ``base.anchor_bias``)::

    u = mu(s) + sigma(s) * eps,   eps ~ N(0, I)
    a = BOUND * tanh(u)
    log pi(a|s) = sum_j [ log N(u_j; mu_j, sigma_j) - log(BOUND * (1 - tanh(u_j)^2) + 1e-6) ]

Twin soft Q-functions with target copies (polyak ``tau``)::

    a', log pi(a'|s') ~ pi(. | s')
    y           = r + gamma * ( min_k Q_target_k(s', a') - alpha * log pi(a'|s') )
    critic loss = sum_k (Q_k(s, a) - y)^2
    actor loss  = alpha * log pi(a~|s) - min_k Q_k(s, a~),   a~ ~ pi(. | s) (reparameterised)
    alpha: fixed (``alpha``), or ``alpha: auto``: loss = -alpha * (log pi + target_entropy), target -n

Counterfactual transitions: ``counterfactual`` random actions per generation, uniform in the box,
each with its own reward and next state.
"""

from __future__ import annotations

import copy
import math
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
    init_linear,
    mlp,
    polyak,
    set_lr,
    weight_penalty,
)
from convergence_synergy.allocation import BOUND, bounded_logits, softmax, to_shares

LOG_STD_MIN, LOG_STD_MAX = -5.0, 0.0


@dataclass(slots=True)
class SACConfig:
    lr: float = 3e-3
    """Learning rate of the critics; the actor's is ``lr / 3`` unless ``actor_lr`` is set."""
    actor_lr: float | None = None
    actor_eps: float = 1.0
    """Adam's epsilon for the actor. Adam's usual 1e-8 makes its steps sign-like: a critic that is
    still nearly flat (a few generations in) would move the shares as fast as a steep one. With
    ~1 the steps are proportional to the critic's slope, i.e. to the evidence."""
    gamma: float = 0.5
    hidden: int = 64
    alpha: float | str = 0.02
    """Entropy temperature, or "auto" to tune it towards an entropy of -n."""
    tau: float = 0.05
    batch_size: int = 64
    gradient_steps: int = 24
    buffer_size: int = 10_000
    counterfactual: int = 8
    structured_critic: bool = True
    """Q-networks of the reward's form (see ``sac.QNetwork``), or plain MLPs of state and shares."""
    sample_shares: bool = False
    """Run each generation on a sampled action (true: SAC's usual behaviour policy) or on the policy's
    mean (false, the default): exploration already comes from the counterfactual transitions, and a
    sampled allocation would jitter the shares from one generation to the next."""
    reward_scale: float = 10.0
    kl_cost: float = 1.3
    """Cost of leaving the starting shares (KL), in normalised credit: see ``allocation.reward``."""
    prior_generations: int = 8
    """Neutral generations the replay buffer starts with (see ``base.neutral_step``)."""
    weight_decay: float = 0.0
    """L2 penalty on the Q-networks' weights, not biases (``base.weight_penalty``)."""
    max_grad_norm: float = 10.0


class GaussianActor(nn.Module):
    def __init__(self, state_dim: int, n_actions: int, hidden: int, bound: float, generator: torch.Generator):
        super().__init__()
        self.trunk = nn.Sequential(mlp([state_dim, hidden, hidden], generator), nn.ReLU())
        self.mean = nn.Linear(hidden, n_actions)
        self.log_std = nn.Linear(hidden, n_actions)
        init_linear(self.mean, generator, zero=True)  # no change at first
        init_linear(self.log_std, generator, zero=True)
        self.bound = bound

    def forward(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(state)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(self.log_std(h)) + 1.0)
        return self.mean(h), log_std

    def sample(self, state: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised action and its log-probability (tanh correction included)."""
        mean, log_std = self(state)
        eps = torch.randn(mean.shape, generator=generator)
        return squash(mean, log_std, eps, self.bound)


def squash(mean: torch.Tensor, log_std: torch.Tensor, eps: torch.Tensor,
           bound: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``a = bound * tanh(mu + sigma * eps)`` and ``log pi(a|s)``."""
    std = log_std.exp()
    u = mean + std * eps
    t = torch.tanh(u)
    log_normal = -0.5 * eps**2 - log_std - 0.5 * math.log(2 * math.pi)
    log_prob = (log_normal - torch.log(bound * (1 - t**2) + 1e-6)).sum(-1)
    return bound * t, log_prob


class QNetwork(nn.Module):
    """``Q(s, a)``, reading the action as the allocation it implies, ``n * softmax(a)`` (1 = an even
    split): the reward is linear in the shares, so the critic learns it from a few generations,
    where on raw logits it would first have to learn the softmax.

    ``structured`` (the default): ``Q(s, a) = phi(s) . w(a) - kappa(s) * KL(w(a) || ref) + psi(s)``,
    with ``phi`` (one value per agent), ``kappa >= 0`` and ``psi`` from one MLP of the state: the
    form the reward has (``allocation.reward``), with every coefficient learned. Otherwise a plain
    MLP of ``[s, n * softmax(a)]``."""

    reference: torch.Tensor

    def __init__(self, state_dim: int, n_actions: int, hidden: int, bound: float, generator: torch.Generator,
                 structured: bool = True, floor: float = 0.0):
        super().__init__()
        self.n = n_actions
        self.structured = structured
        self.floor = floor
        if structured:
            self.net = mlp([state_dim, hidden, hidden, n_actions + 2], generator, zero_last=True)
        else:
            self.net = mlp([state_dim + n_actions, hidden, hidden, 1], generator, zero_last=True)  # Q = 0 at first
        self.register_buffer("reference", torch.full((n_actions,), 1.0 / n_actions))

    def set_reference(self, shares: np.ndarray) -> None:
        with torch.no_grad():
            self.reference.copy_(torch.tensor(shares, dtype=torch.float32))

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        free = torch.softmax(action, dim=-1)
        if not self.structured:
            return self.net(torch.cat([state, self.n * free], dim=-1)).squeeze(-1)
        out = self.net(state)
        phi, kappa, psi = out[..., : self.n], F.softplus(out[..., self.n]), out[..., self.n + 1]
        w = self.floor + (1.0 - self.n * self.floor) * free
        kl_ref = (w * (torch.log(w) - torch.log(self.reference))).sum(-1)
        return (phi * w).sum(-1) - kappa * kl_ref + psi


def soft_target(rewards: torch.Tensor, next_q1: torch.Tensor, next_q2: torch.Tensor, next_log_pi: torch.Tensor,
                alpha: float, gamma: float) -> torch.Tensor:
    """``y = r + gamma * (min(Q1', Q2') - alpha * log pi(a'|s'))``."""
    return rewards + gamma * (torch.min(next_q1, next_q2) - alpha * next_log_pi)


def actor_loss(log_pi: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor, alpha: float) -> torch.Tensor:
    """``E[alpha * log pi(a|s) - min(Q1, Q2)(s, a)]``."""
    return (alpha * log_pi - torch.min(q1, q2)).mean()


class SAC:
    name = "sac"

    def __init__(self, n_agents: int, state_dim: int, floor: float, config: SACConfig,
                 generator: torch.Generator) -> None:
        self.n = n_agents
        self.cfg = config
        self.gen = generator
        self.actor_lr = config.actor_lr if config.actor_lr is not None else config.lr / 3
        h, m = config.hidden, BOUND
        self.actor = GaussianActor(state_dim, n_agents, h, m, generator)
        self.floor = floor
        self.q1 = QNetwork(state_dim, n_agents, h, m, generator, config.structured_critic, floor)
        self.q2 = QNetwork(state_dim, n_agents, h, m, generator, config.structured_critic, floor)
        self.q1_target, self.q2_target = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.q_optimizer = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=config.lr, foreach=True)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=self.actor_lr, eps=config.actor_eps,
                                                foreach=True)
        self.autotune = config.alpha == "auto"
        if not self.autotune and not isinstance(config.alpha, int | float):
            raise ValueError(f"alpha must be a number or 'auto', got {config.alpha!r}")
        self.target_entropy = -float(n_agents)
        self.log_alpha = torch.zeros(1, requires_grad=True)
        if not self.autotune:
            with torch.no_grad():
                self.log_alpha.fill_(math.log(max(float(config.alpha), 1e-12)))
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=config.lr, foreach=True)
        self.buffer = ReplayBuffer(config.buffer_size, state_dim, (n_agents,))
        self.q_params = [*self.q1.parameters(), *self.q2.parameters()]
        self.actor_params = list(self.actor.parameters())
        self.gradient_steps = 0

    @property
    def alpha(self) -> float:
        return float(self.log_alpha.detach().exp()) if self.autotune else float(self.cfg.alpha)

    def null_action(self, v: np.ndarray) -> Any:
        return bounded_logits(v)

    def anchor(self, state: torch.Tensor, v: np.ndarray) -> None:
        with torch.no_grad():
            h = self.actor.trunk(state)
            pre = self.actor.mean(h)
        anchor_bias(self.actor.mean, pre, bounded_logits(v), BOUND)
        for q in (self.q1, self.q2, self.q1_target, self.q2_target):
            q.set_reference(to_shares(v, self.floor))

    def act(self, state: torch.Tensor, v: np.ndarray) -> tuple[np.ndarray, Any]:
        with torch.no_grad():
            if self.cfg.sample_shares:
                a, _ = self.actor.sample(state, self.gen)
            else:
                mean, _ = self.actor(state)
                a = BOUND * torch.tanh(mean)
        a_np = a.double().numpy()
        return softmax(a_np), a_np

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

        out: dict[str, list[float]] = {"q_loss": [], "actor_loss": [], "alpha": [], "entropy": []}
        for _ in range(cfg.gradient_steps):
            s, a, r, s2 = self.buffer.sample(cfg.batch_size, self.gen)
            alpha = self.alpha
            with torch.no_grad():
                a2, logp2 = self.actor.sample(s2, self.gen)
                y = soft_target(r, self.q1_target(s2, a2), self.q2_target(s2, a2), logp2, alpha, cfg.gamma)
            q_loss = F.mse_loss(self.q1(s, a), y) + F.mse_loss(self.q2(s, a), y)
            if cfg.weight_decay:
                q_loss = q_loss + cfg.weight_decay * weight_penalty(self.q1, self.q2)
            self.q_optimizer.zero_grad()
            q_loss.backward()
            clip_grads(self.q_params, cfg.max_grad_norm)
            self.q_optimizer.step()

            a_pi, logp = self.actor.sample(s, self.gen)
            pi_loss = actor_loss(logp, self.q1(s, a_pi), self.q2(s, a_pi), alpha)
            self.actor_optimizer.zero_grad()
            pi_loss.backward()
            clip_grads(self.actor_params, cfg.max_grad_norm)
            self.actor_optimizer.step()

            if self.autotune:
                alpha_loss = (-self.log_alpha.exp() * (logp.detach() + self.target_entropy)).mean()
                self.alpha_optimizer.zero_grad()
                alpha_loss.backward()
                self.alpha_optimizer.step()

            polyak(self.q1_target, self.q1, cfg.tau)
            polyak(self.q2_target, self.q2, cfg.tau)
            self.gradient_steps += 1
            out["q_loss"].append(float(q_loss.detach()))
            out["actor_loss"].append(float(pi_loss.detach()))
            out["alpha"].append(alpha)
            out["entropy"].append(float(-logp.detach().mean()))
        return {k: float(np.mean(v)) for k, v in out.items() if v}

    def state_dict(self) -> dict[str, Any]:
        return {"actor": self.actor.state_dict(), "q1": self.q1.state_dict(), "q2": self.q2.state_dict(),
                "q1_target": self.q1_target.state_dict(), "q2_target": self.q2_target.state_dict(),
                "q_optimizer": self.q_optimizer.state_dict(), "actor_optimizer": self.actor_optimizer.state_dict(),
                "log_alpha": self.log_alpha.detach().clone(), "alpha_optimizer": self.alpha_optimizer.state_dict(),
                "gradient_steps": self.gradient_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("actor", "q1", "q2", "q1_target", "q2_target"):
            getattr(self, name).load_state_dict(state[name])
        self.q_optimizer.load_state_dict(state["q_optimizer"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        set_lr(self.q_optimizer, self.cfg.lr)
        set_lr(self.actor_optimizer, self.actor_lr)
        if self.autotune:
            with torch.no_grad():
                self.log_alpha.copy_(state["log_alpha"])
            self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
            set_lr(self.alpha_optimizer, self.cfg.lr)
        self.gradient_steps = int(state.get("gradient_steps", 0))
