"""The society's small model fits run on one OpenBLAS thread (many contend on a busy machine), and the
process's thread counts are restored after."""

from __future__ import annotations

import pytest

from convergence.core import blas


def test_a_block_runs_on_one_blas_thread_and_the_counts_come_back() -> None:
    libs = blas._openblas()
    if not libs:
        pytest.skip("no OpenBLAS loaded in this process (another BLAS, or not Linux)")
    before = [int(get()) for _, get in libs]  # type: ignore[operator]
    with blas.one_blas_thread():
        assert [int(get()) for _, get in libs] == [1] * len(libs)  # type: ignore[operator]
    assert [int(get()) for _, get in libs] == before  # type: ignore[operator]
