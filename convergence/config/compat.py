"""the-convergence's configuration sections, so its YAML files load unchanged.

Each section is translated into our own settings (see models.py), and every
option in it either does what it meant there or is refused with a message:

* ``api:`` is a target: ``api.model`` a LiteLLM one, ``api.endpoint`` an HTTP
  one. ``api.models`` (a model registry), ``adapter_enabled`` and
  ``mock_mode`` are refused, as are options the chosen kind of target does not
  use (a request body for a LiteLLM model, a prompt for an HTTP endpoint).
* ``legacy:`` (cross-run tracking) is our SQLite store: ``enabled: false``
  turns warm start off, ``session_id`` names the study, ``sqlite_path`` is
  ``storage.path``, ``export_dir`` is ``output.save_path``,
  ``export_formats`` is ``output.formats``; ``tracking_backend`` accepts only
  the SQLite store we implement.
* ``evaluation.test_cases.augmentation`` is refused when enabled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator, model_validator

from convergence.config.fields import At, EnvName, Float, Int, Name, PathText, ReportFormat, Strict, Text, Url
from convergence.config.targets import (
    AuthConfig,
    HTTPTargetConfig,
    LiteLLMTargetConfig,
    RequestConfig,
    ResponseConfig,
    check_messages,
)

if TYPE_CHECKING:
    from convergence.config.models import ConvergenceConfig


class ApiConfig(Strict):
    """the-convergence's ``api:`` section. ``model`` selects LiteLLM,
    ``endpoint`` a plain HTTP endpoint."""

    name: Name
    description: str | None = None
    """What the target is, for people: shown at the top of the report (report.md, results.json)."""
    endpoint: Text | None = None
    model: Text | None = None
    models: dict[str, Any] | None = None
    """the-convergence's model registry: refused, whatever its entries say."""
    auth: AuthConfig = Field(default_factory=AuthConfig)
    request: RequestConfig = Field(default_factory=RequestConfig)
    response: ResponseConfig = Field(default_factory=ResponseConfig)
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    api_base: Url | None = None
    api_key_env: EnvName | None = None
    adapter_enabled: bool = False
    mock_mode: bool = False

    _messages = field_validator("messages")(check_messages)

    @model_validator(mode="after")
    def _check(self) -> ApiConfig:
        if self.mock_mode:
            raise At("mock_mode", "is not supported: Convergence always calls the real target")
        if self.adapter_enabled:
            raise At("adapter_enabled", "is not supported; describe the request with request.body instead")
        if self.models:
            raise At(
                "models",
                "(a model registry) is not supported; use a 'model' search-space parameter "
                "with a LiteLLM target instead",
            )
        if not self.endpoint and not self.model:
            raise ValueError("api needs either 'endpoint' (HTTP) or 'model' (a LiteLLM model string)")
        if self.model:
            self._check_litellm()
        else:
            for name in ("prompt", "messages", "api_base", "api_key_env"):
                if name in self.model_fields_set:
                    raise At(name, "is only used with api.model (a LiteLLM target); for an HTTP endpoint "
                                   "describe the call with request.body")
        return self

    def _check_litellm(self) -> None:
        """With ``model`` the call goes through LiteLLM: HTTP-only options would be ignored."""
        if self.prompt is not None and self.messages is not None:
            raise ValueError("give either prompt or messages, not both")
        if self.endpoint and self.api_base:
            raise At("api_base", "with api.model, 'endpoint' already is the api_base; give one of them")
        for name in self.request.model_fields_set - {"timeout_seconds"}:
            raise At(("request", name), "is not used with api.model (LiteLLM builds the request); "
                                        "only request.timeout_seconds applies")
        for name in self.response.model_fields_set:
            raise At(("response", name), "is not used with api.model (LiteLLM parses the response)")
        if self.auth.type not in ("none", "bearer"):
            raise At(("auth", "type"), f"'{self.auth.type}' is not used with api.model; give the key's "
                                       "env var as api_key_env (or auth: {type: bearer, token_env: ...})")
        if self.api_key_env and self.auth.token_env and self.api_key_env != self.auth.token_env:
            raise At("api_key_env", f"({self.api_key_env}) and auth.token_env ({self.auth.token_env}) "
                                    "both name the key; give one of them")

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


class AugmentationConfig(Strict):
    """the-convergence's test-case augmentation: refused when enabled."""

    enabled: bool = False
    mutation_rate: Float = 0.0
    crossover_rate: Float = 0.0
    augmentation_factor: Int = 1
    preserve_originals: bool = True

    @model_validator(mode="after")
    def _off(self) -> AugmentationConfig:
        if self.enabled:
            raise ValueError(
                "test-case augmentation is not supported: mutated test cases have no trustworthy "
                "expected answers; set enabled: false"
            )
        return self


TRACKING_BACKENDS = ("builtin", "sqlite")
"""Both mean the project's SQLite store, the only tracking we implement."""


class LegacyConfig(Strict):
    """the-convergence's cross-run tracking; here warm start from the SQLite store."""

    enabled: bool = True
    """false: no warm start from earlier runs (optimization.warm_start = 0)."""
    session_id: Name | None = None
    """The study name when neither ``study`` nor ``api.name`` is given."""
    tracking_backend: str = "builtin"
    sqlite_path: PathText | None = None
    """= storage.path"""
    export_dir: PathText | None = None
    """= output.save_path"""
    export_formats: list[ReportFormat] | None = None
    """= output.formats"""

    @field_validator("tracking_backend")
    @classmethod
    def _backend(cls, v: str) -> str:
        if v not in TRACKING_BACKENDS:
            raise ValueError(
                f"{v[:60]!r} is not supported: runs are tracked in the project's SQLite store "
                f"(storage.path); use one of {', '.join(TRACKING_BACKENDS)}"
            )
        return v

    def apply(self, cfg: ConvergenceConfig) -> None:
        """Move these settings to the ones they mean, refusing contradictions."""
        opt = cfg.optimization
        if not self.enabled:
            if "warm_start" in opt.model_fields_set and opt.warm_start != 0:
                raise At(("legacy", "enabled"), f"false turns warm start off, but optimization.warm_start "
                                                f"is {opt.warm_start}; give one of them")
            opt.warm_start = 0
        if self.sqlite_path is not None:
            _move(cfg, "storage", "path", self.sqlite_path, "sqlite_path")
        if self.export_dir is not None:
            _move(cfg, "output", "save_path", self.export_dir, "export_dir")
        if self.export_formats is not None:
            _move(cfg, "output", "formats", list(self.export_formats), "export_formats")


def _move(cfg: ConvergenceConfig, section: str, field: str, value: Any, legacy_name: str) -> None:
    target = getattr(cfg, section)
    explicit = section in cfg.model_fields_set and field in target.model_fields_set
    if explicit and getattr(target, field) != value:
        raise At(("legacy", legacy_name), f"is the-convergence's name for {section}.{field}, which is set "
                                          f"to something else; give one of them")
    setattr(target, field, value)

