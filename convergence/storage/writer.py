"""Group commit: buffered writes made durable as soon as the writer is free.

Callers append rows without waiting (``add``) and, when a later action must
not happen before those rows are on disk, ``await durable()``. One writer
task takes *everything* buffered so far and commits it in one transaction;
rows that arrive meanwhile go into the next commit. Under load a commit
carries hundreds of rows; when idle a single row is on disk within one
commit's time (about a millisecond in WAL mode), not after a timer.

A batch is never dropped: the commit runs shielded from cancellation, and a
failed commit puts its rows back in front of the queue (in order) before the
error is raised, so the next flush retries them. A commit that fails on the
file itself (damaged, disk full, read-only: ``faults.DatabaseFileError``)
is not retried: the writer task raises it at once, which stops the run
(every call made after it would be paid for and never stored).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from convergence.errors import ConvergenceError
from convergence.storage.faults import DatabaseFileError

Batch = list[tuple[str, list[tuple[Any, ...]]]]
"""Ordered runs of rows, each run sharing one SQL statement."""


class WriterError(ConvergenceError):
    """The writer could not commit; buffered rows are kept for a later flush."""


class GroupCommitWriter:
    """Ordered write buffer with sequence numbers for durability waits."""

    def __init__(self, commit: Callable[[Batch], Awaitable[None]]) -> None:
        self._commit = commit
        self._pending: Batch = []
        self._seq = 0
        """Number of changes buffered so far (rows and ``touch`` marks)."""
        self._done = 0
        """Highest ``_seq`` known to be committed."""
        self._lock = anyio.Lock()
        self._wake = anyio.Event()
        self._progress = anyio.Event()
        self._error: BaseException | None = None
        self.running = False

    # ------------------------------------------------------------------ producers

    def add(self, sql: str, row: tuple[Any, ...]) -> None:
        pending = self._pending
        if pending and pending[-1][0] is sql:
            pending[-1][1].append(row)
        else:
            pending.append((sql, [row]))
        self.touch()

    def touch(self) -> None:
        """Ask for a commit even with no rows (e.g. updated run totals)."""
        self._seq += 1
        if self.running:
            self._wake.set()

    @property
    def dirty(self) -> bool:
        return self._seq != self._done

    async def durable(self) -> None:
        """Return once everything buffered before this call is committed."""
        target = self._seq
        if not self.running:
            if self._done < target:
                try:
                    await self.flush()
                except Exception as exc:
                    raise WriterError(f"the database writer failed: {exc}") from exc
            return
        while self._done < target:
            if isinstance(self._error, DatabaseFileError):
                raise self._error
            if self._error is not None:
                raise WriterError(f"the database writer failed: {self._error}") from self._error
            await self._progress.wait()

    # ------------------------------------------------------------------ commits

    async def flush(self) -> None:
        """Commit everything buffered so far (shielded: a batch is never half lost)."""
        with anyio.CancelScope(shield=True):
            async with self._lock:
                if self._done == self._seq:
                    return
                pending, self._pending = self._pending, []
                seq = self._seq
                try:
                    await self._commit(pending)
                except BaseException:
                    self._pending[:0] = pending
                    raise
                self._done = seq
                progress, self._progress = self._progress, anyio.Event()
                progress.set()

    async def run(self, *, retry_seconds: float = 0.2, give_up_seconds: float = 120.0) -> None:
        """The writer task: commit whenever something is buffered. Failures
        (another process holding the lock past the busy timeout) are retried;
        once they have lasted ``give_up_seconds`` the waiters of ``durable()``
        get the error, while the rows stay buffered. A :class:`DatabaseFileError`
        (damaged file, full disk, read-only) is raised at once: waiting does not
        mend it, and the task group running this task stops the run."""
        self.running = True
        failing_since: float | None = None
        try:
            if self.dirty:
                self._wake.set()
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                try:
                    await self.flush()
                    failing_since = None
                    self._error = None
                except DatabaseFileError as exc:
                    self._error = exc
                    progress, self._progress = self._progress, anyio.Event()
                    progress.set()
                    raise
                except Exception as exc:  # noqa: BLE001 - kept and retried; waiters see it
                    now = time.monotonic()
                    failing_since = now if failing_since is None else failing_since
                    if now - failing_since >= give_up_seconds:
                        self._error = exc
                        progress, self._progress = self._progress, anyio.Event()
                        progress.set()
                    await anyio.sleep(retry_seconds)
                    self._wake.set()
        finally:
            self.running = False
