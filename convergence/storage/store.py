"""SQLite persistence through aiosqlite (WAL): one file per project.

Per-test-case results arrive thousands of times a second, so they are
buffered and written in batches (``executemany`` in one transaction) by a
background flusher. A crash loses at most ``flush_interval`` seconds of case
results; ``--resume`` recomputes exactly those and nothing else.
"""

from __future__ import annotations

import json
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import aiosqlite
import anyio

from convergence.core.types import CallResult, CaseResult, Config, TestCase, TrialRecord
from convergence.storage.migrations import LATEST, MIGRATIONS


class StorageError(Exception):
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
    "INSERT OR REPLACE INTO generations(run_id, number, proposals_json, started_at) VALUES (?,?,?,?)"
)
_SQL_GEN_END = (
    "UPDATE generations SET best_score=?, mean_score=?, n_new=?, finished_at=? WHERE run_id=? AND number=?"
)
_SQL_CASE = (
    "INSERT OR REPLACE INTO case_results(run_id, config_hash, case_id, output, error, latency_ms, "
    "cost_usd, prompt_tokens, completion_tokens, attempts, metrics_json, created_at) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
)
_SQL_TRIAL = (
    "INSERT INTO trials(run_id, config_hash, generation, proposer, config_json, status, score, "
    "metrics_json, normalized_json, cost_usd, latency_ms, n_cases, n_errors, thresholds_passed, "
    "finished_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT(run_id, config_hash) DO UPDATE SET status=excluded.status, score=excluded.score, "
    "metrics_json=excluded.metrics_json, normalized_json=excluded.normalized_json, "
    "cost_usd=excluded.cost_usd, latency_ms=excluded.latency_ms, n_cases=excluded.n_cases, "
    "n_errors=excluded.n_errors, thresholds_passed=excluded.thresholds_passed, "
    "finished_at=excluded.finished_at"
)


def _case_rows(rows: list[tuple[Any, ...]]) -> Any:
    """Encode buffered case rows lazily (consumed by sqlite in the writer thread)."""
    for r in rows:
        yield r[:3] + (_output_text(r[3]),) + r[4:10] + (_dump(r[10]), r[11])


class Store:
    """Async repository over the project database."""

    def __init__(self, db: aiosqlite.Connection, path: Path, flush_interval: float):
        self._db = db
        self.path = path
        self._flush_interval = flush_interval
        self._pending: list[tuple[str, list[tuple[Any, ...]]]] = []
        self._lock = anyio.Lock()

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(cls, path: str | Path, *, flush_interval: float = 0.25) -> "Store":
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(p, timeout=30)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute("PRAGMA busy_timeout=30000")
            store = cls(db, p, flush_interval)
            await store._migrate()
        except BaseException:
            await db.close()
            raise
        return store

    async def _migrate(self) -> None:
        await self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        async with self._db.execute("SELECT MAX(version) FROM schema_version") as cur:
            row = await cur.fetchone()
        current = row[0] or 0 if row else 0
        if current > LATEST:
            raise StorageError(
                f"{self.path} has schema version {current}, newer than this Convergence ({LATEST}); upgrade Convergence"
            )
        for version, sql in MIGRATIONS:
            if version > current:
                await self._db.executescript(f"BEGIN;\n{sql}\nINSERT INTO schema_version VALUES ({version});\nCOMMIT;")
        await self._db.commit()

    async def schema_version(self) -> int:
        async with self._db.execute("SELECT MAX(version) FROM schema_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    async def close(self) -> None:
        await self.flush()
        await self._db.close()

    async def __aenter__(self) -> "Store":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ writes

    async def _study_id(self, name: str) -> int:
        await self._db.execute(
            "INSERT OR IGNORE INTO studies(name, created_at) VALUES (?, ?)", (name, time.time())
        )
        async with self._db.execute("SELECT id FROM studies WHERE name = ?", (name,)) as cur:
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def start_run(self, study: str, config: dict[str, Any], seed: int | None, config_path: str | None) -> int:
        sid = await self._study_id(study)
        cur = await self._db.execute(
            "INSERT INTO runs(study_id, status, seed, config_json, config_path, started_at) VALUES (?,?,?,?,?,?)",
            (sid, "running", seed, _dump(config), config_path, time.time()),
        )
        await self._db.commit()
        assert cur.lastrowid is not None
        return int(cur.lastrowid)

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
        await self.flush()
        await self._db.execute(
            "UPDATE runs SET status=?, stop_reason=?, finished_at=?, total_calls=?, total_cost_usd=?, "
            "elapsed_seconds=? WHERE id=?",
            (status, stop_reason, time.time(), total_calls, total_cost_usd, elapsed_seconds, run_id),
        )
        await self._db.commit()

    async def mark_running(self, run_id: int) -> None:
        await self._db.execute("UPDATE runs SET status='running', finished_at=NULL WHERE id=?", (run_id,))
        await self._db.commit()

    # Buffered writes: appended in order, written in order by ``flush`` in one
    # transaction. A case result can therefore never be on disk without the
    # generation row (with its proposals) that precedes it.

    def _buffer(self, sql: str, row: tuple[Any, ...]) -> None:
        if self._pending and self._pending[-1][0] is sql:
            self._pending[-1][1].append(row)
        else:
            self._pending.append((sql, [row]))

    def record_generation_start(self, run_id: int, number: int, proposals: list[dict[str, Any]]) -> None:
        self._buffer(_SQL_GEN_START, (run_id, number, _dump(proposals), time.time()))

    def record_generation_end(
        self, run_id: int, number: int, best_score: float | None, mean_score: float | None, n_new: int
    ) -> None:
        self._buffer(_SQL_GEN_END, (best_score, mean_score, n_new, time.time(), run_id, number))

    def record_case(self, run_id: int, config_hash: str, result: CaseResult) -> None:
        # raw objects here; JSON is encoded at flush time in the writer thread,
        # off the event loop's path between a call's end and the next call
        c = result.call
        self._buffer(
            _SQL_CASE,
            (run_id, config_hash, result.case_id, c.output, c.error, c.latency_ms, c.cost_usd,
             c.prompt_tokens, c.completion_tokens, c.attempts, result.metrics, time.time()),
        )

    def record_trial(self, run_id: int, trial: TrialRecord) -> None:
        self._buffer(
            _SQL_TRIAL,
            (run_id, trial.config_hash, trial.generation, trial.proposer, _dump(trial.config), trial.status,
             trial.score, _dump(trial.metrics), _dump(trial.normalized), trial.cost_usd, trial.latency_ms,
             trial.n_cases, trial.n_errors, int(trial.thresholds_passed), time.time()),
        )

    async def flush(self) -> None:
        """Write everything buffered so far, in order, in one transaction."""
        async with self._lock:
            pending, self._pending = self._pending, []
            if not pending:
                return
            for sql, rows in pending:
                await self._db.executemany(sql, _case_rows(rows) if sql is _SQL_CASE else rows)
            await self._db.commit()

    @asynccontextmanager
    async def autoflush(self, interval: float | None = None) -> AsyncIterator[None]:
        """Flush in the background every ``interval`` seconds while the body
        runs, and once more at the end: writers never wait for the disk."""

        async def loop() -> None:
            while True:
                await anyio.sleep(interval or self._flush_interval)
                await self.flush()

        async with anyio.create_task_group() as tg:
            tg.start_soon(loop)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            await self.flush()

    # ------------------------------------------------------------------ reads

    def _run_row(self, r: Any) -> RunRow:
        return RunRow(
            id=r[0], study=r[1], status=r[2], stop_reason=r[3], seed=r[4], config=json.loads(r[5]),
            config_path=r[6], started_at=r[7], finished_at=r[8], total_calls=r[9], total_cost_usd=r[10],
            elapsed_seconds=r[11],
        )

    _RUN_COLS = (
        "runs.id, studies.name, status, stop_reason, seed, config_json, config_path, started_at, finished_at, "
        "total_calls, total_cost_usd, elapsed_seconds"
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
        if runs and runs[0].status in ("running", "failed", "interrupted"):
            return runs[0]
        return None

    async def generations(self, run_id: int) -> list[GenerationRow]:
        async with self._db.execute(
            "SELECT number, proposals_json, best_score, mean_score, n_new, started_at, finished_at "
            "FROM generations WHERE run_id = ? ORDER BY number",
            (run_id,),
        ) as cur:
            rows = await cur.fetchall()
        return [GenerationRow(r[0], json.loads(r[1]), r[2], r[3], r[4], r[5], r[6]) for r in rows]

    async def trials(self, run_id: int) -> list[TrialRecord]:
        async with self._db.execute(
            "SELECT id, config_hash, generation, proposer, config_json, status, score, metrics_json, "
            "normalized_json, cost_usd, latency_ms, n_cases, n_errors, thresholds_passed "
            "FROM trials WHERE run_id = ? ORDER BY id",
            (run_id,),
        ) as cur:
            rows = await cur.fetchall()
        return [
            TrialRecord(
                config=json.loads(r[4]), config_hash=r[1], generation=r[2], proposer=r[3], status=r[5],
                score=r[6] or 0.0, metrics=json.loads(r[7] or "{}"), normalized=json.loads(r[8] or "{}"),
                cost_usd=r[9] or 0.0, latency_ms=r[10] or 0.0, n_cases=r[11] or 0, n_errors=r[12] or 0,
                thresholds_passed=bool(r[13]), trial_id=r[0],
            )
            for r in rows
        ]

    async def case_results(self, run_id: int, config_hash: str | None = None) -> dict[str, dict[str, CaseResult]]:
        """config_hash -> case_id -> stored result (for resume and inspection)."""
        sql = (
            "SELECT config_hash, case_id, output, error, latency_ms, cost_usd, prompt_tokens, completion_tokens, "
            "attempts, metrics_json FROM case_results WHERE run_id = ?"
        )
        args: tuple[Any, ...] = (run_id,)
        if config_hash:
            sql += " AND config_hash = ?"
            args += (config_hash,)
        out: dict[str, dict[str, CaseResult]] = {}
        async with self._db.execute(sql, args) as cur:
            async for r in cur:
                call = CallResult(output=r[2], error=r[3], latency_ms=r[4] or 0.0, cost_usd=r[5] or 0.0,
                                  prompt_tokens=r[6] or 0, completion_tokens=r[7] or 0, attempts=r[8] or 1)
                out.setdefault(r[0], {})[r[1]] = CaseResult(r[1], call, json.loads(r[9] or "{}"))
        return out

    async def best_configs(self, study: str, k: int, exclude_run: int | None = None) -> list[Config]:
        """Best distinct configurations of earlier runs of ``study`` (warm start)."""
        async with self._db.execute(
            "SELECT trials.config_json, MAX(trials.score) AS s FROM trials "
            "JOIN runs ON runs.id = trials.run_id JOIN studies ON studies.id = runs.study_id "
            "WHERE studies.name = ? AND trials.status = 'complete' AND runs.id != ? "
            "GROUP BY trials.config_hash ORDER BY s DESC, MIN(trials.id) LIMIT ?",
            (study, exclude_run if exclude_run is not None else -1, k),
        ) as cur:
            rows = await cur.fetchall()
        return [json.loads(r[0]) for r in rows]

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

    async def test_case_inputs(self, run_id: int) -> dict[str, Any]:
        async with self._db.execute(
            "SELECT case_id, input_json FROM test_cases WHERE run_id = ?", (run_id,)
        ) as cur:
            rows = await cur.fetchall()
        return {r[0]: json.loads(r[1]) for r in rows}
