"""What the agent society keeps in the store: experience, memory, the society and learner logs, SAO
preference pairs and ratings; their buffered writes and their reads (a mixin of ``Store``)."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiosqlite

from convergence.core.sao_pair import SAOPair
from convergence.storage.rows import (
    SAO_PAIR_COLS,
    SQL_AGENT_MEMORY,
    SQL_EXPERIENCE,
    SQL_LEARNER,
    SQL_PRUNE_EXPERIENCE,
    SQL_SAO_PAIR,
    SQL_SAO_RATING,
    SQL_SAO_RATINGS_CLEAR,
    SQL_SOCIETY,
    ExperienceRow,
    RatingRow,
    SocietyRow,
    dump,
    rating_row,
    sao_pair,
    sao_pair_row,
)
from convergence.storage.writer import GroupCommitWriter


class SocietyData:
    """The society's tables; ``Store`` provides the connection and the group-commit writer."""

    _db: aiosqlite.Connection
    _writer: GroupCommitWriter
    flush: Callable[[], Awaitable[None]]

    def record_experience(
        self, study_id: int, agent: str, run_id: int, generation: int, data: dict[str, Any], reward: float | None
    ) -> None:
        """Append to ``agent``'s replay buffer for the study (kept across runs)."""
        self._writer.add(SQL_EXPERIENCE, (study_id, agent, run_id, generation, reward, dump(data), time.time()))

    def prune_experiences(self, study_id: int, agent: str, keep: int) -> None:
        """Delete all but the newest ``keep`` experiences of ``agent`` in the study
        (a bounded replay buffer); ordered after every experience recorded before it."""
        if keep < 0:
            raise ValueError(f"keep must be >= 0, not {keep}")  # SQLite reads a negative OFFSET as 0
        self._writer.add(SQL_PRUNE_EXPERIENCE, (study_id, agent, study_id, agent, keep))

    def save_agent_memory(self, study_id: int, agent: str, state: dict[str, Any] | str) -> None:
        """Replace ``agent``'s learned state for the study (policy, normaliser); a ``str`` is the state
        already encoded as JSON (a learner's checkpoint, encoded in its worker thread, off the event loop)."""
        self._writer.add(SQL_AGENT_MEMORY, (study_id, agent, state if isinstance(state, str) else dump(state),
                                             time.time()))

    def record_society(
        self, run_id: int, generation: int, agent: str, *, share: float, asked: int, proposed: int, status: str,
        seconds: float, detail: dict[str, Any] | None,
    ) -> None:
        """What ``agent`` did in ``generation``; a resumed run that records the
        generation again replaces the row (last wins)."""
        self._writer.add(
            SQL_SOCIETY,
            (run_id, generation, agent, share, asked, proposed, status, seconds,
             None if detail is None else dump(detail)),
        )

    def record_sao_pair(self, study_id: int, pair: SAOPair) -> None:
        """Append one SAO preference pair of the study (a run's, through its writer:
        committed in order with the run's rows, dropped with them if the lease is lost)."""
        self._writer.add(SQL_SAO_PAIR, sao_pair_row(study_id, pair))

    def save_sao_ratings(self, run_id: int, ratings: Sequence[RatingRow] | Sequence[Any]) -> None:
        """Replace the run's SAO ratings with ``ratings``: tuples (config_hash, strength,
        preference, duels, wins, losses, ties) or objects with those attributes. The
        delete and the inserts are ordered in the writer, so readers see one whole fit."""
        rows = [rating_row(r) for r in ratings]  # converted now: a bad rating fails here, not in the writer
        self._writer.add(SQL_SAO_RATINGS_CLEAR, (run_id,))
        for row in rows:
            self._writer.add(SQL_SAO_RATING, (run_id, *row))

    def record_learner(self, run_id: int, generation: int, learner: str, shares: dict[str, float],
                       result: dict[str, Any], detail: dict[str, Any]) -> None:
        """What the society learner was given after a generation and decided (committed in order with the
        run's rows); ``convergence synergy train`` replays these."""
        self._writer.add(SQL_LEARNER, (run_id, generation, learner, dump(shares), dump(result), dump(detail),
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

    async def add_sao_pairs(self, study_id: int, pairs: Sequence[SAOPair]) -> int:
        """Insert ``pairs`` under the study and commit at once (``sao import``, the
        standalone API: no run and no writer). Returns how many were stored."""
        rows = [sao_pair_row(study_id, p) for p in pairs]
        if not rows:
            return 0
        await self._db.commit()  # no implicit transaction may be open before BEGIN IMMEDIATE
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            await self._db.executemany(SQL_SAO_PAIR, rows)
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
        sql = f"SELECT {SAO_PAIR_COLS} FROM sao_pairs"
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
        return [sao_pair(r) for r in await self._newest_first_reversed(sql, args, limit)]

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
