"""The PPO learner's learning curve on the rigged society, against the same loop with a policy that
does not learn (both in this process, same seeds).

The rigged society (as ``benchmarks/synergy.py``'s ``dominant`` task): the score is x / 1000 on a
narrow ridge (|y - x| <= 10) and 0 off it. "climber" walks up the ridge from the best point on it
(it keeps improving the score), "stray" proposes points off it, "random" samples uniformly. Each
run is a real ``Optimizer.run`` (24 generations x 9, generational, a SQLite study); the PPO policy,
which here decides only which agent gets extra slots (``boost``), persists between the runs of a
study. Per seed, two studies of R runs each:

* ``learning``: the default learning rate (3e-3);
* ``baseline``: learning rate 1e-9, the same loop with a policy that stays where it started
  (P(boost climber) = 0.4 / 3: an untrained policy keeps "none" with the prior 0.6 and splits the
  rest over the three agents).

Printed per seed and arm, first 5 runs -> last 5 runs: the mean probability of boosting the
climber, the mean reward per decision and the climber's mean share of the slots (0.6 when it is
boosted, 1/3 when no one is, 0.2 when another agent is);
then the learning arm's last-5 values as ratios to the baseline's. Until 2026-12 these curves ran
inside the unit suite (``tests/test_ppo_loop.py``) with the bars P +0.3, reward +0.05, share
+0.12 (first 5 -> last 5); the script prints whether each seed clears them, it asserts nothing.
The unit suite keeps one PPO update on a synthetic batch and a small rigged learner test
(``plugins/convergence-ppo/tests``).

    python benchmarks/ppo_rigged.py                       # 3 seeds x 30 runs x 2 arms (about 4 min on 2 cores)
    python benchmarks/ppo_rigged.py --seeds 0 --runs 10   # quicker
    python benchmarks/ppo_rigged.py --curve               # also every run's numbers
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio

from convergence.config.loader import parse_config
from convergence.core.space import SearchSpace, config_hash
from convergence.engine.loop import Optimizer
from convergence.society.bandit import RandomProposer
from convergence.society.society import Society
from convergence.storage.store import Store

sys.path.insert(0, str(Path(__file__).parent))  # the synergy benchmark beside this script: the same off-ridge agent
from synergy import Stray

GENERATIONS = 24
BARS = {"p": 0.3, "reward": 0.05, "share": 0.12}
"""The rises (first 5 runs -> last 5) the unit test used to assert; printed, not asserted."""


class Climber:
    name = "climber"

    async def propose(self, ctx: Any, n: int) -> list[dict[str, Any]]:
        top = max((t.config["x"] for t in ctx.history if t.score > 0), default=50)
        out: list[dict[str, Any]] = []
        for step in range(1, 400):
            x = min(1000, top + step * 4)
            c = {"x": x, "y": x}
            if config_hash(c) not in ctx.seen and c not in out:
                out.append(c)
            if len(out) == n:
                break
        return out

    def observe(self, trials: Any) -> None:
        pass


def _loaded(tmp: Path, seed: int, lr: float) -> Any:
    text = textwrap.dedent(f"""
        study: ppo-rigged
        target: {{type: python, function: "ppo_ridge:f"}}
        storage: {{path: db.sqlite}}
        search_space:
          parameters:
            x: {{type: discrete, min: 0, max: 1000, step: 1}}
            y: {{type: discrete, min: 0, max: 1000, step: 1}}
        evaluation:
          test_cases: {{inline: [{{input: "a"}}]}}
          metrics:
            score: {{function: "ppo_ridge:value"}}
        optimization:
          seed: {seed}
          warm_start: 0
          evolution: {{population_size: 9, generations: {GENERATIONS}, elite_size: 1}}
          execution: {{mode: generational, early_stopping: {{enabled: false}}}}
          racing: {{enabled: false}}
        society:
          enabled: true
          agents: {{evolution: 0.34, bandit: 0.33, random: 0.33}}
          learner: {{plugin: ppo, learning_rate: {lr}}}
    """)
    path = tmp / "optimization.yaml"
    path.write_text(text)
    return parse_config(text, path)


async def study(tmp: Path, seed: int, lr: float, runs: int) -> list[tuple[float, float, float]]:
    """Per run of one study: (mean P(boost climber), mean reward per decision, climber's mean share)."""
    curve = []
    for r in range(runs):
        loaded = _loaded(tmp, seed * 100 + r, lr)
        store = await Store.open(loaded.db_path)
        try:
            society = Society([(Climber(), 1 / 3), (Stray(), 1 / 3), (RandomProposer(), 1 / 3)],
                              SearchSpace.from_config(loaded.config.search_space))
            out = await Optimizer(loaded, store, society=society).run()
            log = await store.learner_log(out.run_id)
        finally:
            await store.close()
        p = [row["detail"]["probabilities"]["boost"]["climber"] for row in log]
        rewards = [row["detail"]["reward"] for row in log if row["detail"].get("reward") is not None]
        shares = [row["shares"]["climber"] for row in log]
        curve.append((statistics.mean(p), statistics.mean(rewards), statistics.mean(shares)))
    return curve


def _ends(curve: list[tuple[float, float, float]], i: int) -> tuple[float, float]:
    return statistics.mean(c[i] for c in curve[:5]), statistics.mean(c[i] for c in curve[-5:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--runs", type=int, default=30, help="runs per study (at least 10)")
    ap.add_argument("--lr", type=float, default=3e-3, help="the learning arm's learning rate (default: PPO's)")
    ap.add_argument("--curve", action="store_true", help="print every run's numbers")
    args = ap.parse_args()
    if args.runs < 10:
        ap.error("--runs: at least 10 (first 5 and last 5 runs are compared)")
    import torch

    torch.set_num_threads(1)  # tiny networks; the machine is shared
    print(f"PPO on the rigged society: {args.runs} runs x {GENERATIONS} generations x 9 per study, seeds "
          f"{args.seeds}; learning rate {args.lr} vs 1e-9 (baseline). First 5 runs -> last 5 runs.")
    print("\n| seed | arm | P(boost climber) | mean reward | climber share | wall s |")
    print("|--:|---|---|---|---|--:|")
    summary = []
    with tempfile.TemporaryDirectory(prefix="ppo-rigged-") as wd:
        (Path(wd) / "ppo_ridge.py").write_text(
            "def f(params, input):\n"
            "    x, y = params['x'], params['y']\n"
            "    return str(x / 1000 * max(0.0, 1 - abs(y - x) / 10))\n"
            "def value(output, case, call, args):\n    return float(output)\n")
        sys.path.insert(0, wd)
        for seed in args.seeds:
            curves = {}
            for arm, lr in (("learning", args.lr), ("baseline", 1e-9)):
                d = Path(wd) / f"{arm}-{seed}"
                d.mkdir()
                start = time.perf_counter()
                curves[arm] = anyio.run(study, d, seed, lr, args.runs)
                wall = time.perf_counter() - start
                cols = [_ends(curves[arm], i) for i in range(3)]
                print(f"| {seed} | {arm} | " + " | ".join(f"{a:.2f} -> {b:.2f}" for a, b in cols) + f" | {wall:.0f} |",
                      flush=True)
            learned, base = curves["learning"], curves["baseline"]
            rises = {k: _ends(learned, i)[1] - _ends(learned, i)[0] for i, k in enumerate(BARS)}
            ratios = [_ends(learned, i)[1] / _ends(base, i)[1] for i in range(3)]
            summary.append((seed, rises, ratios))
            if args.curve:
                for arm, curve in curves.items():
                    print(f"  seed {seed} {arm} per run (P, reward, share): "
                          + ", ".join(f"({p:.2f} {r:.2f} {s:.2f})" for p, r, s in curve))
    print("\nLearning arm's last 5 runs as a ratio to the baseline's, and its rises against the former test's bars:")
    print("| seed | P ratio | reward ratio | share ratio | P rise (>= 0.3) | reward rise (>= 0.05) "
          "| share rise (>= 0.12) |")
    print("|--:|--:|--:|--:|--:|--:|--:|")
    for seed, rises, ratios in summary:
        marks = [f"{rises[k]:+.2f} {'yes' if rises[k] >= bar else 'NO'}" for k, bar in BARS.items()]
        print(f"| {seed} | " + " | ".join(f"{x:.2f}" for x in ratios) + " | " + " | ".join(marks) + " |")


if __name__ == "__main__":
    main()
