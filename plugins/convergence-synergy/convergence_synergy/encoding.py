"""The learners' state: a fixed number of features per agent, times the number of agents.

Per agent, after each generation (agent-major, flattened to ``n_agents * len(FEATURES)``):

=============== ==========================================================================
share           its share of the slots in that generation, times n (1 = an even split)
credit_mean     its normalised improvement per cost, averaged over the run's generations
                with ``prior`` neutral generations (0) in front: ``sum credit / (m + prior)``
                after m measured generations. Shrunk: one lucky generation reads as a little
                evidence, ten as a lot.
credit_recent   moving average of the normalised credit (``ema``, starting at 0): what the
                last few generations said (an agent that improves or declines during a run)
hit_rate_mean   in_top / proposed (how many of its proposals are among the run's top k),
                averaged like ``credit_mean``
cost_fraction   its fraction of the generation's cost, times n
progress        how far through the budget the run is (0..1), the same for every agent
=============== ==========================================================================

Why averages rather than the last generation's numbers: a critic that sees each generation's
raw, noisy results can tell every generation apart, fits each one's noise, and then chases it
(measured on the rigged society in ``tests/``). Sufficient statistics with shrinkage keep the
states of a run close together, so the learners average over generations.
"""

from __future__ import annotations

import numpy as np
import torch

FEATURES = ("share", "credit_mean", "credit_recent", "hit_rate_mean", "cost_fraction", "progress")


def shares_of(states: torch.Tensor, n_agents: int) -> torch.Tensor:
    """The ``share`` feature of encoded states, as shares (rows sum to 1): shape (..., n_agents)."""
    return states.reshape(*states.shape[:-1], n_agents, len(FEATURES))[..., 0] / n_agents


class Encoder:
    def __init__(self, n_agents: int, ema: float = 0.3, prior: float = 4.0) -> None:
        self.n = n_agents
        self.ema = ema
        self.prior = prior
        self.credit_sum = np.zeros(n_agents)
        self.hit_sum = np.zeros(n_agents)
        self.measured = np.zeros(n_agents)
        self.credit_recent = np.zeros(n_agents)
        self.cost_fraction = np.full(n_agents, 1.0 / n_agents)
        self.progress = 0.0

    @property
    def dim(self) -> int:
        return self.n * len(FEATURES)

    def observe(self, credit: np.ndarray, mask: np.ndarray, hit_rate: np.ndarray, cost_fraction: np.ndarray,
                progress: float) -> None:
        """One generation's normalised credits and hit rates (``mask``: the agents that proposed)."""
        self.credit_sum += np.where(mask, credit, 0.0)
        self.hit_sum += np.where(mask, hit_rate, 0.0)
        self.measured += mask
        self.credit_recent = np.where(mask, (1 - self.ema) * self.credit_recent + self.ema * credit,
                                      self.credit_recent)
        self.cost_fraction = np.asarray(cost_fraction, dtype=np.float64)
        self.progress = float(min(1.0, max(0.0, progress)))

    def encode(self, shares: np.ndarray) -> torch.Tensor:
        n = self.n
        denominator = self.measured + self.prior
        cols = [np.asarray(shares) * n, self.credit_sum / denominator, self.credit_recent,
                self.hit_sum / denominator, self.cost_fraction * n, np.full(n, self.progress)]
        return torch.tensor(np.stack(cols, axis=1).ravel(), dtype=torch.float32)
