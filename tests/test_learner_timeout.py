"""A society learner whose ``update()`` does not return: the run goes on without it after
``society.agent_timeout_seconds`` (the shares it last set stay, the user is told, and after repeated
timeouts the learner is set aside), and Ctrl-C ends such a run at once with its work stored."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from convergence.config.loader import parse_config
from convergence.engine.loop import Optimizer
from convergence.registry import registry
from convergence.storage.store import Store

PLUGIN = '''
"""A learner that answers once, then never again (written by the test)."""
import os
import threading
import time

RELEASE = threading.Event()
"""Set by the in-process test at its end, so no thread outlives it; a subprocess never sets it."""


class Hangs:
    name = "hangs"

    def __init__(self, ctx):
        self.shares = dict(ctx.shares)
        self.updates = 0

    def initial_shares(self):
        return dict(self.shares)

    def update(self, result):
        self.updates += 1
        if self.updates == 1:  # the first answer moves the shares: they must stay after the hang
            return {name: (1.0 if name == "random" else 0.0) for name in self.shares}
        marker = os.environ.get("HANG_MARKER")
        if marker:
            open(marker, "w").close()
        RELEASE.wait(float(os.environ.get("HANG_SECONDS", "100000")))
        return dict(self.shares)

    def stop_reason(self):
        return None

    def summary(self):
        return {"updates": self.updates}


def make(ctx):
    return Hangs(ctx)
'''

TARGET = '''
import os, time

def call(params, input):
    time.sleep(float(os.environ.get("CALL_SLEEP", "0")))
    return "yes" if params["x"] > 0.5 else "no"
'''


@pytest.fixture
def hanging_learner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The plugin as an installed distribution (a dist-info on the path: seen by this process and by
    subprocesses given the same PYTHONPATH)."""
    site = tmp_path / "site"
    dist = site / "cvg_hang_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (site / "cvg_hang_plugin.py").write_text(PLUGIN)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cvg-hang-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text('[convergence.plugins]\nlearner.hangs = cvg_hang_plugin:make\n')
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    registry.cache_clear()
    try:
        yield site
    finally:
        mod = sys.modules.get("cvg_hang_plugin")
        if mod is not None:
            mod.RELEASE.set()
            sys.modules.pop("cvg_hang_plugin")
        registry.cache_clear()


def make(tmp_path: Path, generations: int, timeout: float) -> Any:
    (tmp_path / "hang_tgt.py").write_text(TARGET)
    text = textwrap.dedent(f"""
        study: hang
        target: {{type: python, function: "hang_tgt:call", retry: {{max_retries: 0}}}}
        storage: {{path: db.sqlite}}
        search_space:
          parameters:
            x: {{type: continuous, min: 0.0, max: 1.0, step: 0.01}}
        evaluation:
          test_cases: {{inline: [{{input: a, expected: "yes"}}, {{input: b, expected: "yes"}}]}}
          metrics:
            acc: {{function: exact_match}}
        optimization:
          seed: 3
          warm_start: 0
          evolution: {{population_size: 4, generations: {generations}, elite_size: 1}}
          execution: {{mode: generational, concurrency: 2, early_stopping: {{enabled: false}}}}
          racing: {{enabled: false}}
        society:
          enabled: true
          agents: {{random: 0.5, evolution: 0.5}}
          agent_timeout_seconds: {timeout}
          learner: {{plugin: hangs}}
        """)
    path = tmp_path / "optimization.yaml"
    path.write_text(text)
    return parse_config(text, path)


class Messages:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


@pytest.mark.anyio
@pytest.mark.usefixtures("hanging_learner")
async def test_a_learner_that_never_answers_is_timed_out_and_the_run_finishes_with_its_last_shares(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the hang would end after 30 s (so a run without a time limit fails here instead of hanging the suite)
    monkeypatch.setenv("HANG_SECONDS", "30")
    loaded = make(tmp_path, generations=6, timeout=1)
    events = Messages()
    store = await Store.open(tmp_path / "db.sqlite")
    started = time.monotonic()
    try:
        out = await Optimizer(loaded, store, events=events).run()  # type: ignore[arg-type]
    finally:
        await store.close()
    took = time.monotonic() - started
    assert out.status == "finished" and out.generations_run == 6, out.stop_reason
    assert took < 20, f"the run waited for the hung learner ({took:.1f}s)"
    said = "\n".join(events.lines)
    assert "learner 'hangs' did not answer within 1s after generation 2" in said, said
    assert "keeps the shares it had" in said
    assert "learner 'hangs' is set aside" in said, said
    later = {t.proposer for t in out.trials if t.generation >= 2}
    assert later == {"random"}, "the shares of the learner's one answer stay in force"


@pytest.mark.slow
@pytest.mark.usefixtures("hanging_learner")
def test_ctrl_c_while_the_learner_hangs_ends_the_run_at_once_and_stores_it_interrupted(tmp_path: Path) -> None:
    loaded = make(tmp_path, generations=6, timeout=300)
    marker = tmp_path / "hanging"
    env = {**os.environ, "HANG_MARKER": str(marker)}
    proc = subprocess.Popen([sys.executable, "-m", "convergence", "optimize", str(loaded.path), "--quiet",
                             "--no-outputs"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not marker.exists() and proc.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), "the learner's update was never entered: " + "".join(proc.communicate()[1])
    time.sleep(0.5)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        _out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the first Ctrl-C did not end the run within 30 s")
    took = time.monotonic() - sent
    assert proc.returncode == 130, err
    assert took < 5, f"Ctrl-C took {took:.1f}s to end the run"
    assert "Traceback" not in err
    with sqlite3.connect(tmp_path / "db.sqlite") as conn:
        status, n_trials = conn.execute("SELECT status, (SELECT COUNT(*) FROM trials) FROM runs").fetchone()
    assert status == "interrupted" and n_trials >= 4

