"""The Wilcoxon signed-rank test on paired per-case differences, fast enough for the event loop.

SciPy's ``wilcoxon`` gives exact p-values for up to 13 differences. With pass/fail
scores the differences are -1, 0 or +1 (ties and zeros), and SciPy then computes
that exact p-value one sign pattern at a time: 0.37 s at 12 differences
(measured by benchmarks/search_quality.py --noisy), which would stall the loop
at every racing look. Up to 13 differences we compute the same exact null
distribution (every sign pattern of the non-zero differences, mid-ranks for
ties, zeros dropped as ``zero_method="wilcox"``) as one numpy matrix product:
the same p-values as SciPy, in about 0.1 ms. Above 13, SciPy's own test is used
(fast there). ``tests/test_signed_rank.py`` checks the two agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

EXACT_MAX = 13
"""Most differences with an exact p-value (SciPy's limit; at most 2**13 sign patterns)."""


def signed_rank_p(diffs: Sequence[float], alternative: Literal["less", "greater", "two-sided"]) -> float:
    """p-value of the signed-rank test that the differences are centred on 0, against ``alternative``."""
    d = np.asarray(diffs, dtype=float)
    nz = d[d != 0]
    n = len(nz)
    if n == 0:
        return 1.0
    if len(d) > EXACT_MAX:
        from scipy.stats import wilcoxon

        return float(wilcoxon(d, alternative=alternative, zero_method="wilcox").pvalue)
    from scipy.stats import rankdata

    ranks = rankdata(np.abs(nz))
    observed = float(ranks[nz > 0].sum())
    flips = (np.arange(2**n)[:, None] >> np.arange(n)) & 1  # every sign pattern of the non-zero differences
    null = flips @ ranks
    tol = 1e-9 * max(1.0, observed)
    less = float(np.count_nonzero(null <= observed + tol)) / len(null)
    greater = float(np.count_nonzero(null >= observed - tol)) / len(null)
    if alternative == "less":
        return less
    if alternative == "greater":
        return greater
    return min(1.0, 2 * min(less, greater))
