"""The worker's side of the Ray backend: what a Ray actor or task builds and runs.

A :class:`TargetSpec` (the target's config with every secret put back as its ``${VAR}``
reference) travels to the workers; :class:`TargetActor` builds the target once per actor and
makes single attempts; sync Python callables run as :func:`python_task`. Errors come back as
:class:`RemoteError` values (a remote exception's class may not exist on the driver). The
driver's side is :mod:`convergence.engine.ray_executor`.
"""

from __future__ import annotations

import asyncio
import builtins
import inspect
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from convergence.config.models import AnyTargetConfig, PythonTargetConfig
from convergence.core.types import CallResult, Config, TestCase
from convergence.errors import ConvergenceError
from convergence.targets.base import Target, TargetError


class RayBackendError(ConvergenceError):
    """The Ray backend cannot start: Ray missing, the cluster unreachable, the target not buildable on a worker."""


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """What a worker needs to build the target; holds no secret value (``${NAME}`` stands in)."""

    token: str
    """Unique per run: the key of the target a worker process built and keeps."""
    cls: type[BaseModel]
    data: dict[str, Any]
    base_dir: str
    concurrency: int

    def config(self) -> AnyTargetConfig:
        from convergence.config.loader import interpolate

        data, problems = interpolate(self.data)
        if problems:
            raise TargetError("; ".join(p.message for p in problems), retryable=False)
        cfg: AnyTargetConfig = self.cls.model_validate(data)  # type: ignore[assignment]
        return cfg

    def folder(self) -> Path:
        """The YAML's folder when this machine has it, else the worker's working directory
        (where ``runtime_env.working_dir`` unpacks)."""
        base = Path(self.base_dir)
        return base if base.is_dir() else Path.cwd()


def target_spec(cfg: AnyTargetConfig, base_dir: Path, concurrency: int, secret_names: set[str]) -> TargetSpec:
    """The worker's recipe for ``cfg``: its fields as JSON with the value of every named secret env var
    replaced by its ``${NAME}`` reference, checked to rebuild the same config here."""
    values = sorted(((os.environ[n], n) for n in secret_names if len(os.environ.get(n, "")) >= 4),
                    key=lambda vn: -len(vn[0]))

    def scrub(node: Any) -> Any:
        if isinstance(node, str):
            node = node.replace("${", "$${")
            for value, name in values:
                node = node.replace(value, "${" + name + "}")
            return node
        if isinstance(node, dict):
            return {k: scrub(v) for k, v in node.items()}
        if isinstance(node, list):
            return [scrub(v) for v in node]
        return node

    spec = TargetSpec(uuid.uuid4().hex, type(cfg), scrub(cfg.model_dump(mode="json", exclude_unset=True)),
                      str(base_dir.resolve()), concurrency)
    try:
        same = spec.config() == cfg
    except Exception:  # noqa: BLE001 - any failure to rebuild means the recipe is unusable
        same = False
    if not same:
        raise RayBackendError(f"the {cfg.type} target's config does not survive the trip to a Ray worker "
                              "(its JSON form rebuilds a different config); run it with backend: local")
    return spec


@dataclass(slots=True)
class RemoteError:
    """An attempt's exception, sent back as a value (Ray would wrap it and drop its fields)."""

    type_name: str
    message: str
    retryable: bool | None
    """None: not a TargetError (``base`` says whether the runner retries it)."""
    status_code: int | None = None
    retry_after: float | None = None
    base: str | None = None
    """``TimeoutError`` or ``ConnectionError`` when the worker's exception is one (``isinstance``, the
    local runner's rule for retrying), so the driver rebuilds it as a subclass of that built-in."""

    @classmethod
    def of(cls, exc: BaseException) -> RemoteError:
        if isinstance(exc, TargetError):
            return cls("TargetError", str(exc), exc.retryable, exc.status_code, exc.retry_after)
        base = next((b.__name__ for b in _RETRIED_BASES if isinstance(exc, b)), None)
        return cls(type(exc).__name__, str(exc), None, base=base)

    def exception(self) -> Exception:
        if self.retryable is not None:
            return TargetError(self.message, retryable=self.retryable, status_code=self.status_code,
                               retry_after=self.retry_after)
        base: type[Exception] = next((b for b in _RETRIED_BASES if b.__name__ == self.base), Exception)
        return _named_error(self.type_name, base)(self.message)


_RETRIED_BASES: tuple[type[Exception], ...] = (TimeoutError, ConnectionError)
"""What the runner retries besides a retryable TargetError (``convergence.targets.runner._retryable``)."""
_NAMED: dict[tuple[str, type[Exception]], type[Exception]] = {}


def _named_error(name: str, base: type[Exception]) -> type[Exception]:
    """An exception class named like the worker's (``CallRunner`` describes errors by type name) and
    derived from ``base``: for a retried base, the built-in itself when the name is one of its subclasses."""
    known = getattr(builtins, name, None) if base is not Exception else None
    if isinstance(known, type) and issubclass(known, base):
        return known
    key = (name, base)
    if key not in _NAMED:
        _NAMED[key] = type(name, (base,), {"__module__": __name__})
    return _NAMED[key]


Secrets = dict[str, str]
"""The named env vars' values (name -> value), shipped as an object argument, never in a runtime env."""


def export_secrets(secrets: Secrets) -> None:
    """Set the shipped values in this worker process's environment (only those names)."""
    for name, value in secrets.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


class TargetActor:
    """One target instance, built once, serving ``max_concurrency`` attempts at a time (an async Ray actor)."""

    def __init__(self, spec: TargetSpec, secrets: Secrets) -> None:
        self.target: Target | None = None
        self.error: str | None = None
        try:
            from convergence.targets.factory import build_target

            export_secrets(secrets)
            self.target = build_target(spec.config(), spec.folder(), spec.concurrency)
        except Exception as exc:  # noqa: BLE001 - reported by ready(), before any call
            self.error = f"{type(exc).__name__}: {exc}"

    async def ready(self) -> str | None:
        """None once the target is built, else why it could not be."""
        return self.error

    async def call(self, params: Config, case: TestCase) -> CallResult | RemoteError:
        if self.target is None:
            return RemoteError("TargetError", f"target not built: {self.error}", False)
        try:
            return await self.target.call(params, case)
        except Exception as exc:  # noqa: BLE001 - sent back as a value, raised again on the driver
            return RemoteError.of(exc)

    async def aclose(self) -> None:
        if self.target is not None:
            await self.target.aclose()


_CALLABLES: dict[str, Callable[..., Any]] = {}
"""Per worker process: the Python target's callable by spec token (imported once)."""


def _callable(spec: TargetSpec) -> Callable[..., Any]:
    from convergence.targets.python_target import load_callable

    fn = _CALLABLES.get(spec.token)
    if fn is None:
        cfg = spec.config()
        assert isinstance(cfg, PythonTargetConfig)
        fn = _CALLABLES[spec.token] = load_callable(cfg.function, spec.folder())
    return fn


def python_probe(job: tuple[TargetSpec, Secrets]) -> str | None:
    """None once a worker imported the Python target, else why it could not (checked before any call)."""
    try:
        export_secrets(job[1])
        _callable(job[0])
    except Exception as exc:  # noqa: BLE001 - reported before the run starts
        return f"{type(exc).__name__}: {exc}"
    return None


def python_task(job: tuple[TargetSpec, Secrets], params: Config, case: TestCase) -> CallResult | RemoteError:
    """One attempt of a sync Python target as a Ray task (mapped like ``PythonTarget.call``); ``job`` is
    one object per run (the recipe and the secrets), resolved by Ray before the task runs."""
    from convergence.targets.python_target import as_target_error, to_call_result

    try:
        export_secrets(job[1])
        fn = _callable(job[0])
        try:
            value = fn(params, case.input)
            if inspect.isawaitable(value):
                value = asyncio.run(_awaited(value))
        except TargetError:
            raise
        except (Exception, SystemExit, KeyboardInterrupt) as exc:  # the function's own: this case fails
            raise as_target_error(exc) from exc
        return to_call_result(value)
    except Exception as exc:  # noqa: BLE001 - sent back as a value
        return RemoteError.of(exc)


async def _awaited(value: Any) -> Any:
    return await value
