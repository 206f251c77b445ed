"""Where a run's Weave trace lives, kept in the project database (``run_traces``,
schema version 2) so ``convergence traces RUN`` can point at it offline.

The Store has no generic query API, so these helpers use its connection
directly; they only touch the ``run_traces`` table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from convergence.storage.store import Store


@dataclass(slots=True, frozen=True)
class RunTraceRecord:
    run_id: int
    project: str
    url: str
    call_id: str
    created_at: float


async def save_run_trace(store: "Store", run_id: int, *, project: str, url: str, call_id: str) -> None:
    """One row per traced attempt of the run (a resumed run gets a second trace)."""
    db = store._db
    await db.execute(
        "INSERT OR REPLACE INTO run_traces(run_id, call_id, project, url, created_at) VALUES (?,?,?,?,?)",
        (run_id, call_id, project, url, time.time()),
    )
    await db.commit()


async def run_traces(store: "Store", run_id: int) -> list[RunTraceRecord]:
    async with store._db.execute(
        "SELECT run_id, project, url, call_id, created_at FROM run_traces WHERE run_id = ? ORDER BY created_at",
        (run_id,),
    ) as cur:
        rows = await cur.fetchall()
    return [RunTraceRecord(int(r[0]), r[1], r[2], r[3], float(r[4])) for r in rows]
