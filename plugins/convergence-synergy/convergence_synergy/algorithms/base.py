"""What every synergy algorithm gets and shares: the learning step, a seeded MLP, a replay buffer.

One *step* is one generation: in state ``s`` (see ``encoding``) with free allocation ``v``
the algorithm chose an action, which gave the next allocation ``v_next``; the generation ran
with it, and its agents' normalised credits and the next state ``s'`` came back.

Because every agent's credit is measured per unit of cost, the reward of *any* allocation
follows from the same generation (``allocation.reward``): the off-policy learners also store
transitions for actions they did not take ("counterfactual" transitions, next state re-encoded
with that action's shares). Set ``counterfactual`` to 0 / false to learn from taken actions only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from convergence_synergy.allocation import reward


@dataclass(slots=True)
class Step:
    state: torch.Tensor
    """s: the state when the action was chosen."""
    v: np.ndarray
    """The free allocation before the action."""
    action: Any
    """The algorithm's own record of what it did (an index, a vector of logit changes)."""
    v_next: np.ndarray
    """The free allocation the generation ran with."""
    credits: np.ndarray
    """Normalised credit per agent (unmeasured agents filled with the mean: worth nothing)."""
    mask: np.ndarray
    """Agents measured in this generation."""
    slots: np.ndarray
    """Each agent's fraction of the generation's proposals."""
    next_state: torch.Tensor
    """s' after the generation."""
    reencode: Callable[[np.ndarray], torch.Tensor]
    """s' had the generation run with another free allocation (its shares feature changed)."""
    floor: float
    reference: np.ndarray
    """The run's starting shares (what the KL cost is measured against)."""
    reward_scale: float = 1.0
    kl_cost: float = 0.0

    def reward(self, v_new: np.ndarray) -> float:
        """Reward of the allocation ``v_new`` by this generation's credits (``allocation.reward``)."""
        return reward(v_new, self.credits, self.floor, self.reward_scale, self.kl_cost, self.reference)

    def gain(self, v_new: np.ndarray) -> float:
        """``reward(v_new) - reward(v)``: what changing the allocation earned. The same ranking of actions,
        without the generation's common level (how good the generation was for everyone), which
        otherwise swamps the small differences between actions."""
        return self.reward(v_new) - self.reward(self.v)


class Algorithm(Protocol):
    name: str

    def null_action(self, v: np.ndarray) -> Any:
        """The record of the action that gave ``v`` (the first generation runs on the starting shares)."""
        ...

    def act(self, state: torch.Tensor, v: np.ndarray) -> tuple[np.ndarray, Any]:
        """The next free allocation, and the action's record for ``learn``."""
        ...

    def anchor(self, state: torch.Tensor, v: np.ndarray) -> None:
        """Make the policy's output in ``state`` the allocation ``v`` (the run's starting shares),
        keeping what it learned about states (see ``anchor_bias``)."""
        ...

    def learn(self, step: Step) -> dict[str, float]:
        """Learn from one generation; the losses (for the summary)."""
        ...

    def prior(self, step: Step) -> None:
        """Start an empty replay buffer with the neutral generation ``step`` (see ``neutral_step``);
        nothing for on-policy learners."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def configure(cls: type, options: dict[str, Any], lr: float | None) -> Any:
    """An algorithm's config dataclass from the learner's options (unknown keys were rejected before)."""
    names = {f.name for f in fields(cls)}
    kwargs = {k: v for k, v in options.items() if k in names}
    if lr is not None:
        kwargs["lr"] = lr
    return cls(**kwargs)


def option_names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


# --- networks ---------------------------------------------------------------------------------

def init_linear(layer: nn.Linear, generator: torch.Generator, zero: bool = False) -> None:
    """PyTorch's default Linear initialisation, drawn from a private generator (so a seed repeats
    the run without touching the global RNG); ``zero`` makes the layer output 0 at first."""
    with torch.no_grad():
        if zero:
            layer.weight.zero_()
            layer.bias.zero_()
            return
        nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
        bound = 1.0 / math.sqrt(layer.weight.shape[1])
        nn.init.uniform_(layer.bias, -bound, bound, generator=generator)


def mlp(sizes: Iterable[int], generator: torch.Generator, zero_last: bool = False) -> nn.Sequential:
    """Linear-ReLU-...-Linear."""
    sizes = list(sizes)
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        lin = nn.Linear(sizes[i], sizes[i + 1])
        last = i == len(sizes) - 2
        init_linear(lin, generator, zero=zero_last and last)
        layers.append(lin)
        if not last:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def polyak(target: nn.Module, source: nn.Module, tau: float) -> None:
    """``theta_target <- tau * theta + (1 - tau) * theta_target``."""
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def last_linear(net: nn.Module) -> nn.Linear:
    """The output layer of an ``mlp``."""
    layer = list(net.modules())[-1]
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"the last module of {type(net).__name__} is a {type(layer).__name__}, not Linear")
    return layer


def anchor_bias(layer: nn.Linear, pre_tanh: torch.Tensor, target_logits: np.ndarray, bound: float) -> None:
    """Shift ``layer``'s bias so that ``bound * tanh(pre_tanh + shift) == target_logits``.

    A policy whose output is ``bound * tanh(layer(h(s)))`` then proposes exactly the run's starting
    shares in the starting state, whether its weights are fresh (the bias is then the starting
    logits) or learned in earlier runs (their dependence on the state is kept, their level is
    moved to the shares the user sees and may have edited).
    """
    target = torch.atanh(torch.tensor(np.clip(target_logits / bound, -0.999, 0.999), dtype=torch.float32))
    with torch.no_grad():
        layer.bias.add_(target - pre_tanh.detach().reshape(target.shape))


def weight_penalty(*modules: nn.Module) -> torch.Tensor:
    """``sum ||W||^2`` over the Linear layers' weights (biases are free): with it a Q-network is pulled
    towards the state-independent average of its replay buffer (the prior included), and depends on
    the state only as far as the data insist."""
    total = torch.zeros(())
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                total = total + (layer.weight**2).sum()
    return total


def saturation_penalty(pre_tanh: torch.Tensor, knee: float = 2.0) -> torch.Tensor:
    """``mean(relu(|x| - knee)^2)``: 0 while ``tanh`` is responsive, growing where it goes flat."""
    return ((pre_tanh.abs() - knee).clamp(min=0.0) ** 2).mean()


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """After loading an optimizer's saved state: the configured rate wins over the saved one."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_grads(params: Iterable[nn.Parameter], max_norm: float) -> None:
    if max_norm > 0:
        nn.utils.clip_grad_norm_(list(params), max_norm)


# --- replay ------------------------------------------------------------------------------------

class ReplayBuffer:
    """A ring buffer of (s, a, r, s') tensors; sampled with the learner's generator."""

    def __init__(self, capacity: int, state_dim: int, action_shape: tuple[int, ...],
                 action_dtype: torch.dtype = torch.float32) -> None:
        self.capacity = capacity
        self.states = torch.zeros((capacity, state_dim))
        self.actions = torch.zeros((capacity, *action_shape), dtype=action_dtype)
        self.rewards = torch.zeros(capacity)
        self.next_states = torch.zeros((capacity, state_dim))
        self.size = 0
        self.pos = 0

    def add(self, s: torch.Tensor, a: Any, r: float, s2: torch.Tensor) -> None:
        self.states[self.pos] = s
        self.actions[self.pos] = torch.as_tensor(a, dtype=self.actions.dtype)
        self.rewards[self.pos] = float(r)
        self.next_states[self.pos] = s2
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        idx = torch.randint(0, self.size, (batch_size,), generator=generator)
        return self.states[idx], self.actions[idx], self.rewards[idx], self.next_states[idx]


def neutral_step(state: torch.Tensor, v: np.ndarray, action: Any, reencode: Callable[[np.ndarray], torch.Tensor],
                 floor: float, reference: np.ndarray, reward_scale: float, kl_cost: float) -> Step:
    """A generation in which every agent earned the same credit: the prior the off-policy learners'
    replay buffers start with (``prior_generations`` of them), so that a few lucky generations move
    the shares a little, not all the way. Their weight in a minibatch fades as ``k / (k + t)``."""
    n = len(v)
    return Step(state=state, v=v, action=action, v_next=v.copy(), credits=np.zeros(n), mask=np.ones(n, dtype=bool),
                slots=np.full(n, 1.0 / n), next_state=state, reencode=reencode, floor=floor, reference=reference,
                reward_scale=reward_scale, kl_cost=kl_cost)
