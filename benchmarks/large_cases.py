"""Start-up and memory against the size of the test-case file, at a fixed call budget.

A run with ``budget.max_calls: 400`` makes 400 calls whatever the file holds, so its time and memory
should follow the budget, not the file. Each row runs ``convergence optimize`` as a fresh subprocess on a
generated JSONL file of N cases (a fast Python target, concurrency 8, population 8, racing and early
stopping off, no output files) and reports its wall time and peak resident set (``ru_maxrss`` of that
process, from ``os.wait4``), side by side with the same run on 50 cases (the ratio). Every number is
measured when the script runs.

    .venv/bin/python benchmarks/large_cases.py               # 50, 5,000 and 50,000 cases
    .venv/bin/python benchmarks/large_cases.py --sizes 50 5000

Aim (issue 20): 50,000 cases with a 400-call budget in under 10 s and 200 MB. Exit status 1 when a row
of 50,000 cases or fewer misses it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_CALLS = 400
AIM_SECONDS = 10.0
AIM_MB = 200.0

TARGET = '''
def call(params, input):
    return "yes" if params["x"] > 0.5 else "no"
'''


def write_study(d: Path, n_cases: int) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "bench_tgt.py").write_text(TARGET)
    with open(d / "cases.jsonl", "w") as f:
        for i in range(n_cases):
            f.write(json.dumps({"id": f"c{i}", "input": f"question {i}", "expected": "yes"}) + "\n")
    (d / "optimization.yaml").write_text(textwrap.dedent(f"""
        study: large-cases
        target: {{type: python, function: "bench_tgt:call", retry: {{max_retries: 0}}}}
        storage: {{path: db.sqlite}}
        search_space:
          parameters:
            x: {{type: continuous, min: 0.0, max: 1.0, step: 0.001}}
        evaluation:
          test_cases: {{path: cases.jsonl}}
          metrics:
            acc: {{function: exact_match}}
        optimization:
          seed: 1
          warm_start: 0
          budget: {{max_calls: {MAX_CALLS}}}
          evolution: {{population_size: 8, generations: 50, elite_size: 2}}
          execution: {{mode: async, concurrency: 8, early_stopping: {{enabled: false}}}}
          racing: {{enabled: false}}
        """))
    return d / "optimization.yaml"


def measure(path: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MB, exit code) of one ``convergence optimize`` run."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "convergence", "optimize", str(path), "--quiet", "--no-outputs"],
                            cwd=path.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.stderr.write(err.decode(errors="replace")[-2000:])
    return wall, usage.ru_maxrss / 1024.0, proc.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000], help="case counts to run (besides 50)")
    args = ap.parse_args()
    ok = True
    with tempfile.TemporaryDirectory(prefix="cvg-large-cases-") as tmp:
        base = measure(write_study(Path(tmp) / "n50", 50))
        print(f"max_calls {MAX_CALLS}, concurrency 8, population 8, async, racing off; python {sys.version.split()[0]}")
        print(f"{'cases':>8} {'seconds':>8} {'peak MB':>8} {'x time':>7} {'x MB':>6}  aim")
        print(f"{50:>8} {base[0]:>8.2f} {base[1]:>8.1f} {1.0:>7.2f} {1.0:>6.2f}  -")
        for n in args.sizes:
            wall, mb, code = measure(write_study(Path(tmp) / f"n{n}", n))
            met = code == 0 and wall < AIM_SECONDS and mb < AIM_MB
            if n <= 50000:
                ok &= met
            aim = f"< {AIM_SECONDS:g} s and < {AIM_MB:g} MB: {'met' if met else 'NOT met'}"
            print(f"{n:>8} {wall:>8.2f} {mb:>8.1f} {wall / base[0]:>7.2f} {mb / base[1]:>6.2f}  {aim}"
                  + (f" (exit {code})" if code else ""))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
