"""A user's Python callable (``module:function``) as a target.

Sync functions run in worker threads so a slow one never stalls the event
loop; async ones are awaited directly. The YAML's folder goes on ``sys.path``
so a ``my_target.py`` next to ``optimization.yaml`` just works.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from convergence.config.models import PythonTargetConfig
from convergence.core.types import CallResult, Config, TestCase
from convergence.targets.base import TargetError, call_number

_RETRYABLE = (TimeoutError, ConnectionError, OSError)


def load_callable(spec: str, base_dir: Path) -> Callable[..., Any]:
    """Import ``module:attr`` (``attr`` may be dotted) with ``base_dir`` on
    ``sys.path`` through the registry's loader; errors say which part is missing and where we looked."""
    from convergence.registry import SpecError, load_spec

    try:
        obj = load_spec(spec, base_dir)
    except SpecError as exc:
        text = str(exc).replace("expected 'module:attribute'", "expected 'module:function'")
        raise TargetError(f"function {spec!r}: {text}", retryable=False) from None
    if not callable(obj):
        raise TargetError(f"function {spec!r}: {type(obj).__name__} is not callable", retryable=False)
    return obj


def _is_async(fn: Callable[..., Any]) -> bool:
    # an instance whose class defines ``async def __call__`` is async too; ``type(fn).__call__`` is
    # what a call runs (a class itself is not: calling it builds an instance)
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


def to_call_result(value: Any) -> CallResult:
    """A plain value is the output; a dict with ``output`` may add cost and tokens (finite, >= 0,
    whole token counts: anything else is a non-retryable :class:`TargetError` naming the key)."""
    if isinstance(value, CallResult):
        return value
    if isinstance(value, dict) and "output" in value:
        source = "in the returned dict"
        return CallResult(
            output=value["output"],
            cost_usd=call_number(value.get("cost_usd"), "cost_usd", source=source),
            prompt_tokens=int(call_number(value.get("prompt_tokens"), "prompt_tokens", integer=True, source=source)),
            completion_tokens=int(
                call_number(value.get("completion_tokens"), "completion_tokens", integer=True, source=source)
            ),
            raw=value,
        )
    return CallResult(output=value)


def as_target_error(exc: BaseException) -> TargetError:
    """The user function's exception as the attempt's failure: retryable for timeouts, connection and
    OS errors (transient), final for anything else. ``SystemExit``, ``KeyboardInterrupt`` and other
    ``BaseException`` subclasses raised *by the function* fail that case only: a target cannot end the run
    (a real Ctrl-C reaches the run as a cancellation, never through the function)."""
    if isinstance(exc, SystemExit):
        return TargetError(f"the function called sys.exit({exc.code!r}) (SystemExit); a target must return a "
                           "value or raise an Exception, it cannot end the run", retryable=False)
    if not isinstance(exc, Exception):
        return TargetError(f"the function raised {type(exc).__name__}: {exc} (a BaseException, not an Exception); "
                           "counted as this case's failure, the run goes on (Ctrl-C still stops it)",
                           retryable=False)
    return TargetError(f"{type(exc).__name__}: {exc}", retryable=isinstance(exc, _RETRYABLE))


def is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is the event loop cancelling the call (a timeout, Ctrl-C, the run ending): re-raised
    as is, never taken for the function's own failure."""
    # asyncio's class first, not only anyio's lookup of the running library: with anyio's alone, the second
    # of two attempts cancelled at once in a Ray async actor was not stopped (tests/test_ray_backend.py,
    # per-attempt timeout with actors)
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return True
    try:
        return isinstance(exc, anyio.get_cancelled_exc_class())
    except Exception:  # noqa: BLE001 - sniffio finds no async library: not a cancellation we know of
        return False


class PythonTarget:
    """Calls ``fn(params, input)`` for each (configuration, test case)."""

    def __init__(self, cfg: PythonTargetConfig, base_dir: Path, *, max_threads: int | None = None) -> None:
        self.cfg = cfg
        self.name = cfg.function
        self._fn = load_callable(cfg.function, base_dir)
        self._async = _is_async(self._fn)
        self._max_threads = max_threads
        self._limiter: anyio.CapacityLimiter | None = None

    def _thread_limiter(self) -> anyio.CapacityLimiter | None:
        # Created lazily inside the event loop; without max_threads anyio's
        # default pool (40 threads) applies.
        if self._max_threads is not None and self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self._max_threads)
        return self._limiter

    async def call(self, params: Config, case: TestCase) -> CallResult:
        try:
            if self._async:
                value = await self._fn(params, case.input)
            else:
                # abandon_on_cancel: a per-attempt timeout returns at once even
                # though the thread itself cannot be interrupted.
                value = await anyio.to_thread.run_sync(
                    self._fn, params, case.input, abandon_on_cancel=True, limiter=self._thread_limiter()
                )
                if inspect.isawaitable(value):
                    value = await value
        except TargetError:
            raise
        except BaseException as exc:
            if is_cancellation(exc):
                raise
            raise as_target_error(exc) from exc
        return to_call_result(value)

    async def aclose(self) -> None:
        return None
