"""Timeouts, retries, rate limiting and error capture around any target.

``CallRunner.run`` never raises (except cancellation): a failed call becomes a
``CallResult`` with ``error`` set, so one bad case scores as a failure without
sinking the trial. The happy path is one limiter check, one timeout scope and
two clock reads (~12 us per call on asyncio); tenacity is only built once a
first attempt has failed.

Timing: ``latency_ms`` is the last attempt alone (limiter wait excluded);
``wall_ms`` runs from the start of the first attempt to the end of the last,
so it includes failed attempts, backoff sleeps and later limiter waits. With
one attempt the two are equal. A failed call carries ``wall_ms`` and
``attempts`` too (its ``latency_ms`` stays 0: there is no successful attempt).

Backoff: exponential with jitter (tenacity), raised to the server's
``Retry-After`` when the error carries one (``TargetError.retry_after``), and
never longer than ``retry.backoff_max_seconds``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import anyio
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from convergence.config.targets import RetryConfig
from convergence.core.types import CallResult, Config, TestCase
from convergence.targets.base import Target, TargetError, checked_call
from convergence.tracing import traced
from convergence.tracing.views import call_result_view, target_call_inputs


class RateLimiter:
    """Token bucket as GCRA: each caller is given the next free slot at
    arrival, so waiters are served in FIFO order and each sleeps exactly once
    (no polling). ``burst`` calls may go back to back after an idle spell."""

    def __init__(self, rate_per_second: float, *, burst: int = 1) -> None:
        if rate_per_second <= 0:
            raise ValueError("rate_per_second must be > 0")
        if burst < 1:
            raise ValueError("burst must be >= 1")
        self.rate = rate_per_second
        self._interval = 1.0 / rate_per_second
        self._slack = (burst - 1) * self._interval
        self._tat = 0.0
        """Theoretical arrival time of the next call (time.monotonic)."""

    async def acquire(self) -> None:
        # A plain monotonic clock: trio's loop clock has a per-run offset, and
        # anyio.sleep takes a duration, so the two never need to agree.
        now = time.monotonic()
        tat = self._tat if self._tat > now else now
        self._tat = tat + self._interval
        wait = tat - now - self._slack
        if wait > 0:
            await anyio.sleep(wait)


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, TargetError):
        return exc.retryable
    return isinstance(exc, (TimeoutError, ConnectionError))


def _running_on_asyncio() -> bool:
    try:
        return asyncio.current_task() is not None
    except RuntimeError:  # no asyncio loop in this thread: trio
        return False


class _BackoffWait:
    """Tenacity wait: ``initial * 2**(n-1) + uniform(0, initial)`` capped at
    ``max`` (never shrinks), raised to the failed attempt's ``retry_after``
    (from a ``Retry-After`` header) but still capped at ``max``."""

    __slots__ = ("_backoff", "_max")

    def __init__(self, retry: RetryConfig) -> None:
        self._backoff = wait_exponential_jitter(
            initial=retry.backoff_initial_seconds,
            max=retry.backoff_max_seconds,
            jitter=retry.backoff_initial_seconds,
        )
        self._max = retry.backoff_max_seconds

    def __call__(self, retry_state: RetryCallState) -> float:
        wait = self._backoff(retry_state)
        outcome = retry_state.outcome
        if outcome is not None and outcome.failed:
            hint = getattr(outcome.exception(), "retry_after", None)
            if isinstance(hint, (int, float)) and hint > wait:
                wait = min(float(hint), self._max)
        return wait


Gate = Callable[[], Awaitable[None]]
"""Awaited before each attempt of a call goes out."""


class _Attempts:
    """One run's attempt counter and the exception already raised by attempt 1."""

    __slots__ = ("count", "gate_error", "pending")

    def __init__(self, first: BaseException) -> None:
        self.count = 1
        self.pending: BaseException | None = first
        self.gate_error: BaseException | None = None
        """What the gate raised (lease lost, database gone): the run's failure, not the call's."""


class CallRunner:
    """Runs ``target.call`` with a per-attempt timeout, retries with
    exponential backoff and jitter, and an optional shared rate limit."""

    def __init__(
        self,
        target: Target,
        *,
        retry: RetryConfig,
        timeout_seconds: float,
        rate_limit_per_second: float | None,
    ) -> None:
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be > 0")
        self.target = target
        self.retry = retry
        self.timeout_seconds = timeout_seconds
        self.limiter = RateLimiter(rate_limit_per_second) if rate_limit_per_second else None
        self._on_asyncio: bool | None = None

    @traced("convergence.target_call", inputs=target_call_inputs, output=call_result_view)
    async def run(self, params: Config, case: TestCase, gate: Gate | None = None) -> CallResult:
        """Call the target once, retrying retryable failures. ``gate`` is awaited
        right before every attempt goes out (after the rate limiter): the loop
        counts the attempt as paid there; an exception from it propagates."""
        if self.limiter is not None:
            await self.limiter.acquire()
        if gate is not None:
            await gate()
        start = time.perf_counter()
        try:
            result = await self._call(params, case)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a result
            first = exc
        else:
            result.latency_ms = result.wall_ms = (time.perf_counter() - start) * 1000.0
            return result
        if self.retry.max_retries == 0 or not _retryable(first):
            return CallResult(
                error=self._describe(first), attempts=1, wall_ms=(time.perf_counter() - start) * 1000.0
            )
        return await self._retry(params, case, first, start, gate)

    async def _call(self, params: Config, case: TestCase) -> CallResult:
        """One ``target.call`` under the per-attempt timeout; a non-finite or negative cost, latency or
        token count in its result is the attempt's (non-retryable) failure."""
        if self._on_asyncio is None:
            self._on_asyncio = _running_on_asyncio()
        if self._on_asyncio:
            # Same semantics as anyio.fail_after (TimeoutError, outer
            # cancellation passes through) at about half the cost per call.
            async with asyncio.timeout(self.timeout_seconds):
                return checked_call(await self.target.call(params, case))
        with anyio.fail_after(self.timeout_seconds):
            return checked_call(await self.target.call(params, case))

    async def _attempt(self, params: Config, case: TestCase, gate: Gate | None, state: _Attempts) -> CallResult:
        """A retry attempt: rate limit, then the call, timed on its own."""
        if self.limiter is not None:
            await self.limiter.acquire()
        if gate is not None:
            try:
                await gate()
            except BaseException as exc:
                state.gate_error = exc
                raise
        start = time.perf_counter()
        result = await self._call(params, case)
        result.latency_ms = (time.perf_counter() - start) * 1000.0
        return result

    async def _retry(
        self, params: Config, case: TestCase, first: BaseException, started: float, gate: Gate | None
    ) -> CallResult:
        state = _Attempts(first)

        async def attempt() -> CallResult:
            # Tenacity's attempt 1 replays the failure we already have, so its
            # backoff schedule and attempt numbering stay its own.
            if state.pending is not None:
                exc, state.pending = state.pending, None
                raise exc
            state.count += 1
            return await self._attempt(params, case, gate, state)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.retry.max_retries + 1),
            wait=_BackoffWait(self.retry),
            retry=retry_if_exception(_retryable),
            sleep=anyio.sleep,
            reraise=True,
        )
        try:
            result: CallResult = await retrying(attempt)
        except Exception as exc:  # every failure but the gate's own becomes a result
            if exc is state.gate_error:
                raise
            return CallResult(
                error=self._describe(exc), attempts=state.count, wall_ms=(time.perf_counter() - started) * 1000.0
            )
        result.attempts = state.count
        result.wall_ms = (time.perf_counter() - started) * 1000.0
        return result

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):
            return f"timeout: {exc}" if str(exc) else f"timeout: no result within {self.timeout_seconds:g}s"
        if isinstance(exc, TargetError):
            kind = f"http_{exc.status_code}" if exc.status_code else "target_error"
            return f"{kind}: {exc}"
        return f"{type(exc).__name__}: {exc}"

    async def aclose(self) -> None:
        await self.target.aclose()

