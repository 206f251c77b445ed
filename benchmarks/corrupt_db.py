"""Damaged project databases against every command that opens one (issue 20, defect 4).

One real run is made through the CLI (``optimize``, a python target), then its
database file is damaged in seeded ways: zero bytes, truncations (to the header,
to a random length, one page short), random bytes at random offsets (1 to 512
bytes), a whole page overwritten with random bytes or with zeros, and random
garbage after a valid 100-byte SQLite header. For each damaged file and each
command - ``runs``, ``show 1``, ``traces 1``, ``export 1``, ``report 1``,
``validate`` and ``optimize`` (a new run) - a fresh copy of the damaged file is
used, and the script counts:

* tracebacks in the output (target: 0);
* exits other than 0 and 2 (target: 0). Exit 2 is the clear refusal; exit 0
  happens when the damage lies where the command does not read (free pages, a
  score's low digits) - counted apart, with how often ``validate`` missed it;
* refused commands (exit 2) whose error line does not name the file (target: 0);
* files changed by a refused command (target: 0: nothing is written into a
  file that is refused; a command that succeeded may write, e.g. ``optimize``).

    PYTHONPATH=. .venv/bin/python benchmarks/corrupt_db.py             # 36 damaged files x 7 commands
    PYTHONPATH=. .venv/bin/python benchmarks/corrupt_db.py --quick     # 8 damaged files
    PYTHONPATH=. .venv/bin/python benchmarks/corrupt_db.py --src /tmp/old-tree   # another source tree

Exit status 0 when every target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from hardening import Cli, has_traceback, last_lines, python_yaml, run_cli, workdir  # noqa: E402

PAGE = 4096
HEADER = 100

Damage = Callable[[bytes, random.Random], bytes]


def _random_bytes(rng: random.Random, n: int) -> bytes:
    return bytes(rng.randrange(256) for _ in range(n))


def zero_bytes(data: bytes, rng: random.Random) -> bytes:
    return b""


def truncate_to_header(data: bytes, rng: random.Random) -> bytes:
    return data[:HEADER]


def truncate_random(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(HEADER + 1, len(data))]


def truncate_last_page(data: bytes, rng: random.Random) -> bytes:
    return data[:-PAGE]


def garbage_after_header(data: bytes, rng: random.Random) -> bytes:
    return data[:HEADER] + _random_bytes(rng, len(data) - HEADER)


def flip_bytes(n: int) -> Damage:
    def damage(data: bytes, rng: random.Random) -> bytes:
        out = bytearray(data)
        for _ in range(n):
            out[rng.randrange(HEADER, len(out))] = rng.randrange(256)
        return bytes(out)

    damage.__name__ = f"random_bytes_{n}"
    return damage


def random_page(data: bytes, rng: random.Random) -> bytes:
    page = rng.randrange(1, len(data) // PAGE)
    return data[: page * PAGE] + _random_bytes(rng, PAGE) + data[(page + 1) * PAGE:]


def zero_page(data: bytes, rng: random.Random) -> bytes:
    page = rng.randrange(1, len(data) // PAGE)
    return data[: page * PAGE] + bytes(PAGE) + data[(page + 1) * PAGE:]


def schema_page(data: bytes, rng: random.Random) -> bytes:
    """Random bytes inside page 1 (after the header): the schema itself."""
    out = bytearray(data)
    for _ in range(16):
        out[rng.randrange(HEADER, PAGE)] = rng.randrange(256)
    return bytes(out)


DAMAGES: list[Damage] = [zero_bytes, truncate_to_header, truncate_random, truncate_last_page, garbage_after_header,
                         flip_bytes(1), flip_bytes(8), flip_bytes(64), flip_bytes(512), random_page, zero_page,
                         schema_page]


def plan(n: int, seed: int) -> list[tuple[str, Damage, int]]:
    """``n`` (name, damage, seed) triples: every kind in turn, each with its own seed."""
    out = []
    for i in range(n):
        d = DAMAGES[i % len(DAMAGES)]
        out.append((f"{i:02d}-{d.__name__}", d, seed * 1000 + i))
    return out


COMMANDS: list[tuple[str, list[str]]] = [
    ("runs", ["runs", "--db", "{db}"]),
    ("show", ["show", "1", "--db", "{db}"]),
    ("traces", ["traces", "1", "--db", "{db}"]),
    ("export", ["export", "1", "--db", "{db}"]),
    ("report", ["report", "1", "--db", "{db}", "--out", "{out}"]),
    ("validate", ["validate", "{yaml}"]),
    ("optimize", ["optimize", "{yaml}", "-q", "--no-outputs"]),
]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "-"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 damaged files instead of 36")
    ap.add_argument("--n", type=int, default=None, help="how many damaged files (default 36, --quick 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--src", type=Path, default=HERE.parent,
                    help="source tree to run `python -m convergence` from (default: this one)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (printed)")
    args = ap.parse_args(argv)
    n = args.n if args.n is not None else (8 if args.quick else 36)
    cli = Cli(args.src.resolve())
    root = Path(tempfile.mkdtemp(prefix="convergence-corrupt-"))
    print(f"CLI: {cli.describe()}\nwork dir: {root}")
    env = cli.env({"HARDEN_SLEEP_MS": "0,1"})
    t0 = time.monotonic()
    try:
        base = workdir(root, "base")
        db = base / "project.db"
        yaml_text = python_yaml(study="corrupt", function="sleepy", db=Path("project.db"), seed=1, population=8,
                                generations=3, n_cases=6, concurrency=4)
        (base / "optimization.yaml").write_text(yaml_text)
        first = run_cli(cli, ["optimize", "optimization.yaml", "-q", "--no-outputs"], base, env, "first-run")
        if first.rc != 0 or not db.exists():
            print(f"the first run failed (exit {first.rc}): {last_lines(first.stderr, 6)}")
            return 1
        good = db.read_bytes()
        print(f"database: {len(good)} bytes ({len(good) // PAGE} pages) from one finished run\n")
        tally: Counter[str] = Counter()
        per_command: dict[str, Counter[str]] = {name: Counter() for name, _ in COMMANDS}
        failures: list[str] = []
        missed_by_validate = 0
        for label, damage, seed in plan(n, args.seed):
            damaged = damage(good, random.Random(seed))
            row = []
            validate_rc = None
            for name, template in COMMANDS:
                case = workdir(root, f"{label}-{name}")
                case_db = case / "project.db"
                case_db.write_bytes(damaged)
                (case / "optimization.yaml").write_text(yaml_text)
                before = digest(case_db)
                argv_ = [a.format(db=case_db, yaml=case / "optimization.yaml", out=case / "out") for a in template]
                p = run_cli(cli, argv_, case, env, name, timeout=120)
                text = p.stdout + p.stderr
                changed = digest(case_db) != before
                tb = has_traceback(text)
                rc = p.rc
                c = per_command[name]
                c["tries"] += 1
                c[f"exit {rc}"] += 1
                tally["tries"] += 1
                if tb:
                    tally["tracebacks"] += 1
                    c["tracebacks"] += 1
                    failures.append(f"{label} {name}: traceback: {last_lines(p.stderr, 2)}")
                if rc not in (0, 2):
                    tally["other exits"] += 1
                    failures.append(f"{label} {name}: exit {rc}: {last_lines(text, 2)}")
                if rc == 2:
                    tally["refused (exit 2)"] += 1
                    if str(case_db) not in " ".join(text.split()) and "project.db" not in text:
                        tally["refusals not naming the file"] += 1
                        failures.append(f"{label} {name}: the error does not name the file: {last_lines(text, 2)}")
                    if changed:
                        tally["refused but file changed"] += 1
                        failures.append(f"{label} {name}: refused, yet the file changed")
                if rc == 0:
                    tally["ran (exit 0)"] += 1
                if p.hung:
                    tally["hung"] += 1
                if name == "validate":
                    validate_rc = rc
                row.append(f"{name}={rc}{'!TB' if tb else ''}{'*' if changed else ''}")
            if validate_rc == 0 and any(cell.endswith("=2") for cell in row):
                missed_by_validate += 1
            print(f"{label:28s} {len(damaged):7d} B  " + " ".join(row))
        print("\n(cell: command=exit code; !TB a traceback; * the database file's bytes changed)\n")
        print("per command: " + "; ".join(
            f"{name} " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())) for name, c in per_command.items()))
        print(f"\ndamaged files: {n}; commands run: {tally['tries']}; "
              f"refused with exit 2: {tally['refused (exit 2)']}; ran normally (exit 0): {tally['ran (exit 0)']}")
        print(f"tracebacks: {tally['tracebacks']}; other exits: {tally['other exits']}; "
              f"refusals not naming the file: {tally['refusals not naming the file']}; "
              f"refused but file changed: {tally['refused but file changed']}; hung: {tally['hung']}")
        print(f"damaged files that validate passed while another command refused them: {missed_by_validate}")
        for f in failures[:40]:
            print("  " + f)
        ok = not (tally["tracebacks"] or tally["other exits"] or tally["refusals not naming the file"]
                  or tally["refused but file changed"] or tally["hung"])
        print(f"({time.monotonic() - t0:.0f}s)")
        print("PASS corrupt" if ok else "FAIL corrupt")
        return 0 if ok else 1
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
