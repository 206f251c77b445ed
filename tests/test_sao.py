"""SAO in the loop: the self-judge duels configurations of a real target, its
preference ratings order them, feed the objective, and its pairs export as a
TRL dataset; SAO off costs nothing. The judge is the fake LLM
(convergence.llm.testing) with a known rule; one smoke test runs the embedded model."""

from __future__ import annotations

import json
import re
import textwrap
import zlib
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from convergence.config.loader import parse_config
from convergence.engine.loop import Optimizer
from convergence.llm.testing import FakeCall, FakeLLM
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
        # every call was an evaluation: the search's, or the repeat draws of selection.stochastic: auto's probe
        repeats = sum(len(v) for v in (await store.repeat_results(out.run_id)).values())
        assert out.total_calls == sum(t.n_cases for t in out.trials) + repeats
        assert all("sao" not in t.metrics for t in out.trials)
    finally:
        await store.close()


async def test_a_preference_metric_without_sao_is_refused_before_any_call(tmp_path: Path) -> None:
    from convergence.config.loader import ConfigError
    from convergence.engine.preflight import check

    loaded = config(tmp_path, "", metrics="pref: {function: sao_preference}")
    with pytest.raises(ConfigError, match=r"evaluation\.metrics\.pref\.function.*sao_enabled"):
        check(loaded)


CITIES = list(CAPITALS.values())
JUDGED = re.compile(r"### Task\n(.*?)\n\n### Response A\n(.*?)\n\n### Response B\n(.*?)\n\n### Which", re.S)


def judged(prompt: str) -> tuple[str, str, str]:
    """(task, response A, response B) of a judge prompt."""
    found = JUDGED.search(prompt)
    assert found, prompt
    return found.group(1), found.group(2), found.group(3)


def capitals_judge(call: FakeCall) -> Any:
    """A judge that knows the capitals (right > a real capital > anything else), and a prompt
    writer that asks each persona's question about a country."""
    if call.schema is not None and "question" in call.schema["properties"]:
        persona = call.prompt.rsplit("written by ", 1)[1].strip().rstrip(".")
        country = list(CAPITALS)[zlib.crc32(call.prompt.encode()) % len(CAPITALS)]
        return {"question": f"Asked by {persona}: what is the capital of {country}?"}
    if call.prompt.endswith("Verdict: [["):
        task, a, b = judged(call.prompt)
        right = CAPITALS[re.findall(r"capital of (\w+)", task)[-1]]
        qa, qb = ((2 if r == right else 1 if r in CITIES else 0) for r in (a, b))
        return "A]]" if qa > qb else "B]]" if qb > qa else "tie]]"
    return None


SAO_RUN = """
        society:
          enabled: true
          agents: {evolution: 0.6, sao: 0.4}
          sao: {batch_size: 4, iterative_rounds: 2, every: 1, prompt_tokens: 40}
        """


async def test_the_self_judge_rates_the_right_answers_first_and_its_pairs_export(tmp_path: Path) -> None:
    """A Python target with a known quality order, judged by a model that knows it:
    the configuration that answers correctly is preferred, the ratings reach the
    objective (``sao_preference``) and the stored trials, and the pairs export
    in TRL's format that ``datasets`` loads."""
    llm = FakeLLM("sao-capitals", reply=capitals_judge)
    loaded = config(tmp_path, SAO_RUN + f"  llm: {{model: {llm.model}}}\n", metrics=PREFERENCE_METRICS)
    store = await Store.open(tmp_path / "db.sqlite")
    try:
        opt = Optimizer(loaded, store)
        out = await opt.run()
        agent = opt.society.agent("sao")
        assert isinstance(agent, SAOAgent) and agent.judge_method == "text"
        pairs = await store.sao_pairs(run_id=out.run_id)
        assert len(pairs) >= 4 and all(p.source in ("loop", "test_case") and p.hash_a and p.hash_b for p in pairs)
        on_cases = [p for p in pairs if p.source == "test_case"]  # the calibration duels: a reference answer
        assert len(on_cases) == 2 and all(p.reference in ("A", "B", "tie") for p in on_cases)
        assert all(p.outcome == p.reference for p in on_cases if p.reference != "tie")  # a judge that knows
        # each judged pair was judged in both orders, the second with the responses swapped
        judge_calls = [judged(c.prompt) for c in llm.calls if c.prompt.endswith("Verdict: [[")]
        assert judge_calls and all((t, b, a) in judge_calls for t, a, b in judge_calls)
        assert all(c.params["temperature"] == 0.0 for c in llm.calls if c.prompt.endswith("Verdict: [["))
        assert {p.outcome for p in pairs} <= {"A", "B", "tie"}  # a consistent judge: no position bias
        ratings = await store.sao_ratings(out.run_id)
        by_style = {t.config["style"]: t for t in out.trials}
        pref = {s: ratings[t.config_hash]["preference"] for s, t in by_style.items() if t.config_hash in ratings}
        assert pref["correct"] == max(pref.values()) and len(pref) >= 2, pref
        # the objective saw the ratings: the stored scores are accuracy and preference, half each
        correct = by_style["correct"]
        assert correct.metrics["pref"] == pytest.approx(pref["correct"])
        assert correct.score == pytest.approx(0.5 * correct.metrics["acc"] + 0.5 * pref["correct"])
        assert out.best is not None and out.best.config["style"] == "correct"

        from typer.testing import CliRunner

        from convergence.cli.app import app

        kept = [p for p in pairs if p.kept]
        assert kept, [(p.outcome, p.failed_filters) for p in pairs]
        assert all(p.chosen == CAPITALS[re.findall(r"capital of (\w+)", p.prompt)[-1]] or p.rejected == "banana"
                   for p in kept)
        target = tmp_path / "pairs.jsonl"
        args = ["sao", "export", str(out.run_id), "-o", str(target), "--db", str(tmp_path / "db.sqlite")]
        done = await anyio.to_thread.run_sync(CliRunner().invoke, app, args)  # the CLI runs its own event loop
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
        assert report.sao.metric_agreement == 1.0 and "**Agreement with the metrics:** 100%" in text
        traces = await anyio.to_thread.run_sync(CliRunner().invoke, app,
                                                ["traces", str(out.run_id), "--db", str(tmp_path / "db.sqlite")])
        assert traces.exit_code == 0 and "pair(s) judged" in traces.output, traces.output
    finally:
        await store.close()


def wrong_judge(call: FakeCall) -> Any:
    """The capitals judge with a wrong belief: a neighbouring capital beats the right one."""
    if call.prompt.endswith("Verdict: [["):
        task, a, b = judged(call.prompt)
        right = CAPITALS[re.findall(r"capital of (\w+)", task)[-1]]
        qa, qb = ((1 if r == right else 2 if r in CITIES else 0) for r in (a, b))
        return "A]]" if qa > qb else "B]]" if qb > qa else "tie]]"
    return capitals_judge(call)


async def test_a_judge_preferring_wrong_answers_keeps_no_test_case_pair_against_the_metric(tmp_path: Path) -> None:
    """Duels on test cases (a reference answer) are checked against the metric: a pair whose
    rejected answer is the correct one is not kept, and the judge's measured agreement with the
    metric is stored, reported and shown by ``sao stats`` (the written prompts have no reference)."""
    llm = FakeLLM("sao-wrong", reply=wrong_judge)
    run = SAO_RUN.replace("prompt_tokens: 40}", "prompt_tokens: 40, calibration: 4}")
    loaded = config(tmp_path, run + f"  llm: {{model: {llm.model}}}\n", generations=1)
    store = await Store.open(tmp_path / "db.sqlite")
    try:
        out = await Optimizer(loaded, store).run()
        pairs = await store.sao_pairs(run_id=out.run_id)
        on_cases = [p for p in pairs if p.source == "test_case"]
        assert len(on_cases) == 4 and all(p.reference is not None for p in on_cases)
        wrong = [p for p in on_cases if p.outcome in ("A", "B") and p.outcome != p.reference]
        assert wrong, [(p.outcome, p.reference) for p in on_cases]  # the judge did prefer wrong answers
        for p in wrong:  # ... and none of those is kept: its rejected answer was the correct one
            assert not p.kept and "disagrees_with_metric" in p.failed_filters
            assert p.rejected == CAPITALS[re.findall(r"capital of (\w+)", p.prompt)[-1]]
        assert all(p.outcome == p.reference for p in on_cases if p.kept)

        from convergence.reporting.files import render_markdown
        from convergence.reporting.outputs import build_report

        report = await build_report(store, out.run_id)
        measured = [p for p in on_cases if p.reference in ("A", "B")]
        agreed = sum(p.outcome == p.reference for p in measured)
        assert report.sao is not None and report.sao.metric_agreement_pairs == len(measured)
        assert report.sao.metric_agreement == pytest.approx(agreed / len(measured)) and agreed < len(measured)
        assert f"of {len(measured)} duels on test cases" in render_markdown(report, [], {}, [])
    finally:
        await store.close()
    from typer.testing import CliRunner

    from convergence.cli.app import app

    done = await anyio.to_thread.run_sync(CliRunner().invoke, app, ["sao", "stats", str(out.run_id), "--db",
                                                                    str(tmp_path / "db.sqlite")])
    assert done.exit_code == 0 and "agrees with the metrics" in done.output, done.output
    assert f"{agreed / len(measured):.1%} of {len(measured)}" in done.output


@pytest.mark.slow
async def test_smoke_sao_on_the_embedded_model(tmp_path: Path) -> None:
    """The real path end to end on local/gemma-3-270m (its likelihood judge): the pairs are
    stored and the configuration that answers correctly is preferred and wins the run."""
    loaded = config(tmp_path, SAO_RUN, metrics=PREFERENCE_METRICS)
    store = await Store.open(tmp_path / "db.sqlite")
    try:
        opt = Optimizer(loaded, store)
        out = await opt.run()
        agent = opt.society.agent("sao")
        assert isinstance(agent, SAOAgent) and agent.sao_llm.model == "local/gemma-3-270m"
        assert agent.judge_method == "likelihood"
        pairs = await store.sao_pairs(run_id=out.run_id)
        assert len(pairs) >= 4 and all(p.source in ("loop", "test_case") and p.hash_a and p.hash_b for p in pairs)
        assert any(p.source == "test_case" and p.reference is not None for p in pairs)  # checked duels ran
        ratings = await store.sao_ratings(out.run_id)
        by_style = {t.config["style"]: t for t in out.trials}
        pref = {s: ratings[t.config_hash]["preference"] for s, t in by_style.items() if t.config_hash in ratings}
        assert pref.get("correct", 0) == max(pref.values()), (pref, [(p.prompt, p.response_a, p.response_b,
                                                                      p.outcome) for p in pairs])
        assert out.best is not None and out.best.config["style"] == "correct"
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


def test_the_sao_python_example_in_docs_society_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The documented example as written, on a fake model that answers tersely when cool and
    rambles when hot, and judges the shorter answer better (the smoke test covers the real one)."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "society.md").read_text()
    [code] = [c for c in re.findall(r"```python\n(.*?)```", doc, re.S) if "SAOMixin" in c and "FakeLLM" not in c]
    assert '"local/gemma-3-270m"' in code

    def reply(call: FakeCall) -> Any:
        if call.prompt.endswith("Verdict: [["):
            _, a, b = judged(call.prompt)
            return "A]]" if len(a) < len(b) else "B]]"
        if call.schema is None:  # a response at one of the two temperatures
            return "Berlin." if call.params["temperature"] < 0.5 else "Well, it could be many places, who knows."
        return None  # the written prompt: JSON from the schema

    llm = FakeLLM("sao-docs", reply=reply)
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace('"local/gemma-3-270m"', repr(llm.model)), "docs/society.md", "exec"), {})
    out = capsys.readouterr().out
    rows = (tmp_path / "pairs.jsonl").read_text().splitlines()
    assert f"rows written: {len(rows)}" in out and len(rows) >= 2
    assert "consistency under swap: 1.0" in out
    assert all(json.loads(r)["chosen"] == "Berlin." for r in rows)


async def test_a_position_biased_judge_is_caught_by_the_swap_and_its_pairs_stay_out() -> None:
    """The provider path (``judge: auto`` -> text): written verdicts are parsed strictly, both
    orders are judged, and a judge that always prefers what it sees first gives inconsistent
    pairs that stay out of the dataset, with the consistency rate in the stats."""
    from convergence.config.society import SAOConfig
    from convergence.plugins.learning.sao import SAOMixin

    async def target(task_input: Any, i: int) -> str:  # the user's target: a terse and a chatty answer
        return ["Berlin.", "I think the answer could be many things, it depends on the context."][i]

    for verdict, outcome in (("A]] as it comes first", "inconsistent"), ("I cannot tell", "unparseable")):
        llm = FakeLLM("sao-biased", reply=lambda call, v=verdict: v if call.prompt.endswith("Verdict: [[") else None)
        sao = SAOMixin(SAOConfig(batch_size=2, iterative_rounds=2, prompt_tokens=64), llm.model,
                       examples=[{"question": "What is the capital of Germany?"}], seed=2, responder=target)
        assert sao.judge_method == "text"
        assert await sao.generate_synthetic_dataset(n_samples=2) == []
        made = sao.sao_dataset
        assert len(made) == 4 and not sao.failures  # two rounds of two: nothing kept, so the rounds ran out
        for p in made:
            assert len(p.judgments) == 2 and p.outcome == outcome and not p.kept
            assert outcome in p.failed_filters
        stats = sao.get_sao_stats()
        assert stats["total"] == 4 and stats["kept"] == 0
        assert stats["consistency_rate"] == (0.0 if outcome == "inconsistent" else None)
        assert stats["llm_calls"] == len(llm.calls) == 4 * 3  # a prompt and two judgments per pair


async def test_rule_verdicts_and_filters_need_no_judge_call() -> None:
    """Near-identical responses are a tie and an empty one loses, without asking the judge;
    a failed response, a repeated prompt and a response too long fail their filters."""
    from convergence.config.society import SAOConfig
    from convergence.plugins.learning.sao import SAOMixin

    llm = FakeLLM("sao-filters", reply=lambda call: {"question": "What is the capital of Germany, please?"}
                  if call.schema is not None else "[[A]]")
    sao = SAOMixin(SAOConfig(max_response_length=30), llm.model, examples=[{"question": "Capital of Peru?"}])

    def answering(a: str | Exception, b: str | Exception) -> Any:
        async def responder(task_input: Any, i: int) -> str:
            r = (a, b)[i]
            if isinstance(r, Exception):
                raise r
            return r
        return responder

    async def pair(a: str | Exception, b: str | Exception) -> Any:
        return await sao.make_pair(sao.next_persona(), sao.examples, answering(a, b))

    same = await pair("Berlin", "berlin!")
    assert (same.outcome, same.judgments) == ("tie", []) and {"tie", "duplicate_responses"} <= set(
        same.failed_filters)
    empty = await pair("  ", "Berlin")
    assert empty.outcome == "B" and "shorter than 1 character" in empty.judgments[0]
    assert "too_short" in empty.failed_filters and "duplicate_prompt" in empty.failed_filters
    failed = await pair("Berlin", RuntimeError("target down"))
    assert failed.outcome == "unparseable" and failed.response_b == "(failed: RuntimeError)"
    assert failed.failed_filters[:2] == ["response_error", "unparseable"]
    assert not [c for c in llm.calls if c.prompt.endswith("Verdict: [[")]  # no judge call so far
    long = await pair("Berlin", "Berlin, a city on the Spree, is the capital.")
    assert long.judgments and long.outcome == "inconsistent" and "too_long" in long.failed_filters
    assert [c.prompt.endswith("Verdict: [[") for c in llm.calls].count(True) == 2


async def test_the_likelihood_judge_prefers_the_response_the_model_finds_likelier() -> None:
    """``judge: likelihood`` on a non-local provider: each response's log-prob after the
    judge's question decides, both orders, and within ``tie_margin`` it is a tie."""
    from convergence.config.society import SAOConfig
    from convergence.plugins.learning.sao import SAOMixin

    llm = FakeLLM("sao-likely", logprobs=lambda prompt: {"Berlin": -0.3, "Munich": -2.0, "Bonn": -0.35})
    sao = SAOMixin(SAOConfig(judge="likelihood", tie_margin=0.1), llm.model)
    assert sao.judge_method == "likelihood"
    first, second, texts = await sao.judge("Capital of Germany?", "Munich", "Berlin")
    assert (first, second) == ("B", "B") and "log-prob: A -2.000, B -0.300 -> [[B]]" in texts
    assert (await sao.judge("Capital of Germany?", "Berlin", "Bonn"))[:2] == ("tie", "tie")
    assert all(c.wants_logprobs and c.prompt.endswith("The better response is:") for c in llm.calls)
    none = SAOMixin(SAOConfig(judge="likelihood"), FakeLLM("sao-unlikely", logprobs=lambda p: {}).model)
    verdict, text = await none.judge_once("Capital of Germany?", "Berlin", "Munich")
    assert verdict is None and "no log-probs from fake/sao-unlikely" in text


async def test_the_likelihood_judge_takes_an_upper_bound_for_no_measurement() -> None:
    """A response whose first word is not in the provider's top log-probs gets only an upper
    bound: two bounds (equal by construction) are no tie, a measured value under a bound decides
    nothing, and a measured value above the other's bound does decide."""
    from convergence.config.society import SAOConfig
    from convergence.plugins.learning.sao import SAOMixin

    llm = FakeLLM("sao-bound", logprobs=lambda prompt: {"Berlin": -0.3, "Paris": -1.5, "Rome": -1.0})
    sao = SAOMixin(SAOConfig(judge="likelihood", tie_margin=0.1), llm.model)
    v, text = await sao.judge_once("Capital of Germany?", "Munich", "Bonn")  # both outside the top k
    assert v is None and "both are upper bounds" in text, text
    v, text = await sao.judge_once("Capital of Germany?", "Paris", "Munich")  # -1.5 vs a bound of -1.5
    assert v is None and "upper bound" in text, text
    assert (await sao.judge_once("Capital of Germany?", "Munich", "Berlin"))[0] == "B"  # -0.3 beats <= -1.5


def test_a_written_prompt_is_read_from_json_or_from_its_first_complete_field() -> None:
    from convergence.plugins.learning.sao import _parse_fields

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


async def test_pairs_record_the_prompt_each_side_received_and_two_templates_are_not_exported(
        tmp_path: Path) -> None:
    """A LiteLLM target whose prompt template is searched: each pair records the rendered prompt
    each side received, and a pair of two templates (no one prompt) stays out of the export."""
    styles = ["Answer briefly:", "Write a long poem about:"]

    def reply(call: FakeCall) -> Any:
        if call.prompt.startswith(styles[0]):
            return CAPITALS[re.findall(r"capital of (\w+)", call.prompt)[-1]]
        if call.prompt.startswith(styles[1]):
            return "Roses are red, the sky is wide."
        return capitals_judge(call)

    llm = FakeLLM("sao-templates", reply=reply)
    loaded = config(tmp_path, SAO_RUN + f"  llm: {{model: {llm.model}}}\n", generations=1)
    text = loaded.path.read_text()
    text = text.replace('target: {type: python, function: "capitals:answer", retry: {max_retries: 0}}',
                        f'target: {{type: litellm, model: {llm.model}, prompt: "{{{{ style }}}} {{{{ question }}}}"}}')
    text = text.replace("values: [correct, neighbour, nonsense]", f"values: {json.dumps(styles)}")
    loaded.path.write_text(text)
    loaded = parse_config(text, loaded.path)
    store = await Store.open(tmp_path / "db.sqlite")
    try:
        out = await Optimizer(loaded, store).run()
        pairs = await store.sao_pairs(run_id=out.run_id)
    finally:
        await store.close()
    assert pairs and all(p.prompts is not None for p in pairs)
    for p in pairs:  # what each side received: its own template around the same question
        assert p.prompts and p.config_a and p.config_b
        assert p.prompts == [f"{c['style']} {input_question(p)}" for c in (p.config_a, p.config_b)]
    from typer.testing import CliRunner

    from convergence.cli.app import app

    target = tmp_path / "pairs.jsonl"
    args = ["sao", "export", str(out.run_id), "-o", str(target), "--db", str(tmp_path / "db.sqlite")]
    done = await anyio.to_thread.run_sync(CliRunner().invoke, app, args)
    assert "different_prompts" in done.output, done.output
    assert not target.exists() or all(json.loads(r)["prompt"].split(" ")[0] in ("Answer", "Write")
                                      for r in target.read_text().splitlines())


def input_question(pair: Any) -> str:
    return str(pair.prompt_input["question"] if isinstance(pair.prompt_input, dict) else pair.prompt)
