"""Pydantic models for every section of ``optimization.yaml``.

The field names follow the-convergence's format so its YAML files load
unchanged (``api:``, ``search_space.parameters``, ``evaluation.metrics`` with
``type: higher_is_better``, ``optimization.evolution`` ...). Our own additions
(``target:``, ``budget:``, ``storage:``) sit beside them. Every model forbids
unknown keys so a typo is an error, not a silently ignored setting.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)


class Strict(BaseModel):
    """Base: unknown keys are errors (with a did-you-mean from the loader)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# --------------------------------------------------------------------------- target


class AuthConfig(Strict):
    """Credentials always come from environment variables, never the YAML."""

    type: Literal["bearer", "api_key", "basic", "none"] = "none"
    token_env: str | None = None
    header_name: str = "x-api-key"
    username: str | None = None
    username_env: str | None = None
    password_env: str | None = None

    @model_validator(mode="after")
    def _needs_env(self) -> "AuthConfig":
        if self.type in ("bearer", "api_key") and not self.token_env:
            raise ValueError(f"auth type '{self.type}' needs token_env (the env var holding the token)")
        if self.type == "basic" and not self.password_env:
            raise ValueError("auth type 'basic' needs password_env")
        return self


class RequestConfig(Strict):
    method: Literal["GET", "POST", "PUT", "PATCH"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: float = Field(30.0, gt=0)
    body: Any = None
    """JSON body template: strings are Jinja templates over the test case and
    the configuration. Without it the body is the test case input merged with
    the configuration's parameters."""


class ResponseConfig(Strict):
    result_field: str | None = "result"
    """Dotted path to the output, e.g. ``choices.0.message.content``."""
    success_field: str | None = None
    error_field: str | None = "error"
    cost_field: str | None = None


class RetryConfig(Strict):
    max_retries: int = Field(3, ge=0, le=20)
    backoff_initial_seconds: float = Field(0.5, ge=0)
    backoff_max_seconds: float = Field(20.0, ge=0)


class _TargetCommon(Strict):
    timeout_seconds: float = Field(60.0, gt=0)
    rate_limit_per_second: float | None = Field(None, gt=0)
    retry: RetryConfig = Field(default_factory=RetryConfig)


class LiteLLMTargetConfig(_TargetCommon):
    """Any LiteLLM model string, including the embedded ``local/gemma-3-270m``."""

    type: Literal["litellm"] = "litellm"
    model: str
    prompt: str | None = None
    """Completion-style Jinja template (the embedded model is a base model)."""
    messages: list[dict[str, str]] | None = None
    """Chat messages, each ``content`` a Jinja template."""
    api_base: str | None = None
    api_key_env: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    """Fixed call parameters, overridden by the configuration under test."""
    call_params: list[str] | None = None
    """Search-space parameters to pass to the LLM call. Default: those whose
    name is a known completion parameter (temperature, max_tokens, stop, ...)."""

    @model_validator(mode="after")
    def _one_prompt(self) -> "LiteLLMTargetConfig":
        if self.prompt is None and self.messages is None:
            self.prompt = "{{ input }}"
        if self.prompt is not None and self.messages is not None:
            raise ValueError("give either prompt or messages, not both")
        return self


class HTTPTargetConfig(_TargetCommon):
    type: Literal["http"] = "http"
    endpoint: str
    auth: AuthConfig = Field(default_factory=AuthConfig)
    request: RequestConfig = Field(default_factory=RequestConfig)
    response: ResponseConfig = Field(default_factory=ResponseConfig)


class PythonTargetConfig(_TargetCommon):
    type: Literal["python"] = "python"
    function: str
    """``module:function``; sync or async; called as ``fn(params, input)``."""

    @field_validator("function")
    @classmethod
    def _colon(cls, v: str) -> str:
        if ":" not in v:
            raise ValueError("expected 'module:function', e.g. 'my_pkg.target:call'")
        return v


TargetConfig = Annotated[
    Union[LiteLLMTargetConfig, HTTPTargetConfig, PythonTargetConfig],
    Field(discriminator="type"),
]


class ApiModelEntry(Strict):
    endpoint: str
    description: str | None = None


class ApiConfig(Strict):
    """the-convergence's ``api:`` section. ``model`` selects LiteLLM,
    ``endpoint`` a plain HTTP endpoint."""

    name: str
    description: str | None = None
    endpoint: str | None = None
    model: str | None = None
    models: dict[str, ApiModelEntry] | None = None
    auth: AuthConfig = Field(default_factory=AuthConfig)
    request: RequestConfig = Field(default_factory=RequestConfig)
    response: ResponseConfig = Field(default_factory=ResponseConfig)
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    api_base: str | None = None
    api_key_env: str | None = None
    adapter_enabled: bool = False
    mock_mode: bool = False

    @model_validator(mode="after")
    def _check(self) -> "ApiConfig":
        if self.mock_mode:
            raise ValueError("mock_mode is not supported: Convergence always calls the real target")
        if self.adapter_enabled:
            raise ValueError("adapter_enabled is not supported; describe the request with request.body instead")
        if self.models:
            raise ValueError(
                "api.models (a model registry) is not supported; use a 'model' search-space parameter "
                "with a LiteLLM target instead"
            )
        if not self.endpoint and not self.model:
            raise ValueError("api needs either 'endpoint' (HTTP) or 'model' (a LiteLLM model string)")
        return self

    def to_target(self) -> LiteLLMTargetConfig | HTTPTargetConfig:
        if self.model:
            return LiteLLMTargetConfig(
                model=self.model,
                prompt=self.prompt,
                messages=self.messages,
                api_base=self.api_base or self.endpoint,
                api_key_env=self.api_key_env or self.auth.token_env,
                timeout_seconds=self.request.timeout_seconds,
            )
        assert self.endpoint is not None
        return HTTPTargetConfig(
            endpoint=self.endpoint,
            auth=self.auth,
            request=self.request,
            response=self.response,
            timeout_seconds=self.request.timeout_seconds,
        )


# --------------------------------------------------------------------------- search space


class CategoricalParam(Strict):
    type: Literal["categorical"]
    values: list[Any] | dict[str, Any]
    """A list of values, or a mapping label -> value (labels show in reports;
    handy for long prompt templates)."""
    description: str | None = None

    @field_validator("values")
    @classmethod
    def _non_empty(cls, v: list[Any] | dict[str, Any]) -> list[Any] | dict[str, Any]:
        if len(v) == 0:
            raise ValueError("needs at least one value")
        return v


class ContinuousParam(Strict):
    type: Literal["continuous", "float"]
    min: float
    max: float
    step: float | None = Field(None, gt=0)
    log: bool = False
    description: str | None = None

    @model_validator(mode="after")
    def _range(self) -> "ContinuousParam":
        if not self.min <= self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        if self.log and self.min <= 0:
            raise ValueError("log scale needs min > 0")
        return self


class DiscreteParam(Strict):
    """Either explicit numeric ``values`` or an integer range ``min``..``max``."""

    type: Literal["discrete", "int", "integer"]
    values: list[float | int] | None = None
    min: int | None = None
    max: int | None = None
    step: int = Field(1, gt=0)
    description: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> "DiscreteParam":
        if self.values is None:
            if self.min is None or self.max is None:
                raise ValueError("discrete needs 'values' or both 'min' and 'max'")
            if self.min > self.max:
                raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        elif len(self.values) == 0:
            raise ValueError("needs at least one value")
        return self


Parameter = Annotated[
    Union[CategoricalParam, ContinuousParam, DiscreteParam], Field(discriminator="type")
]


class SearchSpaceConfig(Strict):
    parameters: dict[str, Parameter]

    @field_validator("parameters")
    @classmethod
    def _non_empty(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not v:
            raise ValueError("define at least one parameter")
        return v


# --------------------------------------------------------------------------- evaluation


class AugmentationConfig(Strict):
    enabled: bool = False
    mutation_rate: float = 0.0
    crossover_rate: float = 0.0
    augmentation_factor: int = 1
    preserve_originals: bool = True

    @model_validator(mode="after")
    def _off(self) -> "AugmentationConfig":
        if self.enabled:
            raise ValueError(
                "test-case augmentation is not supported: mutated test cases have no trustworthy "
                "expected answers; set enabled: false"
            )
        return self


class TestCasesConfig(Strict):
    path: str | None = None
    inline: list[dict[str, Any]] | None = None
    augmentation: AugmentationConfig | None = None
    limit: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one(self) -> "TestCasesConfig":
        if (self.path is None) == (self.inline is None):
            raise ValueError("give exactly one of 'path' (JSON/JSONL file) or 'inline' (a list)")
        return self


MetricFunction = str
"""Built-in name (exact_match, contains, regex, numeric, json_valid, json_schema,
similarity, latency, cost, llm_judge, custom) or ``module:function``."""


class JudgeConfig(Strict):
    model: str = "local/gemma-3-270m"
    rubric: str = "Is the response correct and helpful given the expected answer?"
    api_base: str | None = None
    api_key_env: str | None = None
    temperature: float = 0.0
    max_tokens: int = 8
    timeout_seconds: float = 60.0


class MetricConfig(Strict):
    weight: float = Field(1.0, ge=0)
    direction: Literal["higher_is_better", "lower_is_better"] = Field(
        "higher_is_better", validation_alias=AliasChoices("type", "direction")
    )
    function: MetricFunction | None = None
    threshold: float | None = None
    """higher_is_better: minimum acceptable value (reported as pass/fail).
    lower_is_better: the value that normalises to 0 (e.g. 5000 ms)."""
    budget_per_call: float | None = Field(None, gt=0)
    """For cost metrics: the per-call cost that normalises to 0."""
    args: dict[str, Any] = Field(default_factory=dict)
    """Extra arguments for the metric function (regex pattern, tolerance, schema ...)."""
    judge: JudgeConfig | None = None


class CustomEvaluatorConfig(Strict):
    enabled: bool = True
    module: str
    function: str


class EvaluationConfig(Strict):
    test_cases: TestCasesConfig
    metrics: dict[str, MetricConfig]
    custom_evaluator: CustomEvaluatorConfig | None = None

    @model_validator(mode="after")
    def _weights(self) -> "EvaluationConfig":
        if not self.metrics:
            raise ValueError("define at least one metric")
        if sum(m.weight for m in self.metrics.values()) <= 0:
            raise ValueError("metric weights must not all be 0")
        return self


# --------------------------------------------------------------------------- optimization


class MABConfig(Strict):
    strategy: Literal["thompson_sampling"] = "thompson_sampling"
    exploration_rate: float = Field(0.1, ge=0, le=1)
    confidence_level: float = Field(0.95, gt=0, lt=1)
    bins: int = Field(8, ge=2, le=100)
    """Continuous parameters are split into this many arms."""


class EvolutionConfig(Strict):
    population_size: int = Field(8, ge=1, le=10_000)
    generations: int = Field(5, ge=1, le=100_000)
    mutation_rate: float = Field(0.2, ge=0, le=1)
    crossover_rate: float = Field(0.7, ge=0, le=1)
    elite_size: int = Field(1, ge=0)
    tournament_size: int = Field(3, ge=1)
    early_stopping_generations: int | None = Field(None, ge=1)
    """the-convergence's name for early_stopping.patience."""


class EarlyStoppingConfig(Strict):
    enabled: bool = True
    patience: int = Field(3, ge=1)
    min_improvement: float = Field(0.001, ge=0)


class ExecutionConfig(Strict):
    concurrency: int = Field(
        4, ge=1, le=100_000, validation_alias=AliasChoices("concurrency", "parallel_workers")
    )
    max_retries: int | None = Field(None, ge=0, le=20)
    retry_delay_seconds: float | None = Field(None, ge=0)
    timeout_seconds: float | None = Field(None, gt=0)
    experiments_per_generation: int | None = Field(None, ge=1)
    """Accepted for the-convergence files; the work per generation is
    population_size x test cases."""
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)


class BudgetConfig(Strict):
    max_calls: int | None = Field(None, ge=1)
    max_cost_usd: float | None = Field(None, gt=0)
    max_seconds: float | None = Field(None, gt=0)


class OptimizationConfig(Strict):
    algorithm: Literal["mab_evolution", "genetic", "mab_only", "random"] = "mab_evolution"
    seed: int | None = 0
    mab: MABConfig = Field(default_factory=MABConfig)
    evolution: EvolutionConfig = Field(default_factory=EvolutionConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    warm_start: int = Field(3, ge=0)
    """How many of the study's best earlier configurations seed generation 0."""

    @model_validator(mode="after")
    def _elite(self) -> "OptimizationConfig":
        if self.evolution.elite_size >= self.evolution.population_size and self.evolution.generations > 1:
            raise ValueError(
                f"evolution.elite_size ({self.evolution.elite_size}) must be smaller than "
                f"population_size ({self.evolution.population_size})"
            )
        return self


# --------------------------------------------------------------------------- output, storage


class ExportBestConfig(Strict):
    enabled: bool = True
    format: Literal["yaml", "json", "python"] = "yaml"
    output_path: str | None = None


Visualization = Literal["score_over_time", "parameter_importance", "pareto_front", "cost_vs_quality"]


class OutputConfig(Strict):
    save_path: str = "results"
    save_all_experiments: bool = True
    formats: list[Literal["json", "markdown", "csv"]] = Field(
        default_factory=lambda: ["json", "markdown", "csv"]
    )
    visualizations: list[Visualization] = Field(
        default_factory=lambda: ["score_over_time", "cost_vs_quality", "parameter_importance"]
    )
    plot_format: Literal["png", "html"] = "png"
    export_best_config: ExportBestConfig = Field(default_factory=ExportBestConfig)


class StorageConfig(Strict):
    path: str = ".convergence/convergence.db"
    """SQLite file, relative to the YAML's directory: one per project."""


class LegacyConfig(Strict):
    """the-convergence's cross-run tracking; here warm start from the store."""

    enabled: bool = True
    session_id: str | None = None
    tracking_backend: str = "builtin"
    sqlite_path: str | None = None
    export_dir: str | None = None
    export_formats: list[str] = Field(default_factory=list)


# --------------------------------------------------------------------------- placeholders


class SocietyLLMConfig(Strict):
    model: str = "local/gemma-3-270m"
    api_key_env: str | None = None
    temperature: float = 0.7
    max_tokens: int = 256


class SocietyConfig(Strict):
    """Learning agents (RLP, SAO) arrive in a later release; parsed now so
    files that mention them get a clear message instead of a crash."""

    model_config = ConfigDict(extra="allow")

    enabled: bool = False
    auto_generate_agents: bool = True
    llm: SocietyLLMConfig | None = None

    @model_validator(mode="after")
    def _not_yet(self) -> "SocietyConfig":
        if self.enabled:
            raise ValueError(
                "society.enabled: true is not supported yet (the RLP/SAO learning agents are not "
                "shipped in this version); the loop already runs an evolutionary and a Thompson-"
                "sampling proposer. Set enabled: false"
            )
        return self


class WeaveConfig(Strict):
    enabled: bool = False
    project: str | None = None
    entity: str | None = None


class TracingConfig(Strict):
    weave: WeaveConfig = Field(default_factory=WeaveConfig)


# --------------------------------------------------------------------------- root


class ConvergenceConfig(Strict):
    """The whole ``optimization.yaml``."""

    study: str | None = None
    """Name grouping runs for warm start and resume; defaults to api/target name or the file name."""
    api: ApiConfig | None = None
    target: TargetConfig | None = None
    search_space: SearchSpaceConfig
    evaluation: EvaluationConfig
    optimization: OptimizationConfig = Field(default_factory=OptimizationConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    legacy: LegacyConfig | None = None
    society: SocietyConfig = Field(default_factory=SocietyConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)

    @model_validator(mode="after")
    def _target(self) -> "ConvergenceConfig":
        if (self.api is None) == (self.target is None):
            raise ValueError("give exactly one of 'api' (the-convergence style) or 'target'")
        evo = self.optimization.evolution
        if evo.early_stopping_generations is not None:
            self.optimization.execution.early_stopping.patience = evo.early_stopping_generations
        if self.legacy is not None and not self.legacy.enabled:
            self.optimization.warm_start = 0
        return self

    @property
    def resolved_target(self) -> LiteLLMTargetConfig | HTTPTargetConfig | PythonTargetConfig:
        if self.target is not None:
            t = self.target
        else:
            assert self.api is not None
            t = self.api.to_target()
        ex = self.optimization.execution
        updates: dict[str, Any] = {}
        if ex.timeout_seconds is not None:
            updates["timeout_seconds"] = ex.timeout_seconds
        retry = t.retry
        if ex.max_retries is not None or ex.retry_delay_seconds is not None:
            retry = retry.model_copy(
                update={
                    k: v
                    for k, v in (
                        ("max_retries", ex.max_retries),
                        ("backoff_initial_seconds", ex.retry_delay_seconds),
                    )
                    if v is not None
                }
            )
            updates["retry"] = retry
        return t.model_copy(update=updates) if updates else t

    @property
    def study_name(self) -> str:
        if self.study:
            return self.study
        if self.api is not None:
            return self.api.name
        if self.legacy is not None and self.legacy.session_id:
            return self.legacy.session_id
        t = self.resolved_target
        if isinstance(t, LiteLLMTargetConfig):
            return t.model
        if isinstance(t, HTTPTargetConfig):
            return t.endpoint
        return t.function


def finite(x: float) -> bool:
    return not (math.isnan(x) or math.isinf(x))
