"""The PPO society learner for Convergence: a policy that decides, after every generation,
which agent gets extra slots and how the evolutionary and bandit agents search, and learns
from what those decisions brought (PPO with GAE in PyTorch).

Entry point ``learner.ppo`` (group ``convergence.plugins``) -> :func:`make_learner`; choose it
with ``society.learner: {plugin: ppo, ...}``. :mod:`convergence_ppo.admin` serves
``convergence ppo stats | reset | export`` (entry point ``cli.ppo`` -> :data:`convergence_ppo.cli.app`).

The names below are imported on first use (PEP 562), so importing the package, or its small
:mod:`convergence_ppo.cli`, imports no PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from convergence_ppo.buffer import ReflectionBuffer
    from convergence_ppo.encoding import ActionSpace, ObservationEncoder, RunningNorm
    from convergence_ppo.learner import PPOLearner, make_learner
    from convergence_ppo.ppo import Policy, PPOConfig, clipped_surrogate, compute_gae, ppo_update
    from convergence_ppo.rewards import RewardConfig, RewardExtractor

_WHERE = {"ReflectionBuffer": "buffer", "ActionSpace": "encoding", "ObservationEncoder": "encoding",
          "RunningNorm": "encoding", "PPOLearner": "learner", "make_learner": "learner", "Policy": "ppo",
          "PPOConfig": "ppo", "clipped_surrogate": "ppo", "compute_gae": "ppo", "ppo_update": "ppo",
          "RewardConfig": "rewards", "RewardExtractor": "rewards"}

__all__ = ["ActionSpace", "ObservationEncoder", "PPOConfig", "PPOLearner", "Policy", "ReflectionBuffer",
           "RewardConfig", "RewardExtractor", "RunningNorm", "clipped_surrogate", "compute_gae", "make_learner",
           "ppo_update"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"convergence_ppo.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'convergence_ppo' has no attribute {name!r}")
