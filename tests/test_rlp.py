"""RLP's logic on the fake LLM (convergence.llm.testing): information gain from log-probs
the test rigs, a policy that learns which reasoning strategy is informative, thoughts that
steer answers, an agent whose learned policy changes what it proposes, with its memory kept
across runs. One smoke test goes end to end on the embedded model."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_loop import SPACE, make_config

from convergence.config.society import RLPConfig
from convergence.core.space import SearchSpace, config_hash
from convergence.core.types import TrialRecord
from convergence.engine.loop import Optimizer
from convergence.llm.agent_client import LLMClient
from convergence.llm.testing import FakeCall, FakeLLM, mention_logprobs
from convergence.plugins.learning.rlp import InformationGain, RLPMixin, Thought
from convergence.society.base import ProposalContext
from convergence.society.rlp.agent import OUTCOME_LEGEND, RLPAgent, parse_rate
from convergence.storage.store import Store

pytestmark = pytest.mark.anyio

CONTEXT = ("Parameters:\n- temperature: number from 0 to 1.2 (step 0.1)\n"
           "- prompt_style: one of bare, qa, few_shot, instruct\n"
           "Tried 6 configurations; scores from 0.120 to 0.710 (higher is better).\n" + OUTCOME_LEGEND)
PREDICTION = '{"temperature": 0.1, "prompt_style": "few_shot"}'
OUTCOMES = ["best", "high", "low", "failed"]
KNOWS = "I predict this configuration will be high: its outcome word is high."
UNRELATED = "The sky is blue on a sunny day and birds sing."


def expecting_llm(name: str, **kw: Any) -> FakeLLM:
    """A model that expects the outcome words its prompt mentions (as a real one does, roughly)."""
    return FakeLLM(name, logprobs=mention_logprobs(OUTCOMES), **kw)


async def test_a_thought_that_contains_the_outcome_earns_a_clearly_positive_reward() -> None:
    llm = expecting_llm("rlp-ig")
    rlp = RLPMixin(RLPConfig(), llm.model)
    knows = await rlp.information_gain_reward(Thought(KNOWS, "free", CONTEXT), PREDICTION, "high")
    unrelated = await rlp.information_gain_reward(Thought(UNRELATED, "free", CONTEXT), PREDICTION, "high")
    assert knows.method == unrelated.method == "top_logprobs"  # a non-local provider's first-token log-probs
    assert knows.value is not None and unrelated.value is not None
    assert knows.value > 1.0, knows
    assert abs(unrelated.value) < 0.5, unrelated
    assert knows.value == pytest.approx(knows.with_thought - knows.without_thought)  # type: ignore[operator]
    # what was measured: the outcome after the prompt with the thought, then after the same prompt without it
    with_prompt, without_prompt = (c.prompt for c in llm.calls[:2])
    assert with_prompt == f"{CONTEXT}\nThought: {KNOWS}\nConfiguration: {PREDICTION}\nOutcome:"
    assert without_prompt == f"{CONTEXT}\nConfiguration: {PREDICTION}\nOutcome:"
    assert all(c.wants_logprobs and c.params["max_tokens"] == 1 and c.params["temperature"] == 0
               for c in llm.calls)


async def test_without_usable_log_probs_the_reward_says_why_and_is_no_number() -> None:
    none = RLPMixin(RLPConfig(), FakeLLM("rlp-nolp", logprobs=lambda prompt: {}).model)
    gain = await none.information_gain_reward(Thought(KNOWS, "free", CONTEXT), PREDICTION, "high")
    assert gain.value is None and gain.method == "none" and "no top_logprobs" in gain.detail
    # the outcome is below the provider's top k after one prompt: a bound, never a difference
    bound = RLPMixin(RLPConfig(), FakeLLM("rlp-bound", logprobs=lambda p: {"high": -0.1} if "will be high" in p
                                          else {"low": -0.1}).model)
    gain = await bound.information_gain_reward(Thought(KNOWS, "free", CONTEXT), PREDICTION, "high")
    assert gain.value is None and gain.method == "top_logprobs_bound"
    disabled = RLPMixin(RLPConfig(use_logprobs=False), FakeLLM("rlp-off").model)
    assert (await disabled.information_gain_reward("t", PREDICTION, "high")).method == "disabled"
    with pytest.raises(ValueError, match="no information gain"):
        float(gain)


RIGGED = {
    # only "exploit" thoughts say what will happen; the others say nothing about it
    "exploit": "I predict this configuration will be {outcome}: its outcome word is {outcome}.",
    "explore": "The sky is blue on a sunny day and birds sing.",
    "recombine": "Trains leave the station every morning at seven.",
    "fix_weakest": "A cup of tea is nice in the afternoon.",
    "free": "Mountains are tall and rivers are long.",
}


async def test_rigged_the_policy_learns_the_informative_strategy() -> None:
    """A task where one strategy's thoughts are informative about the outcome
    and the others' are not: with information-gain rewards, the probability
    of that strategy rises (a policy that does not learn stays at 1/5)."""
    rlp = RLPMixin(RLPConfig(G=4), expecting_llm("rlp-policy").model)
    rng = np.random.default_rng(0)
    cache: dict[tuple[str, str], InformationGain] = {}
    start = rlp.rlp_policy.as_dict()["exploit"]
    for _ in range(12):
        outcome = str(rng.choice(["best", "high", "low"]))
        picks = rlp.sample_strategies(rng, 4)
        thoughts = [Thought(RIGGED[s].format(outcome=outcome), s, CONTEXT, p) for s, p in picks]
        rewards = []
        for t in thoughts:
            key = (t.strategy, outcome)
            if key not in cache:  # the same thought and outcome measure the same: measure once
                cache[key] = await rlp.information_gain_reward(t, PREDICTION, outcome)
            rewards.append(cache[key])
        rlp.update_rlp_policy(thoughts, rewards)
    end = rlp.rlp_policy.as_dict()
    assert start == pytest.approx(0.2)
    assert end["exploit"] > 0.5, end
    assert max(end, key=lambda k: end[k]) == "exploit"
    stats = rlp.get_rlp_stats()
    assert stats["updates"] == 12 and stats["buffer_size"] == 48


SPACE_YAML = SPACE.replace("step: 0.05", "step: 0.1")  # the loop tests' space on a 0.1 grid


def _trial(x: float, mode: str, score: float) -> TrialRecord:
    config = {"x": x, "mode": mode}
    return TrialRecord(config=config, config_hash=config_hash(config), generation=0, proposer="evolution",
                       score=score, n_cases=2)


async def test_what_rlp_learns_changes_what_it_proposes(tmp_path: Path) -> None:
    """Two agents, one whose policy learned that ``exploit`` pays and one that
    learned ``explore`` does: on the same study they propose in different
    regions (near the best vs among untried values)."""
    loaded = make_config(tmp_path, SPACE_YAML)
    space = SearchSpace.from_config(loaded.config.search_space)
    history = [_trial(0.7, "b", 0.9), _trial(0.6, "b", 0.5), _trial(0.8, "b", 0.4), _trial(0.3, "b", 0.1)]
    proposals: dict[str, list[dict[str, Any]]] = {}
    for favoured in ("exploit", "explore"):
        llm = FakeLLM(f"rlp-learned-{favoured}", default="Follow the plan.")
        agent = RLPAgent(RLPConfig(G=6, thought_length=8), LLMClient(llm.model), space)
        for _ in range(30):  # learn from rewards that favour one strategy
            mu = agent.rlp_policy.behaviour()  # the probabilities the strategies have now
            thoughts = [Thought("", s, "", float(p)) for s, p in zip(agent.rlp_policy.names, mu, strict=True)]
            agent.update_rlp_policy(thoughts, [1.0 if s == favoured else 0.0 for s in agent.rlp_policy.names])
        assert agent.rlp_policy.as_dict()[favoured] > 0.75
        ctx = ProposalContext(space, 1, history, history, np.random.default_rng(1), set())
        proposals[favoured] = await agent.propose(ctx, 6)

    def near(cs: list[dict[str, Any]]) -> int:
        return sum(1 for c in cs if c["mode"] == "b" and 0.6 <= c["x"] <= 0.8)

    def untried(cs: list[dict[str, Any]]) -> int:
        return sum(1 for c in cs if c["mode"] != "b" and c["x"] not in (0.3, 0.6, 0.7, 0.8))

    assert near(proposals["exploit"]) >= 4 > near(proposals["explore"]), proposals
    assert untried(proposals["explore"]) >= 4 > untried(proposals["exploit"]), proposals


def follows_its_thought(call: FakeCall) -> Any:
    """A model that thinks ``think`` and then answers what its thought says (when the schema allows it)."""
    if call.schema is None:  # a thought
        return None
    said = re.findall(r"mode (\w) with x (\d\.\d)", call.prompt)
    if not said:
        return None
    mode, x = said[-1]
    return {"x": float(x), "mode": mode}


async def test_the_thought_steers_the_answer(tmp_path: Path) -> None:
    """The answer continues the agent's own thought: a model that proposes what it
    thought proposes different configurations after different thoughts, and the
    answer prompt carries the thought and the schema of the strategy's region."""
    space = SearchSpace.from_config(make_config(tmp_path, SPACE_YAML).config.search_space)
    history = [_trial(0.7, "b", 0.9), _trial(0.2, "a", 0.1)]
    proposed = {}
    for thought in ("Try mode c with x 0.9 next.", "Try mode a with x 0.4 next."):
        llm = FakeLLM("rlp-steer", reply=follows_its_thought, default=thought)
        agent = RLPAgent(RLPConfig(G=1, thought_length=16, strategies=["free"]), LLMClient(llm.model), space)
        ctx = ProposalContext(space, 1, history, history, np.random.default_rng(0), set())
        [proposed[thought]] = await agent.propose(ctx, 1)
        think, answer = llm.calls
        assert think.prompt.endswith("Plan: Decide what is most worth trying next.\nThought:")
        assert think.params["max_tokens"] == 16 and "\n\n" in think.params["stop"] and think.schema is None
        assert answer.prompt == f"{think.prompt} {thought}\nConfiguration (JSON with x, mode):"
        assert answer.schema is not None and answer.schema["required"] == ["x", "mode"]
        assert agent.summary()["thoughts"] == [{"strategy": "free", "thought": thought, "proposals": 1}]
    assert list(proposed.values()) == [{"x": 0.9, "mode": "c"}, {"x": 0.4, "mode": "a"}]


async def test_a_broken_answer_is_repaired_once_and_then_counted_invalid(tmp_path: Path) -> None:
    space = SearchSpace.from_config(make_config(tmp_path, SPACE_YAML).config.search_space)
    history = [_trial(0.7, "b", 0.9), _trial(0.2, "a", 0.1)]

    def answers(first: str, second: str | None) -> Any:
        def reply(call: FakeCall) -> Any:
            if call.schema is None:
                return "Think."
            return second if "That answer is invalid" in call.prompt else first
        return reply

    for first, second, proposed, totals in (
        ("not json at all", None, 1, {"answers": 1, "invalid": 0, "repaired": 1}),   # None: a schema answer
        ("not json", '{"x": 7, "mode": "z"}', 0, {"answers": 1, "invalid": 1, "repaired": 0}),
    ):
        llm = FakeLLM("rlp-repair", reply=answers(first, second))
        agent = RLPAgent(RLPConfig(G=1, strategies=["free"]), LLMClient(llm.model), space)
        configs = await agent.propose(ProposalContext(space, 1, history, history, np.random.default_rng(0), set()), 1)
        assert len(configs) == proposed and all(space.contains(c) for c in configs)
        assert {k: agent.totals[k] for k in totals} == totals
        assert parse_rate(agent.totals) == (1.0 if proposed else 0.0)
        repair = llm.calls[-1].prompt
        assert f"{first}\nThat answer is invalid (" in repair and repair.endswith("(valid JSON with x, mode):")


RUN = SPACE_YAML + """
optimization:
  seed: 11
  evolution: {population_size: 4, generations: 3, elite_size: 1}
  execution: {early_stopping: {enabled: false}}
society:
  enabled: true
  agents: {evolution: 0.5, rlp: 0.5}
  rlp: {G: 2, thought_length: 24}
"""


async def run_twice_and_check_memory(tmp_path: Path, society_llm: str, generations: int = 3
                                     ) -> tuple[RLPAgent, list[Any]]:
    """A run with RLP, then a second optimizer of the same study: the agent parsed its answers,
    proposed in the space, reported its thoughts and rewards, and its memory comes back.
    Returns the first run's agent and its society log rows."""
    run = RUN.replace("generations: 3,", f"generations: {generations},")
    loaded = make_config(tmp_path, run + f"  llm: {{model: {society_llm}}}\n")
    store = await Store.open(tmp_path / "db.sqlite")
    try:
        opt = Optimizer(loaded, store)
        out = await opt.run()
        agent = next(p for p, _ in opt.society.members if p.name == "rlp")
        assert isinstance(agent, RLPAgent)
        rate = parse_rate(agent.totals)
        assert rate is not None and rate >= 0.75, agent.totals
        mine = [t for t in out.trials if t.proposer == "rlp"]
        assert mine and all(opt.space.contains(t.config) for t in mine)
        log = await store.society_log(out.run_id)
        rlp_rows = [r for r in log if r.agent == "rlp"]
        assert rlp_rows and all(r.detail and r.detail.get("thoughts") for r in rlp_rows)
        assert any(t.get("reward") is not None for r in rlp_rows for t in r.detail["thoughts"])  # type: ignore[index]
        buffer, logits = len(agent.rlp_buffer), agent.rlp_policy.logits.copy()
        assert buffer > 0

        second = Optimizer(loaded, store)
        await second.society.attach(store, await store.study_id(out.study))
        again = next(p for p, _ in second.society.members if p.name == "rlp")
        assert isinstance(again, RLPAgent)
        assert len(again.rlp_buffer) == buffer  # the replay buffer came back from the store
        assert np.allclose(again.rlp_policy.logits, logits)
        assert again.rlp_step == agent.rlp_step
        return agent, rlp_rows
    finally:
        await store.close()


async def test_rlp_in_a_run_parses_its_answers_and_keeps_its_memory_across_runs(tmp_path: Path) -> None:
    llm = expecting_llm("rlp-run", default="The best so far will stay high.")
    agent, rows = await run_twice_and_check_memory(tmp_path, llm.model)
    assert parse_rate(agent.totals) == 1.0
    assert {r.detail["reward_method"] for r in rows if r.detail.get("reward_method")} == {"top_logprobs"}
    experience = agent.rlp_buffer[0].data
    assert experience["outcomes"] and all(lp is not None for lp in experience["logp_with"])
    # every thought was answered and measured: thought, answer, then two log-probs per outcome
    thoughts = [c for c in llm.calls if c.prompt.endswith("Thought:")]
    assert len(thoughts) == agent.totals["answers"] and all(c.params.get("seed") is not None for c in thoughts)
    assert sum(c.wants_logprobs for c in llm.calls) == 2 * sum(len(e.data["outcomes"]) for e in agent.rlp_buffer)


@pytest.mark.slow
async def test_smoke_rlp_on_the_embedded_model(tmp_path: Path) -> None:
    """The real path end to end on local/gemma-3-270m: exact information gain (a thought that
    names the outcome earns a clearly positive reward), then a run with memory across runs."""
    rlp = RLPMixin(RLPConfig(), "local/gemma-3-270m")
    knows = await rlp.information_gain_reward(Thought(KNOWS, "free", CONTEXT), PREDICTION, "high")
    unrelated = await rlp.information_gain_reward(Thought(UNRELATED, "free", CONTEXT), PREDICTION, "high")
    assert knows.method == "prompt"  # exact log-probs of the outcome tokens
    assert knows.value is not None and unrelated.value is not None
    assert knows.value > 1.0, knows            # measured: about +1.9 nats
    assert abs(unrelated.value) < 0.5, unrelated  # measured: about -0.09 nats
    # two generations: RLP proposes in the second and learns from its outcomes (the fake run above has three)
    _, rows = await run_twice_and_check_memory(tmp_path, "local/gemma-3-270m", generations=2)
    assert {r.detail["reward_method"] for r in rows if r.detail.get("reward_method")} == {"prompt"}


def test_the_python_example_in_docs_society_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The documented example as written, but on a fake model (the smoke test covers the real one)."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "society.md").read_text()
    [code] = [c for c in re.findall(r"```python\n(.*?)```", doc, re.S) if "RLPMixin" in c and "FakeLLM" not in c]
    assert '"local/gemma-3-270m"' in code
    llm = FakeLLM("rlp-docs", logprobs=mention_logprobs(OUTCOMES), default="It will be high, I think.")
    exec(compile(code.replace('"local/gemma-3-270m"', repr(llm.model)), "docs/society.md", "exec"), {})
    out = capsys.readouterr().out
    assert "thought: It will be high, I think." in out
    assert re.search(r"information gain \(nats\): \d+\.\d+ measured by top_logprobs", out), out
    assert "policy:" in out


@pytest.mark.parametrize("has_logprobs", [True, False])
async def test_through_a_provider_it_answers_in_space_and_measures_or_says_it_cannot(
    tmp_path: Path, has_logprobs: bool
) -> None:
    """The provider path (any LiteLLM model): structured answers via ``response_format``,
    and a reward that is the first-token ``top_logprobs`` measurement or, when the
    provider has no log-probs, the documented rank fallback, said in the agent's
    notes. Never a made-up number."""
    llm = expecting_llm(f"rlp-provider-{has_logprobs}", default="Stay near the best.") if has_logprobs \
        else FakeLLM("rlp-provider-none", logprobs=lambda prompt: {}, default="Stay near the best.")
    space = SearchSpace.from_config(make_config(tmp_path, SPACE_YAML).config.search_space)
    agent = RLPAgent(RLPConfig(G=2, thought_length=16), LLMClient(llm.model), space, answer_tokens=64)
    history = [_trial(0.7, "b", 0.9), _trial(0.2, "a", 0.1)]
    ctx = ProposalContext(space, 1, history, history, np.random.default_rng(3), set())
    configs = await agent.propose(ctx, 2)
    assert agent.totals["answers"] == 2
    assert all(space.contains(c) for c in configs) and len(configs) == 2 - agent.totals["invalid"]
    answers = [c for c in llm.calls if c.schema is not None]
    assert [c.params["response_format"]["type"] for c in answers] == ["json_schema", "json_schema"]
    trials = [_trial(c["x"], c["mode"], 0.95 if i == 0 else 0.05) for i, c in enumerate(configs)]
    await agent.learn(trials, 1)
    summary = agent.summary()
    assert summary["reward_method"] == ("top_logprobs" if has_logprobs else "rank_fallback"), summary
    if not has_logprobs:
        assert any("rank fallback" in n and "no top_logprobs" in n for n in summary["notes"]), summary
        # the rank fallback: the best outcome of the run earns more than the worst
        assert summary["thoughts"][0]["reward"] > summary["thoughts"][1]["reward"]
    rewards = [t["reward"] for t in summary["thoughts"] if t.get("reward") is not None]
    assert len(rewards) == 2 and all(np.isfinite(rewards))
