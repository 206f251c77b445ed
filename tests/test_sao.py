"""SAO in the loop: the self-judge duels configurations of a real target, its
preference ratings order them, feed the objective, and its pairs export as a
TRL dataset; SAO off costs nothing."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from llm_fixtures import LlamaServer, gguf_path, llama_server  # noqa: F401

from convergence.config.loader import parse_config
from convergence.engine.loop import Optimizer
from convergence.society.sao.agent import SAOAgent
from convergence.storage.store import Store

pytestmark = pytest.mark.anyio

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid",
    "Egypt": "Cairo", "China": "Beijing", "Russia": "Moscow", "Canada": "Ottawa", "Kenya": "Nairobi",
    "Greece": "Athens", "Peru": "Lima", "Norway": "Oslo", "Poland": "Warsaw", "Ireland": "Dublin",
}

TARGET = f'''
CAPITALS = {CAPITALS!r}
CITIES = list(CAPITALS.values())


def answer(params, input):
    """Known quality order: correct > neighbour (a real capital, the wrong one) > nonsense."""
    question = input["question"]
    country = next((c for c in CAPITALS if c.lower() in question.lower()), None)
    style = params["style"]
    if style == "nonsense":
        return "banana"
    if country is None:
        return "I do not know."
    right = CAPITALS[country]
    return right if style == "correct" else CITIES[(CITIES.index(right) + 1) % len(CITIES)]
'''


PREFERENCE_METRICS = "acc: {function: contains, weight: 0.5}\n            pref: {function: sao_preference, weight: 0.5}"


def config(tmp_path: Path, society: str, metrics: str = "acc: {function: contains}",
           generations: int = 2) -> Any:
    (tmp_path / "capitals.py").write_text(TARGET)
    cases = [{"input": {"question": f"What is the capital of {c}?"}, "expected": city}
             for c, city in list(CAPITALS.items())[:6]]
    text = textwrap.dedent(f"""
        study: sao-test
        target: {{type: python, function: "capitals:answer", retry: {{max_retries: 0}}}}
        storage: {{path: db.sqlite}}
        search_space:
          parameters:
            style: {{type: categorical, values: [correct, neighbour, nonsense]}}
        evaluation:
          test_cases:
            inline: {json.dumps(cases)}
          metrics:
            {metrics}
        optimization:
          seed: 5
          evolution: {{population_size: 3, generations: {generations}, elite_size: 1}}
          execution: {{early_stopping: {{enabled: false}}}}
    """) + textwrap.dedent(society)
    path = tmp_path / "optimization.yaml"
    path.write_text(text)
    return parse_config(text, path)


async def test_sao_off_costs_nothing(tmp_path: Path) -> None:
    loaded = config(tmp_path, "society: {enabled: true, agents: {evolution: 0.5, bandit: 0.5}}\n")
    store = await Store.open(tmp_path / "db.sqlite")
    try:
        opt = Optimizer(loaded, store)
        out = await opt.run()
        assert opt.society.agent("sao") is None
        assert await store.sao_pairs(run_id=out.run_id) == []
        assert await store.sao_ratings(out.run_id) == {}
        assert out.total_calls == sum(t.n_cases for t in out.trials)  # every call was an evaluation
        assert all("sao" not in t.metrics for t in out.trials)
    finally:
        await store.close()


async def test_a_preference_metric_without_sao_is_refused_before_any_call(tmp_path: Path) -> None:
    from convergence.config.loader import ConfigError
    from convergence.engine.preflight import check

    loaded = config(tmp_path, "", metrics="pref: {function: sao_preference}")
    with pytest.raises(ConfigError, match=r"evaluation\.metrics\.pref\.function.*sao_enabled"):
        check(loaded)


@pytest.mark.slow
async def test_the_self_judge_rates_the_right_answers_first_and_its_pairs_export(tmp_path: Path) -> None:
    """A Python target with a known quality order, judged by the embedded model:
    the configuration that answers correctly is preferred, the ratings reach the
    objective (``sao_preference``) and the stored trials, and the pairs export
    in TRL's format that ``datasets`` loads."""
    loaded = config(tmp_path, """
        society:
          enabled: true
          agents: {evolution: 0.6, sao: 0.4}
          sao: {batch_size: 4, iterative_rounds: 2, every: 1, prompt_tokens: 40}
        """, metrics=PREFERENCE_METRICS)
    store = await Store.open(tmp_path / "db.sqlite")
    try:
        opt = Optimizer(loaded, store)
        out = await opt.run()
        agent = opt.society.agent("sao")
        assert isinstance(agent, SAOAgent)
        pairs = await store.sao_pairs(run_id=out.run_id)
        assert len(pairs) >= 4 and all(p.source == "loop" and p.hash_a and p.hash_b for p in pairs)
        ratings = await store.sao_ratings(out.run_id)
        by_style = {t.config["style"]: t for t in out.trials}
        pref = {s: ratings[t.config_hash]["preference"] for s, t in by_style.items() if t.config_hash in ratings}
        assert pref.get("correct", 0) == max(pref.values()), (pref, [(p.prompt, p.response_a, p.response_b,
                                                                      p.outcome) for p in pairs])
        # the objective saw the ratings: the stored scores are accuracy and preference, half each
        correct = by_style["correct"]
        assert correct.metrics["pref"] == pytest.approx(pref["correct"])
        assert correct.score == pytest.approx(0.5 * correct.metrics["acc"] + 0.5 * pref["correct"])
        assert out.best is not None and out.best.config["style"] == "correct"

        from typer.testing import CliRunner

        from convergence.cli.app import app

        kept = [p for p in pairs if p.kept]
        target = tmp_path / "pairs.jsonl"
        args = ["sao", "export", str(out.run_id), "-o", str(target), "--db", str(tmp_path / "db.sqlite")]
        done = await anyio.to_thread.run_sync(CliRunner().invoke, app, args)  # the CLI runs its own event loop
        if not kept:
            assert done.exit_code == 2 and "filtered" in done.output.lower()
            pytest.fail(f"no kept pair to export: {[(p.outcome, p.failed_filters) for p in pairs]}")
        assert done.exit_code == 0, done.output
        import datasets

        ds = datasets.load_dataset("json", data_files=str(target), split="train")
        assert ds.column_names == ["prompt", "chosen", "rejected"] and len(ds) == len(kept)

        # the report says how consistent the judge was and whom it preferred
        from convergence.reporting.files import render_markdown
        from convergence.reporting.outputs import build_report

        report = await build_report(store, out.run_id)
        assert report.sao is not None and report.sao.pairs == len(pairs)
        assert report.sao.preferred[0].config == {"style": "correct"}
        text = render_markdown(report, [], {}, [])
        assert "## Self-judged preference (SAO)" in text and "Consistent under swap" in text
        traces = await anyio.to_thread.run_sync(CliRunner().invoke, app,
                                                ["traces", str(out.run_id), "--db", str(tmp_path / "db.sqlite")])
        assert traces.exit_code == 0 and "pair(s) judged" in traces.output, traces.output
    finally:
        await store.close()


def _agent(space_yaml: str = "style: {type: categorical, values: [correct, neighbour, nonsense]}\n"
                             "x: {type: discrete, values: [1, 2, 3, 4, 5]}") -> SAOAgent:
    import yaml

    from convergence.config.models import SearchSpaceConfig
    from convergence.config.society import SAOConfig
    from convergence.core.space import SearchSpace
    from convergence.llm.agent_client import LLMClient

    space = SearchSpace.from_config(SearchSpaceConfig.model_validate({"parameters": yaml.safe_load(space_yaml)}))
    return SAOAgent(SAOConfig(), LLMClient(), space)


def _trial(config: dict[str, Any], score: float) -> Any:
    from convergence.core.space import config_hash
    from convergence.core.types import TrialRecord

    return TrialRecord(config=config, config_hash=config_hash(config), generation=0, proposer="evolution",
                       n_cases=2, n_errors=0, score=score)


def _favouring(winner: dict[str, Any], others: list[dict[str, Any]]) -> SAOAgent:
    from convergence.society.sao.ratings import Duel

    agent = _agent()
    trials = [_trial(winner, 0.5)] + [_trial(c, 0.5) for c in others]
    agent.observe(trials)
    agent.duels = [Duel(trials[0].config_hash, t.config_hash, "A") for t in trials[1:] for _ in range(3)]
    agent._refit(None)
    return agent


async def test_rigged_what_the_judge_prefers_changes_what_sao_proposes() -> None:
    """The same study, two different verdicts: SAO proposes neighbours of whichever
    configuration the judge preferred (and nothing before it has a favourite)."""
    import numpy as np

    from convergence.society.base import ProposalContext

    a, b = {"style": "correct", "x": 3}, {"style": "nonsense", "x": 1}
    c = {"style": "neighbour", "x": 5}

    def ctx(agent: SAOAgent) -> ProposalContext:
        from convergence.core.space import config_hash

        seen = {config_hash(t.config) for t in agent.trials.values()}
        return ProposalContext(agent.space, 1, [], list(agent.trials.values()), np.random.default_rng(0), seen)

    fresh = _agent()
    fresh.observe([_trial(a, 0.5), _trial(b, 0.5)])
    assert await fresh.propose(ctx(fresh), 3) == []  # no duel yet: its slots go to the others

    for winner, losers in ((a, [b, c]), (b, [a, c])):
        agent = _favouring(winner, losers)
        assert agent.favourites()[0] == winner
        proposals = await agent.propose(ctx(agent), 3)
        assert len(proposals) == 3
        for p in proposals:  # one parameter away from the favourite, never a seen configuration
            assert sum(p[k] != winner[k] for k in winner) == 1 and p not in (a, b, c), (winner, proposals)


async def test_a_resumed_run_reuses_its_stored_duels_and_pays_no_target_call_again(tmp_path: Path) -> None:
    from convergence.core.sao_pair import SAOPair
    from convergence.core.types import TestCase
    from convergence.society.base import TaskAccess
    from convergence.society.memory import AgentMemory

    correct, nonsense = _trial({"style": "correct", "x": 1}, 0.9), _trial({"style": "nonsense", "x": 1}, 0.1)
    store = await Store.open(tmp_path / "db.sqlite")
    try:
        run_id = await store.start_run("s", {}, 1, None)
        study_id = await store.study_id("s")
        stored = [SAOPair("a persona", f"q{i}", "Paris", "banana", "A", "A", "A", run_id=run_id, generation=0,
                          source="loop", hash_a=correct.config_hash, hash_b=nonsense.config_hash,
                          config_a=correct.config, config_b=nonsense.config) for i in range(2)]
        await store.add_sao_pairs(study_id, stored)
        calls: list[Any] = []

        async def call(config: dict[str, Any], task_input: object) -> str:
            calls.append(config)
            raise AssertionError("a duel of a finished generation was paid again")

        agent = _agent()
        await agent.restore(AgentMemory(store, study_id, agent.memory_key))
        assert agent.known_prompts == ["q0", "q1"]  # the study's earlier prompts: duplicates are filtered
        agent.bind(TaskAccess([TestCase("c", {"question": "?"})], call))
        agent.observe([correct, nonsense])
        await agent.learn([correct, nonsense], 0, run_id)
        assert calls == [] and "not made again" in agent.step["note"]
        assert agent.preference(correct.config_hash) > 0.5 > agent.preference(nonsense.config_hash)
    finally:
        await store.close()


@pytest.mark.slow
def test_the_sao_python_example_in_docs_society_runs(tmp_path: Path) -> None:
    import re
    import subprocess
    import sys

    doc = (Path(__file__).resolve().parents[1] / "docs" / "society.md").read_text()
    [code] = [c for c in re.findall(r"```python\n(.*?)```", doc, re.S) if "SAOMixin" in c]
    (tmp_path / "example.py").write_text(code)
    done = subprocess.run([sys.executable, "example.py"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "consistency under swap:" in done.stdout and "rows written:" in done.stdout
    rows = (tmp_path / "pairs.jsonl").read_text().splitlines()
    assert f"rows written: {len(rows)}" in done.stdout


@pytest.mark.slow
async def test_through_an_openai_compatible_server_the_judge_writes_parsed_verdicts_and_bias_is_caught(
    llama_server: LlamaServer, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """The provider path (``judge: auto`` -> text): the served model's written verdicts
    are parsed strictly, both orders are judged, and position bias shows as inconsistent
    pairs that stay out of the dataset, with the consistency rate in the stats."""
    from convergence.config.society import SAOConfig
    from convergence.llm.agent_client import LLMClient
    from convergence.society.sao.mixin import SAOMixin

    monkeypatch.setenv("SAO_SERVER_KEY", "sk-local-dummy")
    client = LLMClient(f"openai/{llama_server.model_alias}", api_base=llama_server.api_base,
                       api_key_env="SAO_SERVER_KEY", timeout_seconds=120)
    async def target(task_input: Any, i: int) -> str:  # the user's target: a terse and a chatty answer
        return ["Berlin.", "I think the answer could be many things, it depends on the context."][i]

    sao = SAOMixin(SAOConfig(batch_size=2, iterative_rounds=5, prompt_tokens=64), client,
                   examples=[{"question": "What is the capital of Germany?"}], seed=2, responder=target)
    assert sao.judge_method == "text"
    await sao.generate_synthetic_dataset(n_samples=2)
    made = sao.sao_dataset
    assert made, sao.failures
    judged = [p for p in made if p.judgments]
    assert judged and all(len(p.judgments) == 2 for p in judged), [(p.prompt, p.outcome) for p in made]
    for p in judged:
        assert p.outcome == ("unparseable" if None in (p.verdict_1, p.verdict_2)
                             else p.verdict_1 if p.verdict_1 == p.verdict_2 else "inconsistent")
        assert p.kept == (p.outcome in ("A", "B") and not p.failed_filters)
    stats = sao.get_sao_stats()
    assert stats["total"] == len(made) and stats["kept"] == sum(p.kept for p in made)
    assert stats["consistency_rate"] is None or 0.0 <= stats["consistency_rate"] <= 1.0


def test_a_written_prompt_is_read_from_json_or_from_its_first_complete_field() -> None:
    from convergence.society.sao.mixin import _parse_fields

    keys = ["question"]
    assert _parse_fields('{"question": "Why is the sky blue?"}', keys) == {"question": "Why is the sky blue?"}
    # a provider that ignored the schema and wrote on: the first complete field counts
    assert _parse_fields('{"question": "Why is the  sky blue?"\nThe next line {', keys) == {
        "question": "Why is the sky blue?"}
    assert _parse_fields('{"question": "Why is the sky blue', keys) == {"question": "Why is the sky blue"}
    assert _parse_fields('{"question": "Why is', keys) is None  # cut off too early: no prompt
    assert _parse_fields('{"question": "tab\there and a\nline", "x": [}', keys) == {"question": "tab here and a"}
    assert _parse_fields('{"question": "  "}', keys) is None
    assert _parse_fields('{"topic": "sky"}', keys) is None
