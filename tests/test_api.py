"""Programmatic use: what the CLI does, from Python, async-first."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import convergence

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.anyio


async def test_optimize_from_python_writes_outputs_and_can_be_read_back(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    shutil.copytree(ROOT / "examples" / "python_function", proj)
    outcome = await convergence.optimize(str(proj / "optimization.yaml"))
    assert outcome.status == "finished" and outcome.best is not None
    assert outcome.best.score == max(t.score for t in outcome.trials if t.usable)
    assert any(p.endswith("report.md") for p in outcome.output_files)

    loaded = convergence.load_config(proj / "optimization.yaml")
    async with await convergence.Store.open(proj / loaded.config.storage.path) as store:
        report = await convergence.build_report(store, outcome.run_id)
    assert report.best is not None and report.best.config == outcome.best.config
    assert report.resolved_best == outcome.best.config  # no labelled categoricals in this example


async def test_unknown_attribute_is_a_clear_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        convergence.nope  # noqa: B018
