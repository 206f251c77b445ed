"""Config fuzzer, full run: broken and valid variants of the default ``optimization.yaml``, the
examples and three synthetic configs through ``convergence validate`` and ``optimize``'s start-up;
every broken one must be refused cleanly (with its file, line and field), every valid one accepted.

The fuzzer (what it generates, how it runs and judges a variant, the counts) is
``tests/config_fuzzer.py``; ``tests/test_config_fuzz.py`` runs a stratified sample of it in the
suite. This is its command line:

    python benchmarks/config_fuzz.py                  # 600 variants, subprocesses (~3 min on 2 cores)
    python benchmarks/config_fuzz.py --all            # every generated variant (~3500; --in-process: ~6 min)
    python benchmarks/config_fuzz.py --in-process --all --kind r2 --kind runtime   # hardening round 2's shapes
    python benchmarks/config_fuzz.py --in-process -n 100
    python benchmarks/config_fuzz.py --list           # what would run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for where in (ROOT, ROOT / "tests"):
    if str(where) not in sys.path:
        sys.path.insert(0, str(where))

from config_fuzzer import generate, run, sample  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=600, help="variants to run (stratified sample; default 600)")
    ap.add_argument("--all", action="store_true", help="run every generated variant")
    ap.add_argument("--in-process", action="store_true",
                    help="run validate in this process (fast) instead of subprocesses")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per variant before it counts as a hang")
    ap.add_argument("--workers", type=int, default=None, help="parallel subprocesses (default: CPU count)")
    ap.add_argument("--kind", action="append", default=[],
                    help="only variants whose kind starts with this (repeatable), e.g. r2 or runtime")
    ap.add_argument("--list", action="store_true", help="list the variants and exit")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--show", type=int, default=20, help="failures to print in detail")
    args = ap.parse_args(argv)
    n = None if args.all else args.n
    if args.list:
        all_variants = [v for v in generate() if not args.kind or v.kind.startswith(tuple(args.kind))]
        for v in sample(all_variants, n):
            print(f"{v.expect:6} {v.section:14} {v.kind:14} {v.id[:120]}")
        print(f"{len(all_variants)} generated")
        return 0
    start = time.perf_counter()
    report = run(n, in_process=args.in_process, timeout=args.timeout, workers=args.workers, progress=not args.json,
                 kinds=tuple(args.kind))
    summary = report.summary()
    summary["seconds"] = round(time.perf_counter() - start, 1)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"config fuzz: {summary['variants']} variants ({summary['broken']} broken, {summary['valid']} valid) "
              f"from {summary['bases']} configs in {summary['seconds']} s; slowest {summary['slowest_seconds']} s")
        print("  sections: " + ", ".join(f"{k} {v}" for k, v in summary["sections"].items()))
        for key in ("tracebacks", "hangs", "wrong_acceptances", "wrong_rejections", "missing_location", "misplaced",
                    "validate_optimize_disagreements"):
            print(f"  {key.replace('_', ' ')}: {summary[key]}")
    for o in report.failures()[: args.show]:
        print(f"\n--- {o.variant.id[:150]} (expect {o.variant.expect}, rc {o.rc}, optimize {o.optimize_rc}): "
              f"{'; '.join(o.notes) or ('traceback' if o.traceback else 'hang')}")
        print("\n".join(o.stderr.strip().splitlines()[-6:])[:1500])
    bad = report.tracebacks + report.hangs + sum(
        summary[k] for k in ("wrong_acceptances", "wrong_rejections", "missing_location", "misplaced",
                             "validate_optimize_disagreements"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
