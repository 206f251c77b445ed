"""One-step actor-critic (the default synergy learner).

Policy. Each slot of a generation goes to an agent drawn from the shares, so the shares *are*
a categorical policy over agents. The actor maps the state to bounded logits::

    logits_theta(s) = BOUND * tanh(actor(s))
    pi_theta(. | s) = floor + (1 - n * floor) * softmax(logits_theta(s))

(at the start of a run the actor's output bias is anchored so that ``pi`` in the starting state
is the starting shares: ``base.anchor_bias``).

Learning, after the generation ran with ``pi`` and every agent ``i`` earned credit ``r_i``
(normalised improvement per cost) on its fraction ``rho_i`` of the slots::

    A_i          = r_i + gamma * V(s') - V(s)                    (the TD error, per agent)
    actor loss   = - sum_i rho_i * A_i * log pi_theta(i | s)
                   + kl_cost * KL(pi_theta(. | s) || ref)  -  entropy_coef * H(pi_theta(. | s))
    critic loss  = (sum_i rho_i * r_i + gamma * V(s') - V(s))^2
    loss         = actor loss + value_coef * critic loss

The slots an agent received are the samples of the policy, so ``rho`` weights the per-slot
policy gradient; ``V(s')`` is a constant target (no gradient). ``ref`` is the run's starting
shares: the KL term makes the fixed point ``pi ~ ref * exp(E[A] / kl_cost)``, so the shares move
as far as the evidence goes, and come back when it goes away (see ``allocation``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from convergence_synergy.algorithms.base import Step, anchor_bias, clip_grads, last_linear, mlp, set_lr
from convergence_synergy.allocation import BOUND, bounded_logits


@dataclass(slots=True)
class ActorCriticConfig:
    lr: float = 1.5e-3
    gamma: float = 0.5
    hidden: int = 64
    kl_cost: float = 0.5
    """Cost of leaving the starting shares (KL), in normalised credit."""
    entropy_coef: float = 0.0
    value_coef: float = 0.5
    max_grad_norm: float = 1.0


def advantages(rewards: torch.Tensor, value: torch.Tensor, next_value: torch.Tensor, gamma: float) -> torch.Tensor:
    """``A_i = r_i + gamma * V(s') - V(s)``."""
    return rewards + gamma * next_value - value


class ActorCritic:
    name = "actor_critic"

    def __init__(self, n_agents: int, state_dim: int, floor: float, config: ActorCriticConfig,
                 generator: torch.Generator) -> None:
        self.n = n_agents
        self.floor = floor
        self.cfg = config
        self.gen = generator
        h = config.hidden
        self.actor = mlp([state_dim, h, h, n_agents], generator, zero_last=True)  # anchored: see anchor()
        self.critic = mlp([state_dim, h, h, 1], generator)
        self.params = [*self.actor.parameters(), *self.critic.parameters()]
        self.optimizer = torch.optim.Adam(self.params, lr=config.lr, foreach=True)
        self.updates = 0

    def logits(self, state: torch.Tensor) -> torch.Tensor:
        return BOUND * torch.tanh(self.actor(state))

    def policy(self, state: torch.Tensor) -> torch.Tensor:
        """``pi(. | s)``: the shares the actor proposes (differentiable in the actor's weights)."""
        return self.floor + (1.0 - self.n * self.floor) * torch.softmax(self.logits(state), dim=-1)

    def anchor(self, state: torch.Tensor, v: np.ndarray) -> None:
        with torch.no_grad():
            pre = self.actor(state)
        anchor_bias(last_linear(self.actor), pre, bounded_logits(v), BOUND)

    def null_action(self, v: np.ndarray) -> Any:
        return None

    def prior(self, step: Step) -> None:
        """On-policy: no buffer. Its prior is its small steps (``lr``) and the KL to the starting shares."""

    def act(self, state: torch.Tensor, v: np.ndarray) -> tuple[np.ndarray, Any]:
        with torch.no_grad():
            free = torch.softmax(self.logits(state).double(), dim=-1).numpy()
        return free, None

    def learn(self, step: Step) -> dict[str, float]:
        cfg = self.cfg
        rewards = torch.tensor(step.credits, dtype=torch.float32)
        rho = torch.tensor(np.where(step.mask, step.slots, 0.0), dtype=torch.float32)
        if float(rho.sum()) <= 0:
            return {}
        rho = rho / rho.sum()

        value = self.critic(step.state).squeeze(-1)
        with torch.no_grad():
            next_value = self.critic(step.next_state).squeeze(-1)
        adv = advantages(rewards, value.detach(), next_value, cfg.gamma)

        pi = self.policy(step.state)
        log_pi = torch.log(pi)
        entropy = -(pi * log_pi).sum()
        ref = torch.tensor(step.reference, dtype=torch.float32)
        kl_ref = (pi * (log_pi - torch.log(ref))).sum()
        actor_loss = -(rho * adv * log_pi).sum() + cfg.kl_cost * kl_ref - cfg.entropy_coef * entropy
        target = (rho * rewards).sum() + cfg.gamma * next_value
        critic_loss = (target - value) ** 2
        loss = actor_loss + cfg.value_coef * critic_loss

        self.optimizer.zero_grad()
        loss.backward()
        clip_grads(self.params, cfg.max_grad_norm)
        self.optimizer.step()
        self.updates += 1
        return {"actor_loss": float(actor_loss.detach()), "critic_loss": float(critic_loss.detach()),
                "entropy": float(entropy.detach()), "kl_to_start": float(kl_ref.detach()),
                "value": float(value.detach()),
                "mean_advantage": float((rho * adv).sum())}

    def state_dict(self) -> dict[str, Any]:
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "optimizer": self.optimizer.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])
        set_lr(self.optimizer, self.cfg.lr)
        self.updates = int(state.get("updates", 0))
