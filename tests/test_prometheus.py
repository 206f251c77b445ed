"""`optimize --metrics-port`: a Prometheus scrape during the run sees the run's
progress, and one after it sees exactly the run's totals; /health answers ok."""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path

import httpx
import pytest

from convergence.config.loader import parse_config
from convergence.engine.events import NoEvents
from convergence.engine.loop import Optimizer
from convergence.storage.store import Store
from convergence.tracing.prometheus import RunMetrics

pytestmark = pytest.mark.anyio

TARGET = '''
import httpx

URL = None
scrapes = []
calls = 0

async def f(params, input):
    """Scrapes the run's own metrics endpoint on its 12th call (mid-run)."""
    global calls
    calls += 1
    if calls == 12:
        async with httpx.AsyncClient() as c:
            scrapes.append((await c.get(URL + "/metrics", timeout=5)).text)
            scrapes.append((await c.get(URL + "/health", timeout=5)).text)
    return "yes" if params["x"] >= 5 else "no"
'''


def _value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in scrape")


async def test_live_metrics_are_scraped_during_and_after_the_run(tmp_path: Path) -> None:
    import importlib
    import sys

    mod = f"prom_target_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{mod}.py").write_text(TARGET)
    inline = json.dumps([{"input": f"c{i}", "expected": "yes"} for i in range(3)])
    text = textwrap.dedent(f"""
        study: prom
        target: {{type: python, function: "{mod}:f"}}
        storage: {{path: db.sqlite}}
        search_space:
          parameters:
            x: {{type: discrete, min: 0, max: 9, step: 1}}
        evaluation:
          test_cases: {{inline: {inline}}}
          metrics:
            acc: {{function: exact_match}}
        optimization:
          warm_start: 0
          evolution: {{population_size: 4, generations: 3, elite_size: 1}}
          execution: {{concurrency: 2, early_stopping: {{enabled: false}}}}
        society: {{enabled: true, agents: {{evolution: 0.5, random: 0.5}}}}
    """)
    path = tmp_path / "optimization.yaml"
    path.write_text(text)
    loaded = parse_config(text, path)
    live = RunMetrics(NoEvents(), 0)  # port 0: any free port on 127.0.0.1
    url = f"http://127.0.0.1:{live.server.port}"
    sys.path.insert(0, str(tmp_path))
    target = importlib.import_module(mod)
    target.URL = url
    store = await Store.open(tmp_path / "db.sqlite")
    try:
        out = await Optimizer(loaded, store, events=live).run()
        async with httpx.AsyncClient() as c:
            after = (await c.get(url + "/metrics", timeout=5)).text
    finally:
        await store.close()
        live.close()
    during, health = target.scrapes
    assert health == "ok\n"
    assert 10 <= _value(during, "convergence_evaluations_total") < out.total_calls
    assert _value(after, "convergence_evaluations_total") == out.total_calls
    assert _value(after, "convergence_errors_total") == 0
    assert _value(after, "convergence_best_score") == pytest.approx(max(t.score for t in out.trials))
    assert _value(after, "convergence_generation") == 3
    assert 'convergence_agent_share{agent="evolution"}' in after
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health", timeout=2)
