"""PythonTarget: a user's ``module:function`` next to the YAML, run through CallRunner."""

from __future__ import annotations

import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import anyio
import pytest

from convergence.config.targets import PythonTargetConfig, RetryConfig
from convergence.core.types import CallResult, TestCase as Case
from convergence.targets.base import TargetError
from convergence.targets.factory import build_target, missing_env_vars
from convergence.targets.python_target import PythonTarget
from convergence.targets.runner import CallRunner

USER_MODULE = '''
import asyncio
import time

calls = []

def sync_echo(params, input):
    calls.append(("sync", input))
    return f"{params['prefix']}{input}"

async def async_echo(params, input):
    await asyncio.sleep(0)
    calls.append(("async", input))
    return {"echo": input, "params": params}

def priced(params, input):
    return {"output": input.upper(), "cost_usd": 0.25, "prompt_tokens": 7, "completion_tokens": 2}

def broken(params, input):
    raise ValueError(f"cannot handle {input!r}")

def flaky_network(params, input):
    calls.append(("flaky", input))
    raise ConnectionError("upstream reset")

def slow_sync(params, input):
    time.sleep(params["seconds"])
    return input

def exits(params, input):
    import sys
    sys.exit(3)

def interrupts(params, input):
    raise KeyboardInterrupt

class Custom(BaseException):
    pass

def base_error(params, input):
    raise Custom("not an Exception")

async def async_exits(params, input):
    raise SystemExit("bye")

async def async_interrupts(params, input):
    raise KeyboardInterrupt

class Model:
    @staticmethod
    def predict(params, input):
        return len(input)
'''

FAST = RetryConfig(max_retries=2, backoff_initial_seconds=0.01, backoff_max_seconds=0.02)


@pytest.fixture
def user_module(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A fresh module file in a temp 'project folder', as a user would put next to the YAML."""
    name = f"user_target_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    yield name, tmp_path
    sys.modules.pop(name, None)
    if str(tmp_path.resolve()) in sys.path:
        sys.path.remove(str(tmp_path.resolve()))


def runner(name: str, fn: str, base: Path, *, timeout: float = 5.0, retry: RetryConfig = FAST) -> CallRunner:
    target = PythonTarget(PythonTargetConfig(function=f"{name}:{fn}"), base)
    return CallRunner(target, retry=retry, timeout_seconds=timeout, rate_limit_per_second=None)


def module(name: str) -> ModuleType:
    return sys.modules[name]


@pytest.mark.anyio
async def test_sync_and_async_functions_return_output(user_module: tuple[str, Path]) -> None:
    name, base = user_module
    result = await runner(name, "sync_echo", base).run({"prefix": ">> "}, Case(id="a", input="hi"))
    assert result.ok, result.error
    assert result.output == ">> hi"
    assert result.attempts == 1 and result.latency_ms > 0

    result = await runner(name, "async_echo", base).run({"t": 0.5}, Case(id="b", input={"x": 1}))
    assert result.ok, result.error
    assert result.output == {"echo": {"x": 1}, "params": {"t": 0.5}}
    assert module(name).calls == [("sync", "hi"), ("async", {"x": 1})]

    result = await runner(name, "Model.predict", base).run({}, Case(id="c", input="four"))
    assert result.output == 4


@pytest.mark.anyio
async def test_dict_return_carries_cost_and_tokens(user_module: tuple[str, Path]) -> None:
    name, base = user_module
    result = await runner(name, "priced", base).run({}, Case(id="a", input="abc"))
    assert isinstance(result, CallResult) and result.ok
    assert result.output == "ABC"
    assert result.cost_usd == 0.25
    assert (result.prompt_tokens, result.completion_tokens) == (7, 2)


def test_missing_module_or_function_gives_clear_error(user_module: tuple[str, Path]) -> None:
    name, base = user_module
    with pytest.raises(TargetError) as missing_mod:
        PythonTarget(PythonTargetConfig(function="no_such_module_xyz:run"), base)
    assert "no_such_module_xyz" in str(missing_mod.value) and str(base.resolve()) in str(missing_mod.value)
    assert not missing_mod.value.retryable

    with pytest.raises(TargetError) as missing_fn:
        PythonTarget(PythonTargetConfig(function=f"{name}:sync_ecco"), base)
    message = str(missing_fn.value)
    assert "'sync_ecco'" in message and "sync_echo" in message  # lists what the module has

    assert missing_env_vars(PythonTargetConfig(function=f"{name}:sync_echo")) == []


@pytest.mark.anyio
async def test_exception_becomes_failed_result_with_type(user_module: tuple[str, Path]) -> None:
    name, base = user_module
    result = await runner(name, "broken", base).run({}, Case(id="a", input="x"))
    assert not result.ok
    assert result.error == "target_error: ValueError: cannot handle 'x'"
    assert result.attempts == 1  # a plain bug is not retried

    result = await runner(name, "flaky_network", base).run({}, Case(id="b", input="y"))
    assert not result.ok and "ConnectionError: upstream reset" in (result.error or "")
    assert result.attempts == 3  # 1 + max_retries
    assert module(name).calls.count(("flaky", "y")) == 3


@pytest.mark.anyio
async def test_a_function_calling_sys_exit_or_raising_keyboardinterrupt_fails_only_its_case(
        user_module: tuple[str, Path]) -> None:
    """SystemExit, KeyboardInterrupt and any BaseException raised by the user's function (sync or async)
    are that case's failure with a clear message, not the end of the run."""
    name, base = user_module
    expected = {"exits": "sys.exit(3)", "interrupts": "raised KeyboardInterrupt", "base_error": "raised Custom",
                "async_exits": "sys.exit('bye')", "async_interrupts": "raised KeyboardInterrupt"}
    for fn, words in expected.items():
        result = await runner(name, fn, base).run({}, Case(id="a", input="x"))
        assert not result.ok, fn
        assert words in (result.error or ""), (fn, result.error)
        assert result.attempts == 1, fn  # not retried: the function will do it again
    ok = await runner(name, "sync_echo", base).run({"prefix": ""}, Case(id="b", input="still running"))
    assert ok.ok and ok.output == "still running"


@pytest.mark.anyio
async def test_slow_sync_function_does_not_block_the_loop(user_module: tuple[str, Path]) -> None:
    name, base = user_module
    target = build_target(PythonTargetConfig(function=f"{name}:slow_sync"), base, concurrency=8)
    run = CallRunner(target, retry=FAST, timeout_seconds=5, rate_limit_per_second=None)
    ticks = 0
    done = anyio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await anyio.sleep(0.01)

    results: list[CallResult] = []

    async def call(i: int) -> None:
        results.append(await run.run({"seconds": 0.3}, Case(id=str(i), input=i)))

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        async with anyio.create_task_group() as calls:
            for i in range(4):
                calls.start_soon(call, i)
        done.set()
    elapsed = time.perf_counter() - start
    assert sorted(r.output for r in results) == [0, 1, 2, 3]
    assert elapsed < 0.9  # four 0.3 s calls overlapped in threads, not 1.2 s in series
    assert ticks >= 15  # the loop kept ticking every ~10 ms while the threads slept


@pytest.mark.anyio
async def test_thread_pool_is_sized_by_concurrency(user_module: tuple[str, Path]) -> None:
    name, base = user_module
    target = build_target(PythonTargetConfig(function=f"{name}:slow_sync"), base, concurrency=2)
    run = CallRunner(target, retry=FAST, timeout_seconds=5, rate_limit_per_second=None)
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(run.run, {"seconds": 0.2}, Case(id=str(i), input=i))
    assert time.perf_counter() - start >= 0.39  # two waves of two threads


@pytest.mark.anyio
async def test_timeout_returns_promptly_even_for_a_sync_function(user_module: tuple[str, Path]) -> None:
    name, base = user_module
    run = runner(name, "slow_sync", base, timeout=0.1, retry=RetryConfig(max_retries=0))
    start = time.perf_counter()
    result = await run.run({"seconds": 0.6}, Case(id="a", input="x"))
    assert time.perf_counter() - start < 0.4
    assert result.error == "timeout: no result within 0.1s" and result.attempts == 1
