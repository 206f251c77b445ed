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

import json
import math
import os
import secrets
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import anyio

from convergence.core.sao_pair import SAOPair
from convergence.core.types import CallResult, CaseResult, Config, TestCase, TrialRecord
from convergence.errors import ConvergenceError
from convergence.storage.counter import CallCounter, counter_path, read_count
from convergence.storage.migrations import LATEST, MIGRATIONS
from convergence.storage.writer import Batch, GroupCommitWriter


class StorageError(ConvergenceError):
    pass


@dataclass(slots=True)
class RunRow:
    id: int
    study: str
    status: str
    stop_reason: str | None
    seed: int | None
    config: dict[str, Any]
    config_path: str | None
    started_at: float
    finished_at: float | None
    total_calls: int
    total_cost_usd: float
    elapsed_seconds: float
    owner: str | None = None
    heartbeat_at: float | None = None
    fingerprint: str | None = None


@dataclass(slots=True, frozen=True)
class RunTraceRecord:
    """Where a traced run lives in Weave (``run_traces``, schema version 2)."""

    run_id: int
    project: str
    url: str
    call_id: str
    created_at: float


@dataclass(slots=True)
class GenerationRow:
    number: int
    proposals: list[dict[str, Any]]
    best_score: float | None
    mean_score: float | None
    n_new: int | None
    started_at: float
    finished_at: float | None
    context: dict[str, Any] | None = None
    """The learner's decision it was proposed under: ``{decided_at, controls}`` (schema 7; None before)."""


@dataclass(slots=True, frozen=True)
class ExperienceRow:
    """One entry of an agent's replay buffer (``agent_experience``, schema version 4)."""

    id: int
    run_id: int
    generation: int
    reward: float | None
    data: dict[str, Any]
    created_at: float


@dataclass(slots=True, frozen=True)
class SocietyRow:
    """What one agent did in one generation (``society_log``, schema version 4)."""

    generation: int
    agent: str
    share: float
    asked: int
    proposed: int
    status: str
    seconds: float
    detail: dict[str, Any] | None


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)
"""Built once: ``json.dumps`` with arguments builds a new encoder per call,
and ``_dump`` runs for every case result."""


def _dump(v: Any) -> str:
    return _ENCODER.encode(v)


def _output_text(v: Any) -> str | None:
    if v is None or isinstance(v, str):
        return v
    return _dump(v)


_SQL_GEN_START = (
    "INSERT OR REPLACE INTO generations(run_id, number, proposals_json, started_at, context_json) "
    "VALUES (?,?,?,?,?)"
)
_SQL_GEN_END = (
    "UPDATE generations SET best_score=?, mean_score=?, n_new=?, finished_at=? WHERE run_id=? AND number=?"
)
_SQL_CASE = (
    "INSERT OR REPLACE INTO case_results(run_id, config_hash, case_id, output, error, latency_ms, "
    "cost_usd, prompt_tokens, completion_tokens, attempts, metrics_json, created_at, wall_ms, repeat) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_SQL_SELECTION = "UPDATE runs SET selection_json = ? WHERE id = ?"
_SQL_LEARNER = (
    "INSERT OR REPLACE INTO learner_log(run_id, generation, learner, shares_json, result_json, detail_json, "
    "created_at) VALUES (?,?,?,?,?,?,?)"
)
_SQL_TRIAL = (
    "INSERT INTO trials(run_id, config_hash, generation, proposer, config_json, status, score, "
    "metrics_json, normalized_json, cost_usd, latency_ms, n_cases, n_errors, thresholds_passed, "
    "finished_at, repeats, estimate) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT(run_id, config_hash) DO UPDATE SET status=excluded.status, score=excluded.score, "
    "metrics_json=excluded.metrics_json, normalized_json=excluded.normalized_json, "
    "cost_usd=excluded.cost_usd, latency_ms=excluded.latency_ms, n_cases=excluded.n_cases, "
    "n_errors=excluded.n_errors, thresholds_passed=excluded.thresholds_passed, "
    "finished_at=excluded.finished_at, repeats=excluded.repeats, estimate=excluded.estimate"
)


_SQL_EXPERIENCE = (
    "INSERT INTO agent_experience(study_id, agent, run_id, generation, reward, data_json, created_at) "
    "VALUES (?,?,?,?,?,?,?)"
)
_SQL_PRUNE_EXPERIENCE = (
    "DELETE FROM agent_experience WHERE study_id=? AND agent=? AND id <= ("
    "SELECT id FROM agent_experience WHERE study_id=? AND agent=? ORDER BY id DESC LIMIT 1 OFFSET ?)"
)
_SQL_AGENT_MEMORY = (
    "INSERT INTO agent_memory(study_id, agent, state_json, updated_at) VALUES (?,?,?,?) "
    "ON CONFLICT(study_id, agent) DO UPDATE SET state_json=excluded.state_json, updated_at=excluded.updated_at"
)
_SQL_SOCIETY = (
    "INSERT INTO society_log(run_id, generation, agent, share, asked, proposed, status, seconds, detail_json) "
    "VALUES (?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT(run_id, generation, agent) DO UPDATE SET share=excluded.share, asked=excluded.asked, "
    "proposed=excluded.proposed, status=excluded.status, seconds=excluded.seconds, "
    "detail_json=excluded.detail_json"
)
_SQL_SAO_PAIR = (
    "INSERT INTO sao_pairs(study_id, run_id, generation, source, model, persona, prompt, prompt_input_json, "
    "response_a, response_b, config_a_json, config_b_json, hash_a, hash_b, verdict_1, verdict_2, outcome, "
    "failed_filters_json, judgments_json, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_SAO_PAIR_COLS = (
    "sao_pairs.id, run_id, generation, source, model, persona, prompt, prompt_input_json, response_a, "
    "response_b, config_a_json, config_b_json, hash_a, hash_b, verdict_1, verdict_2, outcome, "
    "failed_filters_json, judgments_json, sao_pairs.created_at"
)
_SQL_SAO_RATINGS_CLEAR = "DELETE FROM sao_ratings WHERE run_id=?"
_SQL_SAO_RATING = (
    "INSERT OR REPLACE INTO sao_ratings(run_id, config_hash, strength, preference, duels, wins, losses, ties) "
    "VALUES (?,?,?,?,?,?,?,?)"
)

RatingRow = tuple[str, float, float, int, int, int, int]
"""(config_hash, strength, preference, duels, wins, losses, ties): one configuration's SAO rating."""


def _sao_pair_row(study_id: int, pair: SAOPair) -> tuple[Any, ...]:
    """The ``sao_pairs`` row of ``pair``, JSON encoded now (callers may keep mutating the pair)."""
    return (
        study_id, pair.run_id, pair.generation, pair.source, pair.model, pair.persona, pair.prompt,
        None if pair.prompt_input is None else _dump(pair.prompt_input), pair.response_a, pair.response_b,
        None if pair.config_a is None else _dump(pair.config_a),
        None if pair.config_b is None else _dump(pair.config_b), pair.hash_a, pair.hash_b, pair.verdict_1,
        pair.verdict_2, pair.outcome, _dump(list(pair.failed_filters)), _dump(list(pair.judgments)),
        pair.created_at if pair.created_at is not None else time.time(),
    )


def _sao_pair(r: Any) -> SAOPair:
    return SAOPair(
        id=r[0], run_id=r[1], generation=r[2], source=r[3], model=r[4] or "", persona=r[5] or "", prompt=r[6],
        prompt_input=None if r[7] is None else json.loads(r[7]), response_a=r[8], response_b=r[9],
        config_a=None if r[10] is None else json.loads(r[10]), config_b=None if r[11] is None else json.loads(r[11]),
        hash_a=r[12], hash_b=r[13], verdict_1=r[14], verdict_2=r[15], outcome=r[16],
        failed_filters=json.loads(r[17]), judgments=json.loads(r[18] or "[]"), created_at=r[19],
    )


def _rating_row(r: Any) -> RatingRow:
    """A rating as a tuple, from a tuple or an object with the rating's attributes (``society.ratings.Rating``)."""
    if isinstance(r, tuple):
        h, strength, preference, duels, wins, losses, ties = r
    else:
        h, strength, preference = r.config_hash, r.strength, r.preference
        duels, wins, losses, ties = r.duels, r.wins, r.losses, r.ties
    return (str(h), float(strength), float(preference), int(duels), int(wins), int(losses), int(ties))


def _case_rows(rows: list[tuple[Any, ...]]) -> Any:
    """Encode buffered case rows lazily (consumed by sqlite in the writer thread)."""
    for r in rows:
        yield r[:3] + (_output_text(r[3]),) + r[4:10] + (_dump(r[10]),) + r[11:]


async def _retry_locked(op: Callable[[], Awaitable[Any]], *, seconds: float = 30.0) -> Any:
    """Run ``op``, retrying "database is locked" (e.g. two processes switching a
    new file to WAL at once, where SQLite's busy handler does not apply)."""
    deadline = time.monotonic() + seconds
    delay = 0.01
    while True:
        try:
            return await op()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.5)


async def _version(db: aiosqlite.Connection) -> int:
    async with db.execute("SELECT MAX(version) FROM schema_version") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row and row[0] is not None else 0


async def _migrate(db: aiosqlite.Connection, path: Path) -> None:
    """Apply pending migrations; safe when several processes open a new file at once."""
    await _retry_locked(lambda: db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"))
    await db.commit()
    current = await _version(db)
    if current > LATEST:
        raise StorageError(
            f"{path} has schema version {current}, newer than this Convergence ({LATEST}); upgrade Convergence"
        )
    for version, sql in MIGRATIONS:
        if version <= current:
            continue
        await db.execute("BEGIN IMMEDIATE")  # re-read under the write lock: another process may have migrated
        try:
            current = await _version(db)
            if version > current:
                for statement in _statements(sql):
                    await db.execute(statement)
                await db.execute("INSERT INTO schema_version VALUES (?)", (version,))
            await db.commit()
        except BaseException:
            await db.rollback()
            raise
        current = max(current, version)


def _statements(script: str) -> list[str]:
    """Split a migration into statements (ours hold no ';' inside literals)."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def _writer_connection(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=60, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA synchronous=NORMAL")
    return db


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


_RESUMABLE = ("running", "failed", "interrupted")
"""Run statuses ``--resume`` continues ('running' = killed, or still running elsewhere)."""

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


class Store:
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

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(cls, path: str | Path) -> Store:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(p, timeout=60)
        try:
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
                (sid, "running", seed, _dump(config), config_path, now, self.owner, now, fingerprint),
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
            if status not in _RESUMABLE:
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
            [(run_id, c.id, _dump(c.input), _dump(c.expected)) for c in cases],
        )
        await self._db.commit()

    async def finish_run(
        self, run_id: int, status: str, stop_reason: str | None, *, total_calls: int, total_cost_usd: float,
        elapsed_seconds: float,
    ) -> None:
        """Flush, write the final totals and release the lease."""
        await self.flush()
        if self._tracked is not None and self._tracked[0] == run_id:
            self._tracked = None
        cur = await self._db.execute(
            "UPDATE runs SET status=?, stop_reason=?, finished_at=?, total_calls=?, total_cost_usd=?, "
            "elapsed_seconds=?, owner=NULL WHERE id=? AND (owner IS NULL OR owner=?)",
            (status, stop_reason, time.time(), total_calls, total_cost_usd, elapsed_seconds, run_id,
             self.owner),
        )
        await self._db.commit()
        if self._counter is not None:
            # the totals are in the row now; the counter file goes unless another process owns the run
            self._counter.close(remove=cur.rowcount > 0)
            self._counter = None

    # ------------------------------------------------------------------ buffered writes
    # Appended in order and committed in order, so a case result can never be
    # on disk without the generation row (with its proposals) that precedes it.

    def record_generation_start(self, run_id: int, number: int, proposals: list[dict[str, Any]],
                                context: dict[str, Any] | None = None) -> None:
        """``context``: what a resumed run needs to restart the generation as it was (the learner's
        decision it was proposed under)."""
        self._writer.add(_SQL_GEN_START, (run_id, number, _dump(proposals), time.time(),
                                          _dump(context) if context is not None else None))

    def record_generation_end(
        self, run_id: int, number: int, best_score: float | None, mean_score: float | None, n_new: int
    ) -> None:
        self._writer.add(_SQL_GEN_END, (best_score, mean_score, n_new, time.time(), run_id, number))

    def record_case(self, run_id: int, config_hash: str, result: CaseResult) -> None:
        # raw objects here; JSON is encoded at commit time in the writer thread,
        # off the event loop's path between a call's end and the next call
        c = result.call
        self._writer.add(
            _SQL_CASE,
            (run_id, config_hash, result.case_id, c.output, c.error, c.latency_ms, c.cost_usd,
             c.prompt_tokens, c.completion_tokens, c.attempts, result.metrics, time.time(), c.wall_ms,
             result.repeat),
        )

    def record_trial(self, run_id: int, trial: TrialRecord) -> None:
        self._writer.add(
            _SQL_TRIAL,
            (run_id, trial.config_hash, trial.generation, trial.proposer, _dump(trial.config), trial.status,
             trial.score, _dump(trial.metrics), _dump(trial.normalized), trial.cost_usd, trial.latency_ms,
             trial.n_cases, trial.n_errors, int(trial.thresholds_passed), time.time(), trial.repeats,
             trial.estimate),
        )

    # The agent society's rows go through the same writer: committed in order
    # with the run's rows, and dropped with them once another process owns the run.
    # JSON is encoded here, not at commit: agents keep mutating the dicts they pass.

    def record_experience(
        self, study_id: int, agent: str, run_id: int, generation: int, data: dict[str, Any], reward: float | None
    ) -> None:
        """Append to ``agent``'s replay buffer for the study (kept across runs)."""
        self._writer.add(_SQL_EXPERIENCE, (study_id, agent, run_id, generation, reward, _dump(data), time.time()))

    def prune_experiences(self, study_id: int, agent: str, keep: int) -> None:
        """Delete all but the newest ``keep`` experiences of ``agent`` in the study
        (a bounded replay buffer); ordered after every experience recorded before it."""
        if keep < 0:
            raise ValueError(f"keep must be >= 0, not {keep}")  # SQLite reads a negative OFFSET as 0
        self._writer.add(_SQL_PRUNE_EXPERIENCE, (study_id, agent, study_id, agent, keep))

    def save_agent_memory(self, study_id: int, agent: str, state: dict[str, Any] | str) -> None:
        """Replace ``agent``'s learned state for the study (policy, normaliser); a ``str`` is the state
        already encoded as JSON (a learner's checkpoint, encoded in its worker thread, off the event loop)."""
        self._writer.add(_SQL_AGENT_MEMORY, (study_id, agent, state if isinstance(state, str) else _dump(state),
                                             time.time()))

    def record_society(
        self, run_id: int, generation: int, agent: str, *, share: float, asked: int, proposed: int, status: str,
        seconds: float, detail: dict[str, Any] | None,
    ) -> None:
        """What ``agent`` did in ``generation``; a resumed run that records the
        generation again replaces the row (last wins)."""
        self._writer.add(
            _SQL_SOCIETY,
            (run_id, generation, agent, share, asked, proposed, status, seconds,
             None if detail is None else _dump(detail)),
        )

    def record_sao_pair(self, study_id: int, pair: SAOPair) -> None:
        """Append one SAO preference pair of the study (a run's, through its writer:
        committed in order with the run's rows, dropped with them if the lease is lost)."""
        self._writer.add(_SQL_SAO_PAIR, _sao_pair_row(study_id, pair))

    def save_sao_ratings(self, run_id: int, ratings: Sequence[RatingRow] | Sequence[Any]) -> None:
        """Replace the run's SAO ratings with ``ratings``: tuples (config_hash, strength,
        preference, duels, wins, losses, ties) or objects with those attributes. The
        delete and the inserts are ordered in the writer, so readers see one whole fit."""
        rows = [_rating_row(r) for r in ratings]  # converted now: a bad rating fails here, not in the writer
        self._writer.add(_SQL_SAO_RATINGS_CLEAR, (run_id,))
        for row in rows:
            self._writer.add(_SQL_SAO_RATING, (run_id, *row))

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
            totals = (calls, cost, elapsed, time.time(), run_id, self.owner)
        if self.lease_lost:
            return  # rows of a run this process no longer owns are dropped
        if not await anyio.to_thread.run_sync(self._commit_sync, batch, totals):
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
                db.executemany(sql, _case_rows(rows) if sql is _SQL_CASE else rows)
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

    # ------------------------------------------------------------------ reads

    def _run_row(self, r: Any) -> RunRow:
        return RunRow(
            id=r[0], study=r[1], status=r[2], stop_reason=r[3], seed=r[4], config=json.loads(r[5]),
            config_path=r[6], started_at=r[7], finished_at=r[8], total_calls=r[9], total_cost_usd=r[10],
            elapsed_seconds=r[11], owner=r[12], heartbeat_at=r[13], fingerprint=r[14],
        )

    _RUN_COLS = (
        "runs.id, studies.name, status, stop_reason, seed, config_json, config_path, started_at, finished_at, "
        "total_calls, total_cost_usd, elapsed_seconds, owner, heartbeat_at, fingerprint"
    )

    async def get_run(self, run_id: int) -> RunRow | None:
        async with self._db.execute(
            f"SELECT {self._RUN_COLS} FROM runs JOIN studies ON studies.id = runs.study_id WHERE runs.id = ?",
            (run_id,),
        ) as cur:
            r = await cur.fetchone()
        return self._run_row(r) if r else None

    async def list_runs(self, study: str | None = None, limit: int = 50) -> list[RunRow]:
        sql = f"SELECT {self._RUN_COLS} FROM runs JOIN studies ON studies.id = runs.study_id"
        args: tuple[Any, ...] = ()
        if study:
            sql += " WHERE studies.name = ?"
            args = (study,)
        sql += " ORDER BY runs.id DESC LIMIT ?"
        async with self._db.execute(sql, args + (limit,)) as cur:
            rows = await cur.fetchall()
        return [self._run_row(r) for r in rows]

    async def latest_unfinished_run(self, study: str) -> RunRow | None:
        """The newest run of ``study`` that did not finish (killed, or stopped by a crash)."""
        runs = await self.list_runs(study, limit=1)
        if runs and runs[0].status in _RESUMABLE:
            return runs[0]
        return None

    async def generations(self, run_id: int) -> list[GenerationRow]:
        async with self._db.execute(
            "SELECT number, proposals_json, best_score, mean_score, n_new, started_at, finished_at, context_json "
            "FROM generations WHERE run_id = ? ORDER BY number",
            (run_id,),
        ) as cur:
            rows = await cur.fetchall()
        return [GenerationRow(r[0], json.loads(r[1]), r[2], r[3], r[4], r[5], r[6],
                              json.loads(r[7]) if r[7] else None) for r in rows]

    async def trials(self, run_id: int) -> list[TrialRecord]:
        async with self._db.execute(
            "SELECT id, config_hash, generation, proposer, config_json, status, score, metrics_json, "
            "normalized_json, cost_usd, latency_ms, n_cases, n_errors, thresholds_passed, repeats, estimate "
            "FROM trials WHERE run_id = ? ORDER BY id",
            (run_id,),
        ) as cur:
            rows = await cur.fetchall()
        return [
            TrialRecord(
                config=json.loads(r[4]), config_hash=r[1], generation=r[2], proposer=r[3], status=r[5],
                score=r[6] or 0.0, metrics=json.loads(r[7] or "{}"), normalized=json.loads(r[8] or "{}"),
                cost_usd=r[9] or 0.0, latency_ms=r[10] or 0.0, n_cases=r[11] or 0, n_errors=r[12] or 0,
                thresholds_passed=bool(r[13]), trial_id=r[0], repeats=r[14] or 0, estimate=r[15],
            )
            for r in rows
        ]

    async def case_results(self, run_id: int, config_hash: str | None = None) -> dict[str, dict[str, CaseResult]]:
        """config_hash -> case_id -> stored result of the search's call (for resume and inspection)."""
        out: dict[str, dict[str, CaseResult]] = {}
        for h, r in await self._read_cases(run_id, config_hash, "repeat = 0"):
            out.setdefault(h, {})[r.case_id] = r
        return out

    async def repeat_results(self, run_id: int, config_hash: str | None = None) -> dict[str, list[CaseResult]]:
        """config_hash -> confirmation draws (cases asked again, ``repeat`` >= 1), by case then repeat."""
        out: dict[str, list[CaseResult]] = {}
        for h, r in await self._read_cases(run_id, config_hash, "repeat > 0"):
            out.setdefault(h, []).append(r)
        return out

    async def _read_cases(self, run_id: int, config_hash: str | None, where: str) -> list[tuple[str, CaseResult]]:
        sql = (
            "SELECT config_hash, case_id, output, error, latency_ms, cost_usd, prompt_tokens, completion_tokens, "
            f"attempts, metrics_json, wall_ms, repeat FROM case_results WHERE run_id = ? AND {where}"
        )
        args: tuple[Any, ...] = (run_id,)
        if config_hash:
            sql += " AND config_hash = ?"
            args += (config_hash,)
        sql += " ORDER BY config_hash, case_id, repeat"
        out: list[tuple[str, CaseResult]] = []
        async with self._db.execute(sql, args) as cur:
            async for r in cur:
                call = CallResult(output=r[2], error=r[3], latency_ms=r[4] or 0.0, cost_usd=r[5] or 0.0,
                                  prompt_tokens=r[6] or 0, completion_tokens=r[7] or 0, attempts=r[8] or 1,
                                  wall_ms=r[10] if r[10] is not None else (r[4] or 0.0))
                out.append((r[0], CaseResult(r[1], call, json.loads(r[9] or "{}"), repeat=r[11])))
        return out

    def record_learner(self, run_id: int, generation: int, learner: str, shares: dict[str, float],
                       result: dict[str, Any], detail: dict[str, Any]) -> None:
        """What the society learner was given after a generation and decided (committed in order with the
        run's rows); ``convergence synergy train`` replays these."""
        self._writer.add(_SQL_LEARNER, (run_id, generation, learner, _dump(shares), _dump(result), _dump(detail),
                                        time.time()))

    async def learner_log(self, run_id: int | None = None, study: str | None = None) -> list[dict[str, Any]]:
        """The learner's decisions, oldest first: of one run, of a study's runs, or of every run."""
        sql = ("SELECT learner_log.run_id, generation, learner, shares_json, result_json, detail_json, "
               "learner_log.created_at FROM learner_log JOIN runs ON runs.id = learner_log.run_id "
               "JOIN studies ON studies.id = runs.study_id")
        where: list[str] = []
        args: list[Any] = []
        if run_id is not None:
            where.append("learner_log.run_id = ?")
            args.append(run_id)
        if study is not None:
            where.append("studies.name = ?")
            args.append(study)
        if where:
            sql += " WHERE " + " AND ".join(where)
        async with self._db.execute(sql + " ORDER BY learner_log.run_id, generation", tuple(args)) as cur:
            rows = await cur.fetchall()
        return [{"run_id": r[0], "generation": r[1], "learner": r[2], "shares": json.loads(r[3]),
                 "result": json.loads(r[4]), "detail": json.loads(r[5] or "{}"), "created_at": r[6]} for r in rows]

    def save_selection(self, run_id: int, selection: dict[str, Any]) -> None:
        """How the run chose its best (committed in order with the run's rows)."""
        self._writer.add(_SQL_SELECTION, (_dump(selection), run_id))

    async def selection(self, run_id: int) -> dict[str, Any] | None:
        async with self._db.execute("SELECT selection_json FROM runs WHERE id = ?", (run_id,)) as cur:
            row = await cur.fetchone()
        return json.loads(row[0]) if row and row[0] else None

    async def best_configs(self, study: str, k: int, exclude_run: int | None = None) -> list[Config]:
        """Best distinct configurations of earlier runs of ``study`` (warm start), best first.

        A configuration counts with its highest merit (noise-aware estimate, else score) over the runs.
        Equal merits go to the earlier run and, within a run, to the place the run's own ranking gave
        them: the ``ranking`` its selection stored (``engine/selection.py: rank``: the order of its
        report, its export and ``RunOutcome.best``), so the first configuration of a one-run study is
        that run's best. The storage layer does not rank, it reads back what the engine decided: a run
        finished before rankings were stored has its selection's ``top`` (its first five, ranked the
        same way but for the tie-break by generation); a run with neither (stopped before its
        selection) keeps its trials' stored order on equal merits."""
        async with self._db.execute(
            "SELECT trials.id, trials.run_id, trials.config_hash, trials.config_json, "
            "COALESCE(trials.estimate, trials.score), runs.selection_json IS NOT NULL FROM trials "
            "JOIN runs ON runs.id = trials.run_id JOIN studies ON studies.id = runs.study_id "
            "WHERE studies.name = ? AND trials.status = 'complete' AND runs.id != ?",
            (study, exclude_run if exclude_run is not None else -1),
        ) as cur:
            rows = await cur.fetchall()
        places: dict[int, dict[str, int]] = {}
        for run_id in sorted({r[1] for r in rows if r[5]}):
            chosen = (await self.selection(run_id)) or {}
            ranking = chosen.get("ranking")
            if not isinstance(ranking, list):
                ranking = [e.get("config_hash") for e in chosen.get("top") or [] if isinstance(e, dict)]
            places[run_id] = {h: i for i, h in enumerate(ranking) if isinstance(h, str)}

        def key(r: Any) -> tuple[float, int, int, int]:
            merit = r[4] if r[4] is not None else -math.inf  # NaN is stored as NULL: the lowest
            place = places.get(r[1], {}).get(r[2])
            return (-merit, r[1], 0 if place is not None else 1, place if place is not None else r[0])

        out: list[Config] = []
        seen: set[str] = set()
        for r in sorted(rows, key=key):
            if len(out) >= k:
                break
            if r[2] not in seen:
                seen.add(r[2])
                out.append(json.loads(r[3]))
        return out

    async def save_run_trace(self, run_id: int, *, project: str, url: str, call_id: str) -> None:
        """One row per traced attempt of the run (a resumed run gets a second trace)."""
        await self._db.execute(
            "INSERT OR REPLACE INTO run_traces(run_id, call_id, project, url, created_at) VALUES (?,?,?,?,?)",
            (run_id, call_id, project, url, time.time()),
        )
        await self._db.commit()

    async def run_traces(self, run_id: int) -> list[RunTraceRecord]:
        async with self._db.execute(
            "SELECT run_id, project, url, call_id, created_at FROM run_traces WHERE run_id = ? ORDER BY created_at",
            (run_id,),
        ) as cur:
            rows = await cur.fetchall()
        return [RunTraceRecord(int(r[0]), r[1], r[2], r[3], float(r[4])) for r in rows]

    async def experiences(self, study_id: int, agent: str, limit: int | None = None) -> list[ExperienceRow]:
        """``agent``'s replay buffer for the study, oldest first; with ``limit``,
        only the newest ``limit`` entries (still oldest first). Committed rows only."""
        sql = (
            "SELECT id, run_id, generation, reward, data_json, created_at FROM agent_experience "
            "WHERE study_id = ? AND agent = ? ORDER BY id DESC"
        )
        rows = await self._newest_first_reversed(sql, (study_id, agent), limit)
        return [ExperienceRow(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5]) for r in rows]

    async def _newest_first_reversed(self, sql: str, args: tuple[Any, ...], limit: int | None) -> list[Any]:
        """Rows of ``sql`` (ordered newest first), at most the newest ``limit``, returned oldest first."""
        if limit is not None:
            if limit < 0:
                raise ValueError(f"limit must be >= 0, not {limit}")  # SQLite reads a negative LIMIT as none
            sql += " LIMIT ?"
            args += (limit,)
        async with self._db.execute(sql, args) as cur:
            rows = await cur.fetchall()
        return list(rows)[::-1]

    async def agent_memory(self, study_id: int, agent: str) -> dict[str, Any] | None:
        """``agent``'s last saved state for the study (None: it has learned nothing yet)."""
        async with self._db.execute(
            "SELECT state_json FROM agent_memory WHERE study_id = ? AND agent = ?", (study_id, agent)
        ) as cur:
            row = await cur.fetchone()
        return json.loads(row[0]) if row else None

    async def forget_agent(self, study_id: int, agent: str) -> tuple[int, int]:
        """Delete ``agent``'s state and experience in the study (``ppo reset``); (states, experiences) removed."""
        await self.flush()
        a = await self._db.execute("DELETE FROM agent_memory WHERE study_id = ? AND agent = ?", (study_id, agent))
        b = await self._db.execute("DELETE FROM agent_experience WHERE study_id = ? AND agent = ?", (study_id, agent))
        await self._db.commit()
        return a.rowcount, b.rowcount

    async def society_log(self, run_id: int) -> list[SocietyRow]:
        """What each agent did in each generation of the run, by generation then agent."""
        async with self._db.execute(
            "SELECT generation, agent, share, asked, proposed, status, seconds, detail_json FROM society_log "
            "WHERE run_id = ? ORDER BY generation, agent",
            (run_id,),
        ) as cur:
            rows = await cur.fetchall()
        return [
            SocietyRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], None if r[7] is None else json.loads(r[7]))
            for r in rows
        ]

    # ------------------------------------------------------------------ SAO preference pairs

    async def add_sao_pairs(self, study_id: int, pairs: Sequence[SAOPair]) -> int:
        """Insert ``pairs`` under the study and commit at once (``sao import``, the
        standalone API: no run and no writer). Returns how many were stored."""
        rows = [_sao_pair_row(study_id, p) for p in pairs]
        if not rows:
            return 0
        await self._db.commit()  # no implicit transaction may be open before BEGIN IMMEDIATE
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            await self._db.executemany(_SQL_SAO_PAIR, rows)
            await self._db.commit()
        except BaseException:
            await self._db.rollback()
            raise
        return len(rows)

    async def sao_pairs(
        self, *, run_id: int | None = None, study: str | None = None, study_id: int | None = None,
        kept_only: bool = False, limit: int | None = None,
    ) -> list[SAOPair]:
        """Stored SAO pairs, oldest first: of one run, of one study (by name or id:
        every run's and the imported ones), of all given filters, or all. ``kept_only``:
        consistent (A or B) and passing every filter; ``limit``: only the newest
        ``limit`` (still oldest first)."""
        sql = f"SELECT {_SAO_PAIR_COLS} FROM sao_pairs"
        where: list[str] = []
        args: tuple[Any, ...] = ()
        if study_id is not None:
            where.append("sao_pairs.study_id = ?")
            args += (study_id,)
        if study is not None:
            sql += " JOIN studies ON studies.id = sao_pairs.study_id"
            where.append("studies.name = ?")
            args += (study,)
        if run_id is not None:
            where.append("sao_pairs.run_id = ?")
            args += (run_id,)
        if kept_only:  # the SQL form of SAOPair.kept; failed_filters_json is always written compact
            where.append("outcome IN ('A', 'B') AND failed_filters_json = '[]'")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY sao_pairs.id DESC"
        return [_sao_pair(r) for r in await self._newest_first_reversed(sql, args, limit)]

    async def sao_studies(self) -> list[tuple[str, int]]:
        """Every study with its number of SAO pairs (0 included), by name: tells an
        unknown study from one without pairs."""
        async with self._db.execute(
            "SELECT studies.name, COUNT(sao_pairs.id) FROM studies "
            "LEFT JOIN sao_pairs ON sao_pairs.study_id = studies.id GROUP BY studies.id ORDER BY studies.name"
        ) as cur:
            rows = await cur.fetchall()
        return [(r[0], int(r[1])) for r in rows]

    async def latest_sao_run(self) -> int | None:
        """The newest run that stored SAO pairs (None: no run did)."""
        async with self._db.execute("SELECT MAX(run_id) FROM sao_pairs WHERE run_id IS NOT NULL") as cur:
            row = await cur.fetchone()
        return None if row is None or row[0] is None else int(row[0])

    async def sao_ratings(self, run_id: int) -> dict[str, dict[str, float | int]]:
        """config_hash -> {strength, preference, duels, wins, losses, ties} of the run's
        last fit, most preferred first (empty: never fitted)."""
        async with self._db.execute(
            "SELECT config_hash, strength, preference, duels, wins, losses, ties FROM sao_ratings "
            "WHERE run_id = ? ORDER BY preference DESC, config_hash",
            (run_id,),
        ) as cur:
            rows = await cur.fetchall()
        return {
            r[0]: {"strength": r[1], "preference": r[2], "duels": r[3], "wins": r[4], "losses": r[5], "ties": r[6]}
            for r in rows
        }
