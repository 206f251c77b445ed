"""Before a run's first timed call, what would land inside the run is loaded off the event loop
(engine/warmup.py): racing's first look no longer stalls every slot importing ``scipy.stats``
(issue 20, defect 8), and the embedded model's load is in no call's latency (defect 10)."""

from __future__ import annotations

import json
import sqlite3
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from llm_fixtures import gguf_path  # noqa: F401

import convergence
from convergence.engine.events import NoEvents
from convergence.llm import local_provider

# --------------------------------------------------------------------------- defect 8: racing's first look

RACE_TARGET = '''
import asyncio

async def answer(params, input):
    await asyncio.sleep(0.002)
    # configuration a=k answers right on the cases numbered below 3k: racing cuts the weak ones early
    return "yes" if int(input) < 3 * params["a"] else "no"
'''

RACE_YAML = """\
study: racing-loop
target: {type: python, function: "race_target:answer"}
search_space:
  parameters:
    a: {type: categorical, values: [0, 1, 2, 3, 4]}
    b: {type: categorical, values: [x, y, z, w]}
evaluation:
  test_cases:
    inline: [CASES]
  metrics:
    accuracy: {function: exact_match, weight: 1.0}
optimization:
  seed: 2
  evolution: {population_size: 6, generations: 3}
  execution: {concurrency: 2}
  racing: {enabled: true, min_cases: 5}
""".replace("CASES", ", ".join(f'{{input: "{i}", expected: "yes"}}' for i in range(12)))

HEARTBEAT = '''
import json, sys, time
import anyio
import convergence.api
import convergence.engine.loop  # the engine and everything it imports up front
from convergence.config.loader import load_config
from convergence.engine.preflight import check

assert "scipy.stats" not in sys.modules, "the run must be the first to need scipy.stats"
loaded = load_config(sys.argv[1])
cases = check(loaded).cases
gaps = []

async def main():
    done = anyio.Event()

    async def heartbeat():
        last = time.perf_counter()
        while not done.is_set():
            await anyio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async with anyio.create_task_group() as tg:
        tg.start_soon(heartbeat)
        outcome = await convergence.api.optimize(loaded, cases=cases, write_outputs=False)
        done.set()
    print(json.dumps({"max_gap": max(gaps), "status": outcome.status,
                      "abandoned": sum(t.status == "abandoned" for t in outcome.trials)}))

anyio.run(main)
'''

IMPORT_TIME = '''
import time
import numpy  # the run has numpy already
start = time.perf_counter()
import scipy.stats
print(time.perf_counter() - start)
'''


def test_racings_first_look_does_not_stall_the_event_loop(tmp_path: Path) -> None:
    """A heartbeat task beside a racing run, in a fresh process where ``scipy.stats`` is not imported
    yet: before, the first look imported it on the loop and the heartbeat stopped for as long as the
    import takes (1.33-1.44 s here, import alone 1.6 s); now the longest gap is a fraction of it."""
    (tmp_path / "race_target.py").write_text(RACE_TARGET)
    (tmp_path / "optimization.yaml").write_text(RACE_YAML)
    (tmp_path / "heartbeat.py").write_text(HEARTBEAT)
    run = subprocess.run([sys.executable, "heartbeat.py", "optimization.yaml"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    imported = subprocess.run([sys.executable, "-c", IMPORT_TIME], capture_output=True, text=True, timeout=300)
    import_seconds = float(imported.stdout.strip())
    assert seen["status"] == "finished" and seen["abandoned"] >= 1, seen  # racing looked, and cut trials
    assert seen["max_gap"] < 0.4 * import_seconds, (seen, import_seconds)


# --------------------------------------------------------------------------- defect 10: the embedded model's load

LOAD_SECONDS = 1.5


class _SlowLoadingModel:
    """Stands in for llama.cpp's ``Llama`` (the real one is tested below, slowly): loading takes
    LOAD_SECONDS, as the real load does; a completion is quick."""

    _seed = 0

    def reset(self) -> None:
        return None

    def create_completion(self, prompt: str, **kwargs: Any) -> dict[str, Any]:
        time.sleep(0.01)
        return {"choices": [{"text": "Paris", "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1}}


class _Messages(NoEvents):
    def __init__(self) -> None:
        self.messages: list[str] = []

    def message(self, text: str) -> None:
        self.messages.append(text)


def _local_project(folder: Path, *, cases: int, concurrency: int, max_tokens: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    inline = ", ".join(f'{{input: "Q{i}: the capital of France is", expected: "Paris"}}' for i in range(cases))
    (folder / "optimization.yaml").write_text(textwrap.dedent(f"""\
        study: local-latency
        target: {{type: litellm, model: local/gemma-3-270m, prompt: "{{{{ input }}}}",
                  params: {{max_tokens: {max_tokens}}}}}
        search_space:
          parameters:
            temperature: {{type: categorical, values: [0.0, 0.5]}}
        evaluation:
          test_cases:
            inline: [{inline}]
          metrics:
            accuracy: {{function: contains, weight: 1.0}}
            latency: {{function: latency, weight: 0.5, direction: lower_is_better}}
        optimization:
          seed: 1
          evolution: {{population_size: 2, generations: 1}}
          execution: {{concurrency: {concurrency}}}
          racing: {{enabled: false}}
          selection: {{confirm_top: 0}}
        """))
    return folder / "optimization.yaml"


def _latencies(folder: Path) -> list[float]:
    """Every case's latency, in the order the calls finished."""
    with sqlite3.connect(folder / ".convergence" / "convergence.db") as db:
        return [r[0] for r in db.execute("SELECT latency_ms FROM case_results ORDER BY created_at")]


@pytest.mark.anyio
async def test_the_model_loads_before_the_first_timed_call_and_its_load_is_in_no_latency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fast: the embedded model stood in by one that takes 1.5 s to load. Before, the whole first
    wave of calls waited for the load inside their timing (every latency >= 1.5 s); now the load
    happens before the first call, is said once on the console, and every latency is the call's own."""
    loads: list[float] = []
    lock = threading.Lock()
    model = _SlowLoadingModel()

    def get_llama() -> _SlowLoadingModel:
        with lock:
            if not loads:
                time.sleep(LOAD_SECONDS)
                loads.append(time.perf_counter())
        return model

    monkeypatch.setattr(local_provider, "get_llama", get_llama)
    config = _local_project(tmp_path, cases=4, concurrency=4, max_tokens=4)
    events = _Messages()
    outcome = await convergence.optimize(config, events=events, write_outputs=False)
    assert outcome.status == "finished"
    latencies = _latencies(tmp_path)
    assert len(latencies) == 8 and len(loads) == 1
    assert max(latencies) < 1000 * LOAD_SECONDS / 3, (latencies, events.messages)
    said = [m for m in events.messages if "loaded the embedded model local/gemma-3-270m in" in m]
    assert len(said) == 1 and "target" in said[0], events.messages


@pytest.mark.anyio
async def test_nothing_is_loaded_for_a_run_that_does_not_use_the_embedded_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_load() -> None:
        raise AssertionError("the embedded model was loaded for a run that never calls it")

    monkeypatch.setattr(local_provider, "get_llama", no_load)
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "race_target.py").write_text(RACE_TARGET)
    (proj / "optimization.yaml").write_text(RACE_YAML)
    events = _Messages()
    outcome = await convergence.optimize(proj / "optimization.yaml", events=events, write_outputs=False)
    assert outcome.status == "finished"
    assert not [m for m in events.messages if "embedded model" in m]


@pytest.mark.slow
def test_with_the_real_embedded_model_the_first_calls_latency_is_not_its_load(
    tmp_path: Path, gguf_path: str  # noqa: F811 - the fixture imported above
) -> None:
    """The README's default model through the CLI, in a fresh process (nothing imported or loaded):
    the first calls' latency is like the later ones', not the load's (before: 23 s and 12.7 s against
    about 1 s after)."""
    config = _local_project(tmp_path, cases=6, concurrency=2, max_tokens=4)
    proc = subprocess.run([sys.executable, "-m", "convergence", "optimize", str(config), "--no-outputs"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    latencies = _latencies(tmp_path)
    assert len(latencies) == 12
    first, later = latencies[:2], latencies[2:]
    assert max(first) < 3 * statistics.median(later), latencies
    assert proc.stdout.count("loaded the embedded model local/gemma-3-270m in") == 1, proc.stdout[-4000:]


def test_the_warm_up_covers_the_target_the_judge_and_the_societys_llm_agents(tmp_path: Path) -> None:
    """Everything in this process that calls the embedded model: a run whose target is remote still
    loads it first when its LLM judge or its society's RLP agent uses it; a target on Ray does not count."""
    from convergence.config.loader import load_config
    from convergence.core.space import SearchSpace
    from convergence.engine.warmup import llm_users
    from convergence.society.society import Society

    (tmp_path / "optimization.yaml").write_text(textwrap.dedent("""\
        study: who-calls
        target: {type: litellm, model: openai/gpt-4o-mini, prompt: "{{ input }}"}
        search_space:
          parameters:
            model: {type: categorical, values: [openai/gpt-4o-mini, local/gemma-3-270m]}
        evaluation:
          test_cases:
            inline: [{input: "2+2", expected: "4"}]
          metrics:
            quality: {function: llm_judge, weight: 1.0}
        society: {enabled: true, learning: {rlp_enabled: true}}
        """))
    loaded = load_config(tmp_path / "optimization.yaml")
    space = SearchSpace.from_config(loaded.config.search_space)
    members = [p for p, _ in Society.from_config(loaded.config, space).members]
    here = llm_users(loaded, space, members, target_in_process=True)
    assert here["local/gemma-3-270m"] == ["target", "judge (quality)", "agent rlp"]
    assert here["openai/gpt-4o-mini"] == ["target"]
    on_ray = llm_users(loaded, space, members, target_in_process=False)
    assert on_ray == {"local/gemma-3-270m": ["judge (quality)", "agent rlp"]}
