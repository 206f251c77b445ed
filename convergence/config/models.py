"""Pydantic models for every section of ``optimization.yaml``: our own schema.

the-convergence's sections (``api:``, ``legacy:``, test-case augmentation)
are in :mod:`convergence.config.compat`, built on these models; the few
the-convergence spellings of our own settings (``parallel_workers``,
``early_stopping_generations``, ``experiments_per_generation``, metric
``type:``) are plain aliases here, each wired to the setting it means.

Every model forbids unknown keys so a typo is an error, not a silently
ignored setting. Numbers are finite (no ``.inf``/``.nan``), integers are
integers (``true`` is not 1, ``3.5`` is not 3) and fit SQLite's 64-bit range,
names are bounded, and no option is parsed without being used: an option we do
not implement is refused with a message saying so.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    field_validator,
    model_validator,
)

from convergence.config.compat import ApiConfig, AugmentationConfig, LegacyConfig
from convergence.config.fields import (
    MAX_EXACT_INT,
    MAX_NAME,
    SQLITE_MAX,
    SQLITE_MIN,
    At,
    EnvName,
    Float,
    Int,
    ModelName,
    Name,
    PathText,
    ReportFormat,
    Strict,
    Text,
    Url,
    short,
)
from convergence.config.society import SocietyConfig
from convergence.config.targets import (
    AnyTargetConfig,
    HTTPTargetConfig,
    LiteLLMTargetConfig,
    PythonTargetConfig,
    TargetConfig,
)

# --------------------------------------------------------------------------- search space


def _label(value: Any) -> Any:
    """The label a list value gets in configurations (mirrors core.space)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _no_duplicates(values: list[Any]) -> None:
    seen: dict[Any, int] = {}
    for i, v in enumerate(values):
        key = _label(v)
        # True == 1 == 1.0 in Python: such values would be one choice, so they count as duplicates
        if key in seen:
            raise At(i, f"{short(v, 60)} is listed twice (also item {seen[key]}); values must be distinct")
        seen[key] = i


class CategoricalParam(Strict):
    type: Literal["categorical"]
    values: list[Any] | dict[str, Any]
    """A list of values, or a mapping label -> value (labels show in reports;
    handy for long prompt templates)."""
    description: str | None = None
    """What the parameter is, for people: shown in the report (report.md, results.json)."""

    @field_validator("values")
    @classmethod
    def _non_empty(cls, v: list[Any] | dict[str, Any]) -> list[Any] | dict[str, Any]:
        if len(v) == 0:
            raise ValueError("needs at least one value")
        if isinstance(v, list):
            _no_duplicates(v)
        else:
            for label in v:
                if not label.strip() or len(label) > MAX_NAME:
                    raise At((label,), f"label must be 1-{MAX_NAME} characters")
                if not label.isprintable():
                    raise At((label,), "label must not contain control characters (it names the value in "
                                       "reports and tables)")
        return v


class ContinuousParam(Strict):
    type: Literal["continuous", "float"]
    min: Float
    max: Float
    step: Float | None = Field(None, gt=0)
    log: bool = False
    description: str | None = None
    """What the parameter is, for people: shown in the report (report.md, results.json)."""

    @model_validator(mode="after")
    def _range(self) -> ContinuousParam:
        if not self.min <= self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        if not math.isfinite(self.max - self.min):
            raise ValueError(f"the range {self.min}..{self.max} is too wide to sample")
        if self.log and self.min <= 0:
            raise ValueError("log scale needs min > 0")
        if self.step is not None:
            points = (self.max - self.min) / self.step
            if not math.isfinite(points) or points > MAX_EXACT_INT:
                raise At("step", f"({self.step}) cuts {self.min}..{self.max} into more than 2**53 points, "
                                 "which floats cannot tell apart; use a larger step or leave step out")
        return self


class DiscreteParam(Strict):
    """Either explicit numeric ``values`` or an integer range ``min``..``max``."""

    type: Literal["discrete", "int", "integer"]
    values: list[Any] | None = None
    """Numbers (integers stay integers: a max_tokens of 64 is sent as 64)."""
    min: Int | None = Field(None, ge=-MAX_EXACT_INT, le=MAX_EXACT_INT)
    max: Int | None = Field(None, ge=-MAX_EXACT_INT, le=MAX_EXACT_INT)
    step: Int = Field(1, gt=0, le=MAX_EXACT_INT)
    description: str | None = None
    """What the parameter is, for people: shown in the report (report.md, results.json)."""

    @model_validator(mode="after")
    def _shape(self) -> DiscreteParam:
        if self.values is None:
            if self.min is None or self.max is None:
                raise ValueError("discrete needs 'values' or both 'min' and 'max'")
            if self.min > self.max:
                raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        else:
            for extra in ("min", "max", "step"):
                if extra in self.model_fields_set:
                    raise At(extra, "cannot be combined with 'values' (give either values or min/max/step)")
            if len(self.values) == 0:
                raise At("values", "needs at least one value")
            for i, x in enumerate(self.values):
                if isinstance(x, bool) or not isinstance(x, (int, float)):
                    raise At(("values", i), f"expected a number, got {short(x, 60)}")
                if isinstance(x, int) and not SQLITE_MIN <= x <= SQLITE_MAX:
                    raise At(("values", i), "is out of range: integers must fit 64 bits (|x| < 2**63)")
            try:
                _no_duplicates(self.values)
            except At as exc:
                raise At(("values", *exc.path), str(exc)) from None
        return self


Parameter = Annotated[
    CategoricalParam | ContinuousParam | DiscreteParam, Field(discriminator="type")
]

RESERVED_PARAMETER_NAMES = frozenset({"input", "expected", "metadata", "case_id", "params"})
"""Template variables every test case provides; a parameter of that name would hide them."""


class SearchSpaceConfig(Strict):
    parameters: dict[Name, Parameter]

    @field_validator("parameters")
    @classmethod
    def _non_empty(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not v:
            raise ValueError("define at least one parameter")
        for name in v:
            if name in RESERVED_PARAMETER_NAMES:
                raise At((name,), f"'{name}' is a reserved template variable (the test case's); rename the parameter")
        return v


# --------------------------------------------------------------------------- evaluation


class TestCasesConfig(Strict):
    __test__ = False  # not a pytest test class despite the name

    path: PathText | None = None
    inline: list[dict[str, Any]] | None = None
    augmentation: AugmentationConfig | None = None
    limit: Int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one(self) -> TestCasesConfig:
        if (self.path is None) == (self.inline is None):
            raise ValueError("give exactly one of 'path' (JSON/JSONL file) or 'inline' (a list)")
        return self


MetricFunction = Text
"""Built-in name (exact_match, contains, regex, numeric, json_valid, json_schema,
similarity, latency, cost, success, llm_judge, custom, sao_preference) or ``module:function``."""


class JudgeConfig(Strict):
    model: ModelName = "local/gemma-3-270m"
    rubric: Text = "Is the response correct and helpful given the expected answer?"
    api_base: Url | None = None
    api_key_env: EnvName | None = None
    temperature: Float = Field(0.0, ge=0, le=2)
    max_tokens: Int = Field(8, ge=1, le=100_000)
    timeout_seconds: Float = Field(60.0, gt=0, le=86_400)


class MetricConfig(Strict):
    weight: Float = Field(1.0, ge=0, le=1e9)
    direction: Literal["higher_is_better", "lower_is_better"] = Field(
        "higher_is_better", validation_alias=AliasChoices("type", "direction")
    )
    function: MetricFunction | None = None
    threshold: Float | None = None
    """higher_is_better: minimum acceptable value (reported as pass/fail).
    lower_is_better: the value that normalises to 0 (e.g. 5000 ms)."""
    budget_per_call: Float | None = Field(None, gt=0)
    """For cost metrics: the per-call cost that normalises to 0."""
    args: dict[str, Any] = Field(default_factory=dict)
    """Extra arguments for the metric function (regex pattern, tolerance, schema ...)."""
    judge: JudgeConfig | None = None

    @model_validator(mode="after")
    def _used(self) -> MetricConfig:
        if self.judge is not None and self.function != "llm_judge":
            raise At("judge", "is only used by 'function: llm_judge'")
        if self.direction == "lower_is_better":
            if self.threshold is not None and self.threshold <= 0:
                raise At("threshold", "must be > 0 for a lower_is_better metric (it is the value that scores 0), "
                                      f"got {self.threshold}")
            if self.threshold is not None and self.budget_per_call is not None:
                raise At("budget_per_call",
                         "give threshold or budget_per_call, not both (both set the value that scores 0)")
        elif self.budget_per_call is not None:
            raise At("budget_per_call", "only applies to lower_is_better metrics (type: lower_is_better)")
        return self


class CustomEvaluatorConfig(Strict):
    enabled: bool = True
    module: Text
    function: Text


class EvaluationConfig(Strict):
    test_cases: TestCasesConfig
    metrics: dict[Name, MetricConfig]
    custom_evaluator: CustomEvaluatorConfig | None = None

    @model_validator(mode="after")
    def _weights(self) -> EvaluationConfig:
        if not self.metrics:
            raise At("metrics", "define at least one metric")
        if sum(m.weight for m in self.metrics.values()) <= 0:
            raise At("metrics", "metric weights must not all be 0")
        return self


# --------------------------------------------------------------------------- optimization


class MABConfig(Strict):
    strategy: Literal["thompson_sampling"] = "thompson_sampling"
    """The bandit proposer samples Beta posteriors (Thompson sampling); the only strategy."""
    exploration_rate: Float = Field(0.1, ge=0, le=1)
    """Share of bandit proposals drawn uniformly at random instead of from the posteriors."""
    confidence_level: Float | None = Field(None, gt=0, lt=1)
    """the-convergence's UCB setting. Thompson sampling has no confidence level,
    so only its default (0.95) is accepted, as a no-op, for old files."""
    bins: Int = Field(8, ge=2, le=100)
    """Continuous parameters are split into this many arms."""

    @field_validator("confidence_level")
    @classmethod
    def _confidence(cls, v: float | None) -> float | None:
        if v is not None and v != 0.95:
            raise ValueError(
                "is not used: the bandit is Thompson sampling, which has no confidence level "
                "(a UCB setting); remove it, or tune exploration_rate instead"
            )
        return v


class EvolutionConfig(Strict):
    population_size: Int = Field(8, ge=1, le=10_000)
    generations: Int = Field(5, ge=1, le=100_000)
    mutation_rate: Float = Field(0.2, ge=0, le=1)
    crossover_rate: Float = Field(0.7, ge=0, le=1)
    elite_size: Int = Field(1, ge=0, le=10_000)
    tournament_size: Int = Field(3, ge=1, le=10_000)
    early_stopping_generations: Int | None = Field(None, ge=1, le=100_000)
    """the-convergence's name for execution.early_stopping.patience."""


class EarlyStoppingConfig(Strict):
    enabled: bool = True
    patience: Int = Field(3, ge=1, le=100_000)
    min_improvement: Float = Field(0.001, ge=0, le=1)


class RacingConfig(Strict):
    """Racing over test cases: abandon a configuration once a sequential test on its case-corrected
    scores (the run's case model) shows it worse than the incumbent (see convergence/engine/racing.py);
    off for exact every-case runs."""

    enabled: bool = True
    min_cases: Int = Field(3, ge=2, le=100_000)
    """Cases before the first test (then about x1.25 more at each look)."""
    alpha: Float = Field(0.2, gt=0, lt=1)
    """Under the case model, bound on the chance of abandoning a configuration at least as good as the
    incumbent over all its looks (each look tests at alpha / looks: z = Phi^-1(1 - alpha / looks)); also the
    level at which confirmation drops a contender (engine/confirm.py). 0.2: on the noisy benchmark (seeds
    1000-1005) 4.7 % of abandons were of a configuration truly at least as good as its incumbent (0.05: 3.0 %,
    and fewer configurations seen)."""


class SelectionConfig(Strict):
    """Which configuration is returned as best, and the budget spent making sure of it
    (see convergence/engine/selection.py)."""

    estimate: Literal["shrinkage", "mean"] = "shrinkage"
    """shrinkage: rank by an empirical-Bayes estimate of each configuration's true score (a mean over few
    cases is pulled toward the run's average, one over many keeps its value); mean: the highest mean wins."""
    confirm_top: Int = Field(3, ge=0, le=100)
    """Configurations confirmed before the run finishes (0: no confirmation; else at least 2: the best is
    confirmed against its runners-up)."""
    confirm_share: Float = Field(0.1, ge=0, le=0.9)
    """Stochastic target: the share of max_calls the search leaves for confirmation (without max_calls,
    confirmation may spend this share of all calls). A deterministic target keeps nothing back; while
    ``auto`` has not decided yet, the share is kept (and handed back to the search if it is deterministic)."""
    stochastic: bool | Literal["auto"] = "auto"
    """The target answers differently when asked again (temperature > 0, a sampled judge): confirmation
    repeats test cases with fresh draws. Otherwise it only asks the cases a top configuration skipped
    (racing or a stop cut it short), with the budget left. auto: known from the config when it can be (a
    LiteLLM target or judge whose temperature can be > 0 is stochastic), else probed early by asking a
    few finished cases again (see convergence/engine/stochastic.py)."""

    @field_validator("confirm_top")
    @classmethod
    def _not_one(cls, v: int) -> int:
        if v == 1:
            raise ValueError("must be 0 (no confirmation) or at least 2: the best is confirmed against its "
                             "runners-up")
        return v


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

RAY_RESOURCE_OPTIONS = ("num_cpus", "num_gpus", "memory")
"""Keys of ``ray.resources`` that are Ray's own options; any other key is a custom resource."""


class RayConfig(Strict):
    """Where and how the Ray backend runs target calls (``execution.backend: ray``; see docs/scaling.md).
    The loop, the society, the store and the reports stay on this machine (the driver)."""

    address: Text = "auto"
    """auto: the cluster this machine belongs to (``ray start`` or ``RAY_ADDRESS``); local: start a one-machine
    Ray for this run; ``ray://host:port``: a remote cluster through Ray Client; ``host:port``: a cluster's GCS."""
    num_actors: Int = Field(2, ge=1, le=10_000)
    """Actors in the pool for I/O-bound targets (LiteLLM, HTTP, async Python): each builds the target once."""
    max_concurrency_per_actor: Int | None = Field(None, ge=1, le=100_000)
    """Calls one actor runs at once (its asyncio ``max_concurrency``); default: the run's concurrency spread
    over the actors, so the global limit, not the pool, is what caps calls."""
    python: Literal["auto", "tasks", "actors"] = "auto"
    """Python targets: tasks (one Ray task per call, for CPU-bound sync functions), actors (the pool), or auto
    (sync function: tasks; async function: actors)."""
    resources: dict[str, Float] = Field(default_factory=dict)
    """Per actor or task: ``num_cpus``, ``num_gpus``, ``memory`` (bytes) and custom resources by name.
    Default: Ray's (an actor holds no CPU while it runs, a task one CPU)."""
    runtime_env: dict[str, Any] = Field(default_factory=dict)
    """Ray runtime environment for the actors and tasks (``working_dir``, ``pip``, ...), passed to Ray as given.
    Ray logs it, ``env_vars`` values included: put no secret in it. Secrets go through ``env_vars`` below."""
    env_vars: list[EnvName] = Field(default_factory=list)
    """More env var names the workers need (e.g. OPENAI_API_KEY, which LiteLLM reads without ``api_key_env``).
    With the ones the target's section names (``*_env`` keys, ``${VAR}``), their values are sent to the
    workers as a task/actor argument and set in the worker's environment, never in the runtime env."""
    connect_timeout_seconds: Float = Field(30.0, gt=0, le=3600)
    """How long connecting to the cluster (and building the actors) may take before the run fails."""

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        v = v.strip()
        if v in ("auto", "local"):
            return v
        rest = v.removeprefix("ray://")
        host, sep, port = rest.rpartition(":")
        if v.startswith("ray://") and not sep:
            host, port = rest, "10001"  # Ray Client's default port
        if host and port.isdigit() and "/" not in rest and host.isprintable() and not any(
                c.isspace() for c in host):
            if 1 <= int(port) <= 65535:
                return v
            raise ValueError(f"{short(v, 60)}: port {port} is out of range (1-65535)")
        raise ValueError(f"{short(v, 60)}: expected auto, local, ray://host:port or host:port")

    @field_validator("resources")
    @classmethod
    def _resources(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: x for k, x in v.items() if x < 0}
        if bad:
            raise ValueError(f"resource amounts must be >= 0: {bad}")
        for k, x in v.items():
            if not k.strip() or not k.isprintable():
                raise At((k,), "a resource needs a name (printable, not empty)")
            if k == "memory" and x != int(x):
                raise At((k,), f"is in bytes: a whole number, got {x}")
        return v

    @field_validator("runtime_env")
    @classmethod
    def _runtime_env(cls, v: dict[str, Any]) -> dict[str, Any]:
        env = v.get("env_vars", {})
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in env.items()):
            raise ValueError("runtime_env.env_vars must map names to strings")
        for k in env:
            if not _ENV_NAME.match(k):
                raise At(("env_vars", k), f"{short(k, 60)} is not an environment variable name (letters, digits "
                                          "and _, not starting with a digit)")
        return v


class ExecutionConfig(Strict):
    backend: Literal["local", "ray"] = "local"
    """Where target calls run: local (this process) or ray (actors and tasks on a Ray cluster; see ``ray``)."""
    ray: RayConfig = Field(default_factory=RayConfig)
    """The Ray backend's settings (used with ``backend: ray``)."""
    mode: Literal["async", "generational"] = "async"
    """async: the next generation's calls start while the last one's stragglers finish (no slot idles);
    generational: each generation waits for its slowest call (repeats exactly under a seed)."""
    concurrency: Int = Field(
        4, ge=1, le=100_000, validation_alias=AliasChoices("concurrency", "parallel_workers")
    )
    max_retries: Int | None = Field(None, ge=0, le=20)
    """Overrides the target's retry.max_retries."""
    retry_delay_seconds: Float | None = Field(None, ge=0, le=3600)
    """Overrides the target's retry.backoff_initial_seconds."""
    timeout_seconds: Float | None = Field(None, gt=0, le=86_400)
    """Overrides the target's timeout_seconds."""
    experiments_per_generation: Int | None = Field(None, ge=1, le=10_000)
    """the-convergence's name for evolution.population_size (configurations per generation)."""
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)


class BudgetConfig(Strict):
    max_calls: Int | None = Field(None, ge=1)
    max_cost_usd: Float | None = Field(None, gt=0, le=1e9)
    max_seconds: Float | None = Field(None, gt=0, le=1e9)


class OptimizationConfig(Strict):
    algorithm: Literal["mab_evolution", "genetic", "mab_only", "random"] = "mab_evolution"
    seed: Int | None = Field(0, ge=0, le=SQLITE_MAX)
    """Stored as a SQLite integer: 0 <= seed < 2**63."""
    mab: MABConfig = Field(default_factory=MABConfig)
    evolution: EvolutionConfig = Field(default_factory=EvolutionConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    racing: RacingConfig = Field(default_factory=RacingConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    warm_start: Int = Field(3, ge=0, le=10_000)
    """How many of the study's best earlier configurations seed generation 0."""

    @model_validator(mode="after")
    def _aliases_and_elite(self) -> OptimizationConfig:
        evo, ex = self.evolution, self.execution
        per_gen = ex.experiments_per_generation
        if per_gen is not None:
            if "population_size" in evo.model_fields_set and evo.population_size != per_gen:
                raise At(
                    "execution.experiments_per_generation",
                    f"({per_gen}) is the-convergence's name for evolution.population_size, which is "
                    f"{evo.population_size}; give one of them",
                )
            evo.population_size = per_gen
        if evo.early_stopping_generations is not None:
            es = ex.early_stopping
            if "patience" in es.model_fields_set and es.patience != evo.early_stopping_generations:
                raise At(
                    "evolution.early_stopping_generations",
                    f"({evo.early_stopping_generations}) is the-convergence's name for "
                    f"execution.early_stopping.patience, which is {es.patience}; give one of them",
                )
            es.patience = evo.early_stopping_generations
        if evo.elite_size >= evo.population_size and evo.generations > 1:
            raise At(
                "evolution.elite_size",
                f"({evo.elite_size}) must be smaller than population_size ({evo.population_size})",
            )
        return self


# --------------------------------------------------------------------------- output, storage


class ExportBestConfig(Strict):
    enabled: bool = True
    format: Literal["yaml", "json", "python"] = "yaml"
    output_path: PathText | None = None


Visualization = Literal["score_over_time", "parameter_importance", "pareto_front", "cost_vs_quality", "society"]
_DEFAULT_FORMATS: tuple[ReportFormat, ...] = ("json", "markdown", "csv")
_DEFAULT_VISUALIZATIONS: tuple[Visualization, ...] = (
    "score_over_time", "cost_vs_quality", "parameter_importance", "society")


class OutputConfig(Strict):
    save_path: PathText = "results"
    save_all_experiments: bool = True
    formats: list[ReportFormat] = Field(default_factory=lambda: list(_DEFAULT_FORMATS))
    visualizations: list[Visualization] = Field(default_factory=lambda: list(_DEFAULT_VISUALIZATIONS))
    plot_format: Literal["png", "html"] = "png"
    export_best_config: ExportBestConfig = Field(default_factory=ExportBestConfig)


class StorageConfig(Strict):
    path: PathText = ".convergence/convergence.db"
    """SQLite file, relative to the YAML's directory: one per project."""


# --------------------------------------------------------------------------- tracing


class WeaveConfig(Strict):
    enabled: bool = False
    project: Text | None = None
    entity: Text | None = None


class TracingConfig(Strict):
    weave: WeaveConfig = Field(default_factory=WeaveConfig)


# --------------------------------------------------------------------------- root


class ConvergenceConfig(Strict):
    """The whole ``optimization.yaml``."""

    study: Name | None = None
    """Name grouping runs for warm start and resume; defaults to api/target name or the file name."""
    api: ApiConfig | None = None
    """the-convergence's target section (see compat.py)."""
    target: TargetConfig | None = None
    search_space: SearchSpaceConfig
    evaluation: EvaluationConfig
    optimization: OptimizationConfig = Field(default_factory=OptimizationConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    legacy: LegacyConfig | None = None
    """the-convergence's cross-run tracking settings (see compat.py)."""
    society: SocietyConfig = Field(default_factory=lambda: SocietyConfig())
    tracing: TracingConfig = Field(default_factory=TracingConfig)

    @model_validator(mode="after")
    def _target(self) -> ConvergenceConfig:
        if (self.api is None) == (self.target is None):
            raise ValueError("give exactly one of 'api' (the-convergence style) or 'target'")
        self._execution_overrides()
        t = self.resolved_target
        if t.retry.backoff_initial_seconds > t.retry.backoff_max_seconds:
            ex = self.optimization.execution
            where = (("optimization", "execution", "retry_delay_seconds") if ex.retry_delay_seconds is not None
                     else ("target", "retry", "backoff_initial_seconds"))
            raise At(where, f"({t.retry.backoff_initial_seconds}) must be <= the longest backoff, "
                            f"retry.backoff_max_seconds ({t.retry.backoff_max_seconds})")
        if isinstance(t, LiteLLMTargetConfig) and t.call_params is not None:
            for i, name in enumerate(t.call_params):
                if name not in self.search_space.parameters:
                    raise At(("target", "call_params", i),
                             f"call parameter {short(name, 60)} is not a search-space parameter "
                             f"(have: {', '.join(list(self.search_space.parameters)[:20])})")
        if self.legacy is not None:
            self.legacy.apply(self)
        if self.society.agents is not None and "algorithm" in self.optimization.model_fields_set:
            raise At(("society", "agents"), f"replaces optimization.algorithm ({self.optimization.algorithm}) "
                                            f"as the list of proposers; give one of them")
        return self

    def _execution_overrides(self) -> None:
        """``optimization.execution`` timeout/retry settings override the target's:
        refuse a file that sets both to different values (one would be ignored).
        (With ``api:``, ``request.timeout_seconds`` stays the HTTP client's limit and
        ``execution.timeout_seconds`` bounds each attempt: both are used.)"""
        ex = self.optimization.execution
        pairs: list[tuple[str, Any, tuple[Any, ...], Any]] = []
        if self.target is not None:
            t = self.target
            if "timeout_seconds" in t.model_fields_set:
                pairs.append(("timeout_seconds", ex.timeout_seconds, ("target", "timeout_seconds"), t.timeout_seconds))
            if "retry" in t.model_fields_set:
                r = t.retry
                if "max_retries" in r.model_fields_set:
                    pairs.append(("max_retries", ex.max_retries, ("target", "retry", "max_retries"), r.max_retries))
                if "backoff_initial_seconds" in r.model_fields_set:
                    pairs.append(("retry_delay_seconds", ex.retry_delay_seconds,
                                  ("target", "retry", "backoff_initial_seconds"), r.backoff_initial_seconds))
        for name, value, other, other_value in pairs:
            if value is not None and value != other_value:
                raise At(("optimization", "execution", name),
                         f"({value}) overrides {'.'.join(map(str, other))} ({other_value}); give one of them")

    @property
    def resolved_target(self) -> AnyTargetConfig:
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
            name = t.model
        elif isinstance(t, HTTPTargetConfig):
            name = t.endpoint
        elif isinstance(t, PythonTargetConfig):
            name = t.function
        else:
            name = t.type
        return name[:MAX_NAME]

