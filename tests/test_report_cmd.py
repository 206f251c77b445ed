"""`convergence report RUN`: every output of any stored run, (re)written from
the store — and outputs that a kill can never leave truncated."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from typer.testing import CliRunner

from convergence.cli.app import app
from convergence.config.loader import load_config, resolve_path
from convergence.engine.loop import Optimizer
from convergence.reporting.outputs import write_run_outputs
from convergence.storage.atomic import TMP_MARK
from convergence.storage.store import Store

ROOT = Path(__file__).resolve().parents[1]
ALL_FILES = {"results.json", "results.csv", "report.md", "score_over_time.png", "cost_vs_quality.png",
             "best_config.yaml"}
"""The example's runs have too few configurations for parameter importance: no plot, the report says why."""
runner = CliRunner()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    proj = tmp_path / "proj"
    shutil.copytree(ROOT / "examples" / "python_function", proj)
    text = (proj / "optimization.yaml").read_text()
    (proj / "optimization.yaml").write_text(text.replace("generations: 8", "generations: 3"))
    return proj


def invoke(*args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


def assert_whole(run_dir: Path, names: set[str] = ALL_FILES) -> None:
    """Every output is there and complete (parses to the end)."""
    assert {p.name for p in run_dir.iterdir()} == names
    doc = json.loads((run_dir / "results.json").read_text())
    with (run_dir / "results.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(doc["trials"]) == doc["run"]["n_trials"]
    md = (run_dir / "report.md").read_text()
    assert md.startswith("# Convergence report") and "## Parameter importance" in md
    assert "- Parameter importance: not drawn, too few complete configurations" in md
    for png in (p for p in run_dir.iterdir() if p.suffix == ".png"):
        data = png.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82"), png.name
    if "best_config.yaml" in names:
        assert set(yaml.safe_load((run_dir / "best_config.yaml").read_text())) == {
            "handle_negation", "negation_window", "negative_weight", "threshold"}


def db_of(project: Path) -> Path:
    loaded = load_config(project / "optimization.yaml")
    return resolve_path(loaded.base_dir, loaded.config.storage.path)


# --------------------------------------------------------------------------- finished runs


def test_report_regenerates_every_file_of_a_finished_run_whose_results_were_deleted(
        project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    yaml_path = project / "optimization.yaml"
    assert invoke("optimize", str(yaml_path), "-q").exit_code == 0
    run_dir = project / "results" / "run-1"
    assert_whole(run_dir)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.suffix != ".png"}
    shutil.rmtree(project / "results")

    result = invoke("report", "1", "--config", str(yaml_path))
    assert result.exit_code == 0, result.output
    assert "finished" in result.output and "report.md" in result.output
    assert_whole(run_dir)
    for name, data in before.items():  # same run, same files (PNGs only differ in nothing we check)
        assert (run_dir / name).read_bytes() == data, name

    # No --config, run from elsewhere: the stored config file's directory decides where.
    shutil.rmtree(project / "results")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = invoke("report", "1", "--db", str(db_of(project)))
    assert result.exit_code == 0, result.output
    assert_whole(run_dir)
    assert not list(elsewhere.iterdir())

    # --out and --formats: only the asked report files (plots and export follow the config).
    result = invoke("report", "1", "--db", str(db_of(project)), "--out", str(tmp_path / "custom"),
                    "--formats", "json,md")
    assert result.exit_code == 0, result.output
    assert {p.name for p in (tmp_path / "custom").iterdir()} == ALL_FILES - {"results.csv"}


def test_report_uses_the_stored_output_settings_without_a_config(
        project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    yaml_path = project / "optimization.yaml"
    text = yaml_path.read_text().replace(
        "  save_path: results",
        "  save_path: elsewhere\n  formats: [json]\n  visualizations: []\n"
        "  export_best_config: {enabled: true, format: json}")
    yaml_path.write_text(text)
    assert invoke("optimize", str(yaml_path), "-q").exit_code == 0
    shutil.rmtree(project / "elsewhere")
    yaml_path.unlink()  # the stored config is all there is now: save_path resolves against the cwd

    monkeypatch.chdir(tmp_path)
    result = invoke("report", "1", "--db", str(project / ".convergence" / "convergence.db"))
    assert result.exit_code == 0, result.output
    assert {p.name for p in (tmp_path / "elsewhere" / "run-1").iterdir()} == {"results.json", "best_config.json"}
    meta = json.loads((tmp_path / "elsewhere" / "run-1" / "best_config.json").read_text())["metadata"]
    doc = json.loads((tmp_path / "elsewhere" / "run-1" / "results.json").read_text())
    assert meta["trial_id"] == doc["best"]["trial_id"] and meta["generation"] == doc["best"]["generation"] + 1


def test_report_of_an_unknown_run_or_format_is_a_clear_error(project: Path) -> None:
    assert invoke("optimize", str(project / "optimization.yaml"), "-q").exit_code == 0
    db = str(db_of(project))
    result = runner.invoke(app, ["report", "9", "--db", db])
    assert result.exit_code == 2 and "no run 9" in result.output
    result = runner.invoke(app, ["report", "1", "--db", db, "--formats", "pdf"])
    assert result.exit_code == 2 and "pdf" in result.output


# --------------------------------------------------------------------------- unfinished runs


class _StopAt:
    """Progress hooks that stop the run after its second generation."""

    def __init__(self, how: str, scope: anyio.CancelScope) -> None:
        self.how, self.scope = how, scope

    def generation_started(self, *args: Any) -> None:
        pass

    def case_finished(self, *args: Any) -> None:
        pass

    def trial_finished(self, *args: Any) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def generation_finished(self, generation: int, *args: Any) -> None:
        if generation == 1:
            if self.how == "failed":
                raise RuntimeError("the target's backend went away")
            self.scope.cancel()  # what Ctrl-C / a cancelled task does


async def _unfinished_run(project: Path, how: str) -> int:
    loaded = load_config(project / "optimization.yaml")
    async with await Store.open(db_of(project)) as store:
        with anyio.CancelScope() as scope:
            try:
                await Optimizer(loaded, store, events=_StopAt(how, scope)).run()
            except (RuntimeError, ExceptionGroup):  # the RuntimeError, possibly inside an ExceptionGroup
                assert how == "failed"
        (run,) = await store.list_runs()
        return run.id


@pytest.mark.parametrize("how", ["interrupted", "failed", "killed"])
def test_report_writes_every_output_of_an_unfinished_run(project: Path, how: str) -> None:
    run_id = anyio.run(_unfinished_run, project, "interrupted" if how == "killed" else how)
    if how == "killed":  # SIGKILL mid-run: the row still says running
        with sqlite3.connect(db_of(project)) as con:
            con.execute("UPDATE runs SET status='running', finished_at=NULL WHERE id=?", (run_id,))
    status = {"killed": "running"}.get(how, how)

    result = invoke("report", str(run_id), "--config", str(project / "optimization.yaml"))
    assert result.exit_code == 0, result.output
    assert status in result.output
    run_dir = project / "results" / f"run-{run_id}"
    assert_whole(run_dir)
    doc = json.loads((run_dir / "results.json").read_text())
    assert doc["run"]["status"] == status and {t["generation"] for t in doc["trials"]} == {0, 1}
    assert f"- **Status:** {status}" in (run_dir / "report.md").read_text()


def test_a_run_stopped_before_any_trial_still_gets_its_report_files(project: Path) -> None:
    class StopAtOnce(_StopAt):
        def generation_started(self, *args: Any) -> None:
            self.scope.cancel()

    async def go() -> list[Path]:
        loaded = load_config(project / "optimization.yaml")
        async with await Store.open(db_of(project)) as store:
            with anyio.CancelScope() as scope:
                await Optimizer(loaded, store, events=StopAtOnce("interrupted", scope)).run()
            (run,) = await store.list_runs()
            return await write_run_outputs(store, run.id)  # from Python: stored settings, stored path

    written = anyio.run(go)
    names = {p.name for p in written}
    assert {"results.json", "results.csv", "report.md"} <= names and "best_config.yaml" not in names
    assert all(p.parent == project / "results" / "run-1" for p in written)
    assert "no best configuration" in (project / "results" / "run-1" / "report.md").read_text()


# --------------------------------------------------------------------------- a real kill


KILLER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path

    import convergence.storage.atomic as atomic

    marker, victim = Path(sys.argv[1]), sys.argv[2]
    real_fsync = atomic._fsync_file

    def fsync_then_hang(path):
        if Path(path).name.startswith("." + victim):
            os.truncate(path, os.path.getsize(path) // 2)  # as if killed half-way through the write
            marker.write_text(str(path))
            time.sleep(600)  # the parent SIGKILLs us here
        real_fsync(path)

    atomic._fsync_file = fsync_then_hang
    from convergence.cli.app import app
    app(sys.argv[3:], prog_name="convergence")
""")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
@pytest.mark.parametrize("victim", ["report.md", "score_over_time.png", "results.json"])
def test_sigkill_while_writing_outputs_leaves_no_truncated_file_and_report_restores_them(
        project: Path, tmp_path: Path, victim: str) -> None:
    marker = tmp_path / "killed-while-writing"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLER, str(marker), victim, "optimize", "optimization.yaml", "-q"],
        cwd=project, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, "the run never reached its outputs"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    run_dir = project / "results" / "run-1"
    left = {p.name for p in run_dir.iterdir()}
    assert victim not in left  # the half-written file never reached its final path ...
    assert [n for n in left if TMP_MARK in n]  # ... it died as a hidden temp file
    for name in left - {n for n in left if TMP_MARK in n}:  # whatever was written before is whole
        data = (run_dir / name).read_bytes()
        if name.endswith(".png"):
            assert data.endswith(b"IEND\xaeB`\x82"), name
        elif name == "results.json":
            json.loads(data)

    with sqlite3.connect(db_of(project)) as con:  # the optimization itself had finished
        assert con.execute("SELECT status FROM runs WHERE id=1").fetchone() == ("finished",)

    result = invoke("report", "1", "--config", str(project / "optimization.yaml"))
    assert result.exit_code == 0, result.output
    assert_whole(run_dir)  # every file back, the stale temp file gone
