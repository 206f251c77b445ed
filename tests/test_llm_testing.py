"""The fake LLM provider (convergence.llm.testing) as a test author uses it: reachable as
``fake/<name>`` wherever a model string is, deterministic, scripted by rules or a queue,
schema-valid JSON answers, usage and zero cost, rigged log-probs, every call recorded."""

from __future__ import annotations

import json
import random
from typing import Any

import jsonschema
import pytest

from convergence.config.models import JudgeConfig
from convergence.core.types import TestCase
from convergence.llm.agent_client import AgentLLMError, LLMClient
from convergence.llm.client import acompletion, response_cost, response_text, response_usage
from convergence.llm.logprob import logprob_of
from convergence.llm.testing import FakeCall, FakeLLM, mention_logprobs, schema_example

pytestmark = pytest.mark.anyio

CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"x": {"enum": [0.1, 0.2, 0.3]}, "n": {"type": "integer", "minimum": 2, "maximum": 9},
                   "t": {"type": "number", "minimum": 0, "maximum": 1.2}},
    "required": ["x", "n", "t"], "additionalProperties": False,
}
SCHEMAS: list[dict[str, Any]] = [
    CONFIG_SCHEMA,
    {"type": "object", "properties": {"configs": {"type": "array", "items": CONFIG_SCHEMA, "minItems": 3,
                                                  "maxItems": 3}}, "required": ["configs"]},
    {"type": "object", "properties": {"verdict": {"enum": ["A", "B", "tie"]}}, "required": ["verdict"]},
    {"type": "object", "additionalProperties": False, "required": ["question", "context"],
     "properties": {k: {"type": "string", "minLength": 8, "maxLength": 300} for k in ("question", "context")}},
    {"type": "object", "properties": {"k": {"type": "integer", "multipleOf": 5, "exclusiveMinimum": 0,
                                            "maximum": 20}, "ok": {"type": "boolean"},
                                      "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}},
                                      "ref": {"$ref": "#/$defs/r"}, "s": {"type": ["string", "null"]}},
     "required": ["k", "ok", "tags", "ref", "s"], "$defs": {"r": {"const": 7}}},
]


def schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


async def ask(model: str, prompt: str, **params: Any) -> Any:
    return await acompletion(model, [{"role": "user", "content": prompt}], **params)


@pytest.mark.parametrize("schema", SCHEMAS)
def test_schema_examples_are_valid_and_reproducible(schema: dict[str, Any]) -> None:
    for seed in range(30):
        value = schema_example(schema, random.Random(seed))
        jsonschema.validate(value, schema)
        assert value == schema_example(schema, random.Random(seed))


async def test_the_same_request_gets_the_same_answer_and_settings_change_it() -> None:
    llm = FakeLLM("determinism")
    fmt = schema_format(SCHEMAS[3])
    first = await ask(llm.model, "Write a task.", response_format=fmt, seed=1, temperature=0.7)
    again = await ask(llm.model, "Write a task.", response_format=fmt, seed=1, temperature=0.7)
    assert response_text(first) == response_text(again)
    answers = {response_text(await ask(llm.model, "Write a task.", response_format=fmt, seed=s, temperature=0.7))
               for s in range(8)}
    assert len(answers) > 1  # seeds differ: the draws do (the filters of an agent see varied answers)
    for text in answers:
        jsonschema.validate(json.loads(text), SCHEMAS[3])


async def test_plain_text_answers_echo_by_default_and_respect_stop_and_max_tokens() -> None:
    llm = FakeLLM("plain", default=None)
    assert response_text(await ask(llm.model, "Context\n\nQ: What is 2+2?")) == "Q: What is 2+2?"
    assert response_text(await ask("fake/echo", "one two three four", max_tokens=2)) == "one two"
    resp = await ask(llm.model, "alpha beta. gamma", stop=["."], max_tokens=50)
    assert response_text(resp) == "alpha beta" and resp.choices[0].finish_reason == "stop"
    assert (await ask(llm.model, "a b c d", max_tokens=3)).choices[0].finish_reason == "length"


async def test_rules_then_queue_then_defaults_answer_and_exceptions_are_raised() -> None:
    import litellm

    def reply(call: FakeCall) -> Any:
        if "capital" in call.prompt:
            return "Paris"
        if "json" in call.prompt:
            return {"answer": 42}
        return None

    llm = FakeLLM("scripted", reply=reply, responses=["first", litellm.RateLimitError("slow down", "fake", "x")],
                  default="fallback")
    assert response_text(await ask(llm.model, "The capital of France?")) == "Paris"
    assert json.loads(response_text(await ask(llm.model, "Give json"))) == {"answer": 42}
    assert response_text(await ask(llm.model, "anything")) == "first"
    with pytest.raises(litellm.RateLimitError):
        await ask(llm.model, "anything")
    assert response_text(await ask(llm.model, "anything")) == "fallback"  # the queue is used up
    llm.push("pushed")
    assert response_text(await ask(llm.model, "anything")) == "pushed"
    assert [c.answer for c in llm.calls] == ["Paris", '{"answer": 42}', "first", None, "fallback", "pushed"]


async def test_an_async_rule_is_awaited() -> None:
    async def reply(call: FakeCall) -> str:
        return call.prompt.upper()

    llm = FakeLLM("async", reply=reply)
    assert response_text(await ask(llm.model, "shout")) == "SHOUT"


async def test_every_call_is_recorded_with_its_prompt_and_params() -> None:
    llm = FakeLLM("recorded")
    await acompletion(llm.model, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                      temperature=0.3, max_tokens=7, seed=5, stop=["\n"])
    [call] = llm.calls
    assert call.model == "fake/recorded" and call.prompt == "system: Be brief.\n\nuser: Hi\n\nassistant:"
    assert call.messages[1] == {"role": "user", "content": "Hi"}
    assert {k: call.params[k] for k in ("temperature", "max_tokens", "seed", "stop")} == {
        "temperature": 0.3, "max_tokens": 7, "seed": 5, "stop": ["\n"]}
    assert call.schema is None and not call.wants_logprobs
    assert llm.prompts == [call.prompt]


async def test_usage_is_counted_and_the_cost_is_zero() -> None:
    llm = FakeLLM("usage", default="three word answer")
    resp = await ask(llm.model, "a prompt of six tokens here")
    assert response_usage(resp) == (6, 3)
    assert response_cost(resp) == 0.0 and resp.model == "fake/usage"


async def test_log_probs_come_from_the_rigging_function_in_the_openai_shape() -> None:
    llm = FakeLLM("lp", logprobs=lambda prompt: {"high": -0.2, "low": -1.9 if "low" in prompt else -3.0,
                                                 "best": -2.5})
    resp = await ask(llm.model, "Outcome:", max_tokens=1, temperature=0, logprobs=True, top_logprobs=2)
    assert response_text(resp) == "high"  # the most likely word
    [token] = resp.choices[0].logprobs.content
    assert token.logprob == -0.2 and [(t.token, t.logprob) for t in token.top_logprobs] == [("high", -0.2),
                                                                                           ("best", -2.5)]
    # what RLP and SAO's likelihood judge measure, through the non-local path of logprob_of
    high = await logprob_of(llm.model, "Outcome:", " high")
    assert (high.value, high.method) == (-0.2, "top_logprobs")
    assert (await logprob_of(llm.model, "low? Outcome:", " low")).value == -1.9
    bound = await logprob_of(llm.model, "Outcome:", " failed", top_k=2)
    assert (bound.value, bound.method) == (-2.5, "top_logprobs_bound")
    assert llm.calls[-1].wants_logprobs and llm.calls[-1].params["top_logprobs"] == 2


async def test_mention_logprobs_favours_what_the_prompt_mentions_and_none_plays_a_provider_without() -> None:
    rig = mention_logprobs(["best", "high", "low"])
    plain, hinted = rig("Outcome:"), rig("It will be high, surely high. Outcome:")
    assert plain["high"] == pytest.approx(plain["low"]) and hinted["high"] > plain["high"] > hinted["low"]
    assert sum(2.718281828459045 ** v for v in hinted.values()) == pytest.approx(1.0)
    none = FakeLLM("nolp", logprobs=lambda prompt: {})
    measured = await logprob_of(none.model, "Outcome:", " high")
    assert measured.value is None and "no top_logprobs" in measured.detail and not measured.failed


async def test_a_queue_answers_completions_not_log_prob_measurements() -> None:
    llm = FakeLLM("queue-lp", responses=["only for completions"],
                  logprobs=lambda prompt: {"yes": -0.1})
    assert (await logprob_of(llm.model, "p", " yes")).value == -0.1
    assert response_text(await ask(llm.model, "p")) == "only for completions"


async def test_unknown_fake_models_are_not_found_and_a_closed_model_is_gone() -> None:
    import litellm

    with pytest.raises(litellm.NotFoundError, match="unknown fake model"):
        await ask("fake/never-created", "hi")
    with FakeLLM("scoped") as llm:
        await ask(llm.model, "hi")
    with pytest.raises(litellm.NotFoundError):
        await ask("fake/scoped", "hi")
    assert response_text(await ask("fake/echo", "always there")) == "always there"


async def test_the_society_client_gets_schema_answers_and_falls_back_when_json_schema_is_refused() -> None:
    import litellm

    def refuse_json_schema(call: FakeCall) -> Any:
        fmt = call.params.get("response_format") or {}
        if fmt.get("type") == "json_schema":
            raise litellm.BadRequestError("response_format json_schema is not supported", "fake/x", "fake")
        return None

    llm = FakeLLM("refuses", reply=refuse_json_schema)
    client = LLMClient(llm.model, max_retries=0)
    done = await client.complete("Configuration:", max_tokens=50, temperature=0.7, seed=3, schema=CONFIG_SCHEMA)
    jsonschema.validate(json.loads(done.text), CONFIG_SCHEMA)  # json_object with the schema, as llama.cpp's server
    assert [c.params["response_format"]["type"] for c in llm.calls] == ["json_schema", "json_object"]
    assert client.formats == ["json_object", "plain"] and client.cost_usd == 0.0
    assert done.prompt_tokens == 1 and done.completion_tokens > 0

    broken = FakeLLM("broken", reply=lambda call: (_ for _ in ()).throw(litellm.APIConnectionError(
        "down", "fake", "fake/broken")))
    with pytest.raises(AgentLLMError, match="APIConnectionError"):
        await LLMClient(broken.model, max_retries=1, backoff_seconds=0.01).complete("x", max_tokens=4,
                                                                                   temperature=0)
    assert len(broken.calls) == 2  # a transient error is retried


async def test_the_judge_and_the_litellm_target_take_fake_models() -> None:
    from convergence.config.models import LiteLLMTargetConfig
    from convergence.evaluation.judge import LLMJudge
    from convergence.targets.litellm_target import LiteLLMTarget

    def grade(call: FakeCall) -> str:  # the judge prompt ends with the case after four worked examples
        return " yes" if call.prompt.rsplit("Student answer:", 1)[1].startswith(" Paris") else " no"

    judge_llm = FakeLLM("grader", reply=grade)
    judge = LLMJudge(JudgeConfig(model=judge_llm.model))
    case = TestCase("c", "What is the capital of France?", "Paris")
    assert await judge.score("Paris", case) == 1.0 and await judge.score("Lyon", case) == 0.0
    assert judge_llm.calls[0].params["stop"] == ["\n"]

    target_llm = FakeLLM("target", reply=lambda call: f"answer to: {call.prompt}")
    target = LiteLLMTarget(LiteLLMTargetConfig(model=target_llm.model, prompt="Q: {{ question }}"))
    result = await target.call({}, TestCase("q", {"question": "2+2?"}))
    assert result.output == "answer to: Q: 2+2?" and result.cost_usd == 0.0


def test_the_example_in_docs_society_runs() -> None:
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "society.md").read_text()
    [code] = [c for c in re.findall(r"```python\n(.*?)```", doc, re.S) if "FakeLLM" in c]
    exec(compile(code, "docs/society.md", "exec"), {})
