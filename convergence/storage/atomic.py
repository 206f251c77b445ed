"""Write files so a kill can never leave a truncated one behind.

Every output goes to a hidden temporary file in the same directory, is
flushed to disk (``fsync``), and only then replaces the final path with
``os.replace`` — an atomic rename on POSIX and Windows. A process killed
half-way leaves the previous file (or none) at the final path, plus at worst
a hidden ``.NAME.convergence-tmp-XXXX`` file that :func:`remove_stale_temps`
(called before every report is written) clears away.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

TMP_MARK = ".convergence-tmp-"


def temp_path_for(path: Path) -> Path:
    """A fresh hidden sibling of ``path`` that keeps its extension (some
    writers pick the format from it)."""
    return path.with_name(f".{path.name}{TMP_MARK}{secrets.token_hex(4)}{path.suffix}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable. Not possible (nor needed) on Windows."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for the caller to write; on a
    clean exit it is synced and moved onto ``path``, on an error removed.

    >>> with atomic_path("plot.png") as tmp:          # doctest: +SKIP
    ...     figure.savefig(tmp, format="png")
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(final)
    # Reserve the name (O_EXCL) with the permissions a plain open() would give.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(final.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` all at once or not at all."""
    final = Path(path)
    with atomic_path(final) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return final


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` all at once or not at all (no newline translation)."""
    return atomic_write_bytes(path, text.encode(encoding))


def remove_stale_temps(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files an earlier, killed write left in ``directory``."""
    d = Path(directory)
    removed: list[Path] = []
    if not d.is_dir():
        return removed
    for p in d.glob(f".*{TMP_MARK}*"):
        if p.is_file():
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed
