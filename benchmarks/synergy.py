"""Learned vs fixed society shares: best score at a fixed budget, and the learners' CPU time.

Two rigged tasks, each a real ``Optimizer.run`` on a Python target with a society
of three agents (passed in as a ``Society``), the same budget (generations x
population) and seeds for every method:

* ``dominant``: one agent helps. The score is x / 1000 on a narrow ridge
  (|y - x| <= 10) and 0 off it. "climber" walks up the ridge from the best point
  on it, "stray" proposes points off the ridge, "random" samples uniformly.
* ``complement``: two agents help, each on its own parameter. The score is
  (x / 1000) * (y / 1000) on a lattice (x and y multiples of 10) and 0 off it;
  "x_up" raises x of the best configuration by steps of 10, "y_up" raises y,
  "random" samples uniformly (it lands on the lattice 1 % of the time). One
  climber alone leaves the product small: a good run keeps both.

Methods: fixed equal shares (no learner), and ``society.learner: {plugin:
synergy, algorithm: A}`` for A in actor_critic, double_dqn, sac, td3. Printed per
task and method: the mean (sd) best score over seeds, the mean final share of
the helping agent(s), and the learner's CPU time per generation (process time
of ``update``, measured around the plugin's method).

    python benchmarks/synergy.py              # 5 seeds, 16 generations x 9 (about 1-2 minutes on 2 cores)
    python benchmarks/synergy.py --seeds 2    # quicker
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import anyio

from convergence.config.loader import parse_config
from convergence.core.space import SearchSpace, config_hash
from convergence.engine.loop import Optimizer
from convergence.society.bandit import RandomProposer
from convergence.society.society import Society
from convergence.storage.store import Store

ALGORITHMS = ["actor_critic", "double_dqn", "sac", "td3"]


class Climb:
    """Steps up from the best configuration so far along chosen parameters."""

    def __init__(self, name: str, moves: dict[str, int], ridge: bool) -> None:
        self.name = name
        self.moves = moves
        self.ridge = ridge

    async def propose(self, ctx: Any, n: int) -> list[dict[str, Any]]:
        scored = [t for t in ctx.history if t.score > 0]
        best = max(scored, key=lambda t: t.score).config if scored else {"x": 50, "y": 50}
        out: list[dict[str, Any]] = []
        for step in range(1, 400):
            c = {k: min(1000, v + step * self.moves.get(k, 0)) for k, v in best.items()}
            if self.ridge:
                c["y"] = c["x"]
            if config_hash(c) not in ctx.seen and c not in out:
                out.append(c)
            if len(out) == n:
                break
        return out

    def observe(self, trials: Any) -> None:
        pass


class Stray:
    name = "stray"

    async def propose(self, ctx: Any, n: int) -> list[dict[str, Any]]:
        return [{"x": (x := int(ctx.rng.integers(0, 1000))), "y": (x + 500) % 1000} for _ in range(n)]

    def observe(self, trials: Any) -> None:
        pass


TASKS: dict[str, dict[str, Any]] = {
    "dominant": {
        "score": "x / 1000 * max(0.0, 1 - abs(y - x) / 10)",
        "agents": lambda: [Climb("climber", {"x": 4}, ridge=True), Stray(), RandomProposer()],
        "helpers": ["climber"],
    },
    "complement": {
        "score": "(x / 1000) * (y / 1000) * (x % 10 == 0 and y % 10 == 0)",
        "agents": lambda: [Climb("x_up", {"x": 10}, ridge=False), Climb("y_up", {"y": 10}, ridge=False),
                           RandomProposer()],
        "helpers": ["x_up", "y_up"],
    },
}


def _yaml(task: str, mod: str, seed: int, learner: str | None, generations: int, population: int) -> str:
    line = f"learner: {{plugin: synergy, algorithm: {learner}}}" if learner else ""
    return textwrap.dedent(f"""
        study: synergy-bench-{task}
        target: {{type: python, function: "{mod}:{task}"}}
        storage: {{path: db.sqlite}}
        search_space:
          parameters:
            x: {{type: discrete, min: 0, max: 1000, step: 1}}
            y: {{type: discrete, min: 0, max: 1000, step: 1}}
        evaluation:
          test_cases: {{inline: [{{input: "a"}}]}}
          metrics:
            score: {{function: "{mod}:value"}}
        optimization:
          seed: {seed}
          warm_start: 0
          evolution: {{population_size: {population}, generations: {generations}, elite_size: 1}}
          execution: {{mode: generational, early_stopping: {{enabled: false}}}}
          racing: {{enabled: false}}
        society:
          enabled: true
          agents: {{evolution: 0.34, bandit: 0.33, random: 0.33}}
          {line}
    """)


_cpu: list[float] = []


def _time_updates() -> None:
    """Measure the learner's CPU time per update (process time around the plugin's method)."""
    import convergence_synergy

    cls = convergence_synergy.SynergyLearner
    original = cls.update

    def timed(self: Any, result: Any) -> Any:
        start = time.thread_time()
        try:
            return original(self, result)
        finally:
            _cpu.append(time.thread_time() - start)

    cls.update = timed  # type: ignore[method-assign]


async def one(task: str, method: str, seed: int, generations: int, population: int) -> dict[str, Any]:
    spec = TASKS[task]
    with tempfile.TemporaryDirectory(prefix="synergy-bench-") as wd:
        d = Path(wd)
        mod = f"synb_{uuid.uuid4().hex[:8]}"
        (d / f"{mod}.py").write_text(
            f"def {task}(params, input):\n    x, y = params['x'], params['y']\n    return str({spec['score']})\n"
            "def value(output, case, call, args):\n    return float(output)\n")
        text = _yaml(task, mod, seed, None if method == "fixed" else method, generations, population)
        path = d / "optimization.yaml"
        path.write_text(text)
        sys.path.insert(0, str(d))
        loaded = parse_config(text, path)
        space = SearchSpace.from_config(loaded.config.search_space)
        agents = spec["agents"]()
        society = Society([(a, 1 / len(agents)) for a in agents], space)
        store = await Store.open(loaded.db_path)
        try:
            before = len(_cpu)
            out = await Optimizer(loaded, store, society=society).run()
            log = await store.learner_log(out.run_id)
        finally:
            await store.close()
            sys.path.remove(str(d))
        cpu = _cpu[before:]
        helpers = sum(log[-1]["shares"].get(h, 0.0) for h in spec["helpers"]) if log else \
            sum(1 / len(agents) for _ in spec["helpers"])
        return {"best": out.best.score if out.best else 0.0, "helper_share": helpers,
                "cpu_ms": 1000 * statistics.mean(cpu) if cpu else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--generations", type=int, default=16)
    ap.add_argument("--population", type=int, default=9)
    args = ap.parse_args()
    _time_updates()
    methods = ["fixed", *ALGORITHMS]
    print(f"Synergy learners vs fixed shares: {args.generations} generations x {args.population}, "
          f"{args.seeds} seeds (best score of each run; mean (sd) over seeds)")
    for task in TASKS:
        print(f"\n{task}: helpers {', '.join(TASKS[task]['helpers'])}")
        print(f"{'method':<14}{'best score':>18}{'helper share (end)':>20}{'learner CPU ms/gen':>20}")
        for method in methods:
            rows = [anyio.run(one, task, method, s, args.generations, args.population) for s in range(args.seeds)]
            best = [r["best"] for r in rows]
            share = statistics.mean(r["helper_share"] for r in rows)
            cpu = [r["cpu_ms"] for r in rows if r["cpu_ms"] is not None]
            sd = statistics.stdev(best) if len(best) > 1 else 0.0
            cpu_text = f"{statistics.mean(cpu):.1f}" if cpu else "-"
            print(f"{method:<14}{statistics.mean(best):>11.3f} ({sd:.3f}){share:>20.2f}{cpu_text:>20}")


if __name__ == "__main__":
    main()
