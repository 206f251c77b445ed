"""Build the target (and its runner) a config describes.

LiteLLM is imported only when a LiteLLM target is built: importing it costs
seconds, and HTTP or Python targets never need it. Likewise httpx and jinja2
(the HTTP target) load only for HTTP configs, so ``validate`` and Python
targets start faster.
"""

from __future__ import annotations

import os
from pathlib import Path

from convergence.config.models import HTTPTargetConfig, LiteLLMTargetConfig, PythonTargetConfig
from convergence.targets.base import Target
from convergence.targets.python_target import PythonTarget
from convergence.targets.runner import CallRunner

AnyTargetConfig = LiteLLMTargetConfig | HTTPTargetConfig | PythonTargetConfig


def build_target(cfg: AnyTargetConfig, base_dir: Path, concurrency: int) -> Target:
    """The target for ``cfg``; ``concurrency`` sizes its connection or thread pool."""
    if isinstance(cfg, HTTPTargetConfig):
        from convergence.targets.http_target import HTTPTarget

        return HTTPTarget(cfg, max_connections=concurrency)
    if isinstance(cfg, PythonTargetConfig):
        return PythonTarget(cfg, base_dir, max_threads=concurrency)
    if isinstance(cfg, LiteLLMTargetConfig):
        from convergence.targets.litellm_target import LiteLLMTarget

        return LiteLLMTarget(cfg)
    raise TypeError(f"unknown target config {type(cfg).__name__}")


def build_runner(cfg: AnyTargetConfig, target: Target) -> CallRunner:
    """A runner applying the config's timeout, retry and rate-limit settings."""
    return CallRunner(
        target,
        retry=cfg.retry,
        timeout_seconds=cfg.timeout_seconds,
        rate_limit_per_second=cfg.rate_limit_per_second,
    )


def missing_env_vars(cfg: AnyTargetConfig) -> list[str]:
    """Env vars the target needs that are unset, checked before a run starts."""
    if isinstance(cfg, HTTPTargetConfig):
        from convergence.targets.http_target import missing_env

        return missing_env(cfg)
    if isinstance(cfg, LiteLLMTargetConfig) and cfg.api_key_env and not os.environ.get(cfg.api_key_env):
        return [cfg.api_key_env]
    return []
