"""The search benchmark's two newest noisy problems are as described, and a missing peer is skipped with a reason."""

from __future__ import annotations

import sys
from itertools import product
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import noisy_peers
import noisy_problems as npb


def _cell_values() -> dict[tuple[str, str], float]:
    """cells_noisy: the best true value of each (prompt, model) cell over its few-shot counts."""
    prob = npb.PROBLEMS["cells_noisy"]
    filler = {"format": "json", "seed_phrase": "none", "n_retries": 0}
    return {(pr, mo): max(prob.true_value({**filler, "prompt": pr, "model": mo, "shots": s}) for s in npb.SHOTS)
            for pr, mo in product(npb.CELL_PROMPTS, npb.CELL_MODELS)}


def test_cells_noisy_few_good_cells_that_the_marginals_do_not_point_at() -> None:
    """Only the 6 good cells are good, and the best prompt and best model on average make a poor cell."""
    cells = _cell_values()
    good = {(npb.CELL_PROMPTS[i], npb.CELL_MODELS[j]) for i, j in npb.GOOD_CELLS}
    ranked = sorted(cells, key=lambda c: -cells[c])
    assert set(ranked[:6]) == good
    assert cells[ranked[0]] == pytest.approx(npb.PROBLEMS["cells_noisy"].optimum)
    assert min(cells[c] for c in good) > 0.65 > 0.55 > cells[ranked[6]]
    prompt_mean = {p: np.mean([v for (pr, _), v in cells.items() if pr == p]) for p in npb.CELL_PROMPTS}
    model_mean = {m: np.mean([v for (_, mo), v in cells.items() if mo == m]) for m in npb.CELL_MODELS}
    best_marginal = (max(prompt_mean, key=prompt_mean.__getitem__), max(model_mean, key=model_mean.__getitem__))
    assert best_marginal not in good
    assert cells[best_marginal] < 0.6


def test_heavy_noisy_has_cases_that_no_configuration_moves() -> None:
    """Heavy tails: the hardest case nearly always fails and the easiest nearly always passes, whatever the config."""
    prob = npb.PROBLEMS["heavy_noisy"]
    hardest, easiest = int(np.argmax(prob.difficulty)), int(np.argmin(prob.difficulty))
    assert prob.difficulty[hardest] > 5 and prob.difficulty[easiest] < -5
    assert np.median(np.abs(prob.difficulty)) < 1.0  # the rest sit near the middle
    rng = np.random.default_rng(0)
    for _ in range(200):
        cfg = {k: npb._grid(v)[rng.integers(len(npb._grid(v)))] for k, v in prob.space.items()}
        p = prob.probs(cfg)
        assert p[hardest] < 0.05 and p[easiest] > 0.95


def test_a_peer_that_cannot_be_imported_is_reported_with_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "smac", None)
    monkeypatch.setitem(sys.modules, "rpy2.robjects.packages", None)
    assert "pip install -e '.[bench]'" in str(noisy_peers.unavailable("smac"))
    assert "pip install -e '.[bench]'" in str(noisy_peers.unavailable("irace"))
