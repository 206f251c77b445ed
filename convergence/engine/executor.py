"""Where target calls run: the engine's one seam to the machines that do the work.

The engine decides *what* is called and *when*: the order of test cases, the
global concurrency limit, racing, budgets and the kill-safe call counter. An
:class:`Executor` only runs one call, with the target's own timeout, retries
and rate limit, and returns its :class:`CallResult`: a failed call is the
result's ``error``; it raises only for an error that stops the run (a Ray
backend that no call can get past). ``LocalExecutor`` runs calls in this process; ``RayExecutor``
(engine/ray_executor.py, imported only for ``execution.backend: ray``) sends
each attempt to a Ray cluster and implements the same two methods.
:func:`build_executor` picks the one the config asks for.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from convergence.config.loader import LoadedConfig
from convergence.core.types import CallResult, Config, TestCase
from convergence.errors import ConvergenceError
from convergence.targets.base import Target
from convergence.targets.factory import AnyTargetConfig
from convergence.targets.runner import CallRunner, Gate


@runtime_checkable
class Executor(Protocol):
    async def call(self, params: Config, case: TestCase, gate: Gate | None = None) -> CallResult:
        """One target call (retried); ``gate`` is awaited right before every attempt goes out. A failed
        call is the result's ``error``; a :class:`ConvergenceError` raised here stops the run."""
        ...

    async def aclose(self) -> None:
        ...


class LocalExecutor:
    """Calls the target in this process, through a :class:`CallRunner`."""

    def __init__(self, target: Target, runner: CallRunner, *, owns_target: bool = True) -> None:
        self.target = target
        self.runner = runner
        self.owns_target = owns_target
        """Close the target with the executor (False for a target the caller injected and closes itself)."""

    @classmethod
    def from_config(cls, cfg: AnyTargetConfig, base_dir: Path, concurrency: int,
                    target: Target | None = None) -> LocalExecutor:
        """The config's target (or ``target``, injected) behind its timeout, retry and rate-limit settings."""
        from convergence.targets.factory import build_runner, build_target

        built = target or build_target(cfg, base_dir, concurrency)
        return cls(built, build_runner(cfg, built), owns_target=target is None)

    async def call(self, params: Config, case: TestCase, gate: Gate | None = None) -> CallResult:
        return await self.runner.run(params, case, gate)

    async def aclose(self) -> None:
        if self.owns_target:
            await self.target.aclose()


async def build_executor(loaded: LoadedConfig, target: Target | None = None) -> Executor:
    """The executor ``optimization.execution.backend`` asks for: local (the default), or Ray, which
    connects to the cluster and starts its actors here, so a cluster that cannot be reached (or a
    target that cannot be built on it) fails before any call."""
    cfg = loaded.config
    ex = cfg.optimization.execution
    if ex.backend == "local":
        return LocalExecutor.from_config(cfg.resolved_target, loaded.base_dir, ex.concurrency, target)
    if target is not None:
        raise ConvergenceError("a target object passed in runs in this process: use execution.backend: local "
                               "with it, or let the Ray backend build the target from the config")
    from convergence.engine.ray_executor import start_ray_executor

    return await start_ray_executor(cfg.resolved_target, ex.ray, loaded.base_dir, ex.concurrency,
                                    target_secret_names(loaded.written))


_ENV_REF = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")
"""A ``${VAR}`` reference (``$${`` is a literal ``${``)."""


def target_secret_names(written: Mapping[str, Any]) -> set[str]:
    """The env vars the target's own section names, as written: its ``*_env`` keys' values
    (``api_key_env``, ``token_env`` ...) and its ``${VAR}`` references. Nothing from the rest of the
    config (the society's LLM, tracing, the judge): the Ray backend ships only these (and
    ``ray.env_vars``) to the workers."""
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                if isinstance(k, str) and k.endswith("_env") and isinstance(v, str):
                    names.add(v)
                else:
                    walk(v)
        elif isinstance(node, (list, tuple)):
            for v in node:
                walk(v)
        elif isinstance(node, str) and "${" in node:
            names.update(_ENV_REF.findall(node))

    walk(written.get("target", written.get("api")))
    return names
