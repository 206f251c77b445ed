"""Double DQN over a discrete set of share adjustments (van Hasselt et al. 2016).

Actions (``1 + len(shifts) * n``)::

    0              keep the shares
    1 + j * n + i  shift ``shifts[j]`` of the free slots to agent i, from the others in proportion:
                   v' = (1 - shifts[j]) * v + shifts[j] * e_i
                   (one size by default, 5%)

Reward: what the change earned by the generation's credits, ``r = reward(v') - reward(v)``
(``allocation.reward``: credit-weighted shares less the KL cost of leaving the starting shares;
0 for "keep").
Behaviour: epsilon-greedy on the online network.

Learning, on minibatches from a replay buffer::

    a*  = argmax_a Q_online(s', a)                     (the online net picks the action)
    y   = r + gamma * Q_target(s', a*)                 (the target net values it)
    loss = (Q_online(s, a) - y)^2
    every ``target_sync_every`` gradient steps: Q_target <- Q_online

With ``counterfactual`` (default) each generation stores one transition per action, the
untaken ones with their own reward and re-encoded next state. The buffer starts with
``prior_generations`` generations in which all agents earned the same credit (``base.neutral_step``):
a prior that a few lucky generations cannot overturn, fading as real generations come in.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convergence_synergy.algorithms.base import ReplayBuffer, Step, clip_grads, mlp, set_lr, weight_penalty
from convergence_synergy.allocation import shift, to_shares
from convergence_synergy.encoding import shares_of


@dataclass(slots=True)
class DoubleDQNConfig:
    lr: float = 3e-3
    gamma: float = 0.2
    hidden: int = 64
    shifts: tuple[float, ...] = (0.05,)
    """The fractions of the free slots an action can move to one agent (several: more actions)."""
    epsilon: float = 0.1
    batch_size: int = 64
    gradient_steps: int = 32
    """Gradient steps per generation."""
    target_sync_every: int = 20
    """Gradient steps between copies of the online network into the target network."""
    buffer_size: int = 10_000
    counterfactual: bool = True
    structured: bool = True
    """Q-values of the reward's form (see ``ActionValues``), or a plain MLP with one output per action."""
    reward_scale: float = 10.0
    kl_cost: float = 1.0
    """Cost of leaving the starting shares (KL), in normalised credit: see ``allocation.reward``."""
    prior_generations: int = 8
    weight_decay: float = 0.0
    """L2 penalty on the Q-networks' weights, not biases (``base.weight_penalty``)."""
    max_grad_norm: float = 10.0


class ActionValues(nn.Module):
    """``Q(s, .)`` for every action.

    ``structured`` (the default): from one MLP of the state come ``phi(s)`` (one value per agent),
    ``kappa(s) >= 0`` and ``psi(s)``, and for the allocation ``w_a`` each action leads to (computed
    from the current shares, which the state holds)::

        Q(s, a) = psi(s) + phi(s) . (w_a - w) - kappa(s) * (KL(w_a || ref) - KL(w || ref))

    the form of the reward (``Step.gain``) with every coefficient learned, so what one action
    teaches carries over to the others. Otherwise a plain MLP with one output per action.
    """

    steps: torch.Tensor
    targets: torch.Tensor
    reference: torch.Tensor

    def __init__(self, state_dim: int, n_agents: int, shifts: tuple[float, ...], hidden: int, floor: float,
                 structured: bool, generator: torch.Generator) -> None:
        super().__init__()
        self.n, self.floor, self.structured = n_agents, floor, structured
        n_actions = 1 + len(shifts) * n_agents
        # zero output layer: Q = 0 (plain) or "keep" preferred (structured) until the data say otherwise
        self.net = mlp([state_dim, hidden, hidden, n_agents + 2 if structured else n_actions], generator,
                       zero_last=True)
        # every action's step: v_a = (1 - step_a) * v + step_a * e_{agent_a}; action 0 has step 0
        steps = torch.zeros(n_actions)
        targets = torch.zeros(n_actions, n_agents)
        for a in range(1, n_actions):
            size, agent = divmod(a - 1, n_agents)
            steps[a] = shifts[size]
            targets[a, agent] = 1.0
        self.register_buffer("steps", steps)
        self.register_buffer("targets", targets)
        self.register_buffer("reference", torch.full((n_agents,), 1.0 / n_agents))

    def set_reference(self, shares: np.ndarray) -> None:
        with torch.no_grad():
            self.reference.copy_(torch.tensor(shares, dtype=torch.float32))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        out = self.net(state)
        if not self.structured:
            return out
        n, f = self.n, self.floor
        phi, kappa, psi = out[..., :n], F.softplus(out[..., n]), out[..., n + 1]
        w = shares_of(state, n)
        v = ((w - f) / (1.0 - n * f)).clamp(min=0.0)
        v = v / v.sum(-1, keepdim=True).clamp(min=1e-12)
        v_a = (1.0 - self.steps[:, None]) * v[..., None, :] + self.steps[:, None] * self.targets
        w_a = f + (1.0 - n * f) * v_a
        log_ref = torch.log(self.reference)
        kl_a = (w_a * (torch.log(w_a) - log_ref)).sum(-1)
        kl_w = (w * (torch.log(w.clamp(min=1e-12)) - log_ref)).sum(-1)
        credit = (phi[..., None, :] * (w_a - w[..., None, :])).sum(-1)
        return psi[..., None] + credit - kappa[..., None] * (kl_a - kl_w[..., None])


def td_target(rewards: torch.Tensor, next_states: torch.Tensor, q_online: torch.nn.Module,
              q_target: torch.nn.Module, gamma: float) -> torch.Tensor:
    """``y = r + gamma * Q_target(s', argmax_a Q_online(s', a))``."""
    with torch.no_grad():
        best_next = q_online(next_states).argmax(dim=1, keepdim=True)
        next_q = q_target(next_states).gather(1, best_next).squeeze(1)
        return rewards + gamma * next_q


def apply_action(v: np.ndarray, action: int, shifts: tuple[float, ...]) -> np.ndarray:
    """Action 0 keeps ``v``; action ``1 + j * n + i`` shifts ``shifts[j]`` of it to agent i."""
    if action == 0:
        return np.asarray(v, dtype=np.float64).copy()
    size, agent = divmod(action - 1, len(v))
    return shift(v, agent, shifts[size])


class DoubleDQN:
    name = "double_dqn"

    def __init__(self, n_agents: int, state_dim: int, floor: float, config: DoubleDQNConfig,
                 generator: torch.Generator) -> None:
        self.n = n_agents
        self.floor = floor
        if not config.shifts or not all(0 < x < 1 for x in config.shifts):
            raise ValueError(f"shifts must be fractions in (0, 1), got {config.shifts!r}")
        self.n_actions = 1 + len(config.shifts) * n_agents
        self.cfg = config
        self.gen = generator
        self.q_online = ActionValues(state_dim, n_agents, config.shifts, config.hidden, floor, config.structured,
                                     generator)
        self.q_target = copy.deepcopy(self.q_online)
        self.optimizer = torch.optim.Adam(self.q_online.parameters(), lr=config.lr, foreach=True)
        self.buffer = ReplayBuffer(config.buffer_size, state_dim, (), torch.long)
        self.q_params = list(self.q_online.parameters())
        self.gradient_steps = 0
        self.syncs = 0

    def null_action(self, v: np.ndarray) -> Any:
        return 0

    def anchor(self, state: torch.Tensor, v: np.ndarray) -> None:
        """The actions adjust whatever the shares are; the KL cost is measured from the starting shares."""
        for q in (self.q_online, self.q_target):
            q.set_reference(to_shares(v, self.floor))

    def act(self, state: torch.Tensor, v: np.ndarray) -> tuple[np.ndarray, Any]:
        if float(torch.rand((), generator=self.gen)) < self.cfg.epsilon:
            action = int(torch.randint(0, self.n_actions, (), generator=self.gen))
        else:
            with torch.no_grad():
                action = int(self.q_online(state).argmax())
        return apply_action(v, action, self.cfg.shifts), action

    def remember(self, step: Step) -> None:
        cfg = self.cfg
        actions = range(self.n_actions) if cfg.counterfactual else [int(step.action)]
        for a in actions:
            v_a = apply_action(step.v, a, cfg.shifts)
            s2 = step.next_state if a == int(step.action) else step.reencode(v_a)
            self.buffer.add(step.state, a, step.gain(v_a), s2)

    def prior(self, step: Step) -> None:
        for _ in range(self.cfg.prior_generations):
            self.remember(step)

    def learn(self, step: Step) -> dict[str, float]:
        cfg = self.cfg
        self.remember(step)

        losses = []
        for _ in range(cfg.gradient_steps):
            s, a, r, s2 = self.buffer.sample(cfg.batch_size, self.gen)
            y = td_target(r, s2, self.q_online, self.q_target, cfg.gamma)
            q = self.q_online(s).gather(1, a.unsqueeze(1)).squeeze(1)
            loss = F.mse_loss(q, y)
            if cfg.weight_decay:
                loss = loss + cfg.weight_decay * weight_penalty(self.q_online)
            self.optimizer.zero_grad()
            loss.backward()
            clip_grads(self.q_params, cfg.max_grad_norm)
            self.optimizer.step()
            self.gradient_steps += 1
            if self.gradient_steps % cfg.target_sync_every == 0:
                self.q_target.load_state_dict(self.q_online.state_dict())
                self.syncs += 1
            losses.append(float(loss.detach()))
        with torch.no_grad():
            q_now = self.q_online(step.next_state)
        return {"q_loss": float(np.mean(losses)) if losses else 0.0, "q_max": float(q_now.max()),
                "q_keep": float(q_now[0]), "target_syncs": float(self.syncs)}

    def state_dict(self) -> dict[str, Any]:
        return {"q_online": self.q_online.state_dict(), "q_target": self.q_target.state_dict(),
                "optimizer": self.optimizer.state_dict(), "gradient_steps": self.gradient_steps,
                "syncs": self.syncs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.q_online.load_state_dict(state["q_online"])
        self.q_target.load_state_dict(state["q_target"])
        self.optimizer.load_state_dict(state["optimizer"])
        set_lr(self.optimizer, self.cfg.lr)
        self.gradient_steps = int(state.get("gradient_steps", 0))
        self.syncs = int(state.get("syncs", 0))
