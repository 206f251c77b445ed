"""The PPO society learner for Convergence: a policy that decides, after every generation,
which agent gets extra slots and how the evolutionary and bandit agents search, and learns
from what those decisions brought (PPO with GAE in PyTorch).

Entry point ``learner.ppo`` (group ``convergence.plugins``) -> :func:`make_learner`; choose it
with ``society.learner: {plugin: ppo, ...}``. :mod:`convergence_ppo.admin` serves
``convergence ppo stats | reset | export``.
"""

from __future__ import annotations

from convergence.core.rl import RunningNorm
from convergence_ppo.buffer import ReflectionBuffer
from convergence_ppo.encoding import ActionSpace, ObservationEncoder
from convergence_ppo.learner import PPOLearner, make_learner
from convergence_ppo.ppo import Policy, PPOConfig, clipped_surrogate, compute_gae, ppo_update
from convergence_ppo.rewards import RewardConfig, RewardExtractor

__all__ = ["ActionSpace", "ObservationEncoder", "PPOConfig", "PPOLearner", "Policy", "ReflectionBuffer",
           "RewardConfig", "RewardExtractor", "RunningNorm", "clipped_surrogate", "compute_gae", "make_learner",
           "ppo_update"]
__version__ = "0.1.0"
