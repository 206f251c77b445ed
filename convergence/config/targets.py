"""The ``target:`` section: what gets called (a LiteLLM model, an HTTP endpoint, a Python
callable, or a target plugin), with its auth, request, response and retry settings."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from convergence.config.fields import (
    At,
    EnvName,
    FieldPath,
    Float,
    Int,
    ModelName,
    Strict,
    Text,
    Url,
    short,
)

# --------------------------------------------------------------------------- target


class AuthConfig(Strict):
    """Credentials always come from environment variables, never the YAML."""

    type: Literal["bearer", "api_key", "basic", "none"] = "none"
    token_env: EnvName | None = None
    header_name: Text = "x-api-key"
    username: str | None = None
    username_env: EnvName | None = None
    password_env: EnvName | None = None

    @field_validator("username")
    @classmethod
    def _username(cls, v: str | None) -> str | None:
        if v is not None and (":" in v or not v.isprintable()):
            raise ValueError(f"{short(v, 40)} cannot be a Basic-auth user name: it may not contain ':' (it "
                             "separates the user from the password) or control characters")
        return v

    @model_validator(mode="after")
    def _needs_env(self) -> AuthConfig:
        if self.type in ("bearer", "api_key") and not self.token_env:
            raise ValueError(f"auth type '{self.type}' needs token_env (the env var holding the token)")
        if self.type == "basic" and not self.password_env:
            raise ValueError("auth type 'basic' needs password_env")
        if self.type == "basic" and (self.username is None) == (self.username_env is None):
            raise ValueError("auth type 'basic' needs one of username or username_env")
        unused = {
            "bearer": ("username", "username_env", "password_env", "header_name"),
            "api_key": ("username", "username_env", "password_env"),
            "basic": ("token_env", "header_name"),
            "none": ("token_env", "username", "username_env", "password_env", "header_name"),
        }[self.type]
        for name in unused:
            if name in self.model_fields_set:
                raise At(name, f"is not used by auth type '{self.type}'")
        return self


class RequestConfig(Strict):
    method: Literal["GET", "POST", "PUT", "PATCH"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: Float = Field(30.0, gt=0, le=86_400)
    body: Any = None
    """JSON body template: strings are Jinja templates over the test case and
    the configuration. Without it the body is the test case input merged with
    the configuration's parameters."""


class ResponseConfig(Strict):
    result_field: FieldPath | None = "result"
    """Dotted path to the output, e.g. ``choices.0.message.content``."""
    success_field: FieldPath | None = None
    error_field: FieldPath | None = "error"
    cost_field: FieldPath | None = None


class RetryConfig(Strict):
    max_retries: Int = Field(3, ge=0, le=20)
    backoff_initial_seconds: Float = Field(0.5, ge=0, le=3600)
    backoff_max_seconds: Float = Field(20.0, ge=0, le=3600)


class _TargetCommon(Strict):
    timeout_seconds: Float = Field(60.0, gt=0, le=86_400)
    rate_limit_per_second: Float | None = Field(None, ge=0.001, le=1_000_000)
    retry: RetryConfig = Field(default_factory=RetryConfig)


ROLES = ("system", "user", "assistant", "developer")


def check_messages(v: list[dict[str, str]] | None) -> list[dict[str, str]] | None:
    """Chat messages: each a mapping with a known ``role`` and a ``content`` template."""
    if v is None:
        return v
    if not v:
        raise ValueError("needs at least one message (or use prompt)")
    for i, m in enumerate(v):
        for key in m:
            if key not in ("role", "content", "name"):
                raise At((i, key), f"unknown message key {short(key, 40)}; a message has role, content (and name)")
        if "role" not in m:
            raise At(i, f"a message needs a 'role' ({', '.join(ROLES)})")
        if m["role"] not in ROLES:
            raise At((i, "role"), f"got {short(m['role'], 40)}, expected one of {', '.join(ROLES)}")
        if "content" not in m:
            raise At(i, "a message needs a 'content' (a Jinja template)")
    return v


class LiteLLMTargetConfig(_TargetCommon):
    """Any LiteLLM model string, including the embedded ``local/gemma-3-270m``."""

    type: Literal["litellm"] = "litellm"
    model: ModelName
    prompt: str | None = None
    """Completion-style Jinja template (the embedded model is a base model)."""
    messages: list[dict[str, str]] | None = None
    """Chat messages (``role`` and ``content``), each ``content`` a Jinja template."""
    api_base: Url | None = None
    api_key_env: EnvName | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    """Fixed call parameters, overridden by the configuration under test."""
    call_params: list[Text] | None = None
    """Search-space parameters to pass to the LLM call. Default: those whose
    name is a known completion parameter (temperature, max_tokens, stop, ...)."""

    _messages = field_validator("messages")(check_messages)

    @model_validator(mode="after")
    def _one_prompt(self) -> LiteLLMTargetConfig:
        if self.prompt is None and self.messages is None:
            self.prompt = "{{ input }}"
        if self.prompt is not None and self.messages is not None:
            raise ValueError("give either prompt or messages, not both")
        return self


class HTTPTargetConfig(_TargetCommon):
    type: Literal["http"] = "http"
    endpoint: Text
    auth: AuthConfig = Field(default_factory=AuthConfig)
    request: RequestConfig = Field(default_factory=RequestConfig)
    response: ResponseConfig = Field(default_factory=ResponseConfig)


class PythonTargetConfig(_TargetCommon):
    type: Literal["python"] = "python"
    function: Text
    """``module:function``; sync or async; called as ``fn(params, input)``."""

    @field_validator("function")
    @classmethod
    def _colon(cls, v: str) -> str:
        module, _, attr = v.partition(":")
        if not module.strip() or not attr.strip():
            raise ValueError("expected 'module:function', e.g. 'my_pkg.target:call'")
        return v


class PluginTargetConfig(_TargetCommon):
    """A target from an installed plugin (``type`` names it); ``options`` go to its factory."""

    type: Text
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("type")
    @classmethod
    def _installed(cls, v: str) -> str:
        from convergence.registry import registry, unknown

        if registry().find("target", v) is None:
            raise ValueError(unknown("target", v, registry().names("target")))
        return v


BUILTIN_TARGETS = ("litellm", "http", "python")


def _target_tag(v: Any) -> str | None:
    tag = v.get("type") if isinstance(v, dict) else getattr(v, "type", None)
    if tag is None or tag in BUILTIN_TARGETS:
        return tag
    return "plugin"


TargetConfig = Annotated[
    Annotated[LiteLLMTargetConfig, Tag("litellm")]
    | Annotated[HTTPTargetConfig, Tag("http")]
    | Annotated[PythonTargetConfig, Tag("python")]
    | Annotated[PluginTargetConfig, Tag("plugin")],
    Discriminator(_target_tag),
]
AnyTargetConfig = LiteLLMTargetConfig | HTTPTargetConfig | PythonTargetConfig | PluginTargetConfig
