"""LiteLLMTarget: the embedded model, a real OpenAI-compatible server over
HTTP, configuration errors and how parameters are split between template and call."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from llm_fixtures import LlamaServer, free_port, gguf_path, llama_server  # noqa: F401
from local_server import serve

from convergence.config.targets import LiteLLMTargetConfig, RetryConfig
from convergence.core.types import TestCase as Case
from convergence.llm.local_provider import LOCAL_MODEL
from convergence.targets.base import Target, TargetError
from convergence.targets.litellm_target import LiteLLMTarget
from convergence.targets.runner import CallRunner

CASE = Case(id="c1", input={"question": "What is the capital of France?"}, expected="Paris")
PROMPT = "{{ style }}\nQ: {{ question }}\nA:"
KEY_ENV = "CONVERGENCE_TEST_LLAMA_SERVER_KEY"


def test_litellm_target_satisfies_the_target_protocol() -> None:
    assert isinstance(LiteLLMTarget(LiteLLMTargetConfig(model=LOCAL_MODEL)), Target)


def test_template_only_parameter_renders_into_the_prompt_but_is_not_a_call_kwarg() -> None:
    target = LiteLLMTarget(LiteLLMTargetConfig(model=LOCAL_MODEL, prompt=PROMPT, params={"max_tokens": 5}))
    params = {"style": "Answer in one word about {{ question }}", "temperature": 0.3}
    messages = target.messages_for(params, CASE)
    assert messages == [
        {
            "role": "user",
            "content": "Answer in one word about What is the capital of France?\n"
            "Q: What is the capital of France?\nA:",
        }
    ]
    assert target.call_kwargs(params) == {"max_tokens": 5, "temperature": 0.3}


def test_explicit_call_params_decide_what_is_sent() -> None:
    cfg = LiteLLMTargetConfig(model=LOCAL_MODEL, prompt=PROMPT, call_params=["style_guide"])
    target = LiteLLMTarget(cfg)
    assert target.call_kwargs({"style_guide": "x", "temperature": 0.1, "style": "y"}) == {"style_guide": "x"}


def test_messages_are_rendered_per_message() -> None:
    cfg = LiteLLMTargetConfig(
        model=LOCAL_MODEL,
        messages=[{"role": "system", "content": "{{ system_prompt }}"}, {"role": "user", "content": "{{ question }}"}],
    )
    messages = LiteLLMTarget(cfg).messages_for({"system_prompt": "Be terse."}, CASE)
    assert messages == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "What is the capital of France?"},
    ]


@pytest.mark.anyio
async def test_missing_api_key_env_var_is_a_clear_non_retryable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONVERGENCE_TEST_MISSING_KEY", raising=False)
    target = LiteLLMTarget(LiteLLMTargetConfig(model="openai/gpt-4o-mini", api_key_env="CONVERGENCE_TEST_MISSING_KEY"))
    with pytest.raises(TargetError) as info:
        await target.call({}, CASE)
    assert info.value.retryable is False
    assert "CONVERGENCE_TEST_MISSING_KEY" in str(info.value)


@pytest.mark.anyio
async def test_undefined_template_variable_is_a_non_retryable_error() -> None:
    target = LiteLLMTarget(LiteLLMTargetConfig(model=LOCAL_MODEL, prompt="{{ nowhere }}"))
    with pytest.raises(TargetError) as info:
        await target.call({}, CASE)
    assert info.value.retryable is False and "nowhere" in str(info.value)


@pytest.mark.anyio
async def test_unreachable_server_is_a_retryable_error() -> None:
    cfg = LiteLLMTargetConfig(
        model="openai/anything", api_base=f"http://127.0.0.1:{free_port()}/v1", params={"max_tokens": 2},
        timeout_seconds=10,
    )
    with pytest.raises(TargetError) as info:
        await LiteLLMTarget(cfg).call({}, CASE)
    assert info.value.retryable is True


@pytest.mark.slow
@pytest.mark.anyio
async def test_local_model_through_the_target_returns_text_tokens_and_zero_cost() -> None:
    target = LiteLLMTarget(LiteLLMTargetConfig(model=LOCAL_MODEL, prompt=PROMPT, params={"max_tokens": 6}))
    short = await target.call({"style": "Short.", "temperature": 0}, CASE)
    longer = await target.call(
        {"style": "Answer with the name of the city and nothing else, please.", "temperature": 0}, CASE
    )
    assert isinstance(short.output, str) and short.output.strip()
    assert 0 < short.completion_tokens <= 6
    assert short.cost_usd == 0.0 and short.latency_ms > 0
    assert short.raw["finish_reason"] in ("stop", "length")
    # The template-only variable reached the prompt: a longer style costs more prompt tokens.
    assert longer.prompt_tokens > short.prompt_tokens
    await target.aclose()


@pytest.mark.slow
@pytest.mark.anyio
async def test_model_parameter_overrides_the_configured_model() -> None:
    target = LiteLLMTarget(LiteLLMTargetConfig(model="local/no-such-model", params={"max_tokens": 2}))
    with pytest.raises(TargetError) as info:
        await target.call({}, CASE)
    assert info.value.retryable is False and "no-such-model" in str(info.value)
    result = await target.call({"model": LOCAL_MODEL}, CASE)
    assert result.completion_tokens > 0


@pytest.mark.slow
@pytest.mark.anyio
async def test_openai_compatible_server_over_http(llama_server: LlamaServer, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setenv(KEY_ENV, "sk-local-dummy")
    cfg = LiteLLMTargetConfig(
        model=f"openai/{llama_server.model_alias}",
        api_base=llama_server.api_base,
        api_key_env=KEY_ENV,
        prompt=PROMPT,
        params={"max_tokens": 8},
    )
    target = LiteLLMTarget(cfg)
    result = await target.call({"style": "Be brief.", "temperature": 0}, CASE)
    assert isinstance(result.output, str) and result.output.strip()
    assert result.prompt_tokens > 0 and 0 < result.completion_tokens <= 8
    assert result.cost_usd == 0.0  # LiteLLM has no price for a self-hosted model


@pytest.mark.slow
@pytest.mark.anyio
async def test_server_rejecting_an_oversized_prompt_is_not_retried(
    llama_server: LlamaServer, monkeypatch: pytest.MonkeyPatch  # noqa: F811 - the fixture imported above
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-local-dummy")
    cfg = LiteLLMTargetConfig(
        model=f"openai/{llama_server.model_alias}",
        api_base=llama_server.api_base,
        api_key_env=KEY_ENV,
        params={"max_tokens": 4},
    )
    huge = Case(id="big", input="word " * 3000)
    with pytest.raises(TargetError) as info:
        await LiteLLMTarget(cfg).call({}, huge)
    assert info.value.retryable is False


# --------------------------------------------------------------------------- Retry-After through LiteLLM


class _StubOpenAI(BaseHTTPRequestHandler):
    """A minimal OpenAI-compatible chat endpoint. ``/<key>/<status>/<retry-after>/v1/...``
    answers the first request of each key with ``status`` and that Retry-After
    (``date+N``: an HTTP-date N seconds ahead), later ones with a completion."""

    protocol_version = "HTTP/1.1"
    seen: dict[str, list[float]]

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_POST(self) -> None:
        arrived = time.perf_counter()
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        key, status, retry_after = self.path.strip("/").split("/")[:3]
        self.seen[key].append(arrived)
        if len(self.seen[key]) == 1:
            if retry_after.startswith("date+"):
                retry_after = formatdate(time.time() + float(retry_after[5:]), usegmt=True)
            code, headers = int(status), {"Retry-After": retry_after}
            payload: dict[str, Any] = {"error": {"message": "come back later", "type": "server_error"}}
        else:
            code, headers = 200, {}
            payload = {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": "stub",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "Paris"}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
            }
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def stub_openai(
    stub_openai_server: tuple[str, dict[str, list[float]]], monkeypatch: pytest.MonkeyPatch
) -> tuple[str, dict[str, list[float]]]:
    monkeypatch.setenv(KEY_ENV, "sk-stub")
    return stub_openai_server


@pytest.fixture(scope="module")
def stub_openai_server() -> Iterator[tuple[str, dict[str, list[float]]]]:
    seen: dict[str, list[float]] = defaultdict(list)
    with serve(_StubOpenAI, seen=seen) as base:
        yield base, seen


async def _through_runner(base: str, path: str, retry: RetryConfig) -> Any:
    cfg = LiteLLMTargetConfig(
        model="openai/stub", api_base=f"{base}/{path}/v1", api_key_env=KEY_ENV, params={"max_tokens": 2},
        timeout_seconds=10,
    )
    runner = CallRunner(LiteLLMTarget(cfg), retry=retry, timeout_seconds=10, rate_limit_per_second=None)
    try:
        return await runner.run({}, CASE)
    finally:
        await runner.aclose()


PATIENT = RetryConfig(max_retries=2, backoff_initial_seconds=0.01, backoff_max_seconds=5.0)


@pytest.mark.anyio
@pytest.mark.parametrize(("status", "retry_after", "low", "high"), [
    (429, "1", 0.98, 4.0),
    (429, "date+2", 0.98, 5.0),  # an HTTP-date has whole seconds: 1-2 s away on arrival
    (503, "1", 0.98, 4.0),
])
async def test_litellm_rate_limit_retry_after_is_honoured(
    stub_openai: tuple[str, dict[str, list[float]]], status: int, retry_after: str, low: float, high: float
) -> None:
    base, seen = stub_openai
    key = f"k{status}-{retry_after}"
    result = await _through_runner(base, f"{key}/{status}/{retry_after}", PATIENT)
    assert result.ok, result.error
    assert result.output == "Paris" and result.attempts == 2
    gap = seen[key][1] - seen[key][0]
    assert low <= gap < high, gap  # without Retry-After the backoff is 10-20 ms
    assert result.wall_ms >= gap * 1000 > result.latency_ms


@pytest.mark.anyio
async def test_litellm_retry_after_is_capped_by_backoff_max(stub_openai: tuple[str, dict[str, list[float]]]) -> None:
    base, seen = stub_openai
    retry = RetryConfig(max_retries=2, backoff_initial_seconds=0.01, backoff_max_seconds=0.3)
    result = await _through_runner(base, "capped/429/30", retry)
    assert result.ok and result.attempts == 2
    gap = seen["capped"][1] - seen["capped"][0]
    assert 0.3 <= gap < 3, gap  # 30 s asked for, 0.3 s allowed


@pytest.mark.anyio
async def test_litellm_rate_limit_error_carries_retry_after(stub_openai: tuple[str, dict[str, list[float]]]) -> None:
    base, _ = stub_openai
    cfg = LiteLLMTargetConfig(
        model="openai/stub", api_base=f"{base}/direct/429/7/v1", api_key_env=KEY_ENV, timeout_seconds=10
    )
    with pytest.raises(TargetError) as info:
        await LiteLLMTarget(cfg).call({}, CASE)
    assert info.value.retryable is True and info.value.status_code == 429
    assert info.value.retry_after == 7.0
