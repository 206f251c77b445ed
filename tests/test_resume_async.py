"""Resuming an async run: the first generation proposed after the resume sees everything the store holds
(its population, its elites, its history), as the run before the interruption would have; it is not
proposed blind while the replayed generations are still being read back. (Trials the resumed run completes
with new calls before that proposal count too, as they would in a run that was never interrupted.)"""

from __future__ import annotations

import json
import sqlite3
import textwrap
from pathlib import Path
from typing import Any

import pytest

from convergence.config.loader import parse_config
from convergence.engine.events import NoEvents
from convergence.engine.loop import Optimizer
from convergence.errors import ConvergenceError
from convergence.society.base import ProposalContext
from convergence.society.society import Society
from convergence.storage.store import Store

pytestmark = pytest.mark.anyio

TARGET = '''
def quality(params, input):
    """A smooth score in x, different per case, so trials rank apart."""
    return {"output": str(round(1.0 - abs(params["x"] - 0.62) - 0.01 * len(input), 4))}


def as_score(output, case, call, args):
    return max(0.0, float(output))
'''

N_CASES = 3
POPULATION = 6


class Stop(ConvergenceError):
    """Ends the first run after a generation (as a kill would, but at a known point)."""


class StopAfter(NoEvents):
    def __init__(self, generation: int) -> None:
        self.generation = generation

    def generation_finished(self, generation: int, best: Any, new: Any) -> None:
        if generation == self.generation:
            raise Stop(f"stopped after generation {generation}")


def make(tmp_path: Path) -> Any:
    (tmp_path / "resume_tgt.py").write_text(TARGET)
    cases = "\n".join(f"      - {{input: '{'c' * (i + 1)}'}}" for i in range(N_CASES))
    text = textwrap.dedent("""
        study: async-resume
        target: {type: python, function: "resume_tgt:quality", retry: {max_retries: 0}}
        storage: {path: db.sqlite}
        search_space:
          parameters:
            x: {type: continuous, min: 0.0, max: 1.0, step: 0.01}
        evaluation:
          test_cases:
            inline:
        """) + cases + "\n" + textwrap.dedent(f"""
          metrics:
            q: {{function: "resume_tgt:as_score"}}
        optimization:
          seed: 11
          warm_start: 0
          evolution: {{population_size: {POPULATION}, generations: 8, elite_size: 2}}
          execution: {{mode: async, concurrency: 2, early_stopping: {{enabled: false}}}}
          racing: {{enabled: false}}
        """)
    path = tmp_path / "optimization.yaml"
    path.write_text(text)
    return parse_config(text, path)


async def run(loaded: Any, **kw: Any) -> Any:
    store = await Store.open(loaded.base_dir / loaded.config.storage.path)
    try:
        return await Optimizer(loaded, store, events=kw.pop("events", None)).run(**kw)
    finally:
        await store.close()


def stored_complete_trials(db: Path) -> tuple[int, dict[str, int]]:
    """(first generation not in the store, config hash -> generation) of the stored proposals whose every case
    result is stored: what the store says was fully evaluated."""
    with sqlite3.connect(db) as conn:
        gens = [n for (n,) in conn.execute("SELECT number FROM generations ORDER BY number")]
        proposed: dict[str, int] = {}
        for number, proposals in conn.execute("SELECT number, proposals_json FROM generations"):
            for p in json.loads(proposals):
                proposed.setdefault(p["hash"], number)
        counts = dict(conn.execute("SELECT config_hash, COUNT(DISTINCT case_id) FROM case_results "
                                   "GROUP BY config_hash").fetchall())
    return max(gens) + 1, {h: g for h, g in proposed.items() if counts.get(h, 0) == N_CASES}


async def test_the_first_generation_after_an_async_resume_is_proposed_from_everything_stored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = make(tmp_path)
    with pytest.raises(Stop):
        await run(loaded, events=StopAfter(2))
    first_new, complete = stored_complete_trials(tmp_path / "db.sqlite")
    assert first_new >= 3 and len(complete) >= 3 * POPULATION - 4, "generations 0-2 were stored complete"

    seen: dict[int, ProposalContext] = {}
    propose = Society.propose

    async def spy(self: Society, ctx: ProposalContext, n: int, **kw: Any) -> Any:
        seen[ctx.generation] = ctx
        return await propose(self, ctx, n, **kw)

    monkeypatch.setattr(Society, "propose", spy)
    out = await run(make(tmp_path), resume=True)
    assert out.status == "finished" and out.run_id == 1
    assert min(seen) == first_new, "the stored generations are replayed, not proposed again"
    ctx = seen[first_new]
    score = {t.config_hash: t.score for t in out.trials}
    implied = sorted((score[h] for h in complete), reverse=True)
    history = {t.config_hash for t in ctx.history}
    assert set(complete) <= history, \
        "the first new generation's history holds every trial the store holds complete (and any trial the " \
        "resumed run completed meanwhile, as a run in flight would)"
    best_first = sorted((t.score for t in ctx.history), reverse=True)[:POPULATION]
    assert [t.score for t in ctx.population] == best_first, "its population (the elites' source) is the best of them"
    assert all(p >= s for p, s in zip(best_first, implied[:POPULATION], strict=False)) and \
        len(best_first) >= min(POPULATION, len(implied)), "never worse than what the store alone implies"
