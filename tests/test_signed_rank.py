"""Racing's and selection's signed-rank test gives SciPy's p-values, without SciPy's slow
exact path on tied pass/fail differences."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import wilcoxon

from convergence.engine.signed_rank import signed_rank_p


@pytest.mark.parametrize("alternative", ["less", "greater", "two-sided"])
def test_the_p_values_are_scipys(alternative: str) -> None:
    rng = np.random.default_rng(3)
    checked = 0
    for i in range(30):  # each size 5 times; tied pass/fail differences up to 8 below SciPy's limit (its exact
        # path is slow beyond; it is the reference here, and the slow part of this test)
        tied = i % 3 != 0
        n = ([5, 6, 7, 8, 14, 20] if tied else [5, 9, 12, 13, 14, 30])[i % 6]
        d = rng.integers(-1, 2, n).astype(float) if tied else np.round(rng.normal(size=n), 1)
        if not d.any():
            continue
        ours = signed_rank_p(d, alternative)  # type: ignore[arg-type]
        ref = float(wilcoxon(d, alternative=alternative, zero_method="wilcox").pvalue)
        assert ours == pytest.approx(ref, abs=1e-9), (list(d), ours, ref)
        checked += 1
    assert checked > 25


def test_all_zero_differences_are_no_evidence() -> None:
    assert signed_rank_p([0.0, 0.0, 0.0], "less") == 1.0


def test_a_clearly_worse_configuration_is_detected_on_pass_fail_cases() -> None:
    d = [-1.0] * 10 + [0.0, 0.0]
    assert signed_rank_p(d, "less") == pytest.approx(1 / 1024)
    assert signed_rank_p(d, "greater") == 1.0
