"""The store's reads of runs, generations, trials and case results (a mixin of ``Store``)."""

from __future__ import annotations

import json
import math
from typing import Any

import aiosqlite

from convergence.core.types import CallResult, CaseResult, Config, TrialRecord
from convergence.storage.rows import (
    GenerationRow,
    RunRow,
    RunTraceRecord,
)

RESUMABLE = ("running", "failed", "interrupted")
"""Run statuses ``--resume`` continues ('running' = killed, or still running elsewhere)."""


class RunReads:
    """Reads of the run tables; ``Store`` provides the connection."""

    _db: aiosqlite.Connection

    _RUN_COLS = (
        "runs.id, studies.name, status, stop_reason, seed, config_json, config_path, started_at, finished_at, "
        "total_calls, total_cost_usd, elapsed_seconds, owner, heartbeat_at, fingerprint"
    )

    def _run_row(self, r: Any) -> RunRow:
        return RunRow(
            id=r[0], study=r[1], status=r[2], stop_reason=r[3], seed=r[4], config=json.loads(r[5]),
            config_path=r[6], started_at=r[7], finished_at=r[8], total_calls=r[9], total_cost_usd=r[10],
            elapsed_seconds=r[11], owner=r[12], heartbeat_at=r[13], fingerprint=r[14],
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
        if runs and runs[0].status in RESUMABLE:
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

    async def run_traces(self, run_id: int) -> list[RunTraceRecord]:
        async with self._db.execute(
            "SELECT run_id, project, url, call_id, created_at FROM run_traces WHERE run_id = ? ORDER BY created_at",
            (run_id,),
        ) as cur:
            rows = await cur.fetchall()
        return [RunTraceRecord(int(r[0]), r[1], r[2], r[3], float(r[4])) for r in rows]
