"""SAO on the embedded model: throughput, consistency under swap, filtering,
and whether the self-judge's preference agrees with measured accuracy.

Every number printed is measured when the script runs.

1. Six configurations of the default target (the embedded Gemma 3 270M:
   prompt style bare / qa / few_shot x temperature 0.0 / 1.2, max_tokens 8,
   stop at a newline) are evaluated on all 30 questions of
   ``examples/qa/questions.jsonl`` (``contains`` accuracy) through the real
   loop (one generation, the society off).
2. For each judge (``likelihood``, the default on the embedded model, and
   ``text``, the strictly parsed written verdict) the SAO agent of the loop
   duels every pair of the six configurations (15 pairings, each on
   ``--per-pairing`` persona-written questions) through the same target. Per
   judge: pairs per minute (wall, prompts + responses + both judgments), the
   consistency rate under swap, the share of pairs filtered (and by which
   filter), and Spearman's rank correlation between each configuration's
   Bradley-Terry preference and its measured accuracy; then the same for the
   pairs the LLM itself judged (an empty response loses by rule, no judge).

Usage: ``python benchmarks/sao.py [--per-pairing 1] [--seed 3]``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

ROOT = Path(__file__).resolve().parents[1]

STUDY = """
study: sao-bench
target: {type: litellm, model: local/gemma-3-270m, prompt: "{{ prompt_style }}", timeout_seconds: 60}
search_space:
  parameters:
    prompt_style:
      type: categorical
      values:
        bare: "{{ question }}"
        qa: "Q: {{ question }}\\nA:"
        few_shot: "Q: What is the capital of Germany?\\nA: Berlin\\n\\nQ: {{ question }}\\nA:"
    temperature: {type: discrete, values: [0.0, 1.2]}
    max_tokens: {type: discrete, values: [8]}
    stop: {type: categorical, values: {newline: ["\\n"]}}
evaluation:
  test_cases: {path: %s}
  metrics:
    accuracy: {function: contains}
optimization:
  seed: 1
  evolution: {population_size: 6, generations: 1, elite_size: 0}
  execution: {concurrency: 1, early_stopping: {enabled: false}}
storage: {path: bench.sqlite}
"""


async def measure(per_pairing: int, seed: int) -> None:
    from scipy.stats import spearmanr

    from convergence.config.loader import load_config
    from convergence.config.society import SAOConfig
    from convergence.engine.loop import Optimizer
    from convergence.llm.agent_client import LLMClient
    from convergence.society.base import TaskAccess
    from convergence.society.sao.agent import SAOAgent
    from convergence.society.sao.ratings import Duel, ratings
    from convergence.society.sao.verdict import consistency_rate
    from convergence.storage.store import Store

    work = Path(tempfile.mkdtemp(prefix="sao-bench-"))
    (work / "optimization.yaml").write_text(textwrap.dedent(STUDY % (ROOT / "examples/qa/questions.jsonl")))
    loaded = load_config(work / "optimization.yaml")
    store = await Store.open(work / "bench.sqlite")
    try:
        opt = Optimizer(loaded, store)
        start = time.perf_counter()
        out = await opt.run()
        trials = sorted((t for t in out.trials if t.usable), key=lambda t: -t.score)
        print(f"evaluated {len(trials)} configurations x {len(opt.cases)} questions in "
              f"{time.perf_counter() - start:.0f}s")
        for t in trials:
            print(f"  accuracy {t.metrics['accuracy']:.3f}  {t.config['prompt_style']:<9} "
                  f"temperature {t.config['temperature']}")
        accuracy = {t.config_hash: t.metrics["accuracy"] for t in trials}
        pairings = list(itertools.combinations(trials, 2)) * per_pairing
        # the loop's own budgeted target call, outside a run: the target and runner it built
        from convergence.targets.factory import build_runner, build_target

        target = build_target(loaded.config.resolved_target, loaded.base_dir, 1)
        runner = build_runner(loaded.config.resolved_target, target)

        async def call(config: dict[str, Any], task_input: object) -> str:
            from convergence.core.types import TestCase
            from convergence.evaluation.text import to_text
            from convergence.society.base import TargetCallError

            result = await runner.run(opt.space.resolve(config), TestCase("sao", task_input))
            if result.error:
                raise TargetCallError(result.error)
            return to_text(result.output)

        rows = []
        for judge in ("likelihood", "text"):
            agent = SAOAgent(SAOConfig(judge=judge, batch_size=len(pairings), iterative_rounds=1, prompt_tokens=40),
                             LLMClient(), opt.space, seed=seed)
            agent.bind(TaskAccess(opt.cases, call))
            agent.observe(trials)
            start = time.perf_counter()
            made = await agent.duel_round(list(pairings), 0, None)
            seconds = time.perf_counter() - start
            agent._refit(None)
            rated = [(agent.preference(h), accuracy[h]) for h in accuracy]
            rho = spearmanr([r[0] for r in rated], [r[1] for r in rated]).statistic
            # the same, from the duels the LLM judged (not those an empty response lost by rule)
            by_llm = [p for p in made if p.judgments and not p.judgments[0].startswith("rule:")]
            llm_ratings = ratings([Duel(p.hash_a or "", p.hash_b or "", p.outcome) for p in by_llm  # type: ignore[arg-type]
                                   if p.outcome in ("A", "B", "tie")])
            llm_rated = [(llm_ratings[h].preference if h in llm_ratings else 0.5, accuracy[h]) for h in accuracy]
            llm_rho = spearmanr([r[0] for r in llm_rated], [r[1] for r in llm_rated]).statistic
            filtered = [p for p in made if p.failed_filters]
            reasons: dict[str, int] = {}
            for p in filtered:
                for f in p.failed_filters:
                    reasons[f] = reasons.get(f, 0) + 1
            rows.append((judge, len(made), 60 * len(made) / seconds, consistency_rate([p.outcome for p in made]),
                         len(filtered) / max(1, len(made)), reasons, rho, len(agent.failures), len(by_llm),
                         consistency_rate([p.outcome for p in by_llm]), llm_rho))
        await target.aclose()
    finally:
        await store.close()
    print()
    print(f"{'judge':<11} {'pairs':>5} {'pairs/min':>9} {'consistent':>10} {'filtered':>8} {'spearman':>8} "
          f"{'LLM-judged':>10} {'consistent':>10} {'spearman':>8}  filters (pairs failing each)")
    for judge, n, rate, cons, share, reasons, rho, failures, n_llm, llm_cons, llm_rho in rows:
        print(f"{judge:<11} {n:>5} {rate:>9.1f} {_pct(cons):>10} {share:>8.0%} {_rho(rho):>8} "
              f"{n_llm:>10} {_pct(llm_cons):>10} {_rho(llm_rho):>8}  {reasons}"
              + (f"  ({failures} prompts could not be written)" if failures else ""))
    print("\nLLM-judged: pairs the LLM judged (not an empty response losing by rule); their consistency under "
          "swap and the Spearman correlation of ratings fitted to their duels alone (unrated: 0.5).")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def _rho(x: float) -> str:
    return "n/a" if x != x else f"{x:+.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-pairing", type=int, default=1, help="questions per pairing of configurations")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    anyio.run(measure, args.per_pairing, args.seed)


if __name__ == "__main__":
    main()
