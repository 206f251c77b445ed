"""Opening the project database: WAL, busy retries, versioned migrations, the writer's connection."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosqlite
import anyio

from convergence.errors import ConvergenceError
from convergence.storage.migrations import LATEST, MIGRATIONS


class StorageError(ConvergenceError):
    """The project database cannot be used (``convergence.storage.store`` re-exports it with its subclasses)."""


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
