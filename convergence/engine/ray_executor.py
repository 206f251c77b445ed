"""The Ray execution backend: target calls on a Ray cluster, everything else on the driver.

Imported only when ``optimization.execution.backend`` is ``ray``; nothing else
in Convergence imports Ray.

Design: the loop's :class:`CallRunner` stays on the driver and keeps doing the
gate (the global concurrency limit and the kill-safe call counter), retries
with backoff, per-attempt timeouts and the rate limit, so all of them hold
across the cluster exactly as with the local backend. Only single *attempts*
go to Ray, through :class:`RayTarget`, a :class:`Target` whose ``call`` is one
remote attempt awaited as an asyncio future (an ``ObjectRef`` is awaitable):

* I/O-bound targets (LiteLLM, HTTP, plugins, async Python functions) run in a
  pool of async actors, each with ``max_concurrency`` and one target instance
  built once (connection pools, an embedded model are loaded once per actor);
  a call goes to the least busy actor.
* Sync Python functions (CPU-bound) run as Ray tasks (one per attempt), the
  callable imported once per worker process.

Failures: an attempt whose actor, worker or node died raises a retryable
:class:`TargetError` (the dead actor is replaced at once), so the runner retries
it as a new attempt through the gate (counted and budgeted like any attempt).
Such a lost attempt is retried up to :data:`LOST_RETRIES` more times even when
``retry.max_retries`` is 0. A result that reached the driver is stored by the
loop as usual, so ``--resume`` never pays for it again. A per-attempt timeout
cancels the remote attempt (``ray.cancel``).

Secrets: the target's config travels with every ``${VAR}`` value put back as
the reference; the values reach the workers only as ``runtime_env.env_vars``,
and only for the names the config gives (``*_env`` keys, ``${VAR}`` in the
target, ``ray.env_vars``). Nothing here logs them.

Latency: ``latency_ms`` is measured on the driver, so it includes Ray's
round trip (see docs/scaling.md for what it measured).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from pydantic import BaseModel

from convergence.config.models import RAY_RESOURCE_OPTIONS, AnyTargetConfig, PythonTargetConfig, RayConfig
from convergence.core.types import CallResult, Config, TestCase
from convergence.errors import ConvergenceError
from convergence.targets.base import Target, TargetError
from convergence.targets.runner import CallRunner, Gate

LOST_RETRIES = 3
"""Extra attempts for a call whose actor, worker or node died, beyond ``retry.max_retries``."""
LOST = "ray worker lost"
"""How an attempt lost with its actor, worker or node is described (the start of its error)."""
INSTALL_HINT = 'pip install -c constraints.txt -e ".[ray]"  (make install does it)'


class RayBackendError(ConvergenceError):
    """The Ray backend cannot start: Ray missing, the cluster unreachable, the target not buildable on a worker."""


def import_ray() -> Any:
    """``ray``, or a clear error naming the install command."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage-stats prompt or upload
    try:
        import ray
    except ImportError as exc:
        raise RayBackendError(f"optimization.execution.backend: ray needs the ray package ({exc}); "
                              f"install it with: {INSTALL_HINT}") from None
    return ray


# --------------------------------------------------------------------------- what a worker builds


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
    """None: not a TargetError (the runner decides by type: timeouts and connection errors retry)."""
    status_code: int | None = None
    retry_after: float | None = None

    @classmethod
    def of(cls, exc: BaseException) -> RemoteError:
        if isinstance(exc, TargetError):
            return cls("TargetError", str(exc), exc.retryable, exc.status_code, exc.retry_after)
        return cls(type(exc).__name__, str(exc), None)

    def exception(self) -> Exception:
        if self.retryable is not None:
            return TargetError(self.message, retryable=self.retryable, status_code=self.status_code,
                               retry_after=self.retry_after)
        if self.type_name == "TimeoutError":
            return TimeoutError(self.message)
        if self.type_name in _CONNECTION_ERRORS:
            return _CONNECTION_ERRORS[self.type_name](self.message)
        return _named_error(self.type_name)(self.message)


_CONNECTION_ERRORS: dict[str, type[Exception]] = {
    c.__name__: c for c in (ConnectionError, ConnectionRefusedError, ConnectionResetError, ConnectionAbortedError,
                            BrokenPipeError)
}
_NAMED: dict[str, type[Exception]] = {}


def _named_error(name: str) -> type[Exception]:
    """An exception class named like the worker's (``CallRunner`` describes errors by type name)."""
    if name not in _NAMED:
        _NAMED[name] = type(name, (Exception,), {"__module__": __name__})
    return _NAMED[name]


class TargetActor:
    """One target instance, built once, serving ``max_concurrency`` attempts at a time (an async Ray actor)."""

    def __init__(self, spec: TargetSpec) -> None:
        self.target: Target | None = None
        self.error: str | None = None
        try:
            from convergence.targets.factory import build_target

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


def python_probe(spec: TargetSpec) -> str | None:
    """None once a worker imported the Python target, else why it could not (checked before any call)."""
    try:
        _callable(spec)
    except Exception as exc:  # noqa: BLE001 - reported before the run starts
        return f"{type(exc).__name__}: {exc}"
    return None


def python_task(spec: TargetSpec, params: Config, case: TestCase) -> CallResult | RemoteError:
    """One attempt of a sync Python target as a Ray task (mapped like ``PythonTarget.call``)."""
    from convergence.targets.python_target import _RETRYABLE, to_call_result

    try:
        fn = _callable(spec)
        try:
            value = fn(params, case.input)
            if inspect.isawaitable(value):
                value = asyncio.run(_awaited(value))
        except TargetError:
            raise
        except _RETRYABLE as exc:
            raise TargetError(f"{type(exc).__name__}: {exc}", retryable=True) from exc
        except Exception as exc:
            raise TargetError(f"{type(exc).__name__}: {exc}", retryable=False) from exc
        return to_call_result(value)
    except Exception as exc:  # noqa: BLE001 - sent back as a value
        return RemoteError.of(exc)


async def _awaited(value: Any) -> Any:
    return await value


# --------------------------------------------------------------------------- the driver's side


class _ActorPool:
    """The actors; a dead one is replaced by the first call that finds it dead."""

    def __init__(self, actor_cls: Any, spec: TargetSpec, size: int) -> None:
        self._cls = actor_cls
        self._spec = spec
        self.actors = [actor_cls.remote(spec) for _ in range(size)]
        self.busy = [0] * size
        self.replaced = 0

    def pick(self) -> int:
        busy = self.busy
        return min(range(len(busy)), key=busy.__getitem__)

    def replace(self, i: int, dead: Any) -> None:
        if self.actors[i] is dead:
            self.actors[i] = self._cls.remote(self._spec)
            self.replaced += 1


class RayTarget:
    """A :class:`Target` whose ``call`` is one attempt on Ray (actors or tasks); retries stay with the runner."""

    def __init__(self, ray: Any, name: str, *, pool: _ActorPool | None = None, task: Any = None,
                 spec_ref: Any = None) -> None:
        self.name = name
        self._ray = ray
        self.pool = pool
        self._task = task
        self._spec_ref = spec_ref
        self.lost = 0
        """Attempts lost with their actor, worker or node."""

    async def call(self, params: Config, case: TestCase) -> CallResult:
        ray = self._ray
        pool = self.pool
        i, actor = -1, None
        if pool is not None:
            i = pool.pick()
            actor = pool.actors[i]
            pool.busy[i] += 1
            ref = actor.call.remote(params, case)
        else:
            ref = self._task.remote(self._spec_ref, params, case)
        try:
            out = await ref
        except asyncio.CancelledError:  # the attempt's timeout or the run's end: stop the remote attempt
            with contextlib.suppress(Exception):  # already finished, or its actor is gone
                ray.cancel(ref)
            raise
        except ray.exceptions.RayTaskError as exc:  # our wrapper failed (e.g. a result Ray cannot pickle)
            raise TargetError(f"ray: {type(exc.cause).__name__ if exc.cause else 'task'} error: "
                              f"{str(exc).splitlines()[0][:500]}", retryable=False) from None
        except ray.exceptions.RayError as exc:  # actor, worker, node or object lost: a retryable attempt
            self.lost += 1
            if pool is not None:
                pool.replace(i, actor)
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise TargetError(f"{LOST}: {type(exc).__name__}: {first}", retryable=True) from None
        finally:
            if pool is not None:
                pool.busy[i] -= 1
        if isinstance(out, RemoteError):
            raise out.exception()
        return out

    async def aclose(self) -> None:
        if self.pool is not None:
            actors, self.pool.actors = self.pool.actors, []
            for actor in actors:
                with contextlib.suppress(Exception):  # already dead or the cluster is gone: nothing to free
                    self._ray.kill(actor)


class RayExecutor:
    """The :class:`~convergence.engine.executor.Executor` on Ray: the runner on the driver, attempts remote."""

    def __init__(self, ray: Any, target: RayTarget, runner: CallRunner, *, owns_ray: bool, kind: str) -> None:
        self.ray = ray
        self.target = target
        self.runner = runner
        self.owns_ray = owns_ray
        """We called ``ray.init`` (and so call ``ray.shutdown``); False when the caller had connected."""
        self.kind = kind
        """``actors`` or ``tasks``."""

    @property
    def actors(self) -> list[Any]:
        """The pool's live actor handles (empty for tasks)."""
        return list(self.target.pool.actors) if self.target.pool is not None else []

    async def call(self, params: Config, case: TestCase, gate: Gate | None = None) -> CallResult:
        result = await self.runner.run(params, case, gate)
        attempts, wall, extra = result.attempts, result.wall_ms, 0
        while result.error is not None and LOST in result.error and extra < LOST_RETRIES:
            extra += 1  # the runner had no retry left for a lost attempt: one more, through the gate
            result = await self.runner.run(params, case, gate)
            attempts += result.attempts
            wall += result.wall_ms
            result.attempts, result.wall_ms = attempts, wall
        return result

    async def aclose(self) -> None:
        await self.target.aclose()
        if self.owns_ray:
            await anyio.to_thread.run_sync(self.ray.shutdown)


def runtime_env(rc: RayConfig, secret_names: set[str]) -> dict[str, Any]:
    """The config's runtime env plus the env vars the config names (those set here), never others."""
    env = dict(rc.runtime_env)
    names = sorted(secret_names | set(rc.env_vars))
    env_vars = {**env.get("env_vars", {}), **{n: os.environ[n] for n in names if n in os.environ}}
    if env_vars:
        env["env_vars"] = env_vars
    return env


def _options(rc: RayConfig) -> dict[str, Any]:
    opts: dict[str, Any] = {k: v for k, v in rc.resources.items() if k in RAY_RESOURCE_OPTIONS}
    if "memory" in opts:
        opts["memory"] = int(opts["memory"])
    custom = {k: v for k, v in rc.resources.items() if k not in RAY_RESOURCE_OPTIONS}
    if custom:
        opts["resources"] = custom
    return opts


def _host_port(address: str) -> tuple[str, int] | None:
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _connect(ray: Any, rc: RayConfig, env: dict[str, Any]) -> None:
    """``ray.init`` for ``rc.address`` (blocking: run in a thread). Probes ``host:port`` first, so a
    cluster that is not there fails in a second, not after Ray's own reconnect loop."""
    address = rc.address
    target = _host_port(address) if address not in ("auto", "local") else None
    if target is not None:
        try:
            with socket.create_connection(target, timeout=min(5.0, rc.connect_timeout_seconds)):
                pass
        except OSError as exc:
            raise RayBackendError(_unreachable(address, f"{type(exc).__name__}: {exc}")) from None
    kwargs: dict[str, Any] = {"runtime_env": env or None, "log_to_driver": False, "logging_level": logging.ERROR}
    if address == "local":
        kwargs["include_dashboard"] = False
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if address != "local" and "Failed to connect" in why:
            why += " (a cluster with token authentication also needs RAY_AUTH_MODE=token and its token here)"
        raise RayBackendError(_unreachable(address, why)) from None


def _unreachable(address: str, why: str) -> str:
    return (f"cannot reach the Ray cluster at {address!r} (optimization.execution.ray.address): "
            f"{why.rstrip('. ')}. Start one "
            "(`ray start --head`), fix the address, or use address: local for a one-machine Ray; nothing was called")


async def start_ray_executor(cfg: AnyTargetConfig, rc: RayConfig, base_dir: Path, concurrency: int,
                             secret_names: set[str]) -> RayExecutor:
    """Connect (unless the caller already did), start the actors or the task, and check the target
    builds on a worker: every failure here is a :class:`RayBackendError`, before any call."""
    if not _on_asyncio():
        raise RayBackendError("the Ray backend runs on anyio's asyncio backend (Ray's object refs are asyncio "
                              "futures); run the loop with anyio.run(..., backend='asyncio')")
    ray = import_ray()
    spec = target_spec(cfg, base_dir, concurrency, secret_names)
    env = runtime_env(rc, secret_names)
    owns = not ray.is_initialized()
    if owns:
        try:
            with anyio.fail_after(rc.connect_timeout_seconds):
                await anyio.to_thread.run_sync(_connect, ray, rc, env, abandon_on_cancel=True)
        except TimeoutError:
            raise RayBackendError(_unreachable(rc.address, f"no answer within {rc.connect_timeout_seconds:g} s "
                                               "(ray.connect_timeout_seconds)")) from None
    opts = _options(rc)
    if not owns and env:
        opts["runtime_env"] = env  # a caller's session: per actor/task instead of per job
    kind = _kind(cfg, rc, base_dir)
    try:
        if kind == "tasks":
            task = ray.remote(python_task).options(max_retries=0, retry_exceptions=False, **opts)
            spec_ref = ray.put(spec)
            target = RayTarget(ray, cfg.type, task=task, spec_ref=spec_ref)
            check: list[Any] = [ray.remote(python_probe).options(max_retries=0, **opts).remote(spec_ref)]
        else:
            per_actor = rc.max_concurrency_per_actor or max(1, -(-concurrency // rc.num_actors))
            actor_cls = ray.remote(TargetActor).options(max_concurrency=per_actor, max_restarts=0,
                                                        max_task_retries=0, **opts)
            pool = _ActorPool(actor_cls, spec, rc.num_actors)
            target = RayTarget(ray, cfg.type, pool=pool)
            check = [a.ready.remote() for a in pool.actors]
        executor = RayExecutor(ray, target, _runner(cfg, target), owns_ray=owns, kind=kind)
        try:
            with anyio.fail_after(rc.connect_timeout_seconds + 30):
                errors = [e for e in await asyncio.gather(*check) if e]
        except TimeoutError:
            errors = [f"the actors did not start within {rc.connect_timeout_seconds + 30:g} s (not enough "
                      f"resources for {rc.num_actors} actor(s) with {rc.resources or 'the defaults'}? `ray status`)"]
        except ray.exceptions.RayError as exc:
            errors = [str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__]
        if errors:
            await executor.aclose()
            raise RayBackendError(f"the {cfg.type} target cannot be built on a Ray worker: {errors[0]}")
    except BaseException:
        if owns and ray.is_initialized():
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(ray.shutdown)
        raise
    return executor


def _kind(cfg: AnyTargetConfig, rc: RayConfig, base_dir: Path) -> str:
    if not isinstance(cfg, PythonTargetConfig) or rc.python == "actors":
        return "actors"
    if rc.python == "tasks":
        return "tasks"
    from convergence.targets.python_target import _is_async, load_callable

    return "actors" if _is_async(load_callable(cfg.function, base_dir)) else "tasks"


def _runner(cfg: AnyTargetConfig, target: Target) -> CallRunner:
    from convergence.targets.factory import build_runner

    return build_runner(cfg, target)


def _on_asyncio() -> bool:
    try:
        return asyncio.current_task() is not None
    except RuntimeError:
        return False


__all__ = ["LOST", "LOST_RETRIES", "RayBackendError", "RayExecutor", "RayTarget", "TargetSpec",
           "import_ray", "runtime_env", "start_ray_executor", "target_spec"]
