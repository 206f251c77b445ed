"""The project database: WAL, versioned migrations, durable buffered writes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from convergence.core.types import CallResult, CaseResult, TrialRecord
from convergence.storage.migrations import LATEST, MIGRATIONS
from convergence.storage.store import StorageError, Store

pytestmark = pytest.mark.anyio


async def test_new_database_is_wal_and_at_the_latest_schema(tmp_path: Path) -> None:
    db = tmp_path / "nested" / "dir" / "c.db"
    async with await Store.open(db) as store:
        assert await store.schema_version() == LATEST
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"studies", "runs", "generations", "trials", "case_results", "test_cases"} <= tables


async def test_an_old_database_is_migrated_in_place_keeping_its_data(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:  # a database written by the first release
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.executescript(MIGRATIONS[0][1])
        conn.execute("INSERT INTO schema_version VALUES (1)")
        conn.execute("INSERT INTO studies(name, created_at) VALUES ('s', 0)")
        conn.execute(
            "INSERT INTO runs(study_id, status, config_json, started_at) VALUES (1, 'finished', '{}', 0)"
        )
    async with await Store.open(db) as store:
        assert await store.schema_version() == LATEST
        [run] = await store.list_runs()
        assert run.study == "s" and run.status == "finished"


async def test_a_database_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    async with await Store.open(db):
        pass
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO schema_version VALUES (?)", (LATEST + 1,))
    with pytest.raises(StorageError, match="newer than this Convergence"):
        await Store.open(db)


async def test_buffered_case_results_and_trials_are_durable_after_close(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    async with await Store.open(db) as store:
        run_id = await store.start_run("s", {"a": 1}, seed=5, config_path=None)
        for i in range(50):
            call = CallResult(output={"answer": i}, latency_ms=1.5, cost_usd=0.001, prompt_tokens=3,
                              completion_tokens=2, attempts=2 if i == 0 else 1, error=None if i else "timeout: x")
            store.record_case(run_id, "h1", CaseResult(f"c{i}", call, {"acc": float(i % 2)}))
        store.record_trial(run_id, TrialRecord({"x": 1}, "h1", 0, "evolution", score=0.5, n_cases=50))
        # nothing forced a flush yet: closing must write the buffer
    async with await Store.open(db) as store:
        cases = (await store.case_results(run_id))["h1"]
        assert len(cases) == 50
        assert cases["c0"].call.error == "timeout: x" and cases["c0"].call.attempts == 2
        assert cases["c7"].call.output == '{"answer":7}' and cases["c7"].metrics == {"acc": 1.0}
        [trial] = await store.trials(run_id)
        assert trial.score == 0.5 and trial.config == {"x": 1}
        # a later update of the same trial replaces it, it does not duplicate it
        store.record_trial(run_id, TrialRecord({"x": 1}, "h1", 0, "evolution", score=0.9, n_cases=50))
        await store.flush()
        assert [t.score for t in await store.trials(run_id)] == [0.9]


async def test_unfinished_run_is_found_for_resume_and_finished_is_not(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "c.db") as store:
        first = await store.start_run("s", {}, seed=1, config_path=None)
        await store.finish_run(first, "finished", "done", total_calls=1, total_cost_usd=0, elapsed_seconds=1)
        assert await store.latest_unfinished_run("s") is None
        second = await store.start_run("s", {}, seed=2, config_path=None)
        found = await store.latest_unfinished_run("s")
        assert found is not None and found.id == second and found.seed == 2
        assert await store.latest_unfinished_run("other") is None
