"""RLP: do the thoughts help, and what do they cost?

Two measurements; every number printed is measured when the script runs.
The RLP settings (``society.rlp``: G thoughts per generation,
``thought_length``) and the society LLM are the default task's, read from
``optimization.yaml`` when the script runs (``--G`` / ``--thought-length``
override them).

1. **Thought vs empty thought.** The same ``RLPAgent`` is the only agent
   (``society.agents: {rlp: 1.0}``, so every proposal is RLP's and no other
   agent moves the search) and runs with the same budget and seeds twice:
   once as shipped, once with ``generate_internal_reasoning`` returning an
   empty thought (``EmptyThoughtRLP`` below). Everything else is identical:
   the strategy the policy samples (its cue in the prompt and its
   restriction of the answer's schema), the study digest, the
   grammar-constrained answer, the information-gain reward, the policy
   update. Only the words of the thought are gone, so the difference between
   the arms is what those words add. A run with the society off (the numeric
   agents of the default algorithm, ``mab_evolution``) on the same budget and
   seeds is shown for reference. Each run has its own SQLite file, so no
   agent memory carries over between runs or arms; the order of the two RLP
   arms alternates between seeds. Two tasks:

   * ``qa``: the default task (``optimization.yaml``: the embedded Gemma 3
     270M answering factual questions), scaled down: the first 10 questions,
     population 4, 3 generations, elite 1, early stopping off, the time
     budget raised so it never cuts a run.
   * ``python``: a deterministic Python target with a known optimum (written
     into a temp dir): template (5) x model (3) x temperature (11) x
     max_tokens (5) = 825 configurations, with interactions (step-by-step is
     the best template on the large model and the worst on the small one;
     the best temperature depends on the model; the max_tokens knee depends
     on the template). Global maximum 1.0 (checked at start-up). Population
     6, 4 generations, elite 1.

   Per arm (means over seeds): the best score found; the best and the mean
   score of RLP's own proposals; the mean score of everything evaluated; the
   share of slots RLP filled (the society fills the rest at random after an
   invalid answer or a duplicate); the parse rate (``parse_rate(totals)``:
   answers that parsed / answers); the mean information-gain reward (nats,
   ``log p(outcome | thought) - log p(outcome | no thought line)``); RLP's
   LLM seconds; then the ratio and the difference thoughts - empty.

2. **RLP's time cost per generation** on the default task as shipped (all
   30 questions, its population, generations and society: evolution,
   bandit and RLP with their shares), against the same task with the society
   off (the numeric agents only). Early stopping off and the time budget
   raised, so both runs evaluate the same number of configurations. Per
   generation: RLP's LLM seconds (``agent.rlp_llm.seconds`` deltas;
   proposing = thoughts and answers, learning = log-prob measurements) next
   to the generation's evaluation wall time; then both runs' wall times and
   their ratio.

    .venv/bin/python benchmarks/rlp.py              # full: 3 seeds, both parts (about 35 min on 2 cores)
    .venv/bin/python benchmarks/rlp.py --quick      # smoke run: 1 seed, tiny tasks (about 3 min)
    .venv/bin/python benchmarks/rlp.py --seeds 5 --only ablation --tasks python
    .venv/bin/python benchmarks/rlp.py --G 4 --thought-length 64   # other RLP settings
    .venv/bin/python benchmarks/rlp.py --json       # every run and number as one JSON document

The embedded model is loaded (and warmed up with one call) before anything
is timed. Everything runs in one process, one run at a time: the model
serves one call at a time, and the qa task measures latency (a busy machine
moves the qa scores and every time).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_YAML = ROOT / "optimization.yaml"
QUESTIONS = ROOT / "examples" / "qa" / "questions.jsonl"
ARMS = ("thought", "empty", "numeric")
"""RLP as shipped; RLP with an empty thought; the society off (reference, no RLP)."""

# --------------------------------------------------------------------------- the Python target

TEMPLATES = ["plain", "role", "steps", "examples", "json"]
MODELS = ["small", "medium", "large"]
QUALITY = {  # template -> quality on (small, medium, large)
    "plain": [0.30, 0.40, 0.50],
    "role": [0.35, 0.50, 0.60],
    "steps": [0.15, 0.55, 1.00],
    "examples": [0.60, 0.70, 0.75],
    "json": [0.25, 0.45, 0.70],
}
BEST_TEMPERATURE = {"small": 0.2, "medium": 0.4, "large": 0.7}
TOKENS_NEEDED = {"plain": 128, "role": 128, "steps": 512, "examples": 256, "json": 128}
MAX_TOKENS = [64, 128, 256, 512, 1024]
TEMPERATURES = [round(0.1 * i, 1) for i in range(11)]

TARGET_MODULE = '''
"""Benchmark target (benchmarks/rlp.py): a deterministic score with a known optimum."""
import math

QUALITY = {quality!r}
MODELS = {models!r}
BEST_TEMPERATURE = {best_temperature!r}
TOKENS_NEEDED = {tokens_needed!r}


def objective(p):
    quality = QUALITY[p["template"]][MODELS.index(p["model"])]
    temp = 0.4 + 0.6 * math.exp(-(((p["temperature"] - BEST_TEMPERATURE[p["model"]]) / 0.2) ** 2))
    need, mt = TOKENS_NEEDED[p["template"]], p["max_tokens"]
    tokens = (mt / need) ** 1.5 if mt < need else 1.0 - 0.05 * math.log2(mt / need)
    return quality * temp * tokens


async def call(params, input):
    return objective(params)


def score(output, case, call, args):
    return float(output)
'''
MODULE_NAME = "rlp_bench_target"


def write_target(directory: Path) -> Any:
    """The target module in ``directory`` (importable), and the module itself."""
    (directory / f"{MODULE_NAME}.py").write_text(TARGET_MODULE.format(
        quality=QUALITY, models=MODELS, best_temperature=BEST_TEMPERATURE, tokens_needed=TOKENS_NEEDED))
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    import importlib

    module = importlib.import_module(MODULE_NAME)
    best = max(module.objective({"template": t, "model": m, "temperature": x, "max_tokens": k})
               for t in TEMPLATES for m in MODELS for x in TEMPERATURES for k in MAX_TOKENS)
    assert abs(best - 1.0) < 1e-12, best  # steps / large / 0.7 / 512
    return module


# --------------------------------------------------------------------------- configs


@dataclass(slots=True)
class Scale:
    questions: int | None
    """qa: the first N questions (None: all 30)."""
    population: int
    generations: int
    elite: int


def default_society(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``optimization.yaml``'s ``society:`` section (read when the script runs),
    its ``rlp:`` settings updated with ``overrides``."""
    soc = dict(yaml.safe_load(DEFAULT_YAML.read_text()).get("society") or {})
    soc["enabled"] = True
    soc["rlp"] = {**(soc.get("rlp") or {}), **overrides}
    return soc


def society_section(arm: str, soc: Mapping[str, Any]) -> dict[str, Any]:
    """Part 1's society: RLP alone (both RLP arms), or off (the reference)."""
    if arm == "numeric":
        return {"enabled": False}
    out = {k: v for k, v in soc.items() if k not in ("agents", "learning", "auto_generate_agents")}
    return {**out, "enabled": True, "agents": {"rlp": 1.0}}


def default_scale() -> Scale:
    evo = yaml.safe_load(DEFAULT_YAML.read_text())["optimization"]["evolution"]
    return Scale(None, evo["population_size"], evo["generations"], evo["elite_size"])


def qa_config(workdir: Path, seed: int, scale: Scale, society: Mapping[str, Any]) -> str:
    """The default task, scaled: same target, space, metrics and algorithm."""
    data = yaml.safe_load(DEFAULT_YAML.read_text())
    data["study"] = "rlp-bench-qa"
    tc: dict[str, Any] = {"path": str(QUESTIONS)}
    if scale.questions:
        tc["limit"] = scale.questions
    data["evaluation"]["test_cases"] = tc
    opt = data["optimization"]
    opt["seed"] = seed
    opt["warm_start"] = 0
    opt["evolution"].update(population_size=scale.population, generations=scale.generations,
                            elite_size=scale.elite)
    opt["execution"]["early_stopping"] = {"enabled": False}
    opt["budget"] = {"max_seconds": 7200}  # never cuts a run: both arms spend the same budget
    data["storage"] = {"path": str(workdir / "db.sqlite")}
    data["output"]["save_path"] = str(workdir / "results")
    data["society"] = dict(society)
    if "agents" in society:
        opt.pop("algorithm", None)  # society.agents replaces it (the config refuses both)
    return yaml.safe_dump(data, sort_keys=False)


def python_config(workdir: Path, seed: int, scale: Scale, society: Mapping[str, Any]) -> str:
    return textwrap.dedent(f"""\
        study: rlp-bench-python
        target: {{type: python, function: "{MODULE_NAME}:call", retry: {{max_retries: 0}}}}
        search_space:
          parameters:
            template: {{type: categorical, values: {json.dumps(TEMPLATES)}}}
            model: {{type: categorical, values: {json.dumps(MODELS)}}}
            temperature: {{type: continuous, min: 0.0, max: 1.0, step: 0.1}}
            max_tokens: {{type: discrete, values: {json.dumps(MAX_TOKENS)}}}
        evaluation:
          test_cases:
            inline:
              - {{input: "x", expected: "1"}}
          metrics:
            score: {{function: "{MODULE_NAME}:score"}}
        optimization:
          seed: {seed}
          warm_start: 0
          evolution: {{population_size: {scale.population}, generations: {scale.generations}, \
elite_size: {scale.elite}}}
          execution: {{concurrency: 4, early_stopping: {{enabled: false}}}}
        storage: {{path: {json.dumps(str(workdir / "db.sqlite"))}}}
        """) + yaml.safe_dump({"society": dict(society)}, sort_keys=False)


# --------------------------------------------------------------------------- the empty-thought agent


def empty_thought_class() -> type:
    from convergence.society.rlp.agent import RLPAgent
    from convergence.society.rlp.mixin import Thought

    class EmptyThoughtRLP(RLPAgent):
        """RLP with the thought's words removed: same strategy, cue, schema, reward, learning."""

        async def generate_internal_reasoning(self, state: Any, context: str, *, strategy: str | None = None,
                                              behaviour_prob: float | None = None,
                                              seed: int | None = None) -> Thought:
            if strategy is None:
                strategy, behaviour_prob = self.sample_strategies(np.random.default_rng(seed), 1)[0]
            return Thought("", strategy, context, 1.0 if behaviour_prob is None else float(behaviour_prob), 0.0)

    return EmptyThoughtRLP


# --------------------------------------------------------------------------- one run


@dataclass(slots=True)
class GenTiming:
    generation: int
    propose_llm: float = 0.0
    """RLP's LLM seconds while proposing (thoughts, answers)."""
    learn_llm: float = 0.0
    """RLP's LLM seconds while learning (log-prob measurements)."""
    propose_wall: float = 0.0
    """Wall seconds from the previous generation's end (or the run's start) to this generation's evaluation."""
    eval_wall: float = 0.0
    learn_wall: float = 0.0
    rlp_slots: int = 0


class Timer:
    """Loop events -> per-generation wall and RLP LLM seconds."""

    def __init__(self, agent: Any | None):
        self.agent = agent
        self.gens: list[GenTiming] = []
        self._t = time.perf_counter()
        self._llm = self._llm_seconds()
        self._cur: GenTiming | None = None

    def _llm_seconds(self) -> float:
        return self.agent.rlp_llm.seconds if self.agent is not None else 0.0

    def _mark(self) -> tuple[float, float]:
        now, llm = time.perf_counter(), self._llm_seconds()
        out = (now - self._t, llm - self._llm)
        self._t, self._llm = now, llm
        return out

    def generation_started(self, generation: int, total: int, n_trials: int, n_cases: int) -> None:
        self._cur = GenTiming(generation)
        self._cur.propose_wall, self._cur.propose_llm = self._mark()
        self.gens.append(self._cur)

    def generation_finished(self, generation: int, best: Any, new: list[Any]) -> None:
        assert self._cur is not None
        self._cur.eval_wall, _ = self._mark()
        self._cur.rlp_slots = sum(1 for t in new if t.proposer == "rlp")

    def society_step(self, generation: int, reports: Any, new: Any) -> None:
        assert self._cur is not None
        self._cur.learn_wall, self._cur.learn_llm = self._mark()

    def case_finished(self, *a: Any) -> None:
        pass

    def trial_finished(self, *a: Any) -> None:
        pass

    def message(self, text: str) -> None:
        pass


@dataclass(slots=True)
class RunResult:
    task: str
    arm: str
    seed: int
    best: float
    best_config: dict[str, Any] | None
    evaluated: int
    mean_score: float | None
    """Mean score of every evaluated configuration (RLP's and the random fill's)."""
    rlp_proposals: int
    rlp_mean_score: float | None
    rlp_best: float | None
    answers: int
    invalid: int
    repaired: int
    parse_rate: float | None
    mean_reward: float | None
    reward_method: str
    rewards: int
    llm_seconds: float
    llm_calls: int
    wall: float
    stop_reason: str
    thoughts: list[str] = field(default_factory=list)
    timings: list[dict[str, float]] = field(default_factory=list)


async def run_once(task: str, arm: str, seed: int, text: str, workdir: Path) -> RunResult:
    from convergence.config.loader import parse_config
    from convergence.core.space import SearchSpace
    from convergence.engine.loop import Optimizer
    from convergence.society.rlp.agent import parse_rate
    from convergence.society.society import Society
    from convergence.storage.store import Store

    path = workdir / "optimization.yaml"
    path.write_text(text)
    loaded = parse_config(text, path)
    cfg = loaded.config
    space = SearchSpace.from_config(cfg.search_space)
    society = Society.from_config(cfg, space)
    agent = next((p for p, _ in society.members if p.name == "rlp"), None)
    if arm == "empty":
        assert agent is not None
        empty = empty_thought_class()(agent.rlp_config, agent.rlp_llm, space, answer_tokens=agent.answer_tokens,
                                      answer_temperature=agent.answer_temperature)
        society.members = [(empty if p is agent else p, s) for p, s in society.members]
        agent = empty
    timer = Timer(agent)
    store = await Store.open(workdir / "db.sqlite")
    start = time.perf_counter()
    try:
        out = await Optimizer(loaded, store, society=society, events=timer).run()
    finally:
        await store.close()
    wall = time.perf_counter() - start
    done = [t for t in out.trials if t.usable]
    rlp_scores = [t.score for t in done if t.proposer == "rlp"]
    buffer = list(agent.rlp_buffer) if agent is not None else []
    totals = agent.totals if agent is not None else {}
    methods = sorted({str(e.data.get("method", "")) for e in buffer})
    thoughts = [e.thought for e in buffer]
    return RunResult(
        task=task, arm=arm, seed=seed,
        best=out.best.score if out.best else float("nan"),
        best_config=out.best.config if out.best else None,
        evaluated=len(done),
        mean_score=statistics.fmean(t.score for t in done) if done else None,
        rlp_proposals=len(rlp_scores),
        rlp_mean_score=statistics.fmean(rlp_scores) if rlp_scores else None,
        rlp_best=max(rlp_scores) if rlp_scores else None,
        answers=totals.get("answers", 0), invalid=totals.get("invalid", 0), repaired=totals.get("repaired", 0),
        parse_rate=parse_rate(totals) if agent is not None else None,
        mean_reward=statistics.fmean(e.reward for e in buffer) if buffer else None,
        reward_method="/".join(methods), rewards=len(buffer),
        llm_seconds=agent.rlp_llm.seconds if agent is not None else 0.0,
        llm_calls=agent.rlp_llm.calls if agent is not None else 0,
        wall=wall, stop_reason=out.stop_reason, thoughts=thoughts,
        timings=[{k: getattr(g, k) for k in GenTiming.__slots__} for g in timer.gens],
    )


# --------------------------------------------------------------------------- reporting


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.fmean(vals) if vals else None


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}"


def arm_summary(runs: list[RunResult]) -> dict[str, Any]:
    answers = sum(r.answers for r in runs)
    invalid = sum(r.invalid for r in runs)
    slots = sum(r.evaluated for r in runs)
    rlp = sum(r.rlp_proposals for r in runs)
    bests = [r.best for r in runs]
    return {
        "n": len(runs),
        "best": _mean(list(bests)),
        "best_std": statistics.stdev(bests) if len(bests) > 1 else 0.0,
        "best_min": min(bests), "best_max": max(bests),
        "rlp_mean_score": _mean([r.rlp_mean_score for r in runs]),
        "rlp_best": _mean([r.rlp_best for r in runs]),
        "mean_score": _mean([r.mean_score for r in runs]),
        "rlp_share": rlp / slots if slots else None,
        "parse_rate": (1.0 - invalid / answers) if answers else None,
        "answers": answers, "invalid": invalid, "repaired": sum(r.repaired for r in runs),
        "mean_reward": _mean([r.mean_reward for r in runs]),
        "reward_method": "/".join(sorted({r.reward_method for r in runs if r.reward_method})),
        "llm_seconds": _mean([r.llm_seconds for r in runs]),
        "wall": _mean([r.wall for r in runs]),
    }


ROWS: list[tuple[str, str, str]] = [
    # (key, label, format)
    ("best", "best score found (mean over seeds)", ".4f"),
    ("best_std", "  std over seeds", ".4f"),
    ("rlp_best", "best of RLP's own proposals (mean over seeds)", ".4f"),
    ("rlp_mean_score", "mean score of RLP's proposals", ".4f"),
    ("mean_score", "mean score of every evaluated configuration", ".4f"),
    ("rlp_share", "slots filled by RLP (rest: random fill)", ".1%"),
    ("parse_rate", "parse rate (answers that parsed / answers)", ".1%"),
    ("mean_reward", "mean information-gain reward (nats)", "+.3f"),
    ("llm_seconds", "RLP LLM seconds per run", ".1f"),
    ("wall", "run wall seconds", ".1f"),
]


def print_ablation(task: str, runs: list[RunResult], describe: str) -> dict[str, Any]:
    by_arm = {a: [r for r in runs if r.task == task and r.arm == a] for a in ARMS}
    summary = {a: arm_summary(rs) for a, rs in by_arm.items() if rs}
    seeds = sorted({r.seed for r in by_arm["thought"]})
    print(f"\n### Thought vs empty thought: {task} ({describe}; seeds {seeds})\n")
    print("| | thoughts | empty thought | ratio thoughts / empty | difference | society off (reference) |")
    print("|---|--:|--:|--:|--:|--:|")
    for key, label, spec in ROWS:
        t, e = summary["thought"][key], summary["empty"][key]
        n = summary.get("numeric", {}).get(key) if key in ("best", "best_std", "mean_score", "wall") else None
        ratio = _ratio(t, e) if key != "best_std" else ""
        diff = "" if key == "best_std" or t is None or e is None else format(t - e, "+" + spec.lstrip("+"))
        print(f"| {label} | {_fmt(t, spec)} | {_fmt(e, spec)} | {ratio} | {diff} "
              f"| {_fmt(n, spec) if n is not None else ''} |")
    t_ans, e_ans = summary["thought"], summary["empty"]
    print(f"\nAnswers: thoughts {t_ans['answers']} ({t_ans['invalid']} invalid, {t_ans['repaired']} repaired), "
          f"empty {e_ans['answers']} ({e_ans['invalid']} invalid, {e_ans['repaired']} repaired). "
          f"Reward method: {t_ans['reward_method'] or 'n/a'}.")
    per_seed = []
    wins = ties = 0
    for s in seeds:
        t = next(r for r in by_arm["thought"] if r.seed == s)
        e = next(r for r in by_arm["empty"] if r.seed == s)
        n = next((r for r in by_arm["numeric"] if r.seed == s), None)
        wins += t.best > e.best + 1e-12
        ties += abs(t.best - e.best) <= 1e-12
        per_seed.append(f"seed {s}: {t.best:.4f} vs {e.best:.4f}" + (f" (off {n.best:.4f})" if n else ""))
    print(f"Best score per seed, thoughts vs empty: {'; '.join(per_seed)}. "
          f"Thoughts ahead in {wins} of {len(seeds)} seeds, tied in {ties}.")
    per_gen = {a: [(g["propose_llm"] + g["learn_llm"], g["eval_wall"]) for r in by_arm[a] for g in r.timings]
               for a in ("thought", "empty")}
    (t_llm, t_eval), (e_llm, e_eval) = ([_mean([x[i] for x in per_gen[a]]) for i in (0, 1)]
                                         for a in ("thought", "empty"))
    print(f"Per generation: RLP LLM {_fmt(t_llm, '.1f')} s with thoughts, {_fmt(e_llm, '.1f')} s with empty ones; "
          f"evaluation wall {_fmt(t_eval, '.1f')} s and {_fmt(e_eval, '.1f')} s.")
    sample = [th for r in by_arm["thought"] for th in r.thoughts if th.strip()][:3]
    if sample:
        print("Sample thoughts: " + " | ".join(json.dumps(th[:160]) for th in sample))
    return summary


def print_cost(with_rlp: RunResult, without: RunResult) -> dict[str, Any]:
    print("\n### RLP time cost per generation: default task, society on (default roster) vs off\n")
    print("| generation | RLP proposals evaluated | RLP LLM s proposing | RLP LLM s learning | RLP LLM s total | "
          "evaluation wall s | RLP / evaluation | evaluation wall s, society off |")
    print("|--:|--:|--:|--:|--:|--:|--:|--:|")
    off = {g["generation"]: g for g in without.timings}
    tot_llm = tot_eval = 0.0
    for g in with_rlp.timings:
        llm = g["propose_llm"] + g["learn_llm"]
        tot_llm += llm
        tot_eval += g["eval_wall"]
        o = off.get(g["generation"])
        print(f"| {int(g['generation'])} | {int(g['rlp_slots'])} | {g['propose_llm']:.1f} | {g['learn_llm']:.1f} | "
              f"{llm:.1f} | {g['eval_wall']:.1f} | {_ratio(llm, g['eval_wall'])} | "
              f"{_fmt(o['eval_wall'] if o else None, '.1f')} |")
    off_eval = sum(g["eval_wall"] for g in without.timings)
    print(f"| all | {sum(int(g['rlp_slots']) for g in with_rlp.timings)} | | | {tot_llm:.1f} | {tot_eval:.1f} | "
          f"{_ratio(tot_llm, tot_eval)} | {off_eval:.1f} |")
    print(f"\nRun wall time: society on {with_rlp.wall:.1f} s, off {without.wall:.1f} s, "
          f"ratio on / off {_ratio(with_rlp.wall, without.wall)}. "
          f"RLP's LLM time is {_fmt(100 * tot_llm / with_rlp.wall if with_rlp.wall else None, '.0f')} % of the "
          f"society-on run ({with_rlp.llm_calls} LLM calls). Best score: on {with_rlp.best:.4f}, "
          f"off {without.best:.4f}. Answers {with_rlp.answers}, invalid {with_rlp.invalid}.")
    return {"rlp_llm_seconds": tot_llm, "eval_seconds": tot_eval, "off_eval_seconds": off_eval,
            "wall_on": with_rlp.wall, "wall_off": without.wall,
            "ratio_wall": with_rlp.wall / without.wall if without.wall else None}


# --------------------------------------------------------------------------- main


async def warm_up() -> float:
    from convergence.llm.agent_client import LLMClient

    start = time.perf_counter()
    await LLMClient().complete("Q: What is 2 + 2?\nA:", max_tokens=4, temperature=0.0)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, tiny tasks")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per arm (default 3; quick 1)")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--only", choices=["ablation", "cost"], default=None, help="run one part only")
    ap.add_argument("--tasks", nargs="+", choices=["qa", "python"], default=["qa", "python"])
    ap.add_argument("--no-reference", action="store_true", help="skip the society-off reference runs of part 1")
    ap.add_argument("--G", type=int, default=None, help="thoughts per generation (default: optimization.yaml's)")
    ap.add_argument("--thought-length", type=int, default=None,
                    help="tokens per thought (default: optimization.yaml's)")
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    ap.add_argument("--json-out", type=Path, default=None, help="also write that JSON document to this file")
    args = ap.parse_args()
    seeds = list(range(args.first_seed, args.first_seed + (args.seeds or (1 if args.quick else 3))))
    overrides: dict[str, Any] = {}
    if args.G:
        overrides["G"] = args.G
    if args.thought_length:
        overrides["thought_length"] = args.thought_length
    shipped = default_society(overrides)
    if args.quick:
        scales = {"qa": Scale(3, 3, 2, 1), "python": Scale(None, 3, 2, 1)}
        cost_scale = Scale(4, 4, 2, 1)
    else:
        scales = {"qa": Scale(10, 4, 3, 1), "python": Scale(None, 6, 4, 1)}
        cost_scale = default_scale()  # the default task as shipped
    describe = {
        "qa": f"{scales['qa'].questions} questions, population {scales['qa'].population}, "
              f"{scales['qa'].generations} generations, elite {scales['qa'].elite}",
        "python": f"825 configurations, population {scales['python'].population}, "
                  f"{scales['python'].generations} generations, elite {scales['python'].elite}",
    }
    arms = [a for a in ARMS if not (args.no_reference and a == "numeric")]
    log = sys.stderr

    async def go(tmp: Path) -> dict[str, Any]:
        write_target(tmp)
        warm = await warm_up()
        print(f"model loaded and warmed up in {warm:.1f} s", file=log, flush=True)
        runs: list[RunResult] = []
        cost: list[RunResult] = []

        async def one(task: str, arm: str, seed: int, scale: Scale, soc: Mapping[str, Any]) -> RunResult:
            with tempfile.TemporaryDirectory(prefix=f"rlp-{task}-{arm}-", dir=tmp) as wd:
                build = qa_config if task == "qa" else python_config
                r = await run_once(task, arm, seed, build(Path(wd), seed, scale, soc), Path(wd))
            print(f"  {task:6} {arm:15} seed {seed}: best {r.best:.4f}, rlp {r.rlp_proposals}/{r.evaluated}, "
                  f"answers {r.answers} ({r.invalid} invalid), llm {r.llm_seconds:.0f} s, wall {r.wall:.0f} s",
                  file=log, flush=True)
            return r

        if args.only in (None, "ablation"):
            for task in args.tasks:
                for seed in seeds:
                    # alternate the order of the arms, so drift on the machine does not favour one
                    order = arms if seed % 2 == 0 else [arms[1], arms[0], *arms[2:]]
                    for arm in order:
                        runs.append(await one(task, arm, seed, scales[task], society_section(arm, shipped)))
        if args.only in (None, "cost"):
            seed = 7  # optimization.yaml's
            cost.append(await one("qa", "default-society", seed, cost_scale, shipped))
            cost.append(await one("qa", "society-off", seed, cost_scale, {"enabled": False}))
        return {"warm_up_seconds": warm, "runs": runs, "cost": cost}

    load0 = os.getloadavg()[0]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="convergence-rlp-bench-") as tmp:
        res = anyio.run(go, Path(tmp))
    wall = time.perf_counter() - started
    meta = {"seeds": seeds, "society": shipped,
            "scales": {k: vars_of(v) for k, v in scales.items()}, "cost_scale": vars_of(cost_scale),
            "wall_seconds": wall, "python": sys.version.split()[0], "cpus": os.cpu_count(),
            "load_avg": os.getloadavg()}
    runs, cost = res["runs"], res["cost"]
    out: dict[str, Any] = {"meta": meta, "runs": [vars_of(r) for r in runs], "cost": [vars_of(r) for r in cost]}
    if runs:
        out["summary"] = {t: {a: arm_summary([r for r in runs if r.task == t and r.arm == a])
                              for a in arms} for t in args.tasks}
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=2, default=str))
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return
    print(f"# RLP benchmark ({len(runs) + len(cost)} runs in {wall:.0f} s, {os.cpu_count()} CPUs, "
          f"load avg {load0:.1f} before, {meta['load_avg'][0]:.1f} after)")
    print(f"Society of the default task (optimization.yaml): agents {shipped.get('agents')}, "
          f"rlp {shipped.get('rlp')}, llm {(shipped.get('llm') or {}).get('model', 'default')}")
    for task in args.tasks if runs else []:
        print_ablation(task, runs, describe[task])
    if cost:
        print_cost(cost[0], cost[1])


def vars_of(obj: Any) -> dict[str, Any]:
    return {k: getattr(obj, k) for k in obj.__slots__}


if __name__ == "__main__":
    main()
