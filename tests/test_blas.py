"""The society's small model fits run on one BLAS thread (many contend on a busy machine), and the
process's thread counts are restored after."""

from __future__ import annotations

import pytest
from threadpoolctl import threadpool_info

from convergence.core import blas


def _blas_threads() -> list[int]:
    return [int(lib["num_threads"]) for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_a_block_runs_on_one_blas_thread_and_the_counts_come_back() -> None:
    import scipy.linalg  # noqa: F401

    before = _blas_threads()
    if not before:
        pytest.skip("no BLAS that threadpoolctl can see is loaded in this process")
    with blas.one_blas_thread():
        assert _blas_threads() == [1] * len(before)
    assert _blas_threads() == before
