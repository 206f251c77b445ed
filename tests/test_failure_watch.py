"""A broken target stops the run after a handful of calls, with the error; a bad
configuration, a bad test case or a target that fails now and then does not."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from convergence.config.loader import parse_config
from convergence.engine.loop import Optimizer
from convergence.engine.state import FailureWatch
from convergence.storage.store import Store

REFUSED = "target_error: ConnectionError: connection refused: http://127.0.0.1:9/v1"


def test_a_connection_refused_on_the_first_calls_of_one_configuration_trips_it() -> None:
    watch = FailureWatch()
    for i in range(3):
        watch.failed(REFUSED, "h1", f"c{i}", 30)
        assert not watch.tripped
    watch.failed(REFUSED, "h1", "c3", 30)
    assert watch.tripped and watch.calls == 4 and watch.reason().endswith(REFUSED)


def test_an_error_that_may_be_the_configurations_needs_a_second_configuration() -> None:
    """``BadRequestError: temperature`` on every case of one configuration: that configuration
    may be bad, the target fine; the same error on a second configuration trips it."""
    bad = "http_400: openai/gpt-4o: BadRequestError: temperature 3 is out of range"
    watch = FailureWatch()
    for i in range(30):
        watch.failed(bad, "h1", f"c{i}", 30)
    assert not watch.tripped
    watch.failed(bad, "h2", "c0", 30)
    assert watch.tripped


def test_one_success_or_a_second_kind_of_error_never_trips_it() -> None:
    ok = FailureWatch()
    ok.any_success = True
    mixed = FailureWatch()
    mixed.failed(REFUSED, "h1", "c0", 30)
    mixed.failed("target_error: ValueError: no", "h1", "c1", 30)
    for w in (ok, mixed):
        for i in range(10):
            w.failed(REFUSED, f"h{i % 3}", f"c{i}", 30)
        assert not w.tripped


def study(tmp_path: Path, source: str) -> Any:
    module = "target_" + re.sub(r"\W", "_", tmp_path.name)  # one module per test: imports are cached
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    cases = [{"input": f"q{i}", "expected": "yes"} for i in range(30)]
    text = textwrap.dedent(f"""
        study: broken
        target: {{type: python, function: "{module}:call",
                  retry: {{max_retries: 3, backoff_initial_seconds: 0.01, backoff_max_seconds: 0.02}}}}
        storage: {{path: db.sqlite}}
        search_space:
          parameters:
            t: {{type: continuous, min: 0.0, max: 1.0, step: 0.1}}
            s: {{type: categorical, values: [a, b, c]}}
        evaluation:
          test_cases:
            inline: {json.dumps(cases)}
          metrics:
            acc: {{function: exact_match}}
        optimization:
          seed: 3
          evolution: {{population_size: 10, generations: 3}}
    """)
    path = tmp_path / "optimization.yaml"
    path.write_text(text)
    return parse_config(text, path)


async def run(loaded: Any) -> Any:
    store = await Store.open(loaded.base_dir / "db.sqlite")
    try:
        return await Optimizer(loaded, store).run()
    finally:
        await store.close()


@pytest.mark.anyio
async def test_a_target_that_refuses_every_connection_stops_after_a_few_attempts(tmp_path: Path) -> None:
    """30 test cases, 10 configurations, 3 retries: the run stopped after 256 attempts
    before; now the first configuration's first calls (and those already in flight) tell."""
    out = await run(study(tmp_path, """
        def call(params, input):
            raise ConnectionError("connection refused: http://127.0.0.1:9/v1")
    """))
    assert out.status == "failed" and out.all_failed_error is not None
    assert "connection refused" in out.all_failed_error
    assert out.stop_reason.startswith("every call failed with the same error")
    concurrency, attempts = 4, 4
    assert out.total_calls <= (4 + concurrency) * attempts, out.total_calls


@pytest.mark.anyio
async def test_a_target_that_refuses_a_connection_now_and_then_keeps_running(tmp_path: Path) -> None:
    out = await run(study(tmp_path, """
        import zlib
        def call(params, input):
            if zlib.crc32(f"{params}{input}".encode()) % 4 == 0:
                raise ConnectionError("connection refused: http://127.0.0.1:9/v1")
            return "yes"
    """))
    assert out.status == "finished" and out.all_failed_error is None
