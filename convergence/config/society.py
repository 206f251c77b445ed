"""The ``society:`` section: which agents propose, their shares, their LLM.

the-convergence's section loads as written (``enabled``,
``auto_generate_agents``, ``learning: {rlp_enabled, sao_enabled}``,
``llm: {model, api_key_env, ...}``); our own keys are ``agents`` (who runs
and their starting shares), ``agent_timeout_seconds`` ``rlp`` (the RLP
agent's settings, :class:`RLPConfig`) and ``sao`` (:class:`SAOConfig`); both
are also the Python API's configs.

The roster: ``agents:`` when given; otherwise (``auto_generate_agents``) the
agents of ``optimization.algorithm`` plus ``rlp`` when ``learning.rlp_enabled``
and ``sao`` when ``learning.sao_enabled``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from convergence.config.fields import At, EnvName, Float, Int, ModelName, Strict, Text, Url, short

AGENT_NAMES = ("evolution", "bandit", "random", "rlp", "sao", "tpe", "gp", "cmaes", "surrogate")
"""Built-in society agents; plugins add more (``agent`` and ``sampler`` entries of the registry)."""


def agent_names() -> list[str]:
    """Every agent a roster may list: built-in, plugged-in agents and sampler plugins."""
    from convergence.registry import registry

    reg = registry()
    return list(dict.fromkeys([*reg.names("agent"), *reg.names("sampler")]))
LLM_AGENTS = frozenset({"rlp", "sao"})
"""Agents that call the society LLM."""
STRATEGY_NAMES = ("exploit", "explore", "recombine", "fix_weakest", "free")
"""RLP's reasoning strategies (see convergence/society/strategies.py)."""


class SocietyLLMConfig(Strict):
    model: ModelName = "local/gemma-3-270m"
    """Any LiteLLM model string; the default is the embedded model (no key, no network)."""
    api_key_env: EnvName | None = None
    """Environment variable holding the key (the key itself never goes in the YAML)."""
    api_base: Url | None = None
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
    """Run the SAO agent: self-judged duels between configurations, a preference dataset."""


class RLPConfig(Strict):
    """The RLP agent: G thoughts per generation, each followed by an answer
    (configurations); rewarded by information gain; a learned distribution
    over reasoning strategies. Field names follow the seed's ``RLPConfig``."""

    model_name: ModelName | None = None
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


class SAOConfig(Strict):
    """The SAO agent (self-alignment from fully self-synthetic data): a persona
    writes a new task input, two responses answer it, the society LLM judges the
    pair twice (A/B swapped) and only a verdict that holds in both orders counts.
    Field names follow the seed's ``SAOConfig``; a step (one loop generation, or
    one ``generate_synthetic_dataset`` call) runs up to ``iterative_rounds``
    rounds of ``batch_size`` concurrent pairs until it has its kept pairs."""

    model_name: ModelName | None = None
    """LiteLLM model that writes prompts and judges; default: ``society.llm.model``."""
    n_personas: Int = Field(1000, ge=1, le=20_000)
    """Personas composed from the shipped attribute lists (near-duplicates removed)."""
    temperature: Float = Field(0.6, ge=0, le=2)
    """Sampling temperature of the prompts the personas write."""
    response_pairs: Int = 2
    """The seed's "responses per prompt": always a pair (A and B), as in the paper, so 2 is the only
    value accepted (it changes nothing; it may be left out)."""
    response_temperatures: tuple[Annotated[Float, Field(ge=0, le=2)], Annotated[Float, Field(ge=0, le=2)]] = (
        0.2, 1.0)
    """Standalone only: the one configuration answers at these two temperatures."""
    min_response_length: Int = Field(1, ge=0, le=100_000)
    """Characters; shorter responses fail the ``too_short`` filter (the seed's 50 suits long answers)."""
    max_response_length: Int = Field(4000, ge=1, le=1_000_000)
    similarity_threshold: Float = Field(0.9, gt=0, le=1)
    """Near-duplicate prompts (against the study's earlier ones) and response pairs at or above it are filtered."""
    quality_filter: bool = True
    """False: only the judgment filters (unparseable, inconsistent, tie) apply."""
    diversity_factor: Float = Field(0.7, ge=0, le=1)
    """Share of personas chosen to differ most from those already used (the rest: at random)."""
    iterative_rounds: Int = Field(3, ge=1, le=100)
    """Rounds per step; later rounds show earlier kept prompts as examples."""
    batch_size: Int = Field(10, ge=1, le=1000)
    """Pairs generated concurrently per round; also the kept pairs a loop step aims for."""
    every: Int = Field(2, ge=1, le=1000)
    """In the loop: duel every k-th generation (generation 0 always, when there is something to duel)."""
    prompt_tokens: Int = Field(96, ge=8, le=4096)
    """Max tokens of a written prompt."""
    response_tokens: Int = Field(64, ge=1, le=4096)
    """Standalone only: max tokens of a response (in the loop the target's own settings apply)."""
    judge: Literal["auto", "text", "likelihood"] = "auto"
    """How the LLM judges a pair (twice, A/B swapped, either way). ``text``: it writes a verdict,
    parsed strictly (``[[A]]``, ``[[B]]``, ``[[tie]]``). ``likelihood``: the response it finds more likely
    (total log-prob) after "The better response is:"; needs exact log-probs. ``auto``:
    likelihood on the embedded model (whose written verdicts always say A: measured 0 % consistent
    under swap), text elsewhere."""
    judge_tokens: Int = Field(16, ge=1, le=4096)
    """Max tokens of a written judgment (the verdict is a short continuation)."""
    tie_margin: Float = Field(0.1, ge=0, le=10)
    """Likelihood judge: a difference in total log-prob (nats) below this is a tie."""
    calibration: Int = Field(2, ge=0, le=1000)
    """In the loop: duels per step on test cases with a reference answer (two target calls and two
    judge calls each). Such a pair is kept only if the judge agrees with the metrics, and their
    agreement rate says how far the judge's verdicts on written prompts (no reference) can be trusted."""
    rating_prior: Float = Field(1.0, gt=0, le=100)
    """Bradley-Terry prior: virtual ties against an average configuration (keeps all-wins finite)."""

    @field_validator("response_pairs")
    @classmethod
    def _pair(cls, v: int) -> int:
        if v != 2:
            raise ValueError(f"is {v}, but SAO always compares one pair of responses (A and B): "
                             "only 2 is accepted; leave it out")
        return v

    @model_validator(mode="after")
    def _lengths(self) -> SAOConfig:
        if self.min_response_length > self.max_response_length:
            raise At("min_response_length", f"({self.min_response_length}) exceeds max_response_length "
                                            f"({self.max_response_length})")
        return self


class LearnerConfig(BaseModel):
    """``society.learner``: the plugin that learns the agents' shares, and its own options
    (any other key, e.g. ``algorithm``, ``lr``; the plugin documents them)."""

    model_config = ConfigDict(extra="allow")

    plugin: Text
    """A ``learner`` entry of the plugin registry (``convergence plugins`` lists them)."""

    @model_validator(mode="after")
    def _installed(self) -> LearnerConfig:
        from convergence.registry import registry, unknown

        if registry().find("learner", self.plugin) is None:
            raise At("plugin", unknown("learner", self.plugin, registry().names("learner")))
        return self

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


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
    sao: SAOConfig = Field(default_factory=SAOConfig)
    learner: LearnerConfig | None = None
    """Learns each agent's share from the improvement its proposals bring per unit of cost (a plugin)."""

    @model_validator(mode="after")
    def _roster(self) -> SocietyConfig:
        if self.learner is not None and not self.enabled:
            raise At("learner", "learns the society's shares but the society is off; set society.enabled: true")
        if self.agents is None:
            if self.enabled and not self.auto_generate_agents:
                raise At("agents", "auto_generate_agents is false: list the agents and their shares, "
                                   "e.g. agents: {evolution: 0.4, bandit: 0.3, rlp: 0.3}")
            return self
        if not self.enabled:
            raise At("agents", "lists agents but the society is off; set society.enabled: true")
        if not self.agents:
            raise At("agents", f"list at least one agent (have: {', '.join(agent_names())})")
        for name, share in self.agents.items():
            if name not in AGENT_NAMES and name not in (names := agent_names()):
                from convergence.registry import unknown

                raise At(("agents", name), unknown("agent", name, names))
            if share < 0:
                raise At(("agents", name), f"share must be >= 0, got {share}")
        if sum(self.agents.values()) <= 0:
            raise At("agents", "shares must not all be 0")
        explicit = self.learning.model_fields_set if "learning" in self.model_fields_set else set()
        if "rlp_enabled" in explicit and self.learning.rlp_enabled != ("rlp" in self.agents):
            raise At(("learning", "rlp_enabled"),
                     f"is {str(self.learning.rlp_enabled).lower()} but agents: "
                     f"{'does not list' if self.learning.rlp_enabled else 'lists'} rlp; make them agree")
        if "sao_enabled" in explicit and self.learning.sao_enabled != ("sao" in self.agents):
            raise At(("learning", "sao_enabled"),
                     f"is {str(self.learning.sao_enabled).lower()} but agents: "
                     f"{'does not list' if self.learning.sao_enabled else 'lists'} sao; make them agree")
        return self

    def roster(self, algorithm: str) -> dict[str, float]:
        """Agent name -> starting share, for an enabled society."""
        if self.agents is not None:
            return dict(self.agents)
        base = ALGORITHM_AGENTS[algorithm]
        # the numeric agents keep 70 % between them (60 % next to two LLM agents); the LLM agents share the rest
        llm_agents = [a for a, on in (("rlp", self.learning.rlp_enabled), ("sao", self.learning.sao_enabled)) if on]
        if not llm_agents:
            return dict(base)
        numeric = 0.7 if len(llm_agents) == 1 else 0.6
        each = round((1 - numeric) / len(llm_agents), 12)
        return {**{k: numeric * v for k, v in base.items()}, **{a: each for a in llm_agents}}

    def uses_llm(self, algorithm: str) -> bool:
        return self.enabled and any(a in LLM_AGENTS for a in self.roster(algorithm))


ALGORITHM_AGENTS: dict[str, dict[str, float]] = {
    "mab_evolution": {"evolution": 0.5, "bandit": 0.5},
    "genetic": {"evolution": 1.0},
    "mab_only": {"bandit": 1.0},
    "random": {"random": 1.0},
}
"""The numeric roster of each ``optimization.algorithm`` (the society off, or on without ``agents:``)."""
