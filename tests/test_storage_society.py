"""The agent society's storage: what agents learn outlives a run and the
process (per study, per agent); what each agent did per generation is logged."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from convergence.storage.migrations import LATEST, MIGRATIONS
from convergence.storage.store import LeaseLostError, Store

pytestmark = pytest.mark.anyio


async def test_experiences_outlive_the_process_and_the_run_isolated_per_study_and_agent(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    async with await Store.open(db) as store:
        study = await store.study_id("s")
        other_study = await store.study_id("other")
        first = await store.start_run("s", {}, seed=1, config_path=None)
        store.record_experience(study, "bandit", first, 0, {"arm": "a", "x": [1, 2]}, 0.5)
        store.record_experience(study, "bandit", first, 1, {"arm": "b"}, None)
        store.record_experience(study, "llm", first, 0, {"prompt": "p"}, 1.0)
        store.record_experience(other_study, "bandit", 99, 0, {"arm": "z"}, 0.1)
        await store.finish_run(first, "finished", "done", total_calls=0, total_cost_usd=0, elapsed_seconds=0)
    async with await Store.open(db) as store:
        study = await store.study_id("s")  # the same study, found again
        second = await store.start_run("s", {}, seed=2, config_path=None)
        store.record_experience(study, "bandit", second, 0, {"arm": "c"}, 0.7)
        await store.durable()
        rows = await store.experiences(study, "bandit")
        assert [(r.run_id, r.generation, r.reward, r.data) for r in rows] == [
            (first, 0, 0.5, {"arm": "a", "x": [1, 2]}),
            (first, 1, None, {"arm": "b"}),
            (second, 0, 0.7, {"arm": "c"}),
        ]
        assert rows[0].id < rows[1].id < rows[2].id and all(r.created_at <= time.time() for r in rows)
        assert [r.data for r in await store.experiences(study, "llm")] == [{"prompt": "p"}]
        assert [r.data for r in await store.experiences(await store.study_id("other"), "bandit")] == [{"arm": "z"}]
        assert await store.experiences(study, "nobody") == []


async def test_study_id_creates_a_missing_study_once_and_leaves_no_transaction_open(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    async with await Store.open(db) as store:
        sid = await store.study_id("new")
        assert await store.study_id("new") == sid
        run_id = await store.start_run("new", {}, seed=1, config_path=None)  # BEGIN IMMEDIATE works after it
        assert (await store.list_runs("new"))[0].id == run_id
        with sqlite3.connect(db, timeout=1) as conn:  # another process can write at once
            conn.execute("INSERT INTO studies(name, created_at) VALUES ('x', 0)")
            assert conn.execute("SELECT id FROM studies WHERE name='new'").fetchone()[0] == sid


async def test_buffered_rows_are_seen_by_reads_after_durable(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "c.db") as store:
        sid = await store.study_id("s")
        store.record_experience(sid, "a", 1, 0, {}, 0.0)
        store.save_agent_memory(sid, "a", {"w": 1})
        store.record_society(1, 0, "a", share=1.0, asked=4, proposed=4, status="ok", seconds=0.1, detail=None)
        await store.durable()
        assert len(await store.experiences(sid, "a")) == 1
        assert await store.agent_memory(sid, "a") == {"w": 1}
        assert len(await store.society_log(1)) == 1


async def test_limit_returns_the_newest_oldest_first(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "c.db") as store:
        sid = await store.study_id("s")
        for i in range(10):
            store.record_experience(sid, "a", 1, i, {"i": i}, float(i))
        await store.flush()
        assert [r.data["i"] for r in await store.experiences(sid, "a", limit=3)] == [7, 8, 9]
        assert [r.data["i"] for r in await store.experiences(sid, "a", limit=50)] == list(range(10))
        assert await store.experiences(sid, "a", limit=0) == []


async def test_prune_keeps_exactly_the_newest_of_that_agent_only(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "c.db") as store:
        sid = await store.study_id("s")
        other = await store.study_id("t")
        for i in range(10):
            store.record_experience(sid, "a", 1, i, {"i": i}, None)
            store.record_experience(sid, "b", 1, i, {"i": i}, None)
            store.record_experience(other, "a", 2, i, {"i": i}, None)
        store.prune_experiences(sid, "a", keep=4)  # ordered after the rows recorded before it
        store.record_experience(sid, "a", 1, 10, {"i": 10}, None)
        await store.durable()
        assert [r.data["i"] for r in await store.experiences(sid, "a")] == [6, 7, 8, 9, 10]
        assert len(await store.experiences(sid, "b")) == 10
        assert len(await store.experiences(other, "a")) == 10
        store.prune_experiences(sid, "a", keep=20)  # fewer rows than keep: nothing goes
        store.prune_experiences(sid, "b", keep=0)  # keep nothing
        await store.durable()
        assert len(await store.experiences(sid, "a")) == 5
        assert await store.experiences(sid, "b") == []
        with pytest.raises(ValueError, match="keep"):
            store.prune_experiences(sid, "a", keep=-1)


async def test_agent_memory_is_replaced_and_survives_a_reopen(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    async with await Store.open(db) as store:
        sid = await store.study_id("s")
        assert await store.agent_memory(sid, "a") is None
        state = {"policy": [0.1, 0.9], "norm": {"mean": 0.0}}
        store.save_agent_memory(sid, "a", state)
        state["policy"] = ["mutated after the call"]  # what was saved is what was passed at the call
        store.save_agent_memory(sid, "b", {"other": True})
        await store.durable()
        assert await store.agent_memory(sid, "a") == {"policy": [0.1, 0.9], "norm": {"mean": 0.0}}
        store.save_agent_memory(sid, "a", {"policy": [0.5, 0.5]})
        # closing writes the buffer
    async with await Store.open(db) as store:
        sid = await store.study_id("s")
        assert await store.agent_memory(sid, "a") == {"policy": [0.5, 0.5]}
        assert await store.agent_memory(sid, "b") == {"other": True}
        assert await store.agent_memory(await store.study_id("t"), "a") is None
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM agent_memory").fetchone()[0] == 2


async def test_society_log_keeps_the_last_record_of_a_generation_in_order(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    async with await Store.open(db) as store:
        run_id = await store.start_run("s", {}, seed=1, config_path=None)
        other = await store.start_run("s", {}, seed=2, config_path=None)
        store.record_society(run_id, 1, "llm", share=0.5, asked=2, proposed=1, status="timeout", seconds=30.0,
                             detail={"error": "slow"})
        store.record_society(run_id, 0, "random", share=0.3, asked=3, proposed=3, status="ok", seconds=0.01,
                             detail=None)
        store.record_society(run_id, 0, "bandit", share=0.7, asked=7, proposed=6, status="ok", seconds=0.02,
                             detail={"arms": [1, 2]})
        store.record_society(other, 0, "bandit", share=1.0, asked=8, proposed=8, status="ok", seconds=0.0,
                             detail=None)
    async with await Store.open(db) as store:  # a resumed run records generation 1 again
        store.record_society(run_id, 1, "llm", share=0.4, asked=2, proposed=2, status="ok", seconds=3.0,
                             detail=None)
        await store.durable()
        log = await store.society_log(run_id)
        assert [(r.generation, r.agent) for r in log] == [(0, "bandit"), (0, "random"), (1, "llm")]
        assert log[0].share == 0.7 and log[0].asked == 7 and log[0].proposed == 6 and log[0].detail == {"arms": [1, 2]}
        assert (log[2].status, log[2].proposed, log[2].seconds, log[2].detail) == ("ok", 2, 3.0, None)
        assert [r.agent for r in await store.society_log(other)] == ["bandit"]
        assert await store.society_log(12345) == []


async def test_rows_of_a_process_that_lost_its_run_are_not_written(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    async with await Store.open(db) as store:
        sid = await store.study_id("s")
        run_id = await store.start_run("s", {}, seed=1, config_path=None)
        store.track_run(run_id, lambda: (0, 0.0, 0.0))
        with sqlite3.connect(db) as conn:  # another process takes the run over
            conn.execute("UPDATE runs SET owner='elsewhere:1:x', heartbeat_at=? WHERE id=?", (time.time(), run_id))
        store.record_experience(sid, "a", run_id, 0, {}, 1.0)
        store.save_agent_memory(sid, "a", {"w": 1})
        store.record_society(run_id, 0, "a", share=1.0, asked=1, proposed=1, status="ok", seconds=0.0, detail=None)
        with pytest.raises(LeaseLostError, match="another process took over"):
            await store.durable()
    with sqlite3.connect(db) as conn:
        for table in ("agent_experience", "agent_memory", "society_log"):
            assert conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0


async def test_a_version_3_database_upgrades_to_4_keeping_its_runs(tmp_path: Path) -> None:
    db = tmp_path / "v3.db"
    with sqlite3.connect(db) as conn:  # a database written by the release with schema version 3
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for version, sql in MIGRATIONS[:3]:
            conn.executescript(sql)
            conn.execute("INSERT INTO schema_version VALUES (?)", (version,))
        conn.execute("INSERT INTO studies(name, created_at) VALUES ('s', 0)")
        conn.execute(
            "INSERT INTO runs(study_id, status, config_json, started_at, fingerprint) "
            "VALUES (1, 'finished', '{\"a\": 1}', 0, 'fp')"
        )
    assert LATEST >= 4
    async with await Store.open(db) as store:
        assert await store.schema_version() == LATEST
        [run] = await store.list_runs()
        assert (run.study, run.status, run.config, run.fingerprint) == ("s", "finished", {"a": 1}, "fp")
        sid = await store.study_id("s")
        assert sid == 1
        store.record_experience(sid, "a", run.id, 0, {"k": 1}, 0.2)
        store.save_agent_memory(sid, "a", {"w": 1})
        store.record_society(run.id, 0, "a", share=1.0, asked=1, proposed=1, status="ok", seconds=0.0, detail=None)
        await store.durable()
        assert [r.data for r in await store.experiences(sid, "a")] == [{"k": 1}]
        assert await store.agent_memory(sid, "a") == {"w": 1}
        assert len(await store.society_log(run.id)) == 1
    with sqlite3.connect(db) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions == list(range(1, LATEST + 1))
