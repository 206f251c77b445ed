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

from convergence.config.loader import parse_config
from convergence.core.loop import Optimizer
from convergence.society.sao_agent import SAOAgent
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
    from convergence.config.preflight import check

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
        """, metrics="acc: {function: contains, weight: 0.5}\n            pref: {function: sao_preference, weight: 0.5}")
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
    finally:
        await store.close()
