"""Factories of the built-in society agents, one per registry entry.

Every agent, built-in or plugged in, is made the same way: the registry
loads the entry's factory and calls it with an :class:`AgentContext`.
"""

from __future__ import annotations

from dataclasses import dataclass

from convergence.config.models import ConvergenceConfig, OptimizationConfig
from convergence.core.space import SearchSpace
from convergence.society.base import Proposer


@dataclass(slots=True, frozen=True)
class AgentContext:
    """What a factory gets: the agent's name in the roster, the run's config, the search space, the seed."""

    name: str
    config: ConvergenceConfig | OptimizationConfig
    space: SearchSpace

    @property
    def optimization(self) -> OptimizationConfig:
        cfg = self.config
        return cfg.optimization if isinstance(cfg, ConvergenceConfig) else cfg

    @property
    def seed(self) -> int:
        return self.optimization.seed or 0

    def full(self) -> ConvergenceConfig:
        """The whole config (the LLM agents need the society section)."""
        if not isinstance(self.config, ConvergenceConfig):
            raise ValueError(f"agent {self.name!r} needs the whole config (its society section)")
        return self.config


def evolution(ctx: AgentContext) -> Proposer:
    from convergence.society.evolutionary import EvolutionaryProposer

    return EvolutionaryProposer(ctx.optimization.evolution,
                                numeric=any(d.is_numeric_range for d in ctx.space.dims.values()))


def bandit(ctx: AgentContext) -> Proposer:
    from convergence.society.bandit import BanditProposer

    return BanditProposer(ctx.optimization.mab, ctx.space)


def random_search(ctx: AgentContext) -> Proposer:
    from convergence.society.bandit import RandomProposer

    return RandomProposer()


def surrogate(ctx: AgentContext) -> Proposer:
    from convergence.society.surrogate import SurrogateProposer

    return SurrogateProposer(ctx.space)


def optuna_sampler(ctx: AgentContext) -> Proposer:
    """tpe, gp, cmaes: Optuna's sampler of that name behind the proposer interface."""
    from convergence.society.optuna_agents import OptunaProposer

    return OptunaProposer(ctx.name, ctx.space, seed=ctx.seed)


def rlp(ctx: AgentContext) -> Proposer:
    from convergence.llm.agent_client import LLMClient
    from convergence.society.rlp.agent import RLPAgent

    cfg = ctx.full()
    llm, rlp_cfg = cfg.society.llm, cfg.society.rlp
    client = LLMClient(rlp_cfg.model_name or llm.model, api_base=llm.api_base, api_key_env=llm.api_key_env,
                       timeout_seconds=llm.timeout_seconds, max_retries=llm.max_retries)
    return RLPAgent(rlp_cfg, client, ctx.space, answer_tokens=llm.max_tokens, answer_temperature=llm.temperature)


def sao(ctx: AgentContext) -> Proposer:
    from convergence.llm.agent_client import LLMClient
    from convergence.society.sao.agent import SAOAgent

    cfg = ctx.full()
    llm, sao_cfg = cfg.society.llm, cfg.society.sao
    client = LLMClient(sao_cfg.model_name or llm.model, api_base=llm.api_base, api_key_env=llm.api_key_env,
                       timeout_seconds=llm.timeout_seconds, max_retries=llm.max_retries)
    return SAOAgent(sao_cfg, client, ctx.space, seed=ctx.seed)
