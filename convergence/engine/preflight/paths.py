"""Preflight checks of the storage and output paths: creatable, writable, a SQLite file where one is expected."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from convergence.config.loader import (
    resolve_path,
)
from convergence.engine.preflight.context import SQLITE_HEADER, Ctx
from convergence.storage.faults import check_database


def _storage_and_output(ctx: Ctx) -> None:
    cfg = ctx.cfg
    db = ctx.loaded.db_path
    problem = _file_problem(db, sqlite=True)
    if problem:
        ctx.add(("legacy", "sqlite_path") if _from_legacy(cfg, "sqlite_path") else ("storage", "path"), problem)
    out = resolve_path(ctx.base, cfg.output.save_path)
    problem = _dir_problem(out)
    if problem:
        ctx.add(("legacy", "export_dir") if _from_legacy(cfg, "export_dir") else ("output", "save_path"), problem)
    export = cfg.output.export_best_config
    if export.enabled and export.output_path:
        p = Path(os.path.expanduser(export.output_path))
        target = p if p.is_absolute() else out / "run-1" / p
        problem = _file_problem(target, sqlite=False)
        if problem:
            ctx.add(("output", "export_best_config", "output_path"), problem)


def _show(p: Path) -> str:
    text = str(p)
    return text if len(text) <= 120 else text[:117] + "..."


def _from_legacy(cfg: Any, name: str) -> bool:
    return cfg.legacy is not None and getattr(cfg.legacy, name) is not None


def _nearest_existing(p: Path) -> Path:
    q = p
    while not q.exists() and q != q.parent:
        q = q.parent
    return q


def _dir_problem(p: Path) -> str | None:
    """Why ``p`` cannot be (or become) a writable directory, or None."""
    try:
        if p.exists():
            if not p.is_dir():
                return f"{_show(p)} is an existing file, not a directory"
            if not os.access(p, os.W_OK | os.X_OK):
                return f"the directory {_show(p)} is not writable"
            return None
        return _creatable(p)
    except OSError as exc:
        return f"cannot use {_show(p)}: {exc.strerror or exc}"


def _creatable(p: Path) -> str | None:
    """Why ``p`` (which does not exist) cannot be created, or None."""
    anc = _nearest_existing(p)
    if not anc.is_dir():
        return f"cannot create {_show(p)}: {_show(anc)} is a file"
    if not os.access(anc, os.W_OK | os.X_OK):
        return f"cannot create {_show(p)}: the directory {_show(anc)} is not writable"
    return None


def _file_problem(p: Path, *, sqlite: bool) -> str | None:
    """Why ``p`` cannot be (or become) a writable file (a SQLite database when ``sqlite``), or None."""
    try:
        if p.exists():
            if p.is_dir():
                return f"{_show(p)} is a directory; this must be a file path"
            if not p.is_file():
                return f"{_show(p)} is not a regular file"
            if not os.access(p, os.R_OK | os.W_OK):
                return f"{_show(p)} is not readable and writable"
            if sqlite:
                with p.open("rb") as fh:
                    head = fh.read(len(SQLITE_HEADER))
                if head and head != SQLITE_HEADER:
                    return f"{_show(p)} exists but is not a SQLite database"
                if not os.access(p.parent, os.W_OK | os.X_OK):
                    return f"the directory of {_show(p)} is not writable (SQLite needs its -wal file there)"
                return check_database(p)  # empty, damaged pages, another program's tables: read-only look
            return None
        return _creatable(p)
    except OSError as exc:
        return f"cannot use {_show(p)}: {exc.strerror or exc}"
