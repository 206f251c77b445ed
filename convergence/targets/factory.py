"""Build the target (and its runner) a config describes.

LiteLLM is imported only when a LiteLLM target is built: importing it costs
seconds, and HTTP or Python targets never need it. Likewise httpx and jinja2
(the HTTP target) load only for HTTP configs, so ``validate`` and Python
targets start faster.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from convergence.config.models import (
    AnyTargetConfig,
    HTTPTargetConfig,
    LiteLLMTargetConfig,
    PythonTargetConfig,
)
from convergence.targets.base import Target
from convergence.targets.runner import CallRunner


def build_target(cfg: AnyTargetConfig, base_dir: Path, concurrency: int) -> Target:
    """The target for ``cfg`` through the registry's factory for its ``type`` (built-in or plugin);
    ``concurrency`` sizes its connection or thread pool."""
    from convergence.registry import PluginError, registry

    factory = registry().load("target", cfg.type)
    target = factory(cfg, base_dir, concurrency)
    if not isinstance(target, Target):
        raise PluginError(f"target {cfg.type!r} ({registry().get('target', cfg.type).origin}): its factory "
                          f"returned a {type(target).__name__}, not a Target (async call, aclose; docs/plugins.md)")
    return target


def litellm_target(cfg: Any, base_dir: Path, concurrency: int) -> Target:
    from convergence.targets.litellm_target import LiteLLMTarget

    assert isinstance(cfg, LiteLLMTargetConfig)
    return LiteLLMTarget(cfg)


def http_target(cfg: Any, base_dir: Path, concurrency: int) -> Target:
    from convergence.targets.http_target import HTTPTarget

    assert isinstance(cfg, HTTPTargetConfig)
    return HTTPTarget(cfg, max_connections=concurrency)


def python_target(cfg: Any, base_dir: Path, concurrency: int) -> Target:
    from convergence.targets.python_target import PythonTarget

    assert isinstance(cfg, PythonTargetConfig)
    return PythonTarget(cfg, base_dir, max_threads=concurrency)


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
