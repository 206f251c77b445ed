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

Failures: an attempt lost with its actor, worker or node (``RayActorError``,
``WorkerCrashedError``, ``NodeDiedError``, ``OutOfMemoryError``) is sent again
as a new attempt through the gate (counted and budgeted like any attempt): up to
:data:`LOST_RETRIES` times per call, on top of ``retry.max_retries`` and
whatever its value. A dead actor is replaced (its handle killed, the new one's
target checked before it takes calls), at most ``2 * num_actors + 3`` times a
run; then the run stops with :class:`RayBackendError`, as it does at once for
errors that would hit every call (runtime env setup, unschedulable, auth).
Any other Ray error fails the call without a retry. A result that reached the
driver is stored by the loop as usual, so ``--resume`` never pays for it
again. A per-attempt timeout cancels the remote attempt (``ray.cancel``, sent
from a background thread: with Ray Client it is a blocking round trip).

Secrets: the target's config travels with every ``${VAR}`` value put back as
the reference. The values of the env vars the target's own section names
(``*_env`` keys, ``${VAR}``) and of ``ray.env_vars`` go to the workers as one
object (``ray.put`` once per run) passed to each actor's constructor or task,
which sets them in its process's ``os.environ`` before it builds or calls the
target. They are deliberately not put in ``runtime_env.env_vars``: Ray's
runtime-env agent logs a runtime env, values included, on every node. The
user's own ``ray.runtime_env`` still goes to Ray as given. Nothing here logs
the values.

Latency: ``latency_ms`` is measured on the driver, so it includes Ray's
round trip (see docs/scaling.md for what it measured).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from convergence.config.models import RAY_RESOURCE_OPTIONS, AnyTargetConfig, PythonTargetConfig, RayConfig
from convergence.core.types import CallResult, Config, TestCase
from convergence.engine.ray_worker import (
    RayBackendError,
    RemoteError,
    Secrets,
    TargetActor,
    TargetSpec,
    export_secrets,
    python_probe,
    python_task,
    target_spec,
)
from convergence.targets.base import Target, TargetError
from convergence.targets.runner import CallRunner, Gate

LOST_RETRIES = 3
"""Attempts of one call lost with their actor, worker or node that are sent again (on top of
``retry.max_retries``, which lost attempts do not use up)."""
LOST = "ray worker lost"
"""How an attempt lost with its actor, worker or node is described (the start of its error)."""
INSTALL_HINT = 'pip install -c constraints.txt -e ".[ray]"  (make install does it)'


def import_ray() -> Any:
    """``ray``, or a clear error naming the install command."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage-stats prompt or upload
    try:
        import ray
    except ImportError as exc:
        raise RayBackendError(f"optimization.execution.backend: ray needs the ray package ({exc}); "
                              f"install it with: {INSTALL_HINT}") from None
    return ray


# --------------------------------------------------------------------------- the driver's side


class _Background:
    """One thread for Ray calls the event loop must not wait on (``ray.cancel``, ``ray.kill``: blocking
    round trips with Ray Client): fire and forget, failures ignored (the attempt finished, the actor is gone)."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        self._lock = threading.Lock()  # close() runs in a worker thread while calls may still submit

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            if self._closed:  # the run is over (its actors are killed)
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="convergence-ray")
            self._pool.submit(_quietly, fn, *args)

    def close(self) -> None:
        """Wait for what was sent (blocking: call it from a thread)."""
        with self._lock:
            self._closed = True
            pool = self._pool
        if pool is not None:
            pool.shutdown(wait=True)


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    with contextlib.suppress(Exception):
        fn(*args)


class _ActorPool:
    """The actors; a dead one is replaced by the first call that finds it dead, at most
    ``2 * size + 3`` times a run (then the run stops: something kills every actor)."""

    def __init__(self, ray: Any, actor_cls: Any, spec: TargetSpec, secrets_ref: Any, size: int,
                 background: _Background) -> None:
        self._ray = ray
        self._cls = actor_cls
        self._spec = spec
        self._secrets = secrets_ref
        self._background = background
        self.actors = [actor_cls.remote(spec, secrets_ref) for _ in range(size)]
        self.busy = [0] * size
        self.starting: list[Any] = [None] * size
        """A replacement's pending ``ready()``: awaited by the calls it takes before they go out."""
        self.replaced = 0
        self.max_replacements = 2 * size + 3

    def pick(self) -> int:
        busy = self.busy
        return min(range(len(busy)), key=busy.__getitem__)

    def replace(self, i: int, dead: Any, why: str) -> None:
        """Put a new actor in ``dead``'s slot (unless a call already did) and kill ``dead`` off the loop."""
        if i >= len(self.actors) or self.actors[i] is not dead:
            return
        if self.replaced >= self.max_replacements:
            raise RayBackendError(f"Ray actors keep dying ({self.replaced} replaced this run, the limit): {why}")
        new = self._cls.remote(self._spec, self._secrets)
        self.actors[i] = new
        self.starting[i] = new.ready.remote()
        self.replaced += 1
        self._background.submit(self._ray.kill, dead)


@dataclass(slots=True)
class _CallState:
    lost: bool = False
    """The runner's last attempt was lost with its actor, worker or node."""
    transient: bool = False
    """... and the actor is only unavailable for now (not replaced): wait before sending it again."""


_CALL: ContextVar[_CallState | None] = ContextVar("convergence_ray_call", default=None)
"""The call :meth:`RayExecutor.call` is running (its attempts run in the same task)."""


class RayTarget:
    """A :class:`Target` whose ``call`` is one attempt on Ray (actors or tasks); retries stay with the runner."""

    def __init__(self, ray: Any, name: str, *, pool: _ActorPool | None = None, task: Any = None,
                 job_ref: Any = None, background: _Background | None = None) -> None:
        self.name = name
        self._ray = ray
        self.pool = pool
        self._task = task
        self._job_ref = job_ref
        self.background = background or _Background()
        self.lost = 0
        """Attempts lost with their actor, worker or node."""
        self.fatal: RayBackendError | None = None
        """Set once an error means no call can succeed (the executor raises it; the run stops)."""
        ex = ray.exceptions
        self._lost_errors = tuple(getattr(ex, n) for n in (
            "RayActorError", "WorkerCrashedError", "NodeDiedError", "OutOfMemoryError", "ObjectLostError")
            if hasattr(ex, n))
        """ObjectLostError covers OwnerDiedError and a result lost with its node before it was fetched."""
        self._transient = tuple(getattr(ex, n) for n in ("ActorUnavailableError",) if hasattr(ex, n))
        self._setup_errors = tuple(getattr(ex, n) for n in (
            "RuntimeEnvSetupError", "ActorUnschedulableError", "TaskUnschedulableError", "AuthenticationError",
            "LocalRayletDiedError") if hasattr(ex, n))

    async def call(self, params: Config, case: TestCase) -> CallResult:
        ray = self._ray
        pool = self.pool
        i: int = -1
        actor: Any = None
        ref: Any = None
        if pool is not None:
            i = pool.pick()
            actor = pool.actors[i]
            pool.busy[i] += 1
        try:
            if pool is not None:
                starting = pool.starting[i]
                if starting is not None:  # a replacement: its target must build before it takes calls
                    why = await starting
                    if pool.starting[i] is starting:
                        pool.starting[i] = None
                    if why:
                        raise self._fail(f"a replacement Ray actor cannot build the {self.name} target: {why}")
                ref = actor.call.remote(params, case)
            else:
                ref = self._task.remote(self._job_ref, params, case)
            out = await ref
        except asyncio.CancelledError:  # the attempt's timeout or the run's end: stop the remote attempt
            if ref is not None:
                self.background.submit(ray.cancel, ref)
            raise
        except ray.exceptions.RayTaskError as exc:  # our wrapper failed (e.g. a result Ray cannot pickle)
            raise TargetError(f"ray: {type(exc.cause).__name__ if exc.cause else 'task'} error: "
                              f"{_first_line(exc, 500)}", retryable=False) from None
        except ray.exceptions.RayError as exc:
            raise self._ray_error(exc, i, actor) from None
        finally:
            if pool is not None:
                pool.busy[i] -= 1
        if isinstance(out, RemoteError):
            raise out.exception()
        return out

    def _ray_error(self, exc: Exception, i: int, actor: Any) -> TargetError:
        """The attempt's failure for a Ray error: lost (sent again by the executor), or final."""
        what = f"{type(exc).__name__}: {_first_line(exc, 300)}"
        if isinstance(exc, self._setup_errors) or getattr(exc, "actor_init_failed", False):
            return self._fail(f"Ray cannot run the {self.name} target: {what}")
        if not isinstance(exc, self._lost_errors):
            return TargetError(f"ray: {what}", retryable=False)
        self.lost += 1
        transient = isinstance(exc, self._transient)
        if self.pool is not None and not transient:
            try:
                self.pool.replace(i, actor, what)
            except RayBackendError as fatal:
                return self._fail(str(fatal))
        state = _CALL.get()
        if state is not None:
            state.lost = True
            state.transient = transient
        return TargetError(f"{LOST}: {what}", retryable=False)  # never the runner's retry: the executor's

    def _fail(self, message: str) -> TargetError:
        if self.fatal is None:
            self.fatal = RayBackendError(message)
        return TargetError(message, retryable=False)

    async def aclose(self) -> None:
        actors: list[Any] = []
        if self.pool is not None:
            actors, self.pool.actors = self.pool.actors, []
        await anyio.to_thread.run_sync(self._close, actors)

    def _close(self, actors: list[Any]) -> None:
        for actor in actors:
            _quietly(self._ray.kill, actor)  # already dead or the cluster is gone: nothing to free
        self.background.close()


def _first_line(exc: BaseException, limit: int) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


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
        self._runners: dict[int, CallRunner] = {runner.retry.max_retries: runner}

    @property
    def actors(self) -> list[Any]:
        """The pool's live actor handles (empty for tasks)."""
        return list(self.target.pool.actors) if self.target.pool is not None else []

    async def call(self, params: Config, case: TestCase, gate: Gate | None = None) -> CallResult:
        """The runner's call; an attempt lost with its actor, worker or node ends the runner's call and is
        sent again here, through the gate, up to :data:`LOST_RETRIES` times, with the ordinary retries the
        call has left (so one call makes at most ``1 + max_retries + LOST_RETRIES`` attempts).

        Raises :class:`RayBackendError` (the run stops) when the call failed because of an error no call
        can get past (see :meth:`RayTarget._ray_error`); every other failure is the result's ``error``."""
        state = _CallState()
        token = _CALL.set(state)
        try:
            result = await self.runner.run(params, case, gate)
            attempts, wall, resent = result.attempts, result.wall_ms, 0
            used = result.attempts - 1  # ordinary retries spent: all but the lost attempt that ended the run
            while state.lost and resent < LOST_RETRIES and self.target.fatal is None:
                resent += 1
                if state.transient:  # the same actor may be picked again: give it the runner's backoff
                    retry = self.runner.retry
                    await anyio.sleep(min(retry.backoff_max_seconds, retry.backoff_initial_seconds * 2 ** resent))
                state.lost = state.transient = False
                result = await self._runner(self.runner.retry.max_retries - used).run(params, case, gate)
                used += result.attempts - 1
                attempts += result.attempts
                wall += result.wall_ms
                result.attempts, result.wall_ms = attempts, wall
        finally:
            _CALL.reset(token)
        if result.error is not None and self.target.fatal is not None:
            raise self.target.fatal  # the run stops (a result that did land is still returned and stored)
        return result

    def _runner(self, retries: int) -> CallRunner:
        """The runner with ``retries`` ordinary retries (the same target, timeout and rate limiter)."""
        retries = max(0, retries)
        runner = self._runners.get(retries)
        if runner is None:
            runner = copy.copy(self.runner)
            runner.retry = self.runner.retry.model_copy(update={"max_retries": retries})
            self._runners[retries] = runner
        return runner

    async def aclose(self) -> None:
        await self.target.aclose()
        if self.owns_ray:
            await anyio.to_thread.run_sync(self.ray.shutdown)


def secret_values(names: set[str]) -> Secrets:
    """The values of the named env vars that are set here (never any other)."""
    return {n: os.environ[n] for n in sorted(names) if n in os.environ}


def runtime_env(rc: RayConfig) -> dict[str, Any]:
    """The user's own runtime env (``ray.runtime_env``), as given: no secret value is ever added to it
    (Ray's runtime-env agent logs a runtime env, ``env_vars`` values included)."""
    return dict(rc.runtime_env)


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
    if ray.is_initialized():  # someone connected meanwhile: never shut their session down
        raise RayBackendError("Ray was connected by someone else while this run was connecting; run again")
    try:
        ray.init(address=address, **kwargs)
    except BaseException as exc:
        _quietly(ray.shutdown)  # a failed ray.init may have started processes (address: local)
        if not isinstance(exc, (ConnectionError, TimeoutError, RuntimeError, ValueError, ray.exceptions.RayError)):
            raise
        why = _first_line(exc, 1000)
        if isinstance(exc, ray.exceptions.AuthenticationError):
            why = (f"{type(exc).__name__}: {why} (the cluster's token goes in RAY_AUTH_TOKEN, "
                   "~/.ray/auth_token or RAY_AUTH_TOKEN_PATH)")
        elif address != "local" and "Failed to connect" in why:
            why += " (a cluster with token authentication also needs RAY_AUTH_MODE=token and its token here)"
        raise RayBackendError(_unreachable(address, why)) from None


def _unreachable(address: str, why: str) -> str:
    return (f"cannot reach the Ray cluster at {address!r} (optimization.execution.ray.address): "
            f"{why.rstrip('. ')}. Start one "
            "(`ray start --head`), fix the address, or use address: local for a one-machine Ray; nothing was called")


async def start_ray_executor(cfg: AnyTargetConfig, rc: RayConfig, base_dir: Path, concurrency: int,
                             secret_names: set[str]) -> RayExecutor:
    """Connect (unless the caller already did), start the actors or the task, and check the target
    builds on a worker: every failure here is a :class:`RayBackendError`, before any call.

    ``secret_names``: the env vars the target's section names; with ``ray.env_vars`` they are the only
    ones whose values reach the workers (see :func:`export_secrets`)."""
    if not _on_asyncio():
        raise RayBackendError("the Ray backend runs on anyio's asyncio backend (Ray's object refs are asyncio "
                              "futures); run the loop with anyio.run(..., backend='asyncio')")
    ray = import_ray()
    names = set(secret_names) | set(rc.env_vars)
    spec = target_spec(cfg, base_dir, concurrency, names)
    env = runtime_env(rc)
    owns = not ray.is_initialized()
    if owns:
        await _connect_in_thread(ray, rc, env)
    target: RayTarget | None = None
    try:
        opts = _options(rc)
        if not owns and env:
            opts["runtime_env"] = env  # a caller's session: per actor/task instead of per job
        kind = _kind(cfg, rc, base_dir)
        background = _Background()
        if kind == "tasks":
            task = ray.remote(python_task).options(max_retries=0, retry_exceptions=False, **opts)
            job_ref = ray.put((spec, secret_values(names)))
            target = RayTarget(ray, cfg.type, task=task, job_ref=job_ref, background=background)
            check: list[Any] = [ray.remote(python_probe).options(max_retries=0, **opts).remote(job_ref)]
        else:
            per_actor = rc.max_concurrency_per_actor or max(1, -(-concurrency // rc.num_actors))
            actor_cls = ray.remote(TargetActor).options(max_concurrency=per_actor, max_restarts=0,
                                                        max_task_retries=0, **opts)
            pool = _ActorPool(ray, actor_cls, spec, ray.put(secret_values(names)), rc.num_actors, background)
            target = RayTarget(ray, cfg.type, pool=pool, background=background)
            check = [a.ready.remote() for a in pool.actors]
        executor = RayExecutor(ray, target, _runner(cfg, target), owns_ray=owns, kind=kind)
        try:
            with anyio.fail_after(rc.connect_timeout_seconds + 30):
                errors = [e for e in await asyncio.gather(*check) if e]
        except TimeoutError:
            errors = [f"the actors did not start within {rc.connect_timeout_seconds + 30:g} s (not enough "
                      f"resources for {rc.num_actors} actor(s) with {rc.resources or 'the defaults'}? `ray status`)"]
        except ray.exceptions.RayError as exc:
            errors = [_first_line(exc, 1000)]
        if errors:
            with anyio.CancelScope(shield=True):
                await executor.aclose()
            raise RayBackendError(f"the {cfg.type} target cannot be built on a Ray worker: {errors[0]}")
    except BaseException:
        # whatever we started goes with the failed start: the actors (in a caller's session too), and
        # the local Ray or the connection we made
        with anyio.CancelScope(shield=True):
            if target is not None:
                await target.aclose()
            if owns:
                await anyio.to_thread.run_sync(_quietly, ray.shutdown)
        raise
    return executor


async def _connect_in_thread(ray: Any, rc: RayConfig, env: dict[str, Any]) -> None:
    """:func:`_connect` in a thread, given up after ``connect_timeout_seconds``. A connect given up on
    may still finish later (``ray.init`` cannot be interrupted): that thread then shuts down what it
    started, so no local Ray or connection outlives the failed start."""
    lock = threading.Lock()
    gave_up = connected = False

    def connect() -> None:
        nonlocal connected
        _connect(ray, rc, env)
        with lock:
            if not gave_up:
                connected = True
                return
        _quietly(ray.shutdown)

    try:
        with anyio.fail_after(rc.connect_timeout_seconds):
            await anyio.to_thread.run_sync(connect, abandon_on_cancel=True)
    except BaseException as exc:
        with lock:
            gave_up = True
            undo = connected
        if undo:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_quietly, ray.shutdown)
        if isinstance(exc, TimeoutError):
            raise RayBackendError(_unreachable(rc.address, f"no answer within {rc.connect_timeout_seconds:g} s "
                                               "(ray.connect_timeout_seconds)")) from None
        raise


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


__all__ = ["LOST", "LOST_RETRIES", "RayBackendError", "RayExecutor", "RayTarget", "RemoteError", "TargetSpec",
           "export_secrets", "import_ray", "runtime_env", "secret_values", "start_ray_executor", "target_spec"]
