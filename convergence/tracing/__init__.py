"""Weave tracing of optimization runs, free when it is off.

``@traced(name)`` marks an async step (run, generation, trial, target call,
judge call). While no run is being traced, the wrapper is a plain function
that reads one module global and returns the wrapped coroutine: no extra
coroutine, no weave import. ``start_run`` turns tracing on for one run (only
when ``tracing.weave.enabled`` and W&B credentials or an existing Weave client
exist); ``end_run`` closes the run call and flushes.

Nothing here imports weave at module level: ``convergence --help`` and every
untraced run never load it.
"""

from __future__ import annotations

import functools
import logging
import netrc
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from convergence.config.models import WeaveConfig
    from convergence.storage.store import Store
    from convergence.tracing.session import RunTrace

__all__ = ["active", "current_run", "end_run", "has_credentials", "start_run", "traced"]

logger = logging.getLogger(__name__)

_ACTIVE: int = 0
"""Number of runs being traced in this process; the only thing an untraced call reads."""

_RUN: ContextVar[RunTrace | None] = ContextVar("convergence_trace_run", default=None)
"""The traced run of the current task (so a concurrent untraced run stays untraced)."""

R = TypeVar("R")
InputsFn = Callable[..., dict[str, Any]]
OutputFn = Callable[[Any], Any]


class TraceSpec:
    """What one traced step sends: its op name and how to read its inputs/outputs."""

    __slots__ = ("fn", "inputs", "name", "output")

    def __init__(self, name: str | Callable[..., str], fn: Callable[..., Awaitable[Any]],
                 inputs: InputsFn | None, output: OutputFn | None) -> None:
        self.name = name
        self.fn = fn
        self.inputs = inputs
        self.output = output

    def op_name(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        return self.name if isinstance(self.name, str) else self.name(*args, **kwargs)


def traced(
    name: str | Callable[..., str], *, inputs: InputsFn | None = None, output: OutputFn | None = None
) -> Callable[[Callable[..., Coroutine[Any, Any, R]]], Callable[..., Coroutine[Any, Any, R]]]:
    """Trace an async function as a Weave op named ``name`` when a run is traced.

    ``inputs(*args, **kwargs)`` returns the dict shown as the call's inputs and
    ``output(result)`` what is shown as its output; both are redacted before
    they reach Weave. Untraced, the call costs one global read."""

    def deco(fn: Callable[..., Coroutine[Any, Any, R]]) -> Callable[..., Coroutine[Any, Any, R]]:
        spec = TraceSpec(name, fn, inputs, output)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Coroutine[Any, Any, R]:
            if _ACTIVE:
                return _traced_call(spec, args, kwargs)
            return fn(*args, **kwargs)

        wrapper.__convergence_trace__ = spec  # type: ignore[attr-defined]
        return wrapper

    return deco


async def _traced_call(spec: TraceSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    run = _RUN.get()
    if run is None:
        return await spec.fn(*args, **kwargs)
    return await run.call(spec, args, kwargs)


def active() -> bool:
    """True while the current task belongs to a traced run."""
    return bool(_ACTIVE) and _RUN.get() is not None


def current_run() -> RunTrace | None:
    return _RUN.get() if _ACTIVE else None


# --------------------------------------------------------------------------- credentials


def has_credentials(environ: dict[str, str] | None = None) -> bool:
    """W&B credentials without asking anyone: ``WANDB_API_KEY`` or a netrc entry
    for the W&B host (what ``wandb login`` writes). Never prompts, never connects."""
    env = os.environ if environ is None else environ
    if env.get("WANDB_API_KEY", "").strip():
        return True
    host = urlsplit(env.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    candidates = [env["NETRC"]] if env.get("NETRC") else []
    home = env.get("HOME") or str(Path.home())
    candidates += [os.path.join(home, ".netrc"), os.path.join(home, "_netrc")]
    for path in candidates:
        if not os.path.isfile(path):
            continue
        try:
            auth = netrc.netrc(path).authenticators(host)
        except (netrc.NetrcParseError, OSError):
            continue
        if auth and auth[2]:
            return True
    return False


def existing_weave_client() -> Any:
    """The Weave client the embedding program already initialised, if any (weave
    is not imported to find out)."""
    if "weave" not in sys.modules:
        return None
    from weave.trace.context import weave_client_context

    return weave_client_context.get_weave_client()


# --------------------------------------------------------------------------- run lifecycle


async def start_run(
    cfg: WeaveConfig,
    store: Store,
    *,
    study: str,
    run_id: int,
    seed: int | None,
    config: dict[str, Any],
    resume: bool,
    notify: Callable[[str], None] | None = None,
) -> RunTrace | None:
    """Begin tracing one run when enabled and possible; otherwise do nothing.

    Disabled: returns at once (weave is not imported). Enabled without
    credentials and without a Weave client already set up: one informational
    line through ``notify``, nothing else."""
    global _ACTIVE
    if not cfg.enabled:
        return None
    client = existing_weave_client()
    if client is None and not has_credentials():
        if notify is not None:
            notify("tracing: Weave is enabled but no W&B credentials were found "
                   "(set WANDB_API_KEY or run `wandb login`); this run is not traced")
        return None
    from convergence.tracing.session import open_run

    run = await open_run(cfg, store, client, study=study, run_id=run_id, seed=seed, config=config,
                         resume=resume, notify=notify)
    if run is None:
        return None
    run.token = _RUN.set(run)
    _ACTIVE += 1
    return run


async def end_run(outcome: Any = None, error: BaseException | None = None) -> None:
    """Close the current task's traced run (output = the outcome, or the error) and flush."""
    global _ACTIVE
    run = _RUN.get()
    if run is None:
        return
    try:
        await run.close(outcome, error)
    finally:
        _ACTIVE = max(0, _ACTIVE - 1)
        if run.token is not None:
            try:
                _RUN.reset(run.token)
            except ValueError:  # set in another context (should not happen); clear instead
                _RUN.set(None)
