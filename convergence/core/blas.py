"""One BLAS thread for small dense algebra.

Why: OpenBLAS splits a 300 x 300 Cholesky over every core; on a busy machine
(a benchmark, other agents, the target's own work) its threads wait on each
other, and one factorisation took 0.3-1 s instead of 1 ms (measured on 2
shared cores). The society's model fits are small: one thread is always fast
enough. threadpoolctl sets every BLAS loaded in the process (numpy's and
scipy's) to one thread for the block and restores the previous counts after.
The counts are process-wide, so blocks are serialised by a lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from threading import Lock

from threadpoolctl import threadpool_limits

_lock = Lock()


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the block with one BLAS thread, then restore the previous counts."""
    import scipy.linalg  # noqa: F401 - load scipy's BLAS too, so it is limited as well

    with _lock, threadpool_limits(limits=1, user_api="blas"):
        yield
