"""The rigged-society table over more seeds than the tests use, and the CPU time per update.

    .venv/bin/python plugins/convergence-synergy/scripts/rigged_table.py --seeds 10
    .venv/bin/python plugins/convergence-synergy/scripts/rigged_table.py --per generation   # harsher rig

Prints, per algorithm and seed: generations until the good agent's share passed the level (with
real rewards), the final shares, and with shuffled rewards the highest share the good agent and
any agent reached. Single-threaded torch, as in the tests.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from rigged import context, run

from convergence_synergy import make_learner

ALGORITHMS = ("actor_critic", "double_dqn", "sac", "td3")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--generations", type=int, default=30)
    ap.add_argument("--level", type=float, default=0.5)
    ap.add_argument("--per", choices=("proposal", "generation"), default="proposal")
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"| algorithm | seed | gens to {args.level} | final good | final random | final poor | "
          f"shuffled: max good | shuffled: max any | shuffled: final good |")
    print("|---|---|---|---|---|---|---|---|---|")
    summary = []
    for algorithm in args.algorithms.split(","):
        reached, false_good, false_any, cpu = [], 0, 0, []
        for seed in range(args.seeds):
            with tempfile.TemporaryDirectory() as d:
                learner = make_learner(context(Path(d) / "real", seed, algorithm=algorithm, predictor="ema"))
                t0 = time.process_time()
                real = run(learner, args.generations, seed, per=args.per)
                cpu.append((time.process_time() - t0) / args.generations)
                control = run(make_learner(context(Path(d) / "shuffled", seed, algorithm=algorithm,
                                                   predictor="ema")), args.generations, seed, shuffle=True,
                              per=args.per)
            g = real.generations_to(args.level)
            reached.append(g)
            max_good = max(control.good)
            max_any = max(max(s.values()) for s in control.shares)
            false_good += max_good > args.level
            false_any += max_any > args.level
            f = real.final
            print(f"| {algorithm} | {seed} | {g or '-'} | {f['good']:.3f} | {f['random']:.3f} | {f['poor']:.3f} | "
                  f"{max_good:.3f} | {max_any:.3f} | {control.final['good']:.3f} |", flush=True)
        ok = [g for g in reached if g]
        summary.append(f"{algorithm}: reached {len(ok)}/{len(reached)} (mean {np.mean(ok) if ok else float('nan'):.1f}"
                       f" generations); shuffled: good > {args.level} in {false_good}/{len(reached)}, any agent in "
                       f"{false_any}/{len(reached)}; CPU {1000 * np.mean(cpu):.1f} ms per update")
    print()
    for line in summary:
        print(line)


if __name__ == "__main__":
    main()
