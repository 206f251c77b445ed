"""SQLite persistence through aiosqlite (WAL): one file per project.

Per-test-case results arrive thousands of times a second, so they are
buffered and committed by a group-commit writer (``storage/writer.py``) as
soon as it is free: a finished call is on disk within a commit's time (about
a millisecond), so ``--resume`` never re-pays a call whose result was stored;
each attempt is counted in a kill-safe counter (``storage/counter.py``) right
before it goes out, so the run's totals count every call the target received. Several processes may
share one file (WAL, busy timeout, ``BEGIN IMMEDIATE``); a run is owned by one
process at a time through a lease renewed by every commit.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import secrets
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import anyio

from convergence.core.types import CaseResult, TestCase, TrialRecord
from convergence.storage.atomic import temp_path_for
from convergence.storage.connection import StorageError, _migrate, _retry_locked, _version, _writer_connection
from convergence.storage.counter import CallCounter, counter_path, read_count
from convergence.storage.faults import DatabaseFileError, check_schema, database_error, refuse_unusable
from convergence.storage.reads import RESUMABLE, RunReads
from convergence.storage.rows import (
    SQL_CASE,
    SQL_GEN_END,
    SQL_GEN_START,
    SQL_SELECTION,
    SQL_TRIAL,
    ExperienceRow as ExperienceRow,
    GenerationRow as GenerationRow,
    RunRow as RunRow,
    RunTraceRecord as RunTraceRecord,
    SocietyRow as SocietyRow,
    case_rows,
    dump,
    real,
)
from convergence.storage.society_data import SocietyData
from convergence.storage.writer import Batch, GroupCommitWriter

_SQL_TOTALS = (
    "UPDATE runs SET total_calls=?, total_cost_usd=?, elapsed_seconds=?, heartbeat_at=? WHERE id=? AND owner=?"
)


class RunNotFoundError(StorageError, KeyError):
    """No run with that id in the project database (also a ``KeyError``)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class RunInUseError(StorageError):
    """Another live process owns the run (its lease is fresh)."""


class LeaseLostError(StorageError):
    """This process's lease on a run was taken over by another process."""



LEASE_STALE_SECONDS = 15.0
"""A run whose owner has not committed or heartbeat for this long may be taken over."""
HEARTBEAT_SECONDS = 1.0
"""How often the owner renews its lease (and persists elapsed time) when idle."""

_HOST = socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe_owner(owner: str, heartbeat_at: float | None) -> tuple[bool, str]:
    """(is the owner alive, a sentence about it) for a stored ``host:pid:token``."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    age = time.time() - heartbeat_at if heartbeat_at else math.inf
    pid = int(pid_text) if pid_text.isdigit() else -1
    if host == _HOST and pid > 0 and not _pid_alive(pid):
        return False, f"process {pid} on {host} is gone"
    if age > LEASE_STALE_SECONDS:
        return False, f"process {pid} on {host} has been silent for {age:.0f}s"
    return True, f"process {pid} on {host} (last heartbeat {age:.1f}s ago)"


_C = TypeVar("_C", bound=type)


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def guarded(self: Store, *args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(self, *args, **kwargs)
        except Exception as exc:
            clear = database_error(exc, self.path)
            if clear is None:
                raise
            raise clear from exc

    return guarded


def guarded(cls: _C) -> _C:
    """Every public coroutine method of ``cls`` (its mixins' too) raises a
    :class:`DatabaseFileError` naming the file for a damaged, full, read-only or failing
    database, wherever in the method SQLite (or a damaged stored value) failed."""
    for name in dir(cls):
        attr = inspect.getattr_static(cls, name)
        if not name.startswith("_") and inspect.iscoroutinefunction(attr):
            setattr(cls, name, _guard(attr))
    return cls


async def _table_names(db: aiosqlite.Connection) -> set[str]:
    """The database's tables: the first read of a file, so a damaged header or schema page fails here."""
    async with db.execute("SELECT name FROM sqlite_master WHERE type = 'table'") as cur:
        return {str(r[0]) for r in await cur.fetchall()}


async def _create(path: Path) -> None:
    """A new database, built under a temporary name and linked into place whole: no other
    process ever sees it empty (an existing empty file is refused, ``faults.refuse_unusable``).
    Two processes creating it at once: the first link wins, the other uses that file."""
    tmp = temp_path_for(path)
    db = await aiosqlite.connect(tmp, timeout=60)
    try:
        await db.execute("PRAGMA journal_mode=WAL")
        await _migrate(db, tmp)
    finally:
        await db.close()  # checkpoints: the whole database is in the main file
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    except OSError:  # no hard links on this file system: SQLite creates it in place (old behaviour)
        pass
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
            leftover.unlink(missing_ok=True)


@guarded
class Store(RunReads, SocietyData):
    """Async repository over the project database.

    Case results, generations, trials and the agent society's rows are
    buffered and made durable by a group-commit writer (``writing()``) as soon as it is free. While a run is
    tracked (``track_run``), every commit also writes the run's totals and
    renews its lease, so a killed run keeps every paid call and second."""

    def __init__(self, db: aiosqlite.Connection, wdb: sqlite3.Connection, path: Path):
        self._db = db
        self._wdb = wdb
        """The group-commit writer's own connection, used from one worker thread at a time."""
        self.path = path
        self._writer = GroupCommitWriter(self._commit)
        self.owner = f"{_HOST}:{os.getpid()}:{secrets.token_hex(4)}"
        self._tracked: tuple[int, Callable[[], tuple[int, float, float]]] | None = None
        self._counter: CallCounter | None = None
        self.lease_lost: str | None = None
        self.broken: DatabaseFileError | None = None
        """Set when a commit failed on the file itself (damaged, full, read-only): the run stops."""

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(cls, path: str | Path) -> Store:
        """Open (or create) the project database at ``path``. A damaged file, an empty one or
        another program's SQLite file raises :class:`DatabaseFileError` and is left untouched."""
        p = Path(path)
        try:
            return await cls._open(p)
        except Exception as exc:
            clear = database_error(exc, p)
            if clear is None:
                raise
            raise clear from exc

    @classmethod
    async def _open(cls, p: Path) -> Store:
        p.parent.mkdir(parents=True, exist_ok=True)
        refuse_unusable(p)
        if not p.exists():
            await _create(p)
        db = await aiosqlite.connect(p, timeout=60)
        try:
            check_schema(await _table_names(db), p, created=False)
            await _retry_locked(lambda: db.execute("PRAGMA journal_mode=WAL"))
            await db.execute("PRAGMA synchronous=NORMAL")
            await _migrate(db, p)
            wdb = await anyio.to_thread.run_sync(_writer_connection, p)
        except BaseException:
            await db.close()
            raise
        return cls(db, wdb, p)

    async def schema_version(self) -> int:
        return await _version(self._db)

    async def close(self) -> None:
        if self._counter is not None:
            self._counter.close(remove=False)  # an unfinished run keeps its count for --resume
            self._counter = None
        try:
            if self.broken is None:  # rows that could not be committed were reported with the error
                await self.flush()
        finally:
            await self._db.close()
            await anyio.to_thread.run_sync(self._wdb.close)

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ runs and leases

    async def _study_id(self, name: str) -> int:
        await self._db.execute(
            "INSERT OR IGNORE INTO studies(name, created_at) VALUES (?, ?)", (name, time.time())
        )
        async with self._db.execute("SELECT id FROM studies WHERE name = ?", (name,)) as cur:
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def study_id(self, name: str) -> int:
        """The id of study ``name``, created if missing: agents key what they
        learn by study, so it outlives (and is shared by) the study's runs."""
        async with self._db.execute("SELECT id FROM studies WHERE name = ?", (name,)) as cur:
            row = await cur.fetchone()
        if row is not None:
            return int(row[0])
        # committed at once: an open transaction on this connection would block the writer
        await self._db.commit()
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            sid = await self._study_id(name)
            await self._db.commit()
        except BaseException:
            await self._db.rollback()
            raise
        return sid

    async def start_run(
        self, study: str, config: dict[str, Any], seed: int | None, config_path: str | None,
        fingerprint: str | None = None,
    ) -> int:
        """Insert a new run owned by this process (its lease starts now)."""
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            sid = await self._study_id(study)
            now = time.time()
            cur = await self._db.execute(
                "INSERT INTO runs(study_id, status, seed, config_json, config_path, started_at, owner, "
                "heartbeat_at, fingerprint) VALUES (?,?,?,?,?,?,?,?,?)",
                (sid, "running", seed, dump(config), config_path, now, self.owner, now, fingerprint),
            )
            await self._db.commit()
        except BaseException:
            await self._db.rollback()
            raise
        assert cur.lastrowid is not None
        return int(cur.lastrowid)

    async def acquire_run(self, run_id: int) -> None:
        """Take the lease on an unfinished run for ``--resume``. Refuses with
        :class:`RunInUseError` while another live process holds it (or the run
        finished meanwhile); a lease whose owner died (same host) or went
        silent is recovered."""
        await self._db.commit()  # no implicit transaction may be open before BEGIN IMMEDIATE
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            async with self._db.execute("SELECT owner, heartbeat_at, status FROM runs WHERE id=?", (run_id,)) as cur:
                row = await cur.fetchone()
            if row is None:
                raise StorageError(f"no run {run_id} in {self.path}")
            owner, heartbeat_at, status = row
            if status not in RESUMABLE:
                raise RunInUseError(f"run {run_id} is already {status}; nothing to resume")
            if owner and owner != self.owner:
                alive, who = _describe_owner(owner, heartbeat_at)
                if alive:
                    raise RunInUseError(
                        f"run {run_id} is being run by {who}; wait for it to finish or stop it "
                        f"(a lease is recovered {LEASE_STALE_SECONDS:.0f}s after its owner goes silent)"
                    )
            await self._db.execute(
                "UPDATE runs SET status='running', finished_at=NULL, owner=?, heartbeat_at=? WHERE id=?",
                (self.owner, time.time(), run_id),
            )
            await self._db.commit()
        except BaseException:
            await self._db.rollback()
            raise

    @staticmethod
    def owner_gone(run: RunRow) -> bool:
        """A ``running`` run whose process is gone (killed, or stopped unable to write its end):
        ``--resume`` takes it over."""
        return run.status == "running" and (not run.owner or not _describe_owner(run.owner, run.heartbeat_at)[0])

    def track_run(self, run_id: int, totals: Callable[[], tuple[int, float, float]]) -> None:
        """Persist ``totals()`` -> (calls, cost_usd, elapsed_seconds) of ``run_id``
        with every commit, and renew the run's lease. Also opens the run's
        paid-call counter (``count_call``), starting from ``totals()``'s calls."""
        self._tracked = (run_id, totals)
        if self._counter is not None:
            self._counter.close(remove=False)
        self._counter = CallCounter(counter_path(self.path, run_id), totals()[0])

    def count_call(self, calls: int) -> None:
        """Record that ``calls`` attempts have gone out, before the newest one
        does: kill-safe at once (a shared memory map), in ``runs`` at the next
        commit. Raises :class:`LeaseLostError` once another process owns the run."""
        if self.lease_lost:
            raise LeaseLostError(self.lease_lost)
        assert self._counter is not None, "track_run first"
        self._counter.set(calls)
        self._writer.touch()

    def paid_calls(self, run_id: int) -> int | None:
        """The paid-call count a killed process left for ``run_id`` (None: no counter)."""
        return read_count(counter_path(self.path, run_id))

    async def save_test_cases(self, run_id: int, cases: list[TestCase]) -> None:
        await self._db.executemany(
            "INSERT OR IGNORE INTO test_cases(run_id, case_id, input_json, expected_json) VALUES (?,?,?,?)",
            [(run_id, c.id, dump(c.input), dump(c.expected)) for c in cases],
        )
        await self._db.commit()

    async def finish_run(
        self, run_id: int, status: str, stop_reason: str | None, *, total_calls: int, total_cost_usd: float,
        elapsed_seconds: float,
    ) -> None:
        """Flush, write the final totals and release the lease. When the flush fails (a full
        disk), the run's end is still stored, then the flush's error raised: the stored status
        says how the run ended, the buffered rows were never stored (``--resume`` calls again)."""
        flush_error: Exception | None = None
        try:
            await self.flush()
        except Exception as exc:  # noqa: BLE001 - raised below, once the run's end is stored
            flush_error = exc
        if self._tracked is not None and self._tracked[0] == run_id:
            self._tracked = None
        cur = await self._db.execute(
            "UPDATE runs SET status=?, stop_reason=?, finished_at=?, total_calls=?, total_cost_usd=?, "
            "elapsed_seconds=?, owner=NULL WHERE id=? AND (owner IS NULL OR owner=?)",
            (status, stop_reason, time.time(), total_calls, real(total_cost_usd) or 0.0, elapsed_seconds, run_id,
             self.owner),
        )
        await self._db.commit()
        if self._counter is not None:
            # the totals are in the row now; the counter file goes unless another process owns the run
            self._counter.close(remove=cur.rowcount > 0)
            self._counter = None
        if flush_error is not None:
            raise flush_error

    # ------------------------------------------------------------------ buffered writes
    # Appended in order and committed in order, so a case result can never be
    # on disk without the generation row (with its proposals) that precedes it.

    def record_generation_start(self, run_id: int, number: int, proposals: list[dict[str, Any]],
                                context: dict[str, Any] | None = None) -> None:
        """``context``: what a resumed run needs to restart the generation as it was (the learner's
        decision it was proposed under)."""
        self._writer.add(SQL_GEN_START, (run_id, number, dump(proposals), time.time(),
                                          dump(context) if context is not None else None))

    def record_generation_end(
        self, run_id: int, number: int, best_score: float | None, mean_score: float | None, n_new: int
    ) -> None:
        self._writer.add(SQL_GEN_END, (best_score, mean_score, n_new, time.time(), run_id, number))

    def record_case(self, run_id: int, config_hash: str, result: CaseResult) -> None:
        # raw objects here; JSON is encoded at commit time in the writer thread,
        # off the event loop's path between a call's end and the next call
        c = result.call
        self._writer.add(
            SQL_CASE,
            (run_id, config_hash, result.case_id, c.output, c.error, real(c.latency_ms), real(c.cost_usd),
             c.prompt_tokens, c.completion_tokens, c.attempts, result.metrics, time.time(), real(c.wall_ms),
             result.repeat),
        )

    def record_trial(self, run_id: int, trial: TrialRecord) -> None:
        self._writer.add(
            SQL_TRIAL,
            (run_id, trial.config_hash, trial.generation, trial.proposer, dump(trial.config), trial.status,
             trial.score, dump(trial.metrics), dump(trial.normalized), real(trial.cost_usd), real(trial.latency_ms),
             trial.n_cases, trial.n_errors, int(trial.thresholds_passed), time.time(), trial.repeats,
             trial.estimate),
        )

    # The agent society's rows go through the same writer: committed in order
    # with the run's rows, and dropped with them once another process owns the run.
    # JSON is encoded here, not at commit: agents keep mutating the dicts they pass.

    def touch(self) -> None:
        """Ask for a commit of the tracked run's totals (e.g. a call was just reserved)."""
        self._writer.touch()

    async def durable(self) -> None:
        """Wait until everything recorded so far (and the run's totals) is committed."""
        await self._writer.durable()
        if self.lease_lost:
            raise LeaseLostError(self.lease_lost)

    async def flush(self) -> None:
        """Commit everything buffered so far, in order, in one transaction."""
        await self._writer.flush()

    async def _commit(self, batch: Batch) -> None:
        """One thread hop per commit: the batch, the run's totals and the lease
        renewal in one transaction on the writer connection."""
        totals: tuple[Any, ...] | None = None
        if self._tracked is not None:
            run_id, fn = self._tracked
            calls, cost, elapsed = fn()
            totals = (calls, real(cost) or 0.0, elapsed, time.time(), run_id, self.owner)
        if self.lease_lost:
            return  # rows of a run this process no longer owns are dropped
        try:
            ok = await anyio.to_thread.run_sync(self._commit_sync, batch, totals)
        except Exception as exc:
            clear = database_error(exc, self.path)
            if clear is None:
                raise
            self.broken = clear
            raise clear from exc
        self.broken = None
        if not ok:
            assert totals is not None
            self.lease_lost = f"another process took over run {totals[4]}; this process stopped"

    def _commit_sync(self, batch: Batch, totals: tuple[Any, ...] | None) -> bool:
        """Commit ``batch`` unless the lease was lost: then nothing is written
        (the rows belong to a run another process now owns) and False is returned."""
        db = self._wdb
        db.execute("BEGIN IMMEDIATE")
        try:
            if totals is not None and db.execute(_SQL_TOTALS, totals).rowcount == 0:
                db.execute("ROLLBACK")
                return False
            for sql, rows in batch:
                db.executemany(sql, case_rows(rows) if sql is SQL_CASE else rows)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return True

    @asynccontextmanager
    async def writing(self, heartbeat_seconds: float = HEARTBEAT_SECONDS) -> AsyncIterator[None]:
        """Run the group-commit writer (and the lease heartbeat) while the body
        runs; everything buffered is committed before this returns."""

        async def heartbeat() -> None:
            while True:
                await anyio.sleep(heartbeat_seconds)
                self._writer.touch()

        async with anyio.create_task_group() as tg:
            tg.start_soon(self._writer.run)
            tg.start_soon(heartbeat)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
        await self.flush()

    def save_selection(self, run_id: int, selection: dict[str, Any]) -> None:
        """How the run chose its best (committed in order with the run's rows)."""
        self._writer.add(SQL_SELECTION, (dump(selection), run_id))

    async def save_run_trace(self, run_id: int, *, project: str, url: str, call_id: str) -> None:
        """One row per traced attempt of the run (a resumed run gets a second trace)."""
        await self._db.execute(
            "INSERT OR REPLACE INTO run_traces(run_id, call_id, project, url, created_at) VALUES (?,?,?,?,?)",
            (run_id, call_id, project, url, time.time()),
        )
        await self._db.commit()
