"""Data-safety measurements for issue 6, end to end through the real CLI.

Every scenario runs ``convergence optimize FILE [--resume]`` (and the
inspection commands) as subprocesses on generated YAML files in a temporary
directory, then checks the project database directly with ``sqlite3``
(read-only) and the files and output the commands produced. Nothing here
imports Convergence, so the script measures whatever code the CLI runs:
the working tree (default), or another source tree with ``--src DIR``.
The generated studies run in ``generational`` mode with racing off: every
configuration pays for every case, so a missing row is a lost row and a
resumed run must repeat the uninterrupted one exactly.

Sub-commands (each prints a table of numbers and a final PASS/FAIL line):

* ``two-process``  two runs sharing one ``storage.path`` started together
  (different studies, and the same study), on a fresh (non-existent) and on
  an already-migrated database: rows lost, trials lost, tracebacks, exits.
* ``kill-resume``  SIGKILL a seeded run at random (seeded) moments and
  ``--resume`` it until it finishes; compare with an uninterrupted run:
  identical results, calls re-paid per kill (by the target's own call log,
  which survives the kill), ``runs.total_calls`` vs calls the target
  received, ``runs.elapsed_seconds`` vs the episodes' time (from each
  episode's first call to its kill or exit; the raw wall-time figure, which
  includes interpreter start-up, is printed too).
* ``kill-resume-async``  the same kill and ``--resume`` in async mode (one
  kill per cycle): the first generation the resumed run proposes (proposals,
  mean score) and the final best against uninterrupted runs.
* ``two-resume``   kill a run, then start two ``--resume`` at once (exactly
  one may proceed, the other must exit non-zero within 5 s while the winner
  still has ~7 s of work); and kill -9 then resume at once (stale lease
  recovery: first call within 5 s).
* ``secrets``      a fresh secret (with ``"``, ``\\`` and a non-ASCII char) in
  each of 6 channels: an HTTP target's header, Basic-auth password and query
  string (a local server echoes them back in every encoding in error bodies),
  the LLM judge's and the society LLM's key (a local OpenAI-compatible server
  answers 401 "Incorrect API key provided: <key>") and a Python target's env
  token (echoed in errors and outputs); search 9 encodings of each (raw, JSON,
  URL, base64, base64 of ``user:pass`` ...) in the database bytes (and -wal),
  output files and every command's stdout/stderr.

    .venv/bin/python benchmarks/hardening.py two-process
    .venv/bin/python benchmarks/hardening.py all --quick      # every sub-command, small (< 60 s)
    .venv/bin/python benchmarks/hardening.py kill-resume --seed 3 --keep  # other kill times; keep logs

    # another revision, without touching the working tree or git state:
    mkdir /tmp/conv-old && git archive 3615776 | tar -x -C /tmp/conv-old
    .venv/bin/python benchmarks/hardening.py all --src /tmp/conv-old

Exit status: 0 when every requested sub-command met its targets, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import secrets as _secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGETS_FILE = HERE / "harden_targets.py"
sys.path.insert(0, str(HERE))
import harden_targets  # noqa: E402  (only for the HTTP server's answers)

PROCESS_TIMEOUT = 180.0
"""A CLI process still running after this long is killed and counted as hung."""
LOSER_MAX_SECONDS = 5.0
"""two-resume: the refused ``--resume`` must exit within this many seconds."""
STALE_RECOVERY_MAX_SECONDS = 5.0
"""two-resume: after kill -9, ``--resume`` must make its first call within this."""
RAW_ELAPSED_TOLERANCE_PER_EPISODE = 1.0
"""kill-resume, shown for reference: |sum of episode wall times - runs.elapsed_seconds|
per episode. Wall time includes each process's start-up (imports: 0.4-1 s, more
on a loaded machine), so this margin is thin for a correct implementation and
loose for a broken one; check (d) uses ACTIVE time instead."""
ELAPSED_TOLERANCE_PER_EPISODE = 0.5
"""kill-resume check (d): |sum of episode active times - runs.elapsed_seconds| per
episode, active = from the episode's first call (call-log timestamp) to its kill
or exit, minus the reference run's own tail after its loop ends."""


# --------------------------------------------------------------------------- the CLI under test


class Cli:
    """How to start ``convergence``: the venv's entry point, or ``python -m
    convergence`` with ``--src`` first on PYTHONPATH."""

    def __init__(self, src: Path | None):
        self.src = src
        venv_python = ROOT / ".venv" / "bin" / "python"
        python = str(venv_python) if venv_python.exists() else sys.executable
        entry = ROOT / ".venv" / "bin" / "convergence"
        if src is not None:
            self.argv = [python, "-m", "convergence"]
        elif entry.exists():
            self.argv = [str(entry)]
        elif shutil.which("convergence"):
            self.argv = [str(shutil.which("convergence"))]
        else:
            self.argv = [python, "-m", "convergence"]

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("WANDB_API_KEY", None)  # tracing stays off
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["NO_COLOR"] = "1"
        env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        if self.src is not None:
            env["PYTHONPATH"] = str(self.src) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        if extra:
            env.update(extra)
        return env

    def describe(self) -> str:
        return " ".join(self.argv) + (f"  (PYTHONPATH={self.src})" if self.src else "")


@dataclass
class Proc:
    """One CLI process; stdout/stderr go to files (no pipe can fill up). A
    watcher thread records the exit time the moment the process ends, so the
    wall time of one process never depends on when another one is waited for."""

    tag: str
    argv: list[str]
    popen: subprocess.Popen
    t0: float
    out_path: Path
    err_path: Path
    t0_wall: float = 0.0
    """``time.time()`` at start, to compare with the call log's timestamps."""
    t1: float | None = None
    rc: int | None = None
    killed: bool = False
    hung: bool = False
    _done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        rc = self.popen.wait()
        self.t1 = time.monotonic()
        self.rc = rc
        self._done.set()

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def wall(self) -> float:
        t1 = self.t1 if self._done.is_set() else None
        return (t1 if t1 is not None else time.monotonic()) - self.t0

    def poll(self) -> int | None:
        return self.rc if self._done.is_set() else None

    def wait(self, timeout: float = PROCESS_TIMEOUT) -> int:
        if not self._done.wait(max(0.0, timeout - self.wall)):
            self.hung = True
            self.popen.kill()
            self._done.wait()
        assert self.rc is not None
        return self.rc

    def kill9(self) -> bool:
        """SIGKILL if still running; True when it was running (a real kill)."""
        if self._done.is_set():
            return False
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGKILL)
        self._done.wait()
        if self.rc != -signal.SIGKILL:
            return False  # it exited on its own just before the signal
        self.killed = True
        return True

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace") if self.err_path.exists() else ""


_SEQ = 0


def spawn(cli: Cli, args: Sequence[str], cwd: Path, env: dict[str, str], tag: str) -> Proc:
    global _SEQ
    _SEQ += 1
    logs = cwd / "logs"
    logs.mkdir(exist_ok=True)
    out = logs / f"{_SEQ:03d}-{tag}.out"
    err = logs / f"{_SEQ:03d}-{tag}.err"
    argv = [*cli.argv, *args]
    with open(out, "wb") as fo, open(err, "wb") as fe:
        t0, t0_wall = time.monotonic(), time.time()
        p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL)
    return Proc(tag, argv, p, t0, out, err, t0_wall=t0_wall)


def run_cli(cli: Cli, args: Sequence[str], cwd: Path, env: dict[str, str], tag: str,
            timeout: float = PROCESS_TIMEOUT) -> Proc:
    p = spawn(cli, args, cwd, env, tag)
    p.wait(timeout)
    return p


_OUTCOME_RE = re.compile(r"^(\w+): .* - run (\d+), (\d+) trial\(s\), (\d+) call\(s\)", re.MULTILINE)


def outcome_line(stdout: str) -> dict[str, Any] | None:
    """The CLI's final ``finished: ... - run N, T trial(s), C call(s)`` line."""
    matches = list(_OUTCOME_RE.finditer(stdout))
    if not matches:
        return None
    m = matches[-1]
    return {"status": m.group(1), "run_id": int(m.group(2)), "trials": int(m.group(3)), "calls": int(m.group(4))}


def has_traceback(text: str) -> bool:
    return "Traceback (most recent call last)" in text or "Traceback" in text


def last_lines(text: str, n: int = 2, width: int = 160) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    out = " | ".join(lines[-n:])
    return out if len(out) <= width else out[: width - 3] + "..."


# --------------------------------------------------------------------------- generated configs


PARAMS_YAML = """\
search_space:
  parameters:
    x: {type: continuous, min: 0, max: 1, step: 0.01}
    y: {type: continuous, min: 0, max: 1, step: 0.01}
    mode: {type: categorical, values: [a, b, c, d]}
"""


def cases_yaml(n_cases: int) -> str:
    cases = [{"id": f"c{i:03d}", "input": {"i": i}, "expected": "yes"} for i in range(n_cases)]
    return "evaluation:\n  test_cases:\n    inline: " + json.dumps(cases) + "\n" + (
        "  metrics:\n    accuracy: {function: exact_match, weight: 1.0}\n"
    )


def python_yaml(*, study: str, function: str, db: Path, seed: int, population: int, generations: int,
                n_cases: int, concurrency: int, elite: int = 1, mode: str = "generational") -> str:
    return (
        f"study: {json.dumps(study)}\n"
        f"target: {{type: python, function: \"harden_targets:{function}\", timeout_seconds: 60,\n"
        f"         retry: {{max_retries: 0}}}}\n"
        + PARAMS_YAML
        + cases_yaml(n_cases)
        + "optimization:\n"
        f"  seed: {seed}\n"
        f"  evolution: {{population_size: {population}, generations: {generations}, elite_size: {elite}}}\n"
        f"  execution: {{mode: {mode}, concurrency: {concurrency}, early_stopping: {{enabled: false}}}}\n"
        "  racing: {enabled: false}\n"
        "  selection: {stochastic: false}\n"  # deterministic targets: the call counts checked have no probe draws
        f"output: {{save_path: results}}\n"
        f"storage: {{path: {json.dumps(str(db))}}}\n"
    )


def subdir(base: Path, name: str) -> Path:
    """A new directory holding a copy of the target module (the YAML's folder is on sys.path)."""
    d = base / name
    d.mkdir()
    shutil.copy(TARGETS_FILE, d / "harden_targets.py")
    return d


def workdir(root: Path, name: str) -> Path:
    """A fresh directory with the target module next to where the YAMLs go."""
    d = root / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    shutil.copy(TARGETS_FILE, d / "harden_targets.py")
    return d


# --------------------------------------------------------------------------- reading the database


def open_ro(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


@dataclass
class RunFacts:
    run_id: int
    study: str
    status: str
    stop_reason: str | None
    total_calls: int
    elapsed: float
    generations: int
    proposed: int
    """Distinct config hashes in the run's generations.proposals_json."""
    trials: int
    trials_lost: int
    """Proposed hashes without a trials row."""
    complete_trials: int
    complete_short: int
    """Complete trials with fewer case_results rows than test cases."""
    case_rows: int
    rows_expected: int
    rows_lost: int
    """Sum over proposed hashes of missing (hash, case) rows."""
    trial_set: frozenset = frozenset()
    best: tuple[float, tuple[str, ...]] | None = None


def no_run(status: str = "no run") -> RunFacts:
    """Stand-in when the database or the run is missing: every count zero."""
    return RunFacts(run_id=-1, study="-", status=status, stop_reason=None, total_calls=0, elapsed=0.0,
                    generations=0, proposed=0, trials=0, trials_lost=0, complete_trials=0, complete_short=0,
                    case_rows=0, rows_expected=0, rows_lost=0)


def last_run_facts(db: Path, n_cases: int) -> RunFacts | None:
    """Facts of the newest run in ``db``; None when there is no database or no run."""
    if not db.exists():
        return None
    try:
        with open_ro(db) as c:
            ids = run_ids(c)
            return run_facts(c, ids[-1], n_cases) if ids else None
    except sqlite3.Error as exc:
        print(f"  (cannot read {db}: {exc})")
        return None


def run_ids(conn: sqlite3.Connection) -> list[int]:
    return [r[0] for r in conn.execute("SELECT id FROM runs ORDER BY id")]


def run_facts(conn: sqlite3.Connection, run_id: int, n_cases: int) -> RunFacts:
    row = conn.execute(
        "SELECT studies.name, status, stop_reason, total_calls, elapsed_seconds FROM runs "
        "JOIN studies ON studies.id = runs.study_id WHERE runs.id = ?", (run_id,)
    ).fetchone()
    if row is None:
        raise KeyError(run_id)
    study, status, stop_reason, total_calls, elapsed = row
    proposed: set[str] = set()
    n_gens = 0
    for (pj,) in conn.execute("SELECT proposals_json FROM generations WHERE run_id = ?", (run_id,)):
        n_gens += 1
        for p in json.loads(pj):
            proposed.add(p["hash"])
    trials = {h: (st, sc) for h, st, sc in
              conn.execute("SELECT config_hash, status, score FROM trials WHERE run_id = ?", (run_id,))}
    counts = dict(conn.execute(
        "SELECT config_hash, COUNT(*) FROM case_results WHERE run_id = ? GROUP BY config_hash", (run_id,)
    ).fetchall())
    complete = [h for h, (st, _) in trials.items() if st == "complete"]
    rows_expected = len(proposed) * n_cases
    rows_present = sum(min(n_cases, counts.get(h, 0)) for h in proposed)
    usable = {h: sc for h, (st, sc) in trials.items() if st == "complete" and sc is not None}
    best = None
    if usable:
        top = max(usable.values())
        best = (round(top, 12), tuple(sorted(h for h, s in usable.items() if round(s, 12) == round(top, 12))))
    return RunFacts(
        run_id=run_id, study=study, status=status, stop_reason=stop_reason, total_calls=total_calls or 0,
        elapsed=float(elapsed or 0.0), generations=n_gens, proposed=len(proposed), trials=len(trials),
        trials_lost=len(proposed - trials.keys()), complete_trials=len(complete),
        complete_short=sum(1 for h in complete if counts.get(h, 0) < n_cases),
        case_rows=sum(counts.values()), rows_expected=rows_expected, rows_lost=rows_expected - rows_present,
        trial_set=frozenset((h, st, None if sc is None else round(sc, 12)) for h, (st, sc) in trials.items()),
        best=best,
    )


# --------------------------------------------------------------------------- printing


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    rows = [[_cell(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=False)) for r in rows]
    return "\n".join(out)


def _cell(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.2f}"
    return "-" if v is None else str(v)


@dataclass
class Verdict:
    name: str
    checks: list[tuple[str, bool]] = field(default_factory=list)

    def check(self, label: str, ok: bool) -> None:
        self.checks.append((label, bool(ok)))

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(ok for _, ok in self.checks)

    def print(self) -> None:
        print()
        for label, ok in self.checks:
            print(f"  [{'ok' if ok else 'FAIL'}] {label}")
        failed = [label for label, ok in self.checks if not ok]
        if self.passed:
            print(f"PASS {self.name}")
        else:
            print(f"FAIL {self.name}: " + "; ".join(failed))


# --------------------------------------------------------------------------- 1. two-process


def cmd_two_process(cli: Cli, root: Path, quick: bool, seed: int) -> Verdict:
    population, generations, n_cases, concurrency = 16, 6, 20, 32
    kinds = [("different", "fresh"), ("same", "fresh"), ("different", "migrated"), ("same", "migrated")]
    n_pairs = 4 if quick else 20
    print(f"two-process: {n_pairs} pairs of `optimize` sharing one storage.path, started together; "
          f"python target sleeping 1-5 ms, population {population} x {generations} generations x "
          f"{n_cases} cases, concurrency {concurrency}")
    print("  kinds: different/same study x fresh db (file does not exist) / migrated db (made by an earlier run)\n")
    base = workdir(root, "two-process")
    env = cli.env({"HARDEN_SLEEP_MS": "1,5"})

    # an already-migrated database to copy for the "migrated" pairs, made by the CLI itself
    template = base / "template.db"
    (base / "template.yaml").write_text(python_yaml(
        study="harden-template", function="sleepy", db=template, seed=1, population=1, generations=1,
        n_cases=1, concurrency=1))
    tp = run_cli(cli, ["optimize", "template.yaml", "-q", "--no-outputs"], base, env, "template")
    template_ok = tp.rc == 0 and template.exists()
    if not template_ok:
        print(f"  could not build the migrated template db (exit {tp.rc}): {last_lines(tp.stderr)}")

    rows = []
    totals = {"runs": 0, "nonzero": 0, "tracebacks": 0, "locked": 0, "not_finished": 0, "rows_lost": 0,
              "trials_lost": 0, "complete_short": 0, "gens_lost": 0, "calls_minus_rows": 0, "missing_runs": 0,
              "hung": 0}
    for k in range(n_pairs):
        study_kind, db_kind = kinds[k % len(kinds)]
        pair_dir = subdir(base, f"pair{k:02d}")
        db = pair_dir / "shared.db"
        template_runs: set[int] = set()
        if db_kind == "migrated" and template_ok:
            for suffix in ("", "-wal"):
                if Path(str(template) + suffix).exists():
                    shutil.copy(str(template) + suffix, str(db) + suffix)
            with open_ro(db) as c:
                template_runs = set(run_ids(c))
            # the read-only open may leave -shm/-wal behind; that is what a reader does too
        studies = ["harden-a", "harden-b"] if study_kind == "different" else ["harden-same", "harden-same"]
        for j, st in enumerate(studies):
            (pair_dir / f"run{j}.yaml").write_text(python_yaml(
                study=st, function="sleepy", db=db, seed=seed * 1000 + k * 2 + j, population=population,
                generations=generations, n_cases=n_cases, concurrency=concurrency))
        procs = [spawn(cli, ["optimize", f"run{j}.yaml", "-q", "--no-outputs"], pair_dir, env, f"p{k}-r{j}")
                 for j in range(2)]
        for p in procs:
            p.wait()
        rcs = [p.rc for p in procs]
        tbs = sum(has_traceback(p.stderr) for p in procs)
        locked = sum("database is locked" in (p.stderr + p.stdout) for p in procs)
        outs = [outcome_line(p.stdout) for p in procs]
        printed_finished = sum(1 for o in outs if o and o["status"] == "finished")
        lost = trials_lost = short = gens_lost = calls_minus_rows = not_finished = 0
        n_runs = 0
        facts: dict[int, RunFacts] = {}
        if db.exists():
            try:
                with open_ro(db) as c:
                    ids = [i for i in run_ids(c) if i not in template_runs]
                    n_runs = len(ids)
                    facts = {i: run_facts(c, i, n_cases) for i in ids}
            except sqlite3.Error as exc:
                print(f"  pair {k}: cannot read the database: {exc}")
        for f in facts.values():
            lost += f.rows_lost
            trials_lost += f.trials_lost
            short += f.complete_short
            gens_lost += max(0, generations - f.generations)
            not_finished += f.status != "finished"
        for o in outs:
            if o and o["run_id"] in facts:
                calls_minus_rows += o["calls"] - facts[o["run_id"]].case_rows
        missing_runs = max(0, 2 - n_runs)
        rows.append([k, study_kind, db_kind, f"{rcs[0]}/{rcs[1]}", printed_finished, n_runs,
                     ",".join(f.status for f in facts.values()) or "-", gens_lost, trials_lost, lost, short,
                     calls_minus_rows, tbs, locked, f"{max(p.wall for p in procs):.1f}"])
        totals["runs"] += 2
        totals["nonzero"] += sum(1 for r in rcs if r != 0)
        totals["tracebacks"] += tbs
        totals["locked"] += locked
        totals["not_finished"] += not_finished
        totals["rows_lost"] += lost
        totals["trials_lost"] += trials_lost
        totals["complete_short"] += short
        totals["gens_lost"] += gens_lost
        totals["calls_minus_rows"] += calls_minus_rows
        totals["missing_runs"] += missing_runs
        totals["hung"] += sum(p.hung for p in procs)
        for j, p in enumerate(procs):
            if p.rc != 0 or has_traceback(p.stderr):
                print(f"  pair {k} run {j}: exit {p.rc}: {last_lines(p.stderr, 3)}")
    print(table(["pair", "study", "db", "exit", "printed finished", "runs in db", "db status", "gens lost",
                 "trials lost", "rows lost", "complete trials short", "calls-rows", "tracebacks", "locked",
                 "wall s"], rows))
    print()
    print(table(["runs", "non-zero exits", "hung", "tracebacks", "'database is locked'", "runs missing in db",
                 "runs not finished in db", "generations lost", "trials lost", "case rows lost",
                 "complete trials short", "calls - rows"],
                [[totals["runs"], totals["nonzero"], totals["hung"], totals["tracebacks"], totals["locked"],
                  totals["missing_runs"], totals["not_finished"], totals["gens_lost"], totals["trials_lost"],
                  totals["rows_lost"], totals["complete_short"], totals["calls_minus_rows"]]]))
    v = Verdict("two-process")
    v.check("migrated template db built", template_ok)
    v.check(f"0 case rows lost (got {totals['rows_lost']})", totals["rows_lost"] == 0)
    v.check(f"0 trials lost (got {totals['trials_lost']})", totals["trials_lost"] == 0)
    v.check(f"0 generations lost (got {totals['gens_lost']})", totals["gens_lost"] == 0)
    v.check(f"calls each CLI printed == case rows stored for its run (sum of differences {totals['calls_minus_rows']})",
            totals["calls_minus_rows"] == 0)
    v.check(f"0 complete trials with missing case rows (got {totals['complete_short']})", totals["complete_short"] == 0)
    v.check(f"0 tracebacks (got {totals['tracebacks']})", totals["tracebacks"] == 0)
    v.check(f"0 non-zero exits (got {totals['nonzero']})", totals["nonzero"] == 0)
    v.check(f"every run in the db and finished (missing {totals['missing_runs']}, "
            f"not finished {totals['not_finished']})", totals["missing_runs"] == 0 and totals["not_finished"] == 0)
    return v


# --------------------------------------------------------------------------- call logs


def read_call_log(path: Path) -> list[tuple[int, str, float]]:
    """(pid, key, time) per call the target received; key = config + case."""
    out = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) < 6:
            continue
        out.append((int(parts[0]), " ".join(parts[1:5]), float(parts[5])))
    return out


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def wait_for_lines(path: Path, n: int, proc: Proc, timeout: float) -> bool:
    """Poll until the call log has ``n`` lines or the process ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count_lines(path) >= n:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    return False


# --------------------------------------------------------------------------- 2. kill-resume


@dataclass
class KRConfig:
    population: int = 8
    generations: int = 6
    n_cases: int = 20
    concurrency: int = 8
    sleep_ms: str = "10,30"
    """Long enough that a run's loop takes ~2 s: a kill can then lose more
    in-loop time than the 1 s-per-episode tolerance of check (d)."""
    seed: int = 11


TOTALS_SLACK = 0
REPAID_SLACK = 0


def cmd_kill_resume(cli: Cli, root: Path, quick: bool, seed: int) -> Verdict:
    kc = KRConfig(seed=seed + 11)
    plan = [1, 2] if quick else [1] * 14 + [3, 3]
    n_kills_planned = sum(plan)
    print(f"kill-resume: {n_kills_planned} SIGKILLs in {len(plan)} cycles (kills per cycle {plan}) of one seeded "
          f"run, population {kc.population} x {kc.generations} generations x {kc.n_cases} cases, "
          f"concurrency {kc.concurrency}, target sleeping {kc.sleep_ms} ms; each cycle `--resume`s until finished "
          f"and is compared with an uninterrupted run of the same config in its own db\n")
    base = workdir(root, "kill-resume")
    rng = random.Random(seed)

    def setup(name: str) -> tuple[Path, Path, dict[str, str]]:
        d = subdir(base, name)
        db = d / "run.db"
        log = d / "calls.log"
        (d / "opt.yaml").write_text(python_yaml(
            study="harden-kill", function="counted", db=db, seed=kc.seed, population=kc.population,
            generations=kc.generations, n_cases=kc.n_cases, concurrency=kc.concurrency))
        return db, log, cli.env({"HARDEN_CALL_LOG": str(log), "HARDEN_SLEEP_MS": kc.sleep_ms})

    # ---- uninterrupted reference run(s)
    refs = []
    for r in range(1 if quick else 2):
        db, log, env = setup(f"ref{r}")
        p = run_cli(cli, ["optimize", "opt.yaml", "-q", "--no-outputs"], db.parent, env, f"ref{r}")
        calls = read_call_log(log)
        f = last_run_facts(db, kc.n_cases)
        if f is None:
            print(f"  reference run {r} left no run in its database (exit {p.rc}): {last_lines(p.stderr, 3, 300)}")
            v = Verdict("kill-resume")
            v.check("the uninterrupted reference run completes", False)
            return v
        first = min((t for _, _, t in calls), default=None)
        last = max((t for _, _, t in calls), default=None)
        refs.append({"proc": p, "facts": f, "calls": len(calls), "wall": p.wall,
                     "start_s": (first - p.t0_wall) if first else None,
                     "end_s": (last - p.t0_wall) if last else None})
    ref = refs[0]
    rf: RunFacts = ref["facts"]
    deterministic = all(r["facts"].trial_set == rf.trial_set and r["facts"].best == rf.best for r in refs)
    print(table(["reference", "exit", "status", "trials", "calls received", "runs.total_calls", "wall s",
                 "elapsed s", "first call at s", "last call at s"],
                [[i, r["proc"].rc, r["facts"].status, r["facts"].trials, r["calls"], r["facts"].total_calls,
                  r["wall"], r["facts"].elapsed, r["start_s"], r["end_s"]] for i, r in enumerate(refs)]))
    print(f"  reference runs identical to each other: {deterministic}"
          + ("" if len(refs) > 1 else " (one reference in --quick)"))
    ref_overhead = ref["wall"] - rf.elapsed
    ref_active = (ref["wall"] - ref["start_s"]) if ref["start_s"] is not None else ref["wall"]
    ref_tail = ref_active - rf.elapsed
    """time between the reference's first call and its exit not counted in its elapsed (shut-down)"""
    start_s = ref["start_s"] or 0.3
    end_s = ref["end_s"] or ref["wall"]
    print(f"  kill times drawn uniformly in [{0.9 * start_s:.2f}, first call + remaining work] s after each start\n")

    rows = []
    per_kill_repaid: list[int] = []
    all_identical = True
    total_gap_ok = True
    elapsed_ok = True
    raw_elapsed_ok = True
    tracebacks = 0
    unfinished = 0
    kills_done = 0
    finished_before_kill = 0
    killed_before_run = 0
    resume_failures = 0
    for ci, n_kills in enumerate(plan):
        db, log, env = setup(f"cycle{ci:02d}")
        episodes: list[Proc] = []
        kills = 0
        note = []
        first_is_fresh = True
        finished = False
        for _ in range(n_kills):
            args = ["optimize", "opt.yaml", "-q", "--no-outputs"] + ([] if first_is_fresh else ["--resume"])
            remaining = max(0.05, 1.0 - count_lines(log) / max(1, ref["calls"]))
            t_kill = rng.uniform(0.9 * start_s, start_s + max(0.05, (end_s - start_s) * remaining))
            p = spawn(cli, args, db.parent, env, f"c{ci}-e{len(episodes)}")
            episodes.append(p)
            while p.poll() is None and p.wall < t_kill:
                time.sleep(0.002)
            if p.kill9():
                kills += 1
            else:
                finished_before_kill += 1
                note.append(f"episode {len(episodes)} finished before its kill at {t_kill:.2f}s (exit {p.rc})")
                if p.rc == 0:
                    finished = True
                    break
            status = _last_run_status(db)
            first_is_fresh = status is None
            if first_is_fresh and p.killed:
                killed_before_run += 1
                note.append(f"kill {kills} at {t_kill:.2f}s came before the run row existed")
            if status == "finished":
                finished = True
                if p.killed:  # not a mid-run kill: the run was complete, the process shutting down
                    kills -= 1
                    finished_before_kill += 1
                    note.append(f"episode {len(episodes)}: the kill at {t_kill:.2f}s came after the run was "
                                "stored as finished (not counted as a kill)")
                break
        attempts = 0
        while not finished and attempts < 4:
            attempts += 1
            args = ["optimize", "opt.yaml", "-q", "--no-outputs"] + ([] if first_is_fresh else ["--resume"])
            p = spawn(cli, args, db.parent, env, f"c{ci}-e{len(episodes)}")
            episodes.append(p)
            p.wait()
            if p.rc == 0:
                finished = True
            else:
                resume_failures += 1
                note.append(f"{' '.join(args[2:]) or 'start'} exit {p.rc}: {last_lines(p.stderr)}")
            first_is_fresh = _last_run_status(db) is None
        kills_done += kills
        tracebacks += sum(has_traceback(e.stderr) for e in episodes)
        calls = read_call_log(log)
        received = len(calls)
        # re-paid calls attributed to each kill: calls of the episode after the kill whose
        # (config, case) the target had already received in an earlier episode
        seen: set[str] = set()
        by_pid: dict[int, list[str]] = {}
        for pid, key, _ in calls:
            by_pid.setdefault(pid, []).append(key)
        for i, e in enumerate(episodes):
            keys = by_pid.get(e.pid, [])
            dup = sum(1 for key in keys if key in seen)
            if i > 0 and episodes[i - 1].killed:
                per_kill_repaid.append(dup)
            seen.update(keys)
        facts = last_run_facts(db, kc.n_cases)
        identical = bool(facts and facts.trial_set == rf.trial_set and facts.best == rf.best)
        all_identical &= identical
        if facts is None or facts.status != "finished" or not finished:
            unfinished += 1
        sum_wall = sum(e.wall for e in episodes)
        first_call: dict[int, float] = {}
        for pid, _, t in calls:
            first_call[pid] = min(t, first_call.get(pid, t))
        sum_active = sum(max(0.0, e.t0_wall + e.wall - first_call[e.pid]) for e in episodes if e.pid in first_call)
        expected_elapsed = sum_active - ref_tail
        repaid = received - ref["calls"]
        total_calls = facts.total_calls if facts else None
        calls_diff = (total_calls - received) if facts else None
        # never under-count; over-count at most TOTALS_SLACK per kill (0 = the issue's exact bar)
        total_gap_ok &= calls_diff is not None and 0 <= calls_diff <= TOTALS_SLACK * kills
        elapsed = facts.elapsed if facts else 0.0
        gap = sum_wall - elapsed
        raw_elapsed_ok &= abs(gap) <= RAW_ELAPSED_TOLERANCE_PER_EPISODE * len(episodes)
        unaccounted = expected_elapsed - elapsed
        elapsed_ok &= abs(unaccounted) <= ELAPSED_TOLERANCE_PER_EPISODE * len(episodes)
        rows.append([ci, kills, len(episodes), facts.status if facts else "-", identical,
                     facts.trials if facts else None, received, repaid,
                     f"{repaid / kills:.1f}" if kills else "-", total_calls, calls_diff,
                     sum_wall, gap / len(episodes), sum_active, elapsed, unaccounted])
        for n in note:
            print(f"  cycle {ci}: {n}")
    print(table(["cycle", "kills", "episodes", "status", "identical", "trials", "calls received",
                 "re-paid", "re-paid/kill", "runs.total_calls", "total_calls - received", "sum wall s",
                 "(wall-elapsed)/episode", "sum active s", "elapsed s", "active - elapsed s"], rows))
    print(f"  active = per episode, its first call (call-log time) to its kill or exit, minus the reference's "
          f"tail ({ref_tail:.2f}s) once;\n  active - elapsed = loop time of all episodes that runs.elapsed_seconds "
          "does not count (about 0 when every episode is counted)")
    max_repaid = max(per_kill_repaid, default=0)
    print()
    print(table(["kills", "finished before kill", "killed before run row", "re-paid per kill (each)",
                 "max re-paid per kill", "concurrency", "resume failures", "tracebacks"],
                [[kills_done, finished_before_kill, killed_before_run,
                  ",".join(map(str, per_kill_repaid)) or "-", max_repaid, kc.concurrency, resume_failures,
                  tracebacks]]))
    print(f"  reference (uninterrupted): {ref['calls']} calls received, runs.total_calls {rf.total_calls}, "
          f"wall {ref['wall']:.2f}s vs elapsed {rf.elapsed:.2f}s (gap {ref['wall'] - rf.elapsed:.2f}s = "
          f"start-up and shut-down of one episode)")
    v = Verdict("kill-resume")
    v.check(f"reference run deterministic ({len(refs)} uninterrupted runs identical)", deterministic)
    v.check(f"at least one real kill mid-run (got {kills_done})", kills_done > 0)
    v.check(f"every cycle finished (unfinished {unfinished}, failed resumes {resume_failures})",
            unfinished == 0 and resume_failures == 0)
    v.check("(a) every resumed run has the same (config_hash, status, score) trials and best as the reference",
            all_identical)
    v.check(f"(b) re-paid calls per kill <= concurrency {kc.concurrency}"
            + (f" + {REPAID_SLACK}" if REPAID_SLACK else "") + f" (max {max_repaid})",
            max_repaid <= kc.concurrency + REPAID_SLACK)
    v.check("(c) runs.total_calls == calls the target received, every cycle" if not TOTALS_SLACK else
            f"(c) runs.total_calls - calls the target received in [0, {TOTALS_SLACK} per kill], every cycle",
            total_gap_ok)
    v.check(f"(d) runs.elapsed_seconds within {ELAPSED_TOLERANCE_PER_EPISODE}s per episode of the episodes' "
            "summed active time, every cycle", elapsed_ok)
    print(f"  (for reference, not a check: |sum wall - elapsed| <= {RAW_ELAPSED_TOLERANCE_PER_EPISODE:.0f}s per "
          f"episode in every cycle: {raw_elapsed_ok}; the reference itself has wall - elapsed = {ref_overhead:.2f}s)")
    v.check(f"0 tracebacks (got {tracebacks})", tracebacks == 0)
    return v


# --------------------------------------------------------------------------- 2b. kill-resume-async


def _gen_facts(db: Path) -> dict[int, tuple[int, float | None]]:
    """Generation number -> (proposals, mean score) of the newest run in ``db``."""
    with open_ro(db) as c:
        run_id = run_ids(c)[-1]
        return {n: (len(json.loads(pj)), mean) for n, pj, mean in c.execute(
            "SELECT number, proposals_json, mean_score FROM generations WHERE run_id = ?", (run_id,))}


def cmd_kill_resume_async(cli: Cli, root: Path, quick: bool, seed: int) -> Verdict:
    """Async mode: SIGKILL a seeded run once at a random moment, ``--resume`` it, and compare the first
    generation the resumed run proposes (its proposals and mean score) and the final best with
    uninterrupted runs of the same config. Async runs are not bit-for-bit repeatable (what a generation
    sees depends on which calls landed first), so the comparison is of distributions, not identity. A
    generation proposed with the stored population keeps ``elite_size`` survivors and proposes
    population - elite; one proposed blind (no population) proposes the whole population."""
    kc = KRConfig(seed=seed + 11, generations=10)
    n_cycles = 3 if quick else 20
    n_refs = 2 if quick else 4
    print(f"kill-resume-async: {n_cycles} cycles of one SIGKILL then --resume, async mode, population "
          f"{kc.population} (elite 1) x {kc.generations} generations x {kc.n_cases} cases, concurrency "
          f"{kc.concurrency}, target sleeping {kc.sleep_ms} ms; {n_refs} uninterrupted references\n")
    base = workdir(root, "kill-resume-async")
    rng = random.Random(seed)

    def setup(name: str) -> tuple[Path, Path, dict[str, str]]:
        d = subdir(base, name)
        db, log = d / "run.db", d / "calls.log"
        (d / "opt.yaml").write_text(python_yaml(
            study="harden-kill-async", function="counted", db=db, seed=kc.seed, population=kc.population,
            generations=kc.generations, n_cases=kc.n_cases, concurrency=kc.concurrency, mode="async"))
        return db, log, cli.env({"HARDEN_CALL_LOG": str(log), "HARDEN_SLEEP_MS": kc.sleep_ms})

    args = ["optimize", "opt.yaml", "-q", "--no-outputs"]
    refs: list[tuple[dict[int, tuple[int, float | None]], float]] = []
    spans = []
    for r in range(n_refs):
        db, log, env = setup(f"ref{r}")
        p = run_cli(cli, args, db.parent, env, f"ref{r}")
        times = [t for _, _, t in read_call_log(log)]
        f = last_run_facts(db, kc.n_cases)
        if p.rc != 0 or f is None or f.best is None:
            v = Verdict("kill-resume-async")
            v.check(f"the uninterrupted reference run completes (exit {p.rc}: {last_lines(p.stderr)})", False)
            return v
        refs.append((_gen_facts(db), f.best[0]))
        spans.append((min(times) - p.t0_wall, max(times) - p.t0_wall))
    first_call = sum(a for a, _ in spans) / len(spans)
    last_call = sum(b for _, b in spans) / len(spans)
    print(f"  references: first call {first_call:.2f}s, last call {last_call:.2f}s after start; kills drawn "
          f"uniformly in the first 60 % of that span\n")
    rows = []
    blind = tracebacks = failures = 0
    firsts: list[float] = []
    ref_firsts: list[float] = []
    bests: list[float] = []
    for ci in range(n_cycles):
        db, _log, env = setup(f"cycle{ci:02d}")
        t_kill = rng.uniform(first_call, first_call + 0.6 * (last_call - first_call))
        p = spawn(cli, args, db.parent, env, f"c{ci}-kill")
        while p.poll() is None and p.wall < t_kill:
            time.sleep(0.002)
        killed = p.kill9()
        tracebacks += has_traceback(p.stderr)
        status = _last_run_status(db)
        if not killed or status in (None, "finished"):
            rows.append([ci, f"{t_kill:.2f}", "no mid-run kill", "-", "-", "-", "-", "-"])
            continue
        stored = _gen_facts(db)
        k = max(stored) + 1
        r = run_cli(cli, [*args, "--resume"], db.parent, env, f"c{ci}-resume")
        tracebacks += has_traceback(r.stderr)
        f = last_run_facts(db, kc.n_cases)
        if r.rc != 0 or f is None or f.status != "finished" or k >= kc.generations:
            failures += r.rc != 0
            rows.append([ci, f"{t_kill:.2f}", k, "-", "-", "-", f.best[0] if f and f.best else "-", f"exit {r.rc}"])
            continue
        n_prop, mean = _gen_facts(db)[k]
        ref_means = [g[k][1] for g, _ in refs if g.get(k) and g[k][1] is not None]
        ref_mean = sum(ref_means) / len(ref_means) if ref_means else None
        blind += n_prop == kc.population
        if mean is not None and ref_mean is not None:
            firsts.append(mean)
            ref_firsts.append(ref_mean)
        bests.append(f.best[0] if f.best else 0.0)
        rows.append([ci, f"{t_kill:.2f}", k, n_prop, mean, ref_mean, f.best[0] if f.best else None, "ok"])
    print(table(["cycle", "kill at s", "first new gen", "its proposals", "its mean", "refs' mean (same gen)",
                 "final best", "resume"], rows))
    ref_bests = [b for _, b in refs]

    def avg(xs: list[float]) -> float:
        return sum(xs) / len(xs) if xs else float("nan")

    print(f"\n  resumed runs: first new generation proposed blind (population {kc.population} proposals, "
          f"no elite) {blind}/{len(bests)}; its mean {avg(firsts):.3f} vs {avg(ref_firsts):.3f} uninterrupted "
          f"(same generations)")
    print(f"  final best: resumed {min(bests, default=float('nan')):.3f}-{max(bests, default=float('nan')):.3f} "
          f"(mean {avg(bests):.3f}), uninterrupted {min(ref_bests):.3f}-{max(ref_bests):.3f} "
          f"(mean {avg(ref_bests):.3f})")
    v = Verdict("kill-resume-async")
    v.check(f"at least one real kill mid-run (got {len(bests)})", len(bests) > 0)
    v.check(f"every resume finished (failures {failures})", failures == 0)
    v.check(f"no first new generation proposed blind (got {blind})", blind == 0)
    v.check(f"0 tracebacks (got {tracebacks})", tracebacks == 0)
    return v


def _has_run(db: Path) -> bool:
    return _last_run_status(db) is not None


def _last_run_status(db: Path) -> str | None:
    """Status of the newest run in ``db``; None when there is no db or no run."""
    if not db.exists():
        return None
    try:
        with open_ro(db) as c:
            row = c.execute("SELECT status FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row else None


# --------------------------------------------------------------------------- 3. two-resume


def cmd_two_resume(cli: Cli, root: Path, quick: bool, seed: int) -> Verdict:
    population, n_cases, concurrency, sleep_ms = 8, 20, 8, "10,20"
    pair_generations, stale_generations = 24, 8
    """The pairs' run is long (~7 s left after the kill) so that a refused --resume that
    only exits when the other one finishes cannot pass the LOSER_MAX_SECONDS check."""
    pair_reps, stale_reps = (2, 1) if quick else (3, 3)
    kill_after = (population + (stale_generations - 1) * (population - 1)) * n_cases // 4
    print(f"two-resume: kill a run (population {population} x {pair_generations} generations x {n_cases} cases, "
          f"concurrency {concurrency}, target sleeping {sleep_ms} ms) after {kill_after} calls, then start two "
          f"`--resume` together ({pair_reps}x); and kill -9 a run ({stale_generations} generations) after "
          f"{kill_after} calls, then `--resume` at once ({stale_reps}x)\n")
    base = workdir(root, "two-resume")

    def setup(name: str, generations: int) -> tuple[Path, Path, dict[str, str]]:
        d = subdir(base, name)
        db, log = d / "run.db", d / "calls.log"
        (d / "opt.yaml").write_text(python_yaml(
            study="harden-two-resume", function="counted", db=db, seed=seed + 23, population=population,
            generations=generations, n_cases=n_cases, concurrency=concurrency))
        return db, log, cli.env({"HARDEN_CALL_LOG": str(log), "HARDEN_SLEEP_MS": sleep_ms})

    def start_and_kill(d: Path, log: Path, env: dict[str, str], tag: str) -> tuple[Proc, int]:
        p = spawn(cli, ["optimize", "opt.yaml", "-q", "--no-outputs"], d, env, tag)
        wait_for_lines(log, kill_after, p, 60)
        p.kill9()
        return p, count_lines(log)

    v = Verdict("two-resume")
    rows = []
    messages = []
    for r in range(pair_reps):
        db, log, env = setup(f"pair{r}", pair_generations)
        first, at_kill = start_and_kill(db.parent, log, env, f"r{r}-first")
        procs = [spawn(cli, ["optimize", "opt.yaml", "-q", "--no-outputs", "--resume"], db.parent, env,
                       f"r{r}-resume{j}") for j in range(2)]
        said_at: dict[int, float] = {}
        """when each process first wrote to stderr (the refusal), to compare with when it exited"""
        while any(p.poll() is None for p in procs) and max(p.wall for p in procs) < PROCESS_TIMEOUT:
            for j, p in enumerate(procs):
                if j not in said_at and p.err_path.stat().st_size > 0:
                    said_at[j] = p.wall
            time.sleep(0.02)
        for p in procs:
            p.wait()
        ok = [p for p in procs if p.rc == 0]
        bad = [p for p in procs if p.rc != 0]
        received = count_lines(log)
        facts = last_run_facts(db, n_cases) or no_run()
        expected = facts.rows_expected
        excess = received - expected
        loser = bad[0] if len(bad) == 1 else None
        winner = ok[0] if len(ok) == 1 else None
        loser_said = said_at.get(procs.index(loser)) if loser else None
        msg = last_lines(loser.stderr, 3, 300) if loser else "-"
        if loser:
            messages.append(msg)
        tbs = sum(has_traceback(p.stderr) for p in [first, *procs])
        rows.append([r, first.killed, at_kill, f"{procs[0].rc}/{procs[1].rc}", len(ok),
                     winner.wall if winner else None, loser_said, loser.wall if loser else None, facts.status,
                     expected, received, excess, facts.rows_lost, facts.trials_lost, tbs])
        v.check(f"pair {r}: exactly one --resume proceeds (exit 0: {len(ok)}, non-zero: {len(bad)})",
                len(ok) == 1 and len(bad) == 1)
        if loser:
            v.check(f"pair {r}: the refused --resume exits within {LOSER_MAX_SECONDS:.0f}s (took {loser.wall:.1f}s)",
                    loser.wall <= LOSER_MAX_SECONDS)
            v.check(f"pair {r}: the refused --resume says why (stderr not empty, no traceback)",
                    bool(loser.stderr.strip()) and not has_traceback(loser.stderr))
        v.check(f"pair {r}: calls received <= one run's worth + concurrency ({received} vs {expected} + "
                f"{concurrency}" + (f" + {REPAID_SLACK}" if REPAID_SLACK else "") + ")",
                excess <= concurrency + REPAID_SLACK)
        v.check(f"pair {r}: run finished with no rows lost ({facts.status}, {facts.rows_lost} lost)",
                facts.status == "finished" and facts.rows_lost == 0 and facts.trials_lost == 0)
    print(table(["pair", "first killed", "calls at kill", "resume exits", "proceeded", "winner wall s",
                 "refusal printed at s", "refused exited at s", "db status", "one run's calls", "calls received",
                 "excess", "rows lost", "trials lost", "tracebacks"], rows))
    for m in messages:
        print(f"  refused --resume said: {m}")
    if not messages:
        print("  (no --resume was refused)")

    # ---- stale lease: kill -9, then --resume at once
    rows = []
    for r in range(stale_reps):
        db, log, env = setup(f"stale{r}", stale_generations)
        first, at_kill = start_and_kill(db.parent, log, env, f"s{r}-first")
        p = spawn(cli, ["optimize", "opt.yaml", "-q", "--no-outputs", "--resume"], db.parent, env, f"s{r}-resume")
        t_first = None
        while p.poll() is None:
            if t_first is None and any(pid == p.pid for pid, _, _ in read_call_log(log)[at_kill:]):
                t_first = p.wall
            time.sleep(0.01)
        p.wait()
        if t_first is None and any(pid == p.pid for pid, _, _ in read_call_log(log)[at_kill:]):
            t_first = p.wall  # finished between polls
        facts = last_run_facts(db, n_cases) or no_run()
        rows.append([r, first.killed, at_kill, p.rc, t_first, p.wall, facts.status, facts.rows_expected,
                     count_lines(log), count_lines(log) - facts.rows_expected,
                     has_traceback(p.stderr)])
        ok = p.rc == 0 and facts.status == "finished" and t_first is not None and t_first <= STALE_RECOVERY_MAX_SECONDS
        v.check(f"stale {r}: --resume right after kill -9 succeeds and calls within "
                f"{STALE_RECOVERY_MAX_SECONDS:.0f}s (exit {p.rc}, first call at "
                f"{'-' if t_first is None else f'{t_first:.1f}s'})", ok)
        if p.rc != 0:
            print(f"  stale {r}: --resume exit {p.rc}: {last_lines(p.stderr, 3, 300)}")
    print()
    print(table(["stale", "first killed", "calls at kill", "resume exit", "first call after s", "resume wall s",
                 "db status", "one run's calls", "calls received", "excess", "traceback"], rows))
    return v


# --------------------------------------------------------------------------- 4. secrets


def _fragments(secret: str) -> list[str]:
    """The secret's 16+-char runs of letters, digits and ``-``: they survive every
    escaping (JSON, URL, repr, HTML), so a form the redactor missed still shows up."""
    return [m for m in re.findall(r"[A-Za-z0-9\-]{16,}", secret)]


def encodings(secret: str, basic_user: str | None = None) -> dict[str, str]:
    """Every form of ``secret`` the benchmark looks for (name -> text)."""
    import base64
    from urllib.parse import quote, quote_plus

    out = {"raw": secret, "json": json.dumps(secret)[1:-1], "json-utf8": json.dumps(secret, ensure_ascii=False)[1:-1],
           "json-in-json": json.dumps(json.dumps(secret))[1:-1], "repr": repr(secret)[1:-1],
           "url": quote(secret, safe=""), "url-plus": quote_plus(secret),
           "base64": base64.b64encode(secret.encode()).decode()}
    if basic_user is not None:
        out["base64 user:pass"] = base64.b64encode(f"{basic_user}:{secret}".encode()).decode()
    return out


def count_hits(data: bytes, secret: str, basic_user: str | None = None) -> tuple[int, int]:
    """(occurrences of any encoding of the whole secret, partial ones: a 16-char run
    of the secret without a whole encoding around it)."""
    forms = {f.encode() for f in encodings(secret, basic_user).values()}
    full = sum(data.count(f) for f in forms)
    partial = sum(data.count(f.encode()) for f in _fragments(secret))
    return full, partial


def secret_columns(conn: sqlite3.Connection, needles: list[str]) -> list[tuple[str, int]]:
    """(table.column, rows) for every column whose live rows hold one of ``needles``."""
    out = []
    for (tbl,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall():
        cols = [r[1] for r in conn.execute(f"PRAGMA table_info({tbl})")]
        for col in cols:
            cond = " OR ".join(f"instr(CAST({col} AS TEXT), ?) > 0" for _ in needles)
            n = conn.execute(f"SELECT COUNT(*) FROM {tbl} WHERE {cond}", needles).fetchone()[0]
            if n:
                out.append((f"{tbl}.{col}", n))
    return out


class _EchoHandler(BaseHTTPRequestHandler):
    """The HTTP target's server: echoes every credential it received, in every
    encoding (raw, JSON, URL, base64), into error bodies for 3 cases in 5."""

    stats: dict[str, int]
    planted: dict[str, str]
    lock = threading.Lock()

    def log_message(self, format: str, *args: Any) -> None:  # the stdlib's signature
        pass

    def _received(self) -> dict[str, str]:
        import base64
        from urllib.parse import parse_qs, urlsplit

        got: dict[str, str] = {}
        api_key = (self.headers.get("X-Api-Key") or "").encode("latin-1", "replace").decode("utf-8", "replace")
        got["header"] = api_key
        basic = (self.headers.get("Authorization") or "").removeprefix("Basic ")
        try:
            got["basic"] = base64.b64decode(basic).decode().partition(":")[2]
        except ValueError:
            got["basic"] = ""
        got["basic-b64"] = basic
        got["query"] = (parse_qs(urlsplit(self.path).query).get("key") or [""])[0]
        return got

    def do_POST(self) -> None:  # the stdlib's name
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        i = int(body.get("i", 0)) if isinstance(body, dict) else 0
        got = self._received()
        with self.lock:
            s = self.stats
            s["requests"] += 1
            for channel in ("header", "basic", "query"):
                s[f"{channel} received"] += got[channel] == self.planted[channel]
        echo_parts = [f"rejected {self.command} {self.path}", f"headers={dict(self.headers.items())}"]
        for channel in ("header", "basic", "query"):
            echo_parts += [f"{channel} {name}={form}" for name, form in encodings(got[channel]).items()]
        echo_parts.append(f"authorization={self.headers.get('Authorization')}")
        echo = "; ".join(echo_parts)
        kind = i % 5
        if kind == 0:
            self._send(400, echo.encode(), "text/plain; charset=utf-8", "400 echo")
        elif kind == 1:
            self._send(200, json.dumps({"error": echo}).encode(), "application/json", "200 error-field echo")
        elif kind == 2:
            self._send(503, json.dumps({"error": echo, "detail": echo}, ensure_ascii=False).encode(),
                       "application/json", "503 echo")
        else:
            params = {k: body.get(k) for k in ("x", "y", "mode")} if isinstance(body, dict) else {}
            out = harden_targets.answer(params, i)
            self._send(200, json.dumps({"result": out}).encode(), "application/json", "200 ok")

    def _send(self, status: int, payload: bytes, ctype: str, label: str) -> None:
        with self.lock:
            self.stats[label] = self.stats.get(label, 0) + 1
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _OpenAIKeyHandler(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that refuses every key the way OpenAI does:
    401 ``Incorrect API key provided: <key>`` (for the judge's and the society's LLM)."""

    stats: dict[str, int]
    planted: dict[str, str]
    lock = threading.Lock()

    def log_message(self, format: str, *args: Any) -> None:  # the stdlib's signature
        pass

    def do_POST(self) -> None:  # the stdlib's name
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        key = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        with self.lock:
            self.stats["llm requests"] += 1
            for channel in ("judge", "society"):
                self.stats[f"{channel} received"] += key == self.planted[channel]
        err = {"error": {"message": f"Incorrect API key provided: {key}. You can find your API key at "
                                    "https://platform.openai.com/account/api-keys.",
                         "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}
        payload = json.dumps(err).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def _serve(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


SECRET_CHANNELS = ("header", "basic", "query", "judge", "society", "python")
"""Where the ``secrets`` benchmark plants a credential (one env var each)."""
BASIC_USER = "harden-user"


def planted_secrets() -> dict[str, str]:
    """A fresh credential per channel, each with ``"`` and ``\\``; a non-ASCII one
    where the channel can carry it (HTTP headers and the OpenAI client's key are ASCII)."""
    def make(prefix: str, ascii_only: bool) -> str:
        a, b = _secrets.token_hex(10), _secrets.token_hex(10)
        return f"{prefix}-{a}\"\\{'' if ascii_only else 'é'}-{b}"
    return {"header": make("hdr", True), "basic": make("bas", False), "query": make("qry", False),
            "judge": make("sk-judge", True), "society": make("sk-society", True), "python": make("py", False)}


SECRET_ENV = {"header": "HARDEN_HEADER_VALUE", "basic": "HARDEN_BASIC_PASSWORD", "query": "HARDEN_QUERY_KEY",
              "judge": "HARDEN_JUDGE_KEY", "society": "HARDEN_SOCIETY_KEY", "python": "HARDEN_PY_TOKEN"}
"""The env var of each channel; ``HARDEN_HEADER_VALUE`` and ``HARDEN_QUERY_KEY`` are not named
like credentials on purpose (``*_VALUE``; ``*_KEY`` is): their use in the config makes them secrets."""


def _secrets_yaml(study: str, target: str, seed: int, population: int, generations: int, n_cases: int,
                  llm_port: int, db: Path) -> str:
    cases = [{"id": f"c{i:03d}", "input": {"i": i}, "expected": "yes"} for i in range(n_cases)]
    llm = f"{{model: openai/harden-model, api_base: \"http://127.0.0.1:{llm_port}/v1\""
    return (
        f"study: {study}\n" + target + PARAMS_YAML
        + "evaluation:\n  test_cases:\n    inline: " + json.dumps(cases) + "\n"
        "  metrics:\n"
        "    accuracy: {function: exact_match, weight: 1.0}\n"
        f"    judged: {{function: llm_judge, weight: 0.1, judge: {llm}, api_key_env: {SECRET_ENV['judge']},"
        " timeout_seconds: 5}}\n"
        "society:\n"
        "  enabled: true\n"
        "  learning: {rlp_enabled: true, sao_enabled: true}\n"
        "  agents: {evolution: 0.4, rlp: 0.3, sao: 0.3}\n"
        f"  llm: {llm}, api_key_env: {SECRET_ENV['society']}, timeout_seconds: 5, max_retries: 0}}\n"
        "  rlp: {G: 2}\n"
        "optimization:\n"
        f"  seed: {seed}\n"
        f"  evolution: {{population_size: {population}, generations: {generations}, elite_size: 1}}\n"
        "  execution: {mode: generational, concurrency: 4, early_stopping: {enabled: false}}\n"
        "  racing: {enabled: false}\n"
        "output:\n"
        f"  save_path: results-{study}\n"
        "  formats: [json, markdown, csv]\n"
        "  visualizations: [score_over_time, cost_vs_quality, parameter_importance, pareto_front]\n"
        "  plot_format: html\n"
        "  export_best_config: {enabled: true, format: yaml}\n"
        f"storage: {{path: {json.dumps(str(db))}}}\n"
    )


def cmd_secrets(cli: Cli, root: Path, quick: bool, seed: int) -> Verdict:
    planted = planted_secrets()
    population, generations, n_cases = (4, 2, 10) if quick else (6, 3, 10)
    print(f"secrets: a fresh credential in each of {len(SECRET_CHANNELS)} channels ({', '.join(SECRET_CHANNELS)}), "
          "each holding '\"' and '\\' (and a non-ASCII char where the channel carries one); the HTTP target's "
          "server echoes what it received in every encoding into error bodies for 3 of every 5 cases; a local "
          "OpenAI-compatible server answers the judge and the society LLM with 401 'Incorrect API key provided: "
          "<key>'; a Python target echoes its env token in every encoding in errors and outputs. Two studies "
          f"(HTTP, Python), population {population} x {generations} generations x {n_cases} cases each; every "
          "command's stdout+stderr, the database (+ -wal), output files and logs are searched for every encoding.\n")
    base = workdir(root, "secrets")
    stats: dict[str, int] = {"requests": 0, "header received": 0, "basic received": 0, "query received": 0,
                             "llm requests": 0, "judge received": 0, "society received": 0}
    http_server, port = _serve(type("Echo", (_EchoHandler,), {"stats": stats, "planted": planted}))
    llm_server, llm_port = _serve(type("OpenAI", (_OpenAIKeyHandler,), {"stats": stats, "planted": planted}))
    db = base / ".convergence" / "secrets.db"
    http_target = (
        "target:\n"
        "  type: http\n"
        f"  endpoint: \"http://127.0.0.1:{port}/x?key=${{{SECRET_ENV['query']}}}&plain=1\"\n"
        f"  auth: {{type: basic, username: {BASIC_USER}, password_env: {SECRET_ENV['basic']}}}\n"
        "  request:\n"
        "    method: POST\n"
        f"    headers: {{X-Api-Key: \"${{{SECRET_ENV['header']}}}\"}}\n"
        "    timeout_seconds: 10\n"
        "  response: {result_field: result, error_field: error}\n"
        "  retry: {max_retries: 1, backoff_initial_seconds: 0.01, backoff_max_seconds: 0.02}\n"
    )
    py_target = "target: {type: python, function: \"harden_targets:leaky\"}\n"
    (base / "http.yaml").write_text(_secrets_yaml("harden-secrets-http", http_target, seed + 5, population,
                                                  generations, n_cases, llm_port, db))
    (base / "py.yaml").write_text(_secrets_yaml("harden-secrets-py", py_target, seed + 6, population,
                                                generations, n_cases, llm_port, db))
    env = cli.env({SECRET_ENV[c]: planted[c] for c in SECRET_CHANNELS})
    procs: list[tuple[str, Proc]] = []
    wal_snapshots: list[bytes] = []
    try:
        for name in ("http", "py"):
            p = run_cli(cli, ["validate", f"{name}.yaml"], base, env, f"validate-{name}")
            procs.append((f"validate {name}", p))
            p = spawn(cli, ["optimize", f"{name}.yaml"], base, env, f"optimize-{name}")
            wal = Path(str(db) + "-wal")
            deadline = time.monotonic() + PROCESS_TIMEOUT
            while p.poll() is None and time.monotonic() < deadline:  # the -wal exists only while a run writes
                with contextlib.suppress(OSError):
                    wal_snapshots.append(wal.read_bytes())
                time.sleep(0.2)
            p.wait()
            procs.append((f"optimize {name}", p))
            o = outcome_line(p.stdout)
            if o is None:
                continue
            rid = str(o["run_id"])
            more = [("traces", ["traces", rid]), ("traces --json", ["traces", rid, "--json"]),
                    ("traces --errors-only", ["traces", rid, "--errors-only"]), ("show", ["show", rid]),
                    ("export", ["export", rid]), ("export --format json", ["export", rid, "--format", "json"]),
                    ("export --format python", ["export", rid, "--format", "python"]), ("runs", ["runs"]),
                    ("report", ["report", rid, "--out", str(base / f"report-{name}")]),
                    ("sao export", ["sao", "export", rid, "--all", "--out", str(base / f"sao-{name}.jsonl")])]
            for cmd, args in more:
                procs.append((f"{cmd} ({name} run {rid})",
                              run_cli(cli, [*args, "--db", str(db)], base, env, cmd.replace(" ", "_"))))
    finally:
        for server in (http_server, llm_server):
            server.shutdown()
            server.server_close()

    # channel x encoding hit counts
    hits: dict[tuple[str, str], int] = {}
    partial_hits: dict[str, int] = {}
    where_rows: list[list[Any]] = []

    def scan(where: str, data: bytes) -> None:
        found = []
        for c in SECRET_CHANNELS:
            for enc, form in encodings(planted[c], BASIC_USER if c == "basic" else "bot").items():
                n = data.count(form.encode())
                if n:
                    hits[(c, enc)] = hits.get((c, enc), 0) + n
                    found.append(f"{c}/{enc} x{n}")
            n = sum(data.count(f.encode()) for f in _fragments(planted[c]))
            if n:
                partial_hits[c] = partial_hits.get(c, 0) + n
                found.append(f"{c}/16-char piece x{n}")
        where_rows.append([where, len(data), ", ".join(found) or "-"])

    for suffix in ("", "-wal", "-shm"):  # the database's raw bytes first (before anything opens it again)
        f = Path(str(db) + suffix)
        scan(f"db file {f.name}" + ("" if f.exists() else " (absent)"), f.read_bytes() if f.exists() else b"")
    scan(f"db -wal read every 0.2 s during both runs ({len(wal_snapshots)} snapshots, "
         f"largest {max(map(len, wal_snapshots), default=0)} bytes)", b"\n".join(wal_snapshots))
    files = sorted(q for q in base.rglob("*") if q.is_file() and q.suffix not in (".yaml", ".py", ".pyc")
                   and ".convergence" not in q.parts and "logs" not in q.parts and "__pycache__" not in q.parts)
    clean_bytes = clean_files = 0
    for q in files:
        data = q.read_bytes()
        before = len(where_rows)
        scan(f"output {q.relative_to(base)}", data)
        if where_rows[-1][2] == "-":
            where_rows.pop()
            clean_bytes += len(data)
            clean_files += 1
        assert len(where_rows) <= before + 1
    where_rows.append([f"{clean_files} other output file(s) (reports, results, plots, SAO dataset)", clean_bytes, "-"])
    for name, pr in procs:
        scan(f"`{name}` stdout+stderr (exit {pr.rc})", (pr.stdout + pr.stderr).encode())
    print(table(["channel", "bytes", "secret forms found"], where_rows))
    print()
    n_enc = {c: len(encodings(planted[c], BASIC_USER if c == "basic" else "bot")) for c in SECRET_CHANNELS}
    print(table(["planted in", "env var", "encodings searched", "hits", "16-char pieces"],
                [[c, SECRET_ENV[c], n_enc[c], sum(v for (cc, _), v in hits.items() if cc == c),
                  partial_hits.get(c, 0)] for c in SECRET_CHANNELS]))
    print()
    print(table(list(stats), [list(stats.values())]))
    error_rows = society_rows = None
    if db.exists():
        try:
            with open_ro(db) as c:
                error_rows = c.execute("SELECT COUNT(*) FROM case_results WHERE error IS NOT NULL").fetchone()[0]
                needles = [f for ch in SECRET_CHANNELS for f in [*encodings(planted[ch]).values(),
                                                                 *_fragments(planted[ch])]]
                cols = secret_columns(c, needles)
                if cols:
                    print(table(["db table.column holding a secret", "rows"], [[k, n] for k, n in cols]))
                society_rows = c.execute("SELECT COUNT(*) FROM society_log").fetchone()[0] \
                    if c.execute("SELECT 1 FROM sqlite_master WHERE name='society_log'").fetchone() else None
        except sqlite3.Error as exc:
            print(f"  (cannot read {db}: {exc})")
    total, total_partial = sum(hits.values()), sum(partial_hits.values())
    planted_pairs = sum(n_enc.values())
    print(f"\n  {len(SECRET_CHANNELS)} channels x encodings = {planted_pairs} (channel, encoding) pairs searched "
          f"in {len(where_rows)} places; case results with an error stored: {error_rows}; society rows: "
          f"{society_rows}")
    v = Verdict("secrets")
    opts = [pr for name, pr in procs if name.startswith("optimize")]
    v.check(f"both studies ran (exits {[pr.rc for pr in opts]}) and made error rows to leak through ({error_rows})",
            len(opts) == 2 and all(pr.rc == 0 for pr in opts) and bool(error_rows))
    v.check("every HTTP credential reached the server on every request "
            f"({stats['header received']}, {stats['basic received']}, {stats['query received']} of "
            f"{stats['requests']})",
            stats["requests"] > 0 and all(stats[f"{c} received"] == stats["requests"]
                                          for c in ("header", "basic", "query")))
    v.check(f"the judge's and the society's keys reached the LLM server ({stats['judge received']}, "
            f"{stats['society received']} of {stats['llm requests']} requests)",
            stats["judge received"] > 0 and stats["society received"] > 0)
    v.check(f"every other command ran (exits {[pr.rc for name, pr in procs if not name.startswith('optimize')]})",
            all(pr.rc == 0 for name, pr in procs if not name.startswith(("optimize", "sao export"))))
    v.check(f"0 secret hits anywhere (got {total} whole, {total_partial} 16-char pieces)",
            total == 0 and total_partial == 0)
    v.check(f"the -wal was read while the runs wrote ({len(wal_snapshots)} snapshots)",
            any(len(w) > 0 for w in wal_snapshots))
    v.check("0 tracebacks", not any(has_traceback(pr.stderr) for _, pr in procs))
    return v


# --------------------------------------------------------------------------- main


COMMANDS: dict[str, Callable[[Cli, Path, bool, int], Verdict]] = {
    "two-process": cmd_two_process,
    "kill-resume": cmd_kill_resume,
    "kill-resume-async": cmd_kill_resume_async,
    "two-resume": cmd_two_resume,
    "secrets": cmd_secrets,
}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=[*COMMANDS, "all"])
    ap.add_argument("--quick", action="store_true", help="smaller and fewer repetitions (smoke test)")
    ap.add_argument("--seed", type=int, default=0, help="seed for kill times and run seeds")
    ap.add_argument("--src", type=Path, default=None,
                    help="run `python -m convergence` from this source tree instead of the venv's CLI")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (printed)")
    ap.add_argument("--totals-slack", type=int, default=0, metavar="N",
                    help="kill-resume (c): allow runs.total_calls to exceed the calls received by N per kill "
                         "(an attempt counted and committed, then killed before the target saw it); default 0")
    ap.add_argument("--repaid-slack", type=int, default=0, metavar="N",
                    help="kill-resume (b) and two-resume: allow N re-paid calls per kill beyond the concurrency "
                         "(results finished within the commit under way at the kill); default 0")
    args = ap.parse_args(argv)
    ap_repaid = args.repaid_slack
    global TOTALS_SLACK, REPAID_SLACK
    TOTALS_SLACK = args.totals_slack
    REPAID_SLACK = ap_repaid
    cli = Cli(args.src.resolve() if args.src else None)
    root = Path(tempfile.mkdtemp(prefix="convergence-hardening-"))
    print(f"CLI: {cli.describe()}\nwork dir: {root}\n")
    names = list(COMMANDS) if args.command == "all" else [args.command]
    verdicts = []
    try:
        for name in names:
            t0 = time.monotonic()
            print("=" * 100)
            v = COMMANDS[name](cli, root, args.quick, args.seed)
            v.print()
            print(f"({name}: {time.monotonic() - t0:.1f}s)\n")
            verdicts.append(v)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if len(verdicts) > 1:
        print("summary: " + ", ".join(f"{v.name} {'PASS' if v.passed else 'FAIL'}" for v in verdicts))
    return 0 if all(v.passed for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
