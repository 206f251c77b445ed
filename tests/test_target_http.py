"""HTTPTarget + CallRunner against a real HTTP server on 127.0.0.1.

The server is the stdlib ThreadingHTTPServer, started per module on a free
port and shut down afterwards; every request it receives is recorded so the
tests check what actually went over the wire.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import pytest
from local_server import serve

from convergence.config.targets import HTTPTargetConfig, RetryConfig
from convergence.core.types import TestCase as Case
from convergence.targets.factory import build_runner, build_target, missing_env_vars
from convergence.targets.http_target import HTTPTarget, missing_env
from convergence.targets.runner import CallRunner


@dataclass
class Seen:
    requests: list[dict[str, Any]] = field(default_factory=list)
    hits: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def last(self, path_prefix: str) -> dict[str, Any]:
        return [r for r in self.requests if r["path"].startswith(path_prefix)][-1]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: Seen

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        return None

    def _send(
        self, status: int, payload: Any, content_type: str = "application/json", headers: dict[str, str] | None = None
    ) -> None:
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client timed out and hung up:
            self.wfile.write(data)  # expected in the timeout test

    def _handle(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        record = {
            "t": time.perf_counter(),
            "method": self.command,
            "path": url.path,
            "query": {k: v[0] for k, v in parse_qs(url.query).items()},
            "body": json.loads(raw) if raw else None,
            "headers": {k.lower(): v for k, v in self.headers.items()},
        }
        with self.seen.lock:
            self.seen.requests.append(record)
            self.seen.hits[url.path] += 1
            hits = self.seen.hits[url.path]
        parts = url.path.strip("/").split("/")
        route = parts[0]
        if route == "echo":
            self._send(200, {"result": record})
        elif route == "chat":
            prompt = (record["body"] or {}).get("prompt")
            self._send(
                200,
                {
                    "choices": [{"message": {"content": f"echo:{prompt}"}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 5},
                    "meta": {"cost": 0.0012},
                },
            )
        elif route == "flaky":  # /flaky/<key>/<n>: n times 429, then 200
            if hits <= int(parts[2]):
                self._send(429, {"error": "slow down"})
            else:
                self._send(200, {"result": "ok after retries"})
        elif route == "ra":  # /ra/<key>/<status>/<retry-after>: first hit <status> with Retry-After, then 200
            if hits == 1:
                value = parts[3]
                if value.startswith("date+"):  # an HTTP-date that many seconds ahead
                    value = formatdate(time.time() + float(value[5:]), usegmt=True)
                self._send(int(parts[2]), {"error": "come back later"}, headers={"Retry-After": value})
            else:
                self._send(200, {"result": "ok after waiting"})
        elif route == "fail500":
            self._send(500, {"error": "database on fire"})
        elif route == "fail400":
            self._send(400, {"error": "unknown field 'tempreature'"})
        elif route == "slow":  # /slow/<key>/<seconds>
            time.sleep(float(parts[2]))
            self._send(200, {"result": "late"})
        elif route == "html":
            self._send(200, "<html><body><h1>Welcome to nginx!</h1></body></html>", "text/html")
        elif route == "apperror":
            self._send(200, {"error": "quota exhausted", "result": None})
        elif route == "job":  # /job/<key>/<status>
            self._send(200, {"status": parts[2], "result": "done-output"})
        else:
            self._send(404, {"error": f"no route {url.path}"})

    do_GET = do_POST = do_PUT = do_PATCH = _handle


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Seen]]:
    seen = Seen()
    with serve(Handler, seen=seen) as base:
        yield base, seen


def key() -> str:
    return uuid.uuid4().hex[:10]


FAST_RETRY = RetryConfig(max_retries=3, backoff_initial_seconds=0.01, backoff_max_seconds=0.05)


def runner_for(cfg: HTTPTargetConfig, *, retry: RetryConfig = FAST_RETRY, timeout: float = 5.0) -> CallRunner:
    return CallRunner(HTTPTarget(cfg), retry=retry, timeout_seconds=timeout, rate_limit_per_second=None)


CASE = Case(id="c1", input={"question": "2+2?"}, expected="4")


@pytest.mark.anyio
async def test_default_body_is_case_input_merged_with_params(server: tuple[str, Seen]) -> None:
    base, _seen = server
    runner = runner_for(HTTPTargetConfig(endpoint=f"{base}/echo/{key()}"))
    result = await runner.run({"temperature": 0.3, "model": "m1"}, CASE)
    await runner.aclose()
    assert result.ok, result.error
    assert result.output["body"] == {"question": "2+2?", "temperature": 0.3, "model": "m1"}
    assert result.output["method"] == "POST"
    assert result.latency_ms > 0 and result.attempts == 1

    runner = runner_for(HTTPTargetConfig(endpoint=f"{base}/echo/{key()}"))
    result = await runner.run({"k": 1}, Case(id="s", input="plain text"))
    await runner.aclose()
    assert result.output["body"] == {"input": "plain text", "k": 1}


@pytest.mark.anyio
async def test_body_and_header_templates_are_rendered_with_types_kept(server: tuple[str, Seen]) -> None:
    base, _ = server
    cfg = HTTPTargetConfig.model_validate(
        {
            "endpoint": f"{base}/echo/{key()}",
            "request": {
                "method": "PUT",
                "headers": {"X-Case": "case-{{ case_id }}", "X-Static": "yes"},
                "body": {
                    "prompt": "Q: {{ question }} ({{ style }})",
                    "temperature": "{{ temperature }}",
                    "nested": [{"n": 2}, "{{ expected }}"],
                },
            },
        }
    )
    runner = runner_for(cfg)
    result = await runner.run({"temperature": 0.7, "style": "terse for {{ case_id }}"}, CASE)
    await runner.aclose()
    assert result.ok, result.error
    sent = result.output
    assert sent["method"] == "PUT"
    assert sent["body"] == {"prompt": "Q: 2+2? (terse for c1)", "temperature": 0.7, "nested": [{"n": 2}, "4"]}
    assert sent["headers"]["x-case"] == "case-c1"
    assert sent["headers"]["x-static"] == "yes"


@pytest.mark.anyio
async def test_get_sends_body_as_query_params(server: tuple[str, Seen]) -> None:
    base, _ = server
    cfg = HTTPTargetConfig.model_validate({"endpoint": f"{base}/echo/{key()}", "request": {"method": "GET"}})
    runner = runner_for(cfg)
    result = await runner.run({"limit": 5, "flag": True}, Case(id="g", input={"q": "cats"}))
    await runner.aclose()
    assert result.ok, result.error
    assert result.output["method"] == "GET"
    assert result.output["body"] is None
    assert result.output["query"] == {"q": "cats", "limit": "5", "flag": "true"}


@pytest.mark.anyio
async def test_auth_headers_come_from_env(server: tuple[str, Seen], monkeypatch: pytest.MonkeyPatch) -> None:
    base, _ = server
    monkeypatch.setenv("CONV_TEST_TOKEN", "tok-123")
    monkeypatch.setenv("CONV_TEST_USER", "alice")
    monkeypatch.setenv("CONV_TEST_PASS", "s3cret")
    auths = {
        "bearer": ({"type": "bearer", "token_env": "CONV_TEST_TOKEN"}, "authorization", "Bearer tok-123"),
        "api_key": (
            {"type": "api_key", "token_env": "CONV_TEST_TOKEN", "header_name": "X-Api-Key"},
            "x-api-key",
            "tok-123",
        ),
        "basic_env": (
            {"type": "basic", "username_env": "CONV_TEST_USER", "password_env": "CONV_TEST_PASS"},
            "authorization",
            "Basic " + base64.b64encode(b"alice:s3cret").decode(),
        ),
        "basic_literal_user": (
            {"type": "basic", "username": "bob", "password_env": "CONV_TEST_PASS"},
            "authorization",
            "Basic " + base64.b64encode(b"bob:s3cret").decode(),
        ),
    }
    for name, (auth, header, expected) in auths.items():
        cfg = HTTPTargetConfig.model_validate({"endpoint": f"{base}/echo/{key()}", "auth": auth})
        assert missing_env(cfg) == []
        runner = runner_for(cfg)
        result = await runner.run({}, CASE)
        await runner.aclose()
        assert result.ok, (name, result.error)
        assert result.output["headers"][header] == expected, name


@pytest.mark.anyio
async def test_missing_env_var_is_named_and_not_retried(
    server: tuple[str, Seen], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, seen = server
    monkeypatch.delenv("CONV_TEST_ABSENT_TOKEN", raising=False)
    path = f"/echo/{key()}"
    cfg = HTTPTargetConfig.model_validate(
        {"endpoint": base + path, "auth": {"type": "bearer", "token_env": "CONV_TEST_ABSENT_TOKEN"}}
    )
    assert missing_env(cfg) == ["CONV_TEST_ABSENT_TOKEN"]
    assert missing_env_vars(cfg) == ["CONV_TEST_ABSENT_TOKEN"]
    runner = runner_for(cfg)
    result = await runner.run({}, CASE)
    await runner.aclose()
    assert not result.ok
    assert "CONV_TEST_ABSENT_TOKEN" in (result.error or "")
    assert result.attempts == 1
    assert seen.hits[path] == 0  # nothing was sent without credentials


@pytest.mark.anyio
async def test_result_path_cost_and_usage_are_extracted(server: tuple[str, Seen]) -> None:
    base, _ = server
    cfg = HTTPTargetConfig.model_validate(
        {
            "endpoint": f"{base}/chat/{key()}",
            "request": {"body": {"prompt": "{{ input }}"}},
            "response": {"result_field": "choices.0.message.content", "cost_field": "meta.cost"},
        }
    )
    runner = runner_for(cfg)
    result = await runner.run({}, Case(id="p", input="hello"))
    assert result.ok, result.error
    assert result.output == "echo:hello"
    assert result.cost_usd == pytest.approx(0.0012)
    assert (result.prompt_tokens, result.completion_tokens) == (3, 5)
    await runner.aclose()

    whole = runner_for(HTTPTargetConfig.model_validate(
        {"endpoint": f"{base}/chat/{key()}", "response": {"result_field": None}}
    ))
    result = await whole.run({}, Case(id="p", input="x"))
    await whole.aclose()
    assert result.ok and result.output["meta"] == {"cost": 0.0012}

    bad = runner_for(HTTPTargetConfig.model_validate(
        {"endpoint": f"{base}/chat/{key()}", "response": {"result_field": "choices.1.message.content"}}
    ))
    result = await bad.run({}, Case(id="p", input="x"))
    await bad.aclose()
    assert not result.ok and result.attempts == 1
    assert "choices.1.message.content" in (result.error or "") and "index" in (result.error or "")
    assert "echo:" in (result.error or "")  # quotes what came back


@pytest.mark.anyio
async def test_429_then_200_succeeds_after_retries(server: tuple[str, Seen]) -> None:
    base, seen = server
    path = f"/flaky/{key()}/2"
    runner = runner_for(HTTPTargetConfig(endpoint=base + path))
    result = await runner.run({}, CASE)
    await runner.aclose()
    assert result.ok, result.error
    assert result.output == "ok after retries"
    assert result.attempts == 3
    assert seen.hits[path] == 3


@pytest.mark.anyio
async def test_500_forever_fails_after_max_retries(server: tuple[str, Seen]) -> None:
    base, seen = server
    path = f"/fail500/{key()}"
    retry = RetryConfig(max_retries=2, backoff_initial_seconds=0.01, backoff_max_seconds=0.02)
    runner = runner_for(HTTPTargetConfig(endpoint=base + path), retry=retry)
    result = await runner.run({}, CASE)
    await runner.aclose()
    assert not result.ok
    assert result.attempts == 3
    assert seen.hits[path] == 3
    assert result.error is not None and result.error.startswith("http_500:")
    assert "database on fire" in result.error


@pytest.mark.anyio
async def test_400_is_not_retried_and_reports_server_message(server: tuple[str, Seen]) -> None:
    base, seen = server
    path = f"/fail400/{key()}"
    runner = runner_for(HTTPTargetConfig(endpoint=base + path))
    result = await runner.run({}, CASE)
    await runner.aclose()
    assert not result.ok
    assert result.attempts == 1 and seen.hits[path] == 1
    assert result.error is not None and result.error.startswith("http_400:")
    assert "unknown field 'tempreature'" in result.error


@pytest.mark.anyio
async def test_slow_response_hits_timeout_per_attempt(server: tuple[str, Seen]) -> None:
    base, seen = server
    path = f"/slow/{key()}/1.5"
    retry = RetryConfig(max_retries=1, backoff_initial_seconds=0.01, backoff_max_seconds=0.02)
    cfg = HTTPTargetConfig(endpoint=base + path, timeout_seconds=0.3, retry=retry)
    runner = build_runner(cfg, build_target(cfg, Path("."), concurrency=4))
    start = time.perf_counter()
    result = await runner.run({}, CASE)
    elapsed = time.perf_counter() - start
    await runner.aclose()
    assert not result.ok
    assert result.error is not None and result.error.startswith("timeout:")
    assert result.attempts == 2 and seen.hits[path] == 2
    assert 0.55 < elapsed < 1.4  # two 0.3 s attempts, not the 1.5 s the server takes


@pytest.mark.anyio
async def test_html_response_gives_clear_error(server: tuple[str, Seen]) -> None:
    base, _seen = server
    runner = runner_for(HTTPTargetConfig(endpoint=f"{base}/html/{key()}"))
    result = await runner.run({}, CASE)
    await runner.aclose()
    assert not result.ok and result.attempts == 1
    assert "non-JSON" in (result.error or "")
    assert "text/html" in (result.error or "")
    assert "Welcome to nginx!" in (result.error or "")


@pytest.mark.anyio
async def test_error_and_success_fields(server: tuple[str, Seen]) -> None:
    base, _ = server
    runner = runner_for(HTTPTargetConfig(endpoint=f"{base}/apperror/{key()}"))
    result = await runner.run({}, CASE)
    await runner.aclose()
    assert not result.ok and "quota exhausted" in (result.error or "") and result.attempts == 1

    for status, ok in (("completed", True), ("success", True), ("failed", False)):
        cfg = HTTPTargetConfig.model_validate(
            {"endpoint": f"{base}/job/{key()}/{status}", "response": {"success_field": "status"}}
        )
        runner = runner_for(cfg)
        result = await runner.run({}, CASE)
        await runner.aclose()
        assert result.ok is ok, (status, result.error)
        if ok:
            assert result.output == "done-output"
        else:
            assert "status='failed'" in (result.error or "")


@pytest.mark.anyio
async def test_many_concurrent_calls_share_one_client(server: tuple[str, Seen]) -> None:
    base, seen = server
    path = f"/echo/{key()}"
    runner = runner_for(HTTPTargetConfig(endpoint=base + path))
    results: list[Any] = []

    async def one(i: int) -> None:
        results.append(await runner.run({"i": i}, CASE))

    async with anyio.create_task_group() as tg:
        for i in range(60):
            tg.start_soon(one, i)
    await runner.aclose()
    assert all(r.ok for r in results)
    assert sorted(r.output["body"]["i"] for r in results) == list(range(60))
    assert seen.hits[path] == 60


# --------------------------------------------------------------------------- Retry-After

PATIENT_RETRY = RetryConfig(max_retries=2, backoff_initial_seconds=0.01, backoff_max_seconds=5.0)


async def _retry_after_gap(base: str, seen: Seen, path: str, retry: RetryConfig = PATIENT_RETRY) -> tuple[Any, float]:
    """Run one case against ``path``; return the result and the seconds between
    the first and second request as the server saw them."""
    runner = runner_for(HTTPTargetConfig(endpoint=base + path), retry=retry)
    result = await runner.run({}, CASE)
    await runner.aclose()
    times = [r["t"] for r in seen.requests if r["path"] == path]
    assert len(times) == 2, times
    return result, times[1] - times[0]


@pytest.mark.anyio
async def test_429_retry_after_seconds_is_honoured(server: tuple[str, Seen]) -> None:
    base, seen = server
    result, gap = await _retry_after_gap(base, seen, f"/ra/{key()}/429/1")
    assert result.ok and result.output == "ok after waiting" and result.attempts == 2
    assert 0.98 <= gap < 4, gap  # the server said 1 s; the backoff alone would be 10-20 ms (upper bound: load slack)
    assert result.wall_ms >= 1000 > result.latency_ms


@pytest.mark.anyio
async def test_429_retry_after_http_date_is_honoured(server: tuple[str, Seen]) -> None:
    base, seen = server
    # The date has whole-second resolution: "now + 2 s" is 1-2 s away when it arrives.
    result, gap = await _retry_after_gap(base, seen, f"/ra/{key()}/429/date+2")
    assert result.ok and result.attempts == 2
    assert 0.98 <= gap < 5, gap


@pytest.mark.anyio
async def test_503_retry_after_is_honoured(server: tuple[str, Seen]) -> None:
    base, seen = server
    result, gap = await _retry_after_gap(base, seen, f"/ra/{key()}/503/1")
    assert result.ok and result.attempts == 2
    assert 0.98 <= gap < 4, gap


@pytest.mark.anyio
async def test_retry_after_is_capped_by_backoff_max(server: tuple[str, Seen]) -> None:
    base, seen = server
    retry = RetryConfig(max_retries=2, backoff_initial_seconds=0.01, backoff_max_seconds=0.3)
    result, gap = await _retry_after_gap(base, seen, f"/ra/{key()}/429/30", retry)
    assert result.ok and result.attempts == 2
    assert 0.3 <= gap < 3, gap  # 30 s asked for, 0.3 s allowed


@pytest.mark.anyio
async def test_retry_after_on_a_non_retryable_status_is_ignored(server: tuple[str, Seen]) -> None:
    base, seen = server
    path = f"/ra/{key()}/400/1"
    runner = runner_for(HTTPTargetConfig(endpoint=base + path), retry=PATIENT_RETRY)
    start = time.perf_counter()
    result = await runner.run({}, CASE)
    await runner.aclose()
    assert result.error is not None and result.error.startswith("http_400:")
    assert result.attempts == 1 and seen.hits[path] == 1
    assert time.perf_counter() - start < 0.5


def test_retry_after_parsing() -> None:
    from convergence.targets.base import parse_retry_after, retry_after_from_headers

    now = 1_700_000_000.0
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(formatdate(now + 7, usegmt=True), now=now) == pytest.approx(7.0)
    assert parse_retry_after(formatdate(now - 60, usegmt=True), now=now) == 0.0  # already past
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:27 GMT", now=now) == pytest.approx(7.0)
    assert parse_retry_after("Tuesday, 14-Nov-23 22:13:27 GMT", now=now) == pytest.approx(7.0)  # RFC 850
    assert parse_retry_after("Tue Nov 14 22:13:27 2023", now=now) == pytest.approx(7.0)  # asctime
    for junk in (None, "", "soon", "nan", "Tue, 99 Foo 2023"):
        assert parse_retry_after(junk) is None, junk
    assert retry_after_from_headers({"Retry-After": "2"}) == 2.0
    assert retry_after_from_headers({"retry-after-ms": "250", "retry-after": "2"}) == 0.25
    assert retry_after_from_headers({"content-type": "text/plain"}) is None
    assert retry_after_from_headers(None) is None
