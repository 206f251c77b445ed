"""One BLAS thread for small dense algebra.

Why: OpenBLAS splits a 300 x 300 Cholesky over every core; on a busy machine
(a benchmark, other agents, the target's own work) its threads wait on each
other, and one factorisation took 0.3-1 s instead of 1 ms (measured on 2
shared cores). The society's model fits are small: one thread is always fast
enough. numpy and scipy each bundle an OpenBLAS; both are set to one thread
for the block and restored after, through their exported
``*_set_num_threads`` (threadpoolctl's method, without the dependency). Where
no such library is found (not Linux, another BLAS), nothing changes.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from threading import Lock

_SYMBOLS = (("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
            ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
            ("openblas_set_num_threads", "openblas_get_num_threads"))
_lock = Lock()


@functools.cache
def _openblas() -> tuple[tuple[object, object], ...]:
    """(set, get) of every OpenBLAS loaded in this process (after numpy and scipy.linalg are imported)."""
    import numpy  # noqa: F401
    import scipy.linalg  # noqa: F401

    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return ()
    out = []
    for path in sorted({line.split()[-1] for line in maps.splitlines() if "openblas" in line.lower()}):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in _SYMBOLS:
            if hasattr(lib, set_name) and hasattr(lib, get_name):
                out.append((getattr(lib, set_name), getattr(lib, get_name)))
                break
    return tuple(out)


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the block with one OpenBLAS thread, then restore the previous counts."""
    with _lock:
        libs = _openblas()
        before = [int(get()) for _, get in libs]  # type: ignore[operator]
        for set_threads, _ in libs:
            set_threads(1)  # type: ignore[operator]
        try:
            yield
        finally:
            for (set_threads, _), n in zip(libs, before, strict=True):
                set_threads(n)  # type: ignore[operator]
