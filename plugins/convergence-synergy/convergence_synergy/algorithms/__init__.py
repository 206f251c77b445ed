"""The synergy algorithms, one module each: ``actor_critic`` (default), ``double_dqn``, ``sac``, ``td3``."""

from __future__ import annotations

from typing import Any

from convergence_synergy.algorithms.actor_critic import ActorCritic, ActorCriticConfig
from convergence_synergy.algorithms.double_dqn import DoubleDQN, DoubleDQNConfig
from convergence_synergy.algorithms.sac import SAC, SACConfig
from convergence_synergy.algorithms.td3 import TD3, TD3Config

ALGORITHMS: dict[str, tuple[type[Any], type[Any]]] = {
    "actor_critic": (ActorCritic, ActorCriticConfig),
    "double_dqn": (DoubleDQN, DoubleDQNConfig),
    "sac": (SAC, SACConfig),
    "td3": (TD3, TD3Config),
}
DEFAULT = "actor_critic"

__all__ = ["ALGORITHMS", "DEFAULT", "SAC", "TD3", "ActorCritic", "DoubleDQN"]
