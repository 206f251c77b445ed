"""The embedded model is a real LiteLLM provider: ``local/gemma-3-270m``."""

from __future__ import annotations

import time

import anyio
import numpy as np
import pytest
from llm_fixtures import gguf_path  # noqa: F401

from convergence.llm import client
from convergence.llm.local_provider import (
    LOCAL_MODEL,
    acontinuation_logprob,
    continuation_logprob,
    messages_to_prompt,
)

PROMPT = "The capital of France is"


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_single_user_message_is_the_prompt_verbatim() -> None:
    assert messages_to_prompt(_user("Q: 2+2?\nA:")) == "Q: 2+2?\nA:"


def test_conversation_becomes_a_transcript_the_model_continues() -> None:
    prompt = messages_to_prompt(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    )
    assert prompt == "system: Be brief.\n\nuser: Hi\n\nassistant:"
    prefill = messages_to_prompt([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello,"}])
    assert prefill.endswith("assistant: Hello,")


@pytest.mark.slow
@pytest.mark.anyio
async def test_local_model_answers_with_usage_and_zero_cost() -> None:
    resp = await client.acompletion(LOCAL_MODEL, _user(PROMPT), max_tokens=8, temperature=0)
    text = client.response_text(resp)
    prompt_tokens, completion_tokens = client.response_usage(resp)
    assert text.strip()
    assert prompt_tokens > 0 and 0 < completion_tokens <= 8
    assert client.response_cost(resp) == 0.0
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert resp.model.endswith("gemma-3-270m")


@pytest.mark.slow
@pytest.mark.anyio
async def test_max_tokens_caps_the_answer() -> None:
    resp = await client.acompletion(LOCAL_MODEL, _user(PROMPT), max_tokens=3, temperature=0)
    assert client.response_usage(resp)[1] == 3
    assert resp.choices[0].finish_reason == "length"


@pytest.mark.slow
@pytest.mark.anyio
async def test_stop_sequence_cuts_the_answer_before_it() -> None:
    free = client.response_text(
        await client.acompletion(LOCAL_MODEL, _user(PROMPT), max_tokens=24, temperature=0)
    )
    words = free.split()
    assert len(words) >= 3, free
    stop_word = words[2]
    expected = free[: free.index(stop_word)]
    for stop in (stop_word, [stop_word, "\u2603never"]):
        resp = await client.acompletion(LOCAL_MODEL, _user(PROMPT), max_tokens=24, temperature=0, stop=stop)
        assert client.response_text(resp) == expected
        assert resp.choices[0].finish_reason == "stop"


@pytest.mark.slow
@pytest.mark.anyio
async def test_same_seed_gives_the_same_sample_whatever_ran_before() -> None:
    async def sample(seed: int) -> str:
        resp = await client.acompletion(
            LOCAL_MODEL, _user("Once upon a time"), max_tokens=12, temperature=1.0, top_p=1.0, seed=seed
        )
        return client.response_text(resp)

    first = await sample(7)
    await client.acompletion(LOCAL_MODEL, _user("Once upon a midnight dreary"), max_tokens=2)
    assert await sample(7) == first
    assert await sample(7) == first


@pytest.mark.slow
def test_sync_litellm_completion_uses_the_same_model() -> None:
    litellm = client.litellm_module()
    from convergence.llm.local_provider import ensure_registered

    ensure_registered()
    resp = litellm.completion(model=LOCAL_MODEL, messages=_user(PROMPT), max_tokens=4, temperature=0, num_retries=0)
    assert client.response_usage(resp)[1] > 0 and client.response_text(resp)


@pytest.mark.slow
@pytest.mark.anyio
async def test_concurrent_calls_succeed_and_the_event_loop_keeps_running() -> None:
    await client.acompletion(LOCAL_MODEL, _user("Hi"), max_tokens=1)  # model loaded before timing
    beats: list[float] = []
    results: list[str] = []
    done = anyio.Event()

    async def heartbeat() -> None:
        while not done.is_set():
            beats.append(time.perf_counter())
            await anyio.sleep(0.02)

    async def one(prompt: str) -> None:
        resp = await client.acompletion(LOCAL_MODEL, _user(prompt), max_tokens=24, temperature=0)
        results.append(client.response_text(resp))

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(heartbeat)
        async with anyio.create_task_group() as calls:
            calls.start_soon(one, PROMPT)
            calls.start_soon(one, "A recipe for pancakes:")
        done.set()
    elapsed = time.perf_counter() - start
    assert len(results) == 2 and all(r.strip() for r in results)
    gaps = np.diff(beats)
    assert elapsed > 0.2  # the calls did real work
    assert gaps.max() < 0.3, f"event loop stalled for {gaps.max():.3f}s while the model ran"


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_timeout_surfaces_as_litellm_timeout_and_the_model_stays_usable() -> None:
    litellm = client.litellm_module()
    with pytest.raises(litellm.Timeout):
        await client.acompletion(LOCAL_MODEL, _user(PROMPT), max_tokens=400, temperature=0, timeout=0.05)
    resp = await client.acompletion(LOCAL_MODEL, _user(PROMPT), max_tokens=2, temperature=0)
    assert client.response_usage(resp)[1] == 2


@pytest.mark.slow
def test_likely_continuation_scores_higher_than_unlikely() -> None:
    likely = continuation_logprob(PROMPT, " Paris")
    unlikely = continuation_logprob(PROMPT, " a purple submarine")
    assert likely < 0.0
    assert likely > unlikely + 5.0
    assert continuation_logprob(PROMPT, "") == 0.0


@pytest.mark.slow
def test_continuation_logprob_matches_llama_cpp_full_logits(gguf_path: str) -> None:  # noqa: F811
    """Reference: an independent Llama that keeps every position's logits."""
    from llama_cpp import Llama

    prompt, continuation = "Two plus two equals", " four, of course."
    ours = continuation_logprob(prompt, continuation)
    ref = Llama(model_path=gguf_path, n_ctx=64, n_threads=2, logits_all=True, verbose=False)
    try:
        p = ref.tokenize(prompt.encode(), add_bos=True, special=True)
        c = ref.tokenize(continuation.encode(), add_bos=False, special=False)
        ref.eval(p + c)
        logprobs = Llama.logits_to_logprobs(ref.scores[: len(p) + len(c)].astype(np.float64))
        expected = float(sum(logprobs[len(p) - 1 + i, tok] for i, tok in enumerate(c)))
    finally:
        ref.close()
    assert ours == pytest.approx(expected, abs=0.05)


@pytest.mark.slow
@pytest.mark.anyio
async def test_scoring_and_generation_do_not_depend_on_history() -> None:
    """Interleaving scoring with other prompts and generation gives identical numbers and text."""
    first = await acontinuation_logprob(PROMPT, " Paris")
    text_before = client.response_text(
        await client.acompletion(LOCAL_MODEL, _user(PROMPT), max_tokens=6, temperature=0)
    )
    other = await acontinuation_logprob("Le capital de la France est", " Paris")
    again = await acontinuation_logprob(PROMPT, " Paris")
    text_after = client.response_text(await client.acompletion(LOCAL_MODEL, _user(PROMPT), max_tokens=6, temperature=0))
    extended = await acontinuation_logprob(PROMPT + " Paris", ", of course")
    assert again == first
    assert other != pytest.approx(first, abs=1e-3)
    assert text_after == text_before
    assert extended < 0.0
