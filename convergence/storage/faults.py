"""What goes wrong with the database *file*, said once, for every command.

SQLite reports a damaged file, a full disk or a read-only file as
``sqlite3.DatabaseError`` (and a damaged text value as ``UnicodeDecodeError``,
a damaged JSON value as ``json.JSONDecodeError``) from whichever statement
first touches the bad spot: opening, a read deep inside ``convergence show``,
or a commit in the middle of a run. :func:`database_error` turns each of them
into one :class:`DatabaseFileError` that names the file, says what happened
and what to do; ``Store`` applies it to every method (``store.py: guarded``)
and to the writer's commits. Errors that are not about the file (a lock held
by another process, a constraint a bug violated) are left as they are.

Convergence never repairs, truncates or overwrites a damaged file: the user
restores it from a backup or moves it away. :func:`check_database` is the
read-only look ``convergence validate`` takes (``PRAGMA quick_check``: about
0.3 s for 200 MB; ``Store.open`` reads the schema only, see README).
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

from convergence.storage.connection import StorageError

DAMAGED, FULL, READ_ONLY, IO = "damaged", "full", "read-only", "io"

_CODES = {
    sqlite3.SQLITE_CORRUPT: DAMAGED,
    sqlite3.SQLITE_NOTADB: DAMAGED,
    sqlite3.SQLITE_FULL: FULL,
    sqlite3.SQLITE_READONLY: READ_ONLY,
    sqlite3.SQLITE_PERM: READ_ONLY,
    sqlite3.SQLITE_IOERR: IO,
    sqlite3.SQLITE_CANTOPEN: IO,
}
"""Primary SQLite result codes that are about the file (extended codes are reduced to these)."""

TABLES = ("studies", "runs", "generations", "trials", "case_results", "schema_version")
"""Tables every Convergence database has (the ones every command reads)."""


class DatabaseFileError(StorageError):
    """The project database file cannot be used: damaged (or not a database), on a full
    disk, read-only, or failing I/O. ``kind`` is one of ``damaged``, ``full``,
    ``read-only``, ``io``; the message names the file and what to do."""

    def __init__(self, message: str, *, path: Path, kind: str) -> None:
        super().__init__(message)
        self.path = path
        self.kind = kind


def _advice(kind: str, path: Path, detail: str) -> str:
    if kind == DAMAGED:
        return (f"the project database {path} is damaged or not a Convergence database ({detail}); "
                "restore it from a backup, or move it away to start a new one (convergence never "
                "repairs or overwrites it; `sqlite3 FILE .recover` may salvage its rows)")
    if kind == FULL:
        return (f"cannot write the project database {path}: the disk is full ({detail}); "
                "free some space, then continue (nothing already stored is lost)")
    if kind == READ_ONLY:
        return (f"cannot write the project database {path}: it is read-only ({detail}); "
                "make the file and its directory writable (SQLite writes a -wal file beside it), then continue")
    return (f"cannot read or write the project database {path} ({detail}); "
            "check the disk and the file, then continue")


def database_error(exc: BaseException, path: Path) -> DatabaseFileError | None:
    """The clear error for ``exc`` raised while using ``path``; None when ``exc`` is not about
    the file (already ours, a lock, a bug), which is then left to propagate as it is."""
    if isinstance(exc, DatabaseFileError):
        return None
    kind: str | None = None
    if isinstance(exc, sqlite3.DatabaseError):
        code = getattr(exc, "sqlite_errorcode", None)
        kind = _CODES.get(code & 0xFF) if isinstance(code, int) else None
        text = str(exc)
        if kind is None and isinstance(exc, sqlite3.OperationalError) and (
                text.startswith(("no such table", "no such column", "Could not decode to UTF-8"))
                or "malformed" in text):
            kind = DAMAGED  # a schema that lost a table (or a column) we created; a stored text that is not UTF-8
        if kind is None and type(exc) is sqlite3.DatabaseError:
            kind = DAMAGED  # "file is not a database" and friends, when no code came with them
    elif isinstance(exc, (UnicodeDecodeError, json.JSONDecodeError)):
        kind = DAMAGED  # we only ever store valid UTF-8 and valid JSON
    if kind is None:
        return None
    detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return DatabaseFileError(_advice(kind, path, detail), path=path, kind=kind)


def refuse_unusable(path: Path) -> None:
    """Raise :class:`DatabaseFileError` for an existing ``path`` that SQLite would silently take
    for a new, empty database: a zero-byte file (a truncated copy, an interrupted download, a
    ``touch``). Convergence creates a new database under a temporary name and moves it into
    place whole (``Store.open``), so an empty file at the path was never one of ours."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    except OSError as exc:
        raise DatabaseFileError(_advice(IO, path, exc.strerror or str(exc)), path=path, kind=IO) from exc
    if size == 0:
        raise DatabaseFileError(_advice(DAMAGED, path, "it is an empty file, 0 bytes"), path=path, kind=DAMAGED)


def check_schema(names: set[str], path: Path, *, created: bool) -> None:
    """Refuse a database whose schema lacks our tables: another program's SQLite file (which we
    would otherwise fill with ours), or one whose schema page was damaged. ``created``: a file we
    are creating, still empty."""
    if created or not names:
        return  # a new database is migrated next
    if "schema_version" not in names:
        raise DatabaseFileError(
            f"the project database {path} is a SQLite file of another program (no Convergence tables: "
            f"{', '.join(sorted(names)[:5])}); point storage.path (or --db) at a Convergence database, or move "
            "the file away (convergence never writes into it)", path=path, kind=DAMAGED)


VALUE_CHECKED = ("studies", "runs", "generations", "trials")
"""Tables whose every value ``check_database`` decodes: one row per run, generation or
configuration (``case_results``, the large one, is left to the command that reads it)."""


def _decode_rows(db: sqlite3.Connection, table: str) -> None:
    cur = db.execute(f"SELECT * FROM {table}")  # our own table names
    json_cols = [i for i, d in enumerate(cur.description) if d[0].endswith("_json")]
    for row in cur:
        for i in json_cols:
            if row[i] is not None:
                json.loads(row[i])


def check_database(path: Path) -> str | None:
    """Why the existing database ``path`` cannot be used, or None: opened read-only (never created,
    never written), its pages checked (``PRAGMA quick_check``), its tables listed and the values
    of its small tables decoded (:data:`VALUE_CHECKED`)."""
    try:
        refuse_unusable(path)
        with closing(sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=10)) as db:
            names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            check_schema(names, path, created=False)
            problems = [r[0] for r in db.execute("PRAGMA quick_check(3)")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError(f"database disk image is malformed: {problems[0]}")
            missing = [t for t in TABLES if t not in names]
            if missing:
                raise sqlite3.OperationalError(f"no such table: {missing[0]}")
            for table in VALUE_CHECKED:  # damage no page check sees: a stored text or JSON value
                _decode_rows(db, table)
    except DatabaseFileError as exc:
        return str(exc)
    except (sqlite3.Error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        clear = database_error(exc, path)
        return str(clear) if clear is not None else f"cannot read the project database {path}: {exc}"
    return None
