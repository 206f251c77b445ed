"""CallRunner: backoff, rate limiting, per-attempt timeouts, error capture.

``ScriptedTarget`` is a real ``Target`` whose behaviour per attempt is given
by the test, so timings and attempt counts seen by a user are checked exactly.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from itertools import pairwise

import anyio
import pytest

from convergence.config.targets import RetryConfig
from convergence.core.types import CallResult, Config, TestCase as Case
from convergence.targets.base import Target, TargetError
from convergence.targets.runner import CallRunner, RateLimiter

CASE = Case(id="c", input="x")


class ScriptedTarget:
    """Records when each attempt started; ``behave(n)`` decides attempt n's fate."""

    name = "scripted"

    def __init__(self, behave: Callable[[int], Awaitable[CallResult]]) -> None:
        self.behave = behave
        self.starts: list[float] = []

    async def call(self, params: Config, case: Case) -> CallResult:
        self.starts.append(time.perf_counter())
        return await self.behave(len(self.starts))

    async def aclose(self) -> None:
        return None


def fails_with(exc: BaseException) -> Callable[[int], Awaitable[CallResult]]:
    async def behave(n: int) -> CallResult:
        raise exc

    return behave


async def ok(n: int) -> CallResult:
    return CallResult(output=f"attempt {n}")


def test_scripted_target_satisfies_protocol() -> None:
    assert isinstance(ScriptedTarget(ok), Target)


@pytest.mark.anyio
async def test_backoff_waits_grow_exponentially() -> None:
    target = ScriptedTarget(fails_with(TargetError("busy", retryable=True, status_code=503)))
    retry = RetryConfig(max_retries=3, backoff_initial_seconds=0.05, backoff_max_seconds=1.0)
    result = await CallRunner(target, retry=retry, timeout_seconds=1, rate_limit_per_second=None).run({}, CASE)
    assert result.error == "http_503: busy" and result.attempts == 4
    gaps = [b - a for a, b in pairwise(target.starts)]
    # initial * 2**(n-1) plus up to `initial` of jitter, plus scheduling slack
    for gap, base in zip(gaps, (0.05, 0.10, 0.20), strict=True):
        assert base - 0.005 <= gap <= base + 0.05 + 0.04, gaps
    assert gaps[0] < gaps[2] and gaps[1] < gaps[2]


@pytest.mark.anyio
async def test_backoff_is_capped_by_max() -> None:
    target = ScriptedTarget(fails_with(TimeoutError("slow upstream")))
    retry = RetryConfig(max_retries=4, backoff_initial_seconds=0.03, backoff_max_seconds=0.04)
    result = await CallRunner(target, retry=retry, timeout_seconds=1, rate_limit_per_second=None).run({}, CASE)
    assert result.error == "timeout: slow upstream" and result.attempts == 5
    gaps = [b - a for a, b in pairwise(target.starts)]
    assert all(0.025 <= g <= 0.04 + 0.04 for g in gaps), gaps


@pytest.mark.anyio
async def test_non_retryable_and_unexpected_errors_are_not_retried() -> None:
    retry = RetryConfig(max_retries=5, backoff_initial_seconds=0.01)
    target = ScriptedTarget(fails_with(TargetError("bad request", retryable=False, status_code=400)))
    result = await CallRunner(target, retry=retry, timeout_seconds=1, rate_limit_per_second=None).run({}, CASE)
    assert (result.error, result.attempts, len(target.starts)) == ("http_400: bad request", 1, 1)

    target = ScriptedTarget(fails_with(KeyError("model")))
    result = await CallRunner(target, retry=retry, timeout_seconds=1, rate_limit_per_second=None).run({}, CASE)
    assert (result.error, result.attempts, len(target.starts)) == ("KeyError: 'model'", 1, 1)


@pytest.mark.anyio
async def test_retry_then_success_reports_attempts_and_latency_of_the_good_attempt() -> None:
    async def behave(n: int) -> CallResult:
        if n == 1:
            await anyio.sleep(5)  # hangs: must be cut by the per-attempt timeout
        await anyio.sleep(0.02)
        return CallResult(output=n)

    target = ScriptedTarget(behave)
    retry = RetryConfig(max_retries=2, backoff_initial_seconds=0.01, backoff_max_seconds=0.02)
    start = time.perf_counter()
    result = await CallRunner(target, retry=retry, timeout_seconds=0.15, rate_limit_per_second=None).run({}, CASE)
    elapsed = time.perf_counter() - start
    assert result.ok and result.output == 2 and result.attempts == 2
    assert 15 <= result.latency_ms < 100  # the 20 ms second attempt, not the timed-out first
    assert 150 + 10 + 20 <= result.wall_ms <= elapsed * 1000  # timeout + backoff + good attempt
    assert elapsed < 0.5


@pytest.mark.anyio
async def test_every_attempt_times_out_then_error_is_recorded() -> None:
    async def hang(n: int) -> CallResult:
        await anyio.sleep(10)
        return CallResult()

    target = ScriptedTarget(hang)
    retry = RetryConfig(max_retries=2, backoff_initial_seconds=0.01, backoff_max_seconds=0.02)
    start = time.perf_counter()
    result = await CallRunner(target, retry=retry, timeout_seconds=0.1, rate_limit_per_second=None).run({}, CASE)
    elapsed = time.perf_counter() - start
    assert result.error == "timeout: no result within 0.1s" and result.attempts == 3
    assert 0.3 <= elapsed < 0.6


@pytest.mark.anyio
async def test_rate_limit_caps_calls_per_second_in_arrival_order() -> None:
    order: list[int] = []

    async def behave(n: int) -> CallResult:
        return CallResult(output=n)

    target = ScriptedTarget(behave)
    rate, n_calls = 100.0, 40
    runner = CallRunner(target, retry=RetryConfig(max_retries=0), timeout_seconds=1, rate_limit_per_second=rate)

    async def one(i: int) -> None:
        await runner.run({}, Case(id=str(i), input=i))
        order.append(i)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(n_calls):
            tg.start_soon(one, i)
    elapsed = time.perf_counter() - start
    starts = target.starts
    assert len(starts) == n_calls
    assert elapsed >= (n_calls - 1) / rate * 0.97  # 40 calls at 100/s need ~0.39 s
    assert elapsed < (n_calls - 1) / rate + 0.25  # ... and no busy-wait or oversleeping
    window = 0.1
    busiest = max(sum(1 for t in starts if s <= t < s + window) for s in starts)
    assert busiest <= window * rate + 1, busiest
    assert order == list(range(n_calls))  # fair: first come, first served


@pytest.mark.anyio
async def test_rate_limiter_burst_then_steady() -> None:
    limiter = RateLimiter(50, burst=5)
    stamps: list[float] = []
    for _ in range(10):
        await limiter.acquire()
        stamps.append(time.perf_counter())
    assert stamps[4] - stamps[0] < 0.01  # the burst goes at once
    assert stamps[9] - stamps[4] >= 5 / 50 * 0.95  # then one every 20 ms


@pytest.mark.anyio
async def test_cancellation_is_not_swallowed() -> None:
    async def hang(n: int) -> CallResult:
        await anyio.sleep(10)
        return CallResult()

    runner = CallRunner(ScriptedTarget(hang), retry=RetryConfig(), timeout_seconds=5, rate_limit_per_second=None)
    reached = False
    with anyio.move_on_after(0.05) as scope:
        await runner.run({}, CASE)
        reached = True
    assert scope.cancelled_caught and not reached


def test_timeouts_and_retries_also_work_on_trio() -> None:
    """The runner takes a different timeout path off asyncio; same observable result."""

    async def behave(n: int) -> CallResult:
        if n == 1:
            await anyio.sleep(5)
        if n == 2:
            raise TargetError("busy", retryable=True, status_code=429)
        return CallResult(output=n)

    async def main() -> tuple[CallResult, CallResult]:
        retry = RetryConfig(max_retries=3, backoff_initial_seconds=0.01, backoff_max_seconds=0.02)
        good = await CallRunner(
            ScriptedTarget(behave), retry=retry, timeout_seconds=0.1, rate_limit_per_second=50
        ).run({}, CASE)
        bad = await CallRunner(
            ScriptedTarget(fails_with(TargetError("nope", retryable=False))),
            retry=retry,
            timeout_seconds=0.1,
            rate_limit_per_second=None,
        ).run({}, CASE)
        return good, bad

    good, bad = anyio.run(main, backend="trio")
    assert good.ok and good.output == 3 and good.attempts == 3
    assert good.wall_ms >= 100 + good.latency_ms  # the timed-out first attempt counts in wall time only
    assert bad.error == "target_error: nope" and bad.attempts == 1


@pytest.mark.anyio
async def test_single_attempt_wall_time_equals_latency() -> None:
    async def behave(n: int) -> CallResult:
        await anyio.sleep(0.01)
        return CallResult(output=n)

    runner = CallRunner(ScriptedTarget(behave), retry=RetryConfig(), timeout_seconds=1, rate_limit_per_second=None)
    result = await runner.run({}, CASE)
    assert result.ok and result.attempts == 1
    assert result.latency_ms >= 10 and result.wall_ms == result.latency_ms


@pytest.mark.anyio
async def test_first_attempt_times_out_wall_time_counts_it_latency_does_not() -> None:
    """Timeout 0.5 s on a hung first attempt, a quick second one: latency_ms is
    the second attempt, wall_ms what the caller waited (>= the 0.5 s timeout)."""

    async def behave(n: int) -> CallResult:
        if n == 1:
            await anyio.sleep(5)
        await anyio.sleep(0.005)
        return CallResult(output=n)

    target = ScriptedTarget(behave)
    retry = RetryConfig(max_retries=2, backoff_initial_seconds=0.01, backoff_max_seconds=0.02)
    start = time.perf_counter()
    result = await CallRunner(target, retry=retry, timeout_seconds=0.5, rate_limit_per_second=None).run({}, CASE)
    elapsed_ms = (time.perf_counter() - start) * 1000
    assert result.ok and result.output == 2 and result.attempts == 2
    assert 5 <= result.latency_ms < 100
    assert 500 + 10 <= result.wall_ms <= elapsed_ms
    assert result.wall_ms >= (target.starts[1] - target.starts[0]) * 1000 + result.latency_ms - 1


@pytest.mark.anyio
async def test_failed_calls_carry_wall_time_and_attempts() -> None:
    retry = RetryConfig(max_retries=2, backoff_initial_seconds=0.05, backoff_max_seconds=0.1)
    target = ScriptedTarget(fails_with(TargetError("busy", retryable=True, status_code=503)))
    result = await CallRunner(target, retry=retry, timeout_seconds=1, rate_limit_per_second=None).run({}, CASE)
    assert result.error == "http_503: busy" and result.attempts == 3
    assert result.wall_ms >= (0.05 + 0.1) * 1000  # two backoff sleeps
    assert result.latency_ms == 0.0  # no attempt succeeded

    async def slow_then_fatal(n: int) -> CallResult:
        await anyio.sleep(0.03)
        raise TargetError("bad request", retryable=False, status_code=400)

    result = await CallRunner(
        ScriptedTarget(slow_then_fatal), retry=retry, timeout_seconds=1, rate_limit_per_second=None
    ).run({}, CASE)
    assert result.error == "http_400: bad request" and result.attempts == 1
    assert 30 <= result.wall_ms < 200


@pytest.mark.anyio
async def test_retry_after_raises_the_backoff() -> None:
    """A server asking for 0.4 s gets 0.4 s, not the 10-20 ms backoff."""

    async def behave(n: int) -> CallResult:
        if n == 1:
            raise TargetError("slow down", retryable=True, status_code=429, retry_after=0.4)
        return CallResult(output=n)

    target = ScriptedTarget(behave)
    retry = RetryConfig(max_retries=2, backoff_initial_seconds=0.01, backoff_max_seconds=5)
    result = await CallRunner(target, retry=retry, timeout_seconds=1, rate_limit_per_second=None).run({}, CASE)
    gap = target.starts[1] - target.starts[0]
    assert result.ok and result.attempts == 2
    assert 0.4 <= gap < 2, gap
    assert result.wall_ms >= 400


@pytest.mark.anyio
async def test_retry_after_is_capped_by_backoff_max_and_never_shortens_backoff() -> None:
    async def behave(n: int) -> CallResult:
        if n == 1:
            raise TargetError("slow down", retryable=True, status_code=429, retry_after=30)
        if n == 2:
            raise TargetError("busy", retryable=True, status_code=503, retry_after=0.0)
        return CallResult(output=n)

    target = ScriptedTarget(behave)
    retry = RetryConfig(max_retries=3, backoff_initial_seconds=0.1, backoff_max_seconds=0.25)
    result = await CallRunner(target, retry=retry, timeout_seconds=1, rate_limit_per_second=None).run({}, CASE)
    assert result.ok and result.attempts == 3
    capped, zero = (b - a for a, b in pairwise(target.starts))
    assert 0.25 <= capped < 0.25 + 0.1, capped  # 30 s asked, backoff_max 0.25 s
    assert 0.2 <= zero < 0.25 + 0.1, zero  # "Retry-After: 0" keeps the normal 0.2-0.25 s backoff


@pytest.mark.anyio
@pytest.mark.parametrize(("field", "value", "message"), [
    ("cost_usd", float("nan"), "target returned cost_usd=nan: expected a finite number >= 0"),
    ("latency_ms", float("-inf"), "target returned latency_ms=-inf: expected a finite number >= 0"),
    ("prompt_tokens", 2.5, "target returned prompt_tokens=2.5: expected a whole number >= 0"),
    ("completion_tokens", -3, "target returned completion_tokens=-3: expected a whole number >= 0"),
])
async def test_a_result_with_a_bad_cost_latency_or_token_count_is_that_calls_error_not_retried(
    field: str, value: float, message: str
) -> None:
    """Any target (a plugin's too) that hands back such a ``CallResult``: the call fails with the field
    and the value named, once (asking again gives the same answer)."""

    async def bad(n: int) -> CallResult:
        result = CallResult(output="x")
        setattr(result, field, value)
        return result

    target = ScriptedTarget(bad)
    result = await CallRunner(target, retry=RetryConfig(max_retries=3), timeout_seconds=1,
                              rate_limit_per_second=None).run({}, CASE)
    assert result.error is not None and message in result.error
    assert len(target.starts) == 1 and result.cost_usd == 0.0


@pytest.mark.anyio
async def test_whole_token_counts_given_as_floats_or_text_are_taken_as_ints() -> None:
    async def floats(n: int) -> CallResult:
        return CallResult(output="x", prompt_tokens=7.0, completion_tokens="2", cost_usd=1)  # type: ignore[arg-type]

    result = await CallRunner(ScriptedTarget(floats), retry=RetryConfig(), timeout_seconds=1,
                              rate_limit_per_second=None).run({}, CASE)
    assert result.ok and (result.prompt_tokens, result.completion_tokens, result.cost_usd) == (7, 2, 1.0)
    assert type(result.prompt_tokens) is int and type(result.cost_usd) is float
