"""A damaged, empty, full or read-only project database: every command says so in one clear
line naming the file (exit 2), never a traceback, never writes into the refused file; a run whose
writes start failing stops at once, stores how it ended, and resumes once the disk is fixed; a run
whose report files cannot be written says that `convergence report N` writes them."""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest
from typer.testing import CliRunner

from convergence.api import StoreOpenError, optimize
from convergence.cli.app import app
from convergence.config.loader import load_config
from convergence.engine.loop import Optimizer
from convergence.storage.faults import DatabaseFileError
from convergence.storage.store import Store

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
pytestmark = pytest.mark.anyio
PAGE = 4096

TARGET = '''
import os
from pathlib import Path


def answer(params, value):
    block = os.environ.get("FAULTS_BLOCK_OUTPUTS")
    if block:  # a file where the outputs' folder goes: they cannot be written after the run
        Path(block).write_text("in the way")
    pad = " " * int(os.environ.get("FAULTS_PAD", "0"))  # bigger rows: a full disk shows sooner
    return ("yes" if params["x"] > 0.5 else "no") + pad
'''


def write_project(d: Path, *, generations: int = 2, warm_start: int = 0) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "faults_target.py").write_text(TARGET)
    cases = ", ".join(f'{{"id": "c{i}", "input": {i}, "expected": "yes"}}' for i in range(4))
    (d / "optimization.yaml").write_text(textwrap.dedent(f"""\
        study: faults
        target: {{type: python, function: "faults_target:answer", retry: {{max_retries: 0}}}}
        search_space:
          parameters:
            x: {{type: continuous, min: 0, max: 1, step: 0.05}}
        evaluation:
          test_cases:
            inline: [{cases}]
          metrics:
            accuracy: {{function: exact_match, weight: 1.0}}
        optimization:
          seed: 7
          evolution: {{population_size: 4, generations: {generations}, elite_size: 1}}
          execution: {{mode: generational, concurrency: 2, early_stopping: {{enabled: false}}}}
          racing: {{enabled: false}}
          warm_start: {warm_start}
        output: {{save_path: results}}
        storage: {{path: project.db}}
        """))
    return d / "optimization.yaml"


def invoke(*args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def finished_db(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a project database holding one finished run, made by the CLI."""
    proj = tmp_path_factory.mktemp("base")
    cfg = write_project(proj)
    result = invoke("optimize", str(cfg), "-q", "--no-outputs")
    assert result.exit_code == 0, result.output
    with sqlite3.connect(proj / "project.db") as con:  # everything in the main file, as a copied file has it
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return (proj / "project.db").read_bytes()


def _root_page(data: bytes, table: str) -> int:
    with tempfile.TemporaryDirectory() as d:
        copy = Path(d) / "copy.db"
        copy.write_bytes(data)
        with closing(sqlite3.connect(copy)) as con:
            (page,) = con.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    return int(page)


def zero_bytes(data: bytes) -> bytes:
    return b""


def truncated(data: bytes) -> bytes:
    return data[: 2 * PAGE]


def garbage_after_header(data: bytes) -> bytes:
    rng = random.Random(1)
    return data[:100] + bytes(rng.randrange(256) for _ in range(len(data) - 100))


def runs_table_page_overwritten(data: bytes) -> bytes:
    """A valid header and schema, the runs table's page random: only reading it tells."""
    page = _root_page(data, "runs") - 1
    rng = random.Random(2)
    return data[: page * PAGE] + bytes(rng.randrange(256) for _ in range(PAGE)) + data[(page + 1) * PAGE:]


DAMAGES: dict[str, Callable[[bytes], bytes]] = {
    "zero-byte": zero_bytes, "truncated": truncated, "garbage-after-header": garbage_after_header,
    "runs-page-overwritten": runs_table_page_overwritten,
}
COMMANDS = {
    "runs": ["runs", "--db", "{db}"],
    "show": ["show", "1", "--db", "{db}"],
    "traces": ["traces", "1", "--db", "{db}"],
    "export": ["export", "1", "--db", "{db}"],
    "report": ["report", "1", "--db", "{db}", "--out", "{out}"],
    "validate": ["validate", "{cfg}"],
    "optimize": ["optimize", "{cfg}", "-q", "--no-outputs"],
}


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_refuses_a_damaged_database_in_one_clear_line_and_leaves_it_untouched(
        tmp_path: Path, finished_db: bytes, damage: str, command: str) -> None:
    cfg = write_project(tmp_path)
    db = tmp_path / "project.db"
    damaged = DAMAGES[damage](finished_db)
    db.write_bytes(damaged)
    args = [a.format(db=db, cfg=cfg, out=tmp_path / "out") for a in COMMANDS[command]]

    result = invoke(*args)  # an exception would escape here (catch_exceptions=False): no traceback

    assert result.exit_code == 2, result.output
    assert str(db) in result.output and "damaged" in result.output, result.output
    assert "restore it from a backup, or move it away" in result.output
    assert db.read_bytes() == damaged  # never repaired, truncated or overwritten
    assert not (tmp_path / "out").exists()


async def test_an_empty_file_is_not_taken_for_a_new_database(tmp_path: Path) -> None:
    db = tmp_path / "project.db"
    db.touch()
    with pytest.raises(DatabaseFileError, match="empty file") as caught:
        await Store.open(db)
    assert caught.value.kind == "damaged" and caught.value.path == db
    assert db.stat().st_size == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["project.db"]
    # a path that does not exist is a new database, created whole
    async with await Store.open(tmp_path / "new.db") as store:
        assert await store.schema_version() > 0
    assert not [p for p in tmp_path.iterdir() if "convergence-tmp" in p.name]


async def test_another_programs_sqlite_file_is_refused_not_filled_with_our_tables(tmp_path: Path) -> None:
    db = tmp_path / "theirs.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    before = db.read_bytes()
    with pytest.raises(DatabaseFileError, match="another program"):
        await Store.open(db)
    assert db.read_bytes() == before


def _damage_a_value(db: Path, sql: str) -> None:
    """A stored text that is not UTF-8: damage that no page check sees."""
    with closing(sqlite3.connect(db)) as con, con:
        con.execute(sql)


def test_validate_reads_the_stored_values_of_runs_and_trials_not_only_the_pages(
        tmp_path: Path, finished_db: bytes) -> None:
    cfg = write_project(tmp_path)
    db = tmp_path / "project.db"
    db.write_bytes(finished_db)
    _damage_a_value(db, "UPDATE trials SET normalized_json = CAST(x'7bff' AS TEXT) WHERE run_id = 1")
    result = invoke("validate", str(cfg))
    assert result.exit_code == 2 and str(db) in result.output and "damaged" in result.output, result.output


async def test_optimize_reading_a_damaged_value_after_the_run_started_stores_the_run_as_failed(
        tmp_path: Path, finished_db: bytes) -> None:
    """Warm start reads the earlier run's trials after the new run started (cases given: no preflight)."""
    cfg = write_project(tmp_path, warm_start=2)
    db = tmp_path / "project.db"
    db.write_bytes(finished_db)
    _damage_a_value(db, "UPDATE trials SET config_json = CAST(x'7b22ff' AS TEXT) WHERE run_id = 1")
    loaded = load_config(cfg)

    with pytest.raises(DatabaseFileError, match="damaged") as caught:
        await optimize(loaded, cases=load_cases_of(loaded), write_outputs=False)

    assert caught.value.path == db
    with closing(sqlite3.connect(db)) as con:
        status, reason = con.execute("SELECT status, stop_reason FROM runs WHERE id = 2").fetchone()
    assert status == "failed" and "damaged" in reason


def test_resume_meeting_a_damaged_result_exits_2_naming_the_file(tmp_path: Path, finished_db: bytes) -> None:
    """A stored case result (not checked by validate: the large table) read back by --resume."""
    cfg = write_project(tmp_path)
    db = tmp_path / "project.db"
    db.write_bytes(finished_db)
    _damage_a_value(db, "UPDATE runs SET status = 'interrupted' WHERE id = 1")
    _damage_a_value(db, "UPDATE case_results SET output = CAST(x'ff' AS TEXT) WHERE run_id = 1")

    result = invoke("optimize", str(cfg), "--resume", "-q", "--no-outputs")

    assert result.exit_code == 2, result.output
    assert str(db) in result.output and "damaged" in result.output and "--resume" in result.output


async def _run_with_writer(cfg: Path, how: str) -> tuple[DatabaseFileError, float]:
    """Run the study with the writer's connection limited once the run is open: a full disk
    (``max_page_count`` at the file's size) or a read-only database (``query_only``; chmod does not
    stop root, who runs these tests in CI)."""
    loaded = load_config(cfg)
    store = await Store.open(loaded.db_path)

    def limit_writes(run_id: int) -> None:
        wdb = store._wdb  # the group-commit writer's own connection: where SQLite reports the fault
        if how == "full":
            pages = wdb.execute("PRAGMA page_count").fetchone()[0]
            wdb.execute(f"PRAGMA max_page_count = {pages}")
        else:
            wdb.execute("PRAGMA query_only = 1")

    started = time.monotonic()
    try:
        optimizer = Optimizer(loaded, store)
        optimizer.on_run_started = limit_writes
        with pytest.raises(DatabaseFileError) as caught:
            await optimizer.run()
    finally:
        await store.close()
    return caught.value, time.monotonic() - started


@pytest.mark.parametrize("how", ["full", "read-only"])
def test_a_database_that_stops_taking_writes_mid_run_stops_the_run_with_its_status_stored_and_resume_finishes(
        tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write_project(tmp_path, generations=3)
    monkeypatch.setenv("FAULTS_PAD", "3000")
    error, seconds = anyio.run(_run_with_writer, cfg, how)

    assert error.kind == how and str(tmp_path / "project.db") in str(error)
    assert ("disk is full" if how == "full" else "read-only") in str(error)
    assert seconds < 30  # at once, not after the writer's retries for a lock
    with sqlite3.connect(tmp_path / "project.db") as con:
        status, reason = con.execute("SELECT status, stop_reason FROM runs WHERE id = 1").fetchone()
        stored_cases = con.execute("SELECT COUNT(*) FROM test_cases WHERE run_id = 1").fetchone()[0]
    assert status == "failed" and ("disk is full" if how == "full" else "read-only") in reason
    assert stored_cases == 4  # what was stored before the fault is still there

    resumed = invoke("optimize", str(cfg), "--resume", "-q", "--no-outputs")  # the disk is fine again
    assert resumed.exit_code == 0, resumed.output
    with sqlite3.connect(tmp_path / "project.db") as con:
        assert con.execute("SELECT id, status FROM runs").fetchall() == [(1, "finished")]
        assert con.execute("SELECT COUNT(*) FROM trials WHERE run_id = 1 AND status = 'complete'").fetchone()[0] >= 4


def test_report_files_that_cannot_be_written_after_the_run_say_that_report_writes_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write_project(tmp_path)
    monkeypatch.setenv("FAULTS_BLOCK_OUTPUTS", str(tmp_path / "results"))  # a file where the folder goes

    result = invoke("optimize", str(cfg), "-q")

    assert result.exit_code == 1, result.output
    assert "cannot write the outputs of run 1" in result.output and str(tmp_path / "results") in result.output
    assert "`convergence report 1`" in result.output
    with sqlite3.connect(tmp_path / "project.db") as con:
        assert con.execute("SELECT status FROM runs WHERE id = 1").fetchone() == ("finished",)

    (tmp_path / "results").unlink()
    monkeypatch.delenv("FAULTS_BLOCK_OUTPUTS")
    again = invoke("optimize", str(cfg), "--resume", "-q")  # --resume says what restores them
    assert again.exit_code == 2 and "`convergence report 1`" in again.output, again.output
    restored = invoke("report", "1", "--config", str(cfg))
    assert restored.exit_code == 0, restored.output
    assert (tmp_path / "results" / "run-1" / "results.json").stat().st_size > 0


async def test_the_python_api_gets_the_same_clear_error(tmp_path: Path) -> None:
    cfg = write_project(tmp_path)
    (tmp_path / "project.db").touch()
    loaded = load_config(cfg)
    cases = load_cases_of(loaded)
    with pytest.raises(StoreOpenError, match="empty file") as caught:
        await optimize(loaded, cases=cases, write_outputs=False)  # cases given: no preflight, the store refuses
    assert str(tmp_path / "project.db") in str(caught.value)
    assert (tmp_path / "project.db").stat().st_size == 0


def load_cases_of(loaded: Any) -> list[Any]:
    from convergence.core.types import TestCase

    return [TestCase(id=f"c{i}", input=i, expected="yes") for i in range(4)]


READ_ONLY_EVERYWHERE = '''
import asyncio, sys, anyio
from convergence.config.loader import load_config
from convergence.engine.loop import Optimizer
from convergence.storage.store import Store

async def main():
    loaded = load_config(sys.argv[1])
    store = await Store.open(loaded.db_path)
    def limit(run_id):  # neither the writer nor the status update can write any more
        store._wdb.execute("PRAGMA query_only = 1")
        asyncio.get_running_loop().create_task(store._db.execute("PRAGMA query_only = 1"))  # queued in order
    optimizer = Optimizer(loaded, store)
    optimizer.on_run_started = limit
    try:
        await optimizer.run()
    finally:
        await store.close()

anyio.run(main)
'''


def test_a_run_that_cannot_even_store_its_end_is_shown_resumable_and_resume_finishes_it(tmp_path: Path) -> None:
    cfg = write_project(tmp_path)
    proc = subprocess.run([sys.executable, "-c", READ_ONLY_EVERYWHERE, str(cfg)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 1 and "DatabaseFileError" in proc.stderr and "read-only" in proc.stderr
    with sqlite3.connect(tmp_path / "project.db") as con:
        assert con.execute("SELECT status FROM runs").fetchall() == [("running",)]  # its end could not be written

    listed = invoke("runs", "--db", str(tmp_path / "project.db"))
    assert listed.exit_code == 0 and "its process is gone: --resume continues it" in listed.output, listed.output
    resumed = invoke("optimize", str(cfg), "--resume", "-q", "--no-outputs")
    assert resumed.exit_code == 0, resumed.output
    with sqlite3.connect(tmp_path / "project.db") as con:
        assert con.execute("SELECT id, status FROM runs").fetchall() == [(1, "finished")]
