"""LiteLLMTarget: the embedded model, a real OpenAI-compatible server over
HTTP, configuration errors and how parameters are split between template and call."""

from __future__ import annotations

import pytest

from convergence.config.models import LiteLLMTargetConfig
from convergence.core.types import TestCase as Case
from convergence.llm.local_provider import LOCAL_MODEL
from convergence.targets.base import Target, TargetError
from convergence.targets.litellm_target import LiteLLMTarget
from llm_fixtures import LlamaServer, free_port, gguf_path, llama_server  # noqa: F401

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
        model="openai/anything", api_base=f"http://127.0.0.1:{free_port()}/v1", params={"max_tokens": 2}, timeout_seconds=10
    )
    with pytest.raises(TargetError) as info:
        await LiteLLMTarget(cfg).call({}, CASE)
    assert info.value.retryable is True


@pytest.mark.slow
@pytest.mark.anyio
async def test_local_model_through_the_target_returns_text_tokens_and_zero_cost() -> None:
    target = LiteLLMTarget(LiteLLMTargetConfig(model=LOCAL_MODEL, prompt=PROMPT, params={"max_tokens": 6}))
    short = await target.call({"style": "Short.", "temperature": 0}, CASE)
    longer = await target.call({"style": "Answer with the name of the city and nothing else, please.", "temperature": 0}, CASE)
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
async def test_server_rejecting_an_oversized_prompt_is_not_retried(llama_server: LlamaServer, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
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
