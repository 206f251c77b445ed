"""The ``society:`` section: which agents propose, their shares, their LLM.

the-convergence's section loads as written (``enabled``,
``auto_generate_agents``, ``learning: {rlp_enabled, sao_enabled}``,
``llm: {model, api_key_env, ...}``); our own keys are ``agents`` (who runs
and their starting shares), ``agent_timeout_seconds`` and ``rlp`` (the RLP
agent's settings, :class:`RLPConfig`, also the Python API's config).

The roster: ``agents:`` when given; otherwise (``auto_generate_agents``) the
agents of ``optimization.algorithm`` plus ``rlp`` when ``learning.rlp_enabled``.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field, model_validator

from convergence.config.models import At, Float, Int, Strict, Text, short

AGENT_NAMES = ("evolution", "bandit", "random", "rlp")
"""Built-in society agents (the plugin registry adds more later)."""
LLM_AGENTS = frozenset({"rlp"})
"""Agents that call the society LLM."""
STRATEGY_NAMES = ("exploit", "explore", "recombine", "fix_weakest", "free")
"""RLP's reasoning strategies (see convergence/society/strategies.py)."""


class SocietyLLMConfig(Strict):
    model: Text = "local/gemma-3-270m"
    """Any LiteLLM model string; the default is the embedded model (no key, no network)."""
    api_key_env: Text | None = None
    """Environment variable holding the key (the key itself never goes in the YAML)."""
    api_base: Text | None = None
    temperature: Float = Field(0.7, ge=0, le=2)
    """Sampling temperature of answers (thoughts use ``rlp.temperature``)."""
    max_tokens: Int = Field(256, ge=16, le=100_000)
    """Cap on an answer's tokens (a configuration as JSON)."""
    timeout_seconds: Float = Field(60.0, gt=0, le=3600)
    """Per LLM call."""
    max_retries: Int = Field(2, ge=0, le=10)
    """Retries with backoff per LLM call (errors and timeouts)."""


class LearningConfig(Strict):
    rlp_enabled: bool = True
    """Run the RLP reasoning agent (default on when the society is)."""
    sao_enabled: bool = False

    @model_validator(mode="after")
    def _sao(self) -> LearningConfig:
        if self.sao_enabled:
            raise At("sao_enabled", "the SAO agent is not shipped in this version yet; set sao_enabled: false")
        return self


class RLPConfig(Strict):
    """The RLP agent: G thoughts per generation, each followed by an answer
    (configurations); rewarded by information gain; a learned distribution
    over reasoning strategies. Field names follow the seed's ``RLPConfig``."""

    model_name: Text | None = None
    """LiteLLM model for thoughts and answers; default: ``society.llm.model``."""
    G: Int = Field(4, ge=1, le=32, validation_alias=AliasChoices("G", "group_size"))
    """Thoughts per generation (the group for the group-relative advantage)."""
    thought_length: Int = Field(64, ge=1, le=4096)
    """Max tokens per thought."""
    temperature: Float = Field(0.7, ge=0, le=2)
    """Sampling temperature of thoughts."""
    buffer_size: Int = Field(10_000, ge=1, le=10_000_000)
    """Replay buffer capacity (experiences kept per study, across runs)."""
    gamma: Float = Field(0.99, ge=0, le=1)
    gae_lambda: Float = Field(0.95, ge=0, le=1)
    normalize_rewards: bool = True
    use_logprobs: bool = True
    """Reward = information gain from log-probs; false: the documented rank fallback."""
    think_every: Int = Field(1, ge=1, le=1000)
    """Think (and propose) every k-th generation; other generations its slots go to the others."""
    learning_rate: Float = Field(0.5, gt=0, le=100)
    """Step size of the strategy policy (softmax logits)."""
    clip: Float = Field(0.2, gt=0, le=1)
    """PPO ratio clip when the policy re-learns from its recent experiences."""
    strategies: list[str] = Field(default_factory=lambda: list(STRATEGY_NAMES))
    """Which reasoning strategies the policy chooses between."""
    examples: Int = Field(2, ge=0, le=10)
    """High-advantage past thoughts replayed as in-context examples."""

    @model_validator(mode="after")
    def _strategies(self) -> RLPConfig:
        if not self.strategies:
            raise At("strategies", f"list at least one strategy (have: {', '.join(STRATEGY_NAMES)})")
        for i, s in enumerate(self.strategies):
            if s not in STRATEGY_NAMES:
                raise At(("strategies", i), f"unknown strategy {short(s, 40)}; expected one of "
                                             f"{', '.join(STRATEGY_NAMES)}")
        if len(set(self.strategies)) != len(self.strategies):
            raise At("strategies", "lists a strategy twice")
        return self


class SocietyConfig(Strict):
    enabled: bool = False
    auto_generate_agents: bool = True
    """Without ``agents:``, build the roster from ``optimization.algorithm`` and ``learning``."""
    learning: LearningConfig = Field(default_factory=LearningConfig)
    llm: SocietyLLMConfig = Field(default_factory=SocietyLLMConfig)
    agents: dict[str, Float] | None = None
    """Agent name -> starting share of each generation's slots."""
    agent_timeout_seconds: Float = Field(300.0, gt=0, le=86_400)
    """An agent that takes longer to propose (or learn) yields its slots to the others for that generation."""
    rlp: RLPConfig = Field(default_factory=RLPConfig)

    @model_validator(mode="after")
    def _roster(self) -> SocietyConfig:
        if self.agents is None:
            if self.enabled and not self.auto_generate_agents:
                raise At("agents", "auto_generate_agents is false: list the agents and their shares, "
                                   "e.g. agents: {evolution: 0.4, bandit: 0.3, rlp: 0.3}")
            return self
        if not self.enabled:
            raise At("agents", "lists agents but the society is off; set society.enabled: true")
        if not self.agents:
            raise At("agents", f"list at least one agent (have: {', '.join(AGENT_NAMES)})")
        for name, share in self.agents.items():
            if name not in AGENT_NAMES:
                raise At(("agents", name), f"unknown agent {short(name, 40)}; expected one of {', '.join(AGENT_NAMES)}")
            if share < 0:
                raise At(("agents", name), f"share must be >= 0, got {share}")
        if sum(self.agents.values()) <= 0:
            raise At("agents", "shares must not all be 0")
        explicit = self.learning.model_fields_set if "learning" in self.model_fields_set else set()
        if "rlp_enabled" in explicit and self.learning.rlp_enabled != ("rlp" in self.agents):
            raise At(("learning", "rlp_enabled"),
                     f"is {str(self.learning.rlp_enabled).lower()} but agents: "
                     f"{'does not list' if self.learning.rlp_enabled else 'lists'} rlp; make them agree")
        return self

    def roster(self, algorithm: str) -> dict[str, float]:
        """Agent name -> starting share, for an enabled society."""
        if self.agents is not None:
            return dict(self.agents)
        base = ALGORITHM_AGENTS[algorithm]
        if self.learning.rlp_enabled:
            # the numeric agents keep 70 % between them, RLP gets 30 %
            return {**{k: 0.7 * v for k, v in base.items()}, "rlp": 0.3}
        return dict(base)

    def uses_llm(self, algorithm: str) -> bool:
        return self.enabled and any(a in LLM_AGENTS for a in self.roster(algorithm))


ALGORITHM_AGENTS: dict[str, dict[str, float]] = {
    "mab_evolution": {"evolution": 0.5, "bandit": 0.5},
    "genetic": {"evolution": 1.0},
    "mab_only": {"bandit": 1.0},
    "random": {"random": 1.0},
}
"""The numeric roster of each ``optimization.algorithm`` (the society off, or on without ``agents:``)."""
