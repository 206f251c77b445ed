"""Structured output and log-probs on the embedded model, and ``logprob_of`` everywhere."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from llm_fixtures import LlamaServer, free_port, gguf_path, llama_server  # noqa: F401

from convergence.llm import client
from convergence.llm.local_provider import LOCAL_MODEL, continuation_logprob, get_llama
from convergence.llm.logprob import logprob_of

PROMPT = "The capital of France is"
SPACE: dict[str, list[Any]] = {
    "tone": ["formal", "casual", "terse"],
    "length": ["short", "medium", "long"],
    "examples": [0, 1, 2, 3],
    "format": ["prose", "bullets", "table"],
}
SCHEMA = {
    "type": "object",
    "properties": {name: {"enum": values} for name, values in SPACE.items()},
    "required": list(SPACE),
    "additionalProperties": False,
}


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# --------------------------------------------------------------------------- response_format


@pytest.mark.slow
@pytest.mark.anyio
async def test_json_schema_answers_parse_and_stay_in_the_enums_at_temperature_one() -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "settings", "schema": SCHEMA}}
    answers = set()
    for seed in range(5):
        resp = await client.acompletion(
            LOCAL_MODEL, _user("Pick prompt settings, as JSON:\n"), max_tokens=120, temperature=1.0, seed=seed,
            response_format=response_format,
        )
        answer = json.loads(client.response_text(resp))
        assert set(answer) == set(SPACE)
        assert all(answer[name] in values for name, values in SPACE.items()), answer
        assert resp.choices[0].finish_reason == "stop"  # the grammar ended it, not max_tokens
        answers.add(json.dumps(answer, sort_keys=True))
    assert len(answers) > 1  # sampled, not pinned: the grammar restricts, the seed still varies


@pytest.mark.anyio
@pytest.mark.parametrize(("option", "message"), [
    ({"response_format": {"type": "xml"}}, "unsupported response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "json_schema.schema"),
    ({"logprobs": True, "top_logprobs": 21}, "between 0 and 20"),
    ({"top_logprobs": 3}, "needs logprobs=True"),
])
async def test_options_the_embedded_model_cannot_honour_are_bad_requests(option: dict[str, Any], message: str) -> None:
    litellm = client.litellm_module()
    with pytest.raises(litellm.BadRequestError, match=message):
        await client.acompletion(LOCAL_MODEL, _user(PROMPT), max_tokens=2, **option)


# --------------------------------------------------------------------------- logprobs


@pytest.mark.slow
@pytest.mark.anyio
async def test_logprobs_come_back_in_the_openai_chat_shape() -> None:
    resp = await client.acompletion(
        LOCAL_MODEL, _user(PROMPT), max_tokens=4, temperature=0, logprobs=True, top_logprobs=5
    )
    content = resp.choices[0].logprobs.content
    assert len(content) == client.response_usage(resp)[1] == 4
    assert "".join(entry.token for entry in content) == client.response_text(resp)
    for entry in content:
        top = [alt.logprob for alt in entry.top_logprobs]
        assert len(top) == 5 and top == sorted(top, reverse=True) and all(lp <= 0.0 for lp in top)
        assert entry.top_logprobs[0].token == entry.token  # temperature 0 takes the most likely token
        assert entry.logprob == pytest.approx(top[0])
        assert bytes(entry.bytes).decode() == entry.token
    first = content[0].token
    assert len(get_llama().tokenize(first.encode(), add_bos=False, special=False)) == 1  # round-trips
    assert content[0].logprob == pytest.approx(continuation_logprob(PROMPT, first), abs=1e-3)


@pytest.mark.slow
@pytest.mark.anyio
async def test_logprobs_cover_the_returned_text_not_a_cut_stop_sequence() -> None:
    resp = await client.acompletion(LOCAL_MODEL, _user(PROMPT), max_tokens=16, temperature=0, logprobs=True, stop=".")
    text = client.response_text(resp)
    content = resp.choices[0].logprobs.content
    assert resp.choices[0].finish_reason == "stop" and text
    assert "".join(entry.token for entry in content) == text
    assert all(entry.top_logprobs == [] for entry in content)  # top_logprobs defaults to 0
    plain = await client.acompletion(LOCAL_MODEL, _user(PROMPT), max_tokens=16, temperature=0, stop=".")
    assert client.response_text(plain) == text  # asking for log-probs does not change the answer
    assert getattr(plain.choices[0], "logprobs", None) is None


# --------------------------------------------------------------------------- logprob_of


@pytest.mark.slow
@pytest.mark.anyio
async def test_logprob_of_local_is_exact_and_prefers_the_obvious_continuation() -> None:
    paris = await logprob_of(LOCAL_MODEL, PROMPT, " Paris")
    banana = await logprob_of(LOCAL_MODEL, PROMPT, " banana")
    assert paris.method == banana.method == "prompt"
    assert paris.value is not None and banana.value is not None
    assert banana.value < paris.value < 0.0
    assert paris.value == continuation_logprob(PROMPT, " Paris")
    without = await logprob_of(LOCAL_MODEL, "My favourite fruit is the", " Paris")
    assert without.value is not None and without.value < paris.value


@pytest.mark.anyio
async def test_logprob_of_an_unknown_local_model_raises_like_a_completion() -> None:
    litellm = client.litellm_module()
    with pytest.raises(litellm.NotFoundError, match="no-such-model"):
        await logprob_of("local/no-such-model", PROMPT, " Paris")


@pytest.mark.slow
@pytest.mark.anyio
async def test_logprob_of_an_openai_compatible_server_reads_top_logprobs(
    llama_server: LlamaServer,  # noqa: F811 - the fixture imported above
) -> None:
    model = f"openai/{llama_server.model_alias}"
    kw: dict[str, Any] = {"api_base": llama_server.api_base, "api_key": "sk-local-dummy", "timeout": 60.0}
    paris = await logprob_of(model, PROMPT, " Paris", **kw)
    banana = await logprob_of(model, PROMPT, " banana", **kw)
    assert paris.method == "top_logprobs" and paris.value is not None and paris.value < 0.0
    assert banana.method in ("top_logprobs", "top_logprobs_bound") and banana.value is not None
    assert paris.value > banana.value
    assert (await logprob_of(model, PROMPT, "Paris", **kw)) == paris  # leading whitespace does not matter
    narrow = await logprob_of(model, PROMPT, " banana", top_k=3, **kw)
    assert narrow.method == "top_logprobs_bound" and narrow.value is not None and narrow.value >= banana.value


@pytest.mark.anyio
async def test_logprob_of_an_unreachable_server_is_no_measurement_not_an_error() -> None:
    start = time.perf_counter()
    result = await logprob_of(
        "openai/anything", PROMPT, " Paris", api_base=f"http://127.0.0.1:{free_port()}/v1", api_key="sk-x",
        timeout=5.0,
    )
    assert result.method == "none" and result.value is None
    assert "Connection" in result.detail or "connect" in result.detail.lower()
    assert time.perf_counter() - start < 5.0


@pytest.mark.anyio
async def test_top_k_outside_what_providers_accept_is_a_caller_error() -> None:
    for top_k in (0, 21):
        with pytest.raises(ValueError, match="top_k"):
            await logprob_of("openai/anything", PROMPT, " Paris", top_k=top_k)
