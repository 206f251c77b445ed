"""RLP on the embedded model: information gain from real log-probs, a policy
that learns which reasoning strategy is informative, and an agent whose
learned policy changes what it proposes, with its memory kept across runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from llm_fixtures import LlamaServer, gguf_path, llama_server  # noqa: F401
from test_loop import SPACE, make_config

from convergence.config.society import RLPConfig
from convergence.core.space import SearchSpace, config_hash
from convergence.core.types import TrialRecord
from convergence.engine.loop import Optimizer
from convergence.llm.agent_client import LLMClient
from convergence.society.base import ProposalContext
from convergence.society.rlp.agent import OUTCOME_LEGEND, RLPAgent, parse_rate
from convergence.society.rlp.mixin import InformationGain, RLPMixin, Thought
from convergence.storage.store import Store

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

CONTEXT = ("Parameters:\n- temperature: number from 0 to 1.2 (step 0.1)\n"
           "- prompt_style: one of bare, qa, few_shot, instruct\n"
           "Tried 6 configurations; scores from 0.120 to 0.710 (higher is better).\n" + OUTCOME_LEGEND)
PREDICTION = '{"temperature": 0.1, "prompt_style": "few_shot"}'


async def test_a_thought_that_contains_the_outcome_earns_a_clearly_positive_reward() -> None:
    rlp = RLPMixin(RLPConfig(), "local/gemma-3-270m")
    knows = await rlp.information_gain_reward(
        Thought("I predict this configuration will be high: its outcome word is high.", "free", CONTEXT),
        PREDICTION, "high")
    unrelated = await rlp.information_gain_reward(
        Thought("The sky is blue on a sunny day and birds sing.", "free", CONTEXT), PREDICTION, "high")
    assert knows.method == "prompt"  # exact log-probs of the outcome tokens
    assert knows.value is not None and unrelated.value is not None
    assert knows.value > 1.0, knows            # measured: about +1.9 nats
    assert abs(unrelated.value) < 0.5, unrelated  # measured: about -0.09 nats
    assert knows.value == pytest.approx(knows.with_thought - knows.without_thought)  # type: ignore[operator]


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
    and the others' are not: with real information-gain rewards, the
    probability of that strategy rises (a policy that does not learn stays at 1/5)."""
    rlp = RLPMixin(RLPConfig(G=4), "local/gemma-3-270m")
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
        agent = RLPAgent(RLPConfig(G=6, thought_length=8), LLMClient(), space)
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


async def test_rlp_in_a_run_parses_its_answers_and_keeps_its_memory_across_runs(tmp_path: Path) -> None:
    loaded = make_config(tmp_path, SPACE_YAML + """
optimization:
  seed: 11
  evolution: {population_size: 4, generations: 3, elite_size: 1}
  execution: {early_stopping: {enabled: false}}
society:
  enabled: true
  agents: {evolution: 0.5, rlp: 0.5}
  rlp: {G: 2, thought_length: 24}
""")
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
    finally:
        await store.close()


def test_the_python_example_in_docs_society_runs(tmp_path: Path) -> None:
    import re
    import subprocess
    import sys

    doc = (Path(__file__).resolve().parents[1] / "docs" / "society.md").read_text()
    [code] = [c for c in re.findall(r"```python\n(.*?)```", doc, re.S) if "RLPMixin" in c]
    script = tmp_path / "example.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "information gain (nats):" in done.stdout and "measured by prompt" in done.stdout


async def test_rlp_through_an_openai_compatible_server_answers_in_space_and_measures_or_says_it_cannot(
    llama_server: LlamaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """The provider path (any LiteLLM model): structured answers via
    ``response_format``, and a reward that is the first-token ``top_logprobs``
    measurement or, when that is not available, the documented rank fallback,
    said in the agent's notes. Never a made-up number."""
    monkeypatch.setenv("RLP_SERVER_KEY", "sk-local-dummy")
    loaded = make_config(tmp_path, SPACE_YAML)
    space = SearchSpace.from_config(loaded.config.search_space)
    client = LLMClient(f"openai/{llama_server.model_alias}", api_base=llama_server.api_base,
                       api_key_env="RLP_SERVER_KEY", timeout_seconds=120)
    agent = RLPAgent(RLPConfig(G=2, thought_length=16), client, space, answer_tokens=64)
    history = [_trial(0.7, "b", 0.9), _trial(0.2, "a", 0.1)]
    ctx = ProposalContext(space, 1, history, history, np.random.default_rng(3), set())
    configs = await agent.propose(ctx, 2)
    assert agent.totals["answers"] == 2
    assert all(space.contains(c) for c in configs) and len(configs) == 2 - agent.totals["invalid"]
    trials = [_trial(c["x"], c["mode"], 0.95 if i == 0 else 0.05) for i, c in enumerate(configs)]
    await agent.learn(trials, 1)
    summary = agent.summary()
    assert summary["reward_method"] in ("top_logprobs", "rank_fallback"), summary
    if summary["reward_method"] == "rank_fallback":
        assert any("rank fallback" in n for n in summary["notes"]), summary
    rewards = [t["reward"] for t in summary["thoughts"] if t.get("reward") is not None]
    assert rewards and all(np.isfinite(rewards))
