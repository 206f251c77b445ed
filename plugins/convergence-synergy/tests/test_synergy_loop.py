"""The synergy learner in a real run: it moves the society's slots to the agent whose
proposals help, which makes a better run than fixed shares at the same budget; its
weights persist and the next run of the study starts from them; the CLI manages them.

The rigged society: the score is x / 1000 on a narrow ridge (y within 10 of x) and
falls to 0 off it. "climber" walks up the ridge from the best point on it (it
keeps improving the score), "stray" proposes points off the ridge, and "random"
samples uniformly (it lands on the ridge about 2 % of the time).

The real-run comparison with fixed shares runs here for the default algorithm
(actor_critic) over a short run; every algorithm, over more generations and seeds:
``python benchmarks/synergy.py``. Every algorithm learning from rewards alone (and not
from shuffled ones): ``test_rigged.py``.
"""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from typer.testing import CliRunner

from convergence.cli.app import app
from convergence.config.loader import parse_config
from convergence.core.space import SearchSpace, config_hash
from convergence.engine.loop import Optimizer
from convergence.society.bandit import RandomProposer
from convergence.society.base import ProposalContext
from convergence.society.society import Society
from convergence.storage.store import Store

pytestmark = pytest.mark.anyio  # the synergy plugin is installed by the README's set-up (make install)

GENERATIONS = 16
LEVEL = 0.5
"""The climber's share must pass this within GENERATIONS generations (actor_critic: after 9 here)."""


class Climber:
    name = "climber"

    async def propose(self, ctx: ProposalContext, n: int) -> list[dict[str, Any]]:
        top = max((t.config["x"] for t in ctx.history if t.score > 0), default=50)
        out: list[dict[str, Any]] = []
        for step in range(1, 400):
            x = min(1000, top + step * 4)
            c = {"x": x, "y": x}
            if config_hash(c) not in ctx.seen and c not in out:
                out.append(c)
            if len(out) == n:
                break
        return out

    def observe(self, trials: Any) -> None:
        pass


class Stray:
    name = "stray"

    async def propose(self, ctx: ProposalContext, n: int) -> list[dict[str, Any]]:
        return [{"x": (x := int(ctx.rng.integers(0, 1000))), "y": (x + 500) % 1000} for _ in range(n)]

    def observe(self, trials: Any) -> None:
        pass


def _society(space: SearchSpace) -> Society:
    rnd = RandomProposer()
    return Society([(Climber(), 1 / 3), (Stray(), 1 / 3), (rnd, 1 / 3)], space)


def _loaded(tmp_path: Path, learner: str) -> Any:
    mod = f"syn_target_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{mod}.py").write_text(
        "def f(params, input):\n"
        "    x, y = params['x'], params['y']\n"
        "    return str(x / 1000 * max(0.0, 1 - abs(y - x) / 10))\n")
    text = textwrap.dedent(f"""
        study: synergy-rigged
        target: {{type: python, function: "{mod}:f"}}
        storage: {{path: db.sqlite}}
        search_space:
          parameters:
            x: {{type: discrete, min: 0, max: 1000, step: 1}}
            y: {{type: discrete, min: 0, max: 1000, step: 1}}
        evaluation:
          test_cases: {{inline: [{{input: "a"}}]}}
          metrics:
            score: {{function: "{mod}_metric:value"}}
        optimization:
          seed: 7
          warm_start: 0
          evolution: {{population_size: 9, generations: {GENERATIONS}, elite_size: 1}}
          execution: {{mode: generational, early_stopping: {{enabled: false}}}}
          racing: {{enabled: false}}
        society:
          enabled: true
          agents: {{evolution: 0.34, bandit: 0.33, random: 0.33}}
          {learner}
    """)
    (tmp_path / f"{mod}_metric.py").write_text("def value(output, case, call, args):\n    return float(output)\n")
    path = tmp_path / "optimization.yaml"
    path.write_text(text)
    return parse_config(text, path)


async def _run(loaded: Any) -> tuple[Any, list[dict[str, Any]]]:
    store = await Store.open(loaded.db_path)
    try:
        opt = Optimizer(loaded, store, society=_society(SearchSpace.from_config(loaded.config.search_space)))
        out = await opt.run()
        return out, await store.learner_log(out.run_id)
    finally:
        await store.close()


async def test_the_learner_moves_slots_to_the_agent_that_helps_and_beats_fixed_shares(tmp_path: Path) -> None:
    algorithm = "actor_critic"
    (tmp_path / "learned").mkdir()
    (tmp_path / "fixed").mkdir()
    learned, log = await _run(_loaded(tmp_path / "learned", f"learner: {{plugin: synergy, algorithm: {algorithm}}}"))
    fixed, _ = await _run(_loaded(tmp_path / "fixed", ""))
    shares = [row["shares"]["climber"] for row in log]
    reached = next((i + 1 for i, s in enumerate(shares) if s > LEVEL), None)
    assert reached is not None, f"{algorithm}: the climber's share stayed at most {max(shares):.2f}"
    assert learned.best.score > fixed.best.score, "the same budget with learned shares finds more"
    climbed = sum(1 for t in learned.trials if t.proposer == "climber")
    assert climbed > sum(1 for t in fixed.trials if t.proposer == "climber")
    print(f"{algorithm}: climber share > {LEVEL} after generation {reached}; final shares "
          f"{ {k: round(v, 2) for k, v in log[-1]['shares'].items()} }; best {learned.best.score:.3f} "
          f"vs fixed {fixed.best.score:.3f}")


@pytest.mark.usefixtures("this_checkouts_entry_points")  # `convergence synergy` is the plugin's cli.synergy entry
async def test_weights_persist_and_the_next_run_starts_from_them_and_the_cli_manages_them(tmp_path: Path) -> None:
    loaded = _loaded(tmp_path, "learner: {plugin: synergy}")
    _, log = await _run(loaded)
    learned = log[-1]["shares"]
    _, log2 = await _run(loaded)  # a second run of the study
    store = await Store.open(loaded.db_path)
    try:
        first = (await store.learner_log(2))[0]
    finally:
        await store.close()
    assert first["result"]["agents"]["climber"]["share"] == pytest.approx(learned["climber"], abs=1e-6), \
        "the second run's first generation used the learned shares"
    await anyio.to_thread.run_sync(_cli, str(loaded.path), log2[-1]["shares"], tmp_path)  # the CLI runs its own loop


def _cli(cfg: str, last: dict[str, float], tmp_path: Path) -> None:
    runner = CliRunner()
    shown = runner.invoke(app, ["synergy", "show", "--config", cfg, "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["shares"]["climber"] == pytest.approx(last["climber"], abs=1e-6)
    out = tmp_path / "w.json"
    assert runner.invoke(app, ["synergy", "export", "--config", cfg, "--out", str(out)]).exit_code == 0
    doc = json.loads(out.read_text())
    doc["shares"] = {"climber": 0.2, "stray": 0.2, "random": 0.6}
    out.write_text(json.dumps(doc))
    assert runner.invoke(app, ["synergy", "import", str(out), "--config", cfg]).exit_code == 0
    shown = json.loads(runner.invoke(app, ["synergy", "show", "--config", cfg, "--json"]).stdout)
    assert shown["shares"]["random"] == pytest.approx(0.6)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"shares": {"climber": "lots"}}))
    result = runner.invoke(app, ["synergy", "import", str(bad), "--config", cfg])
    assert result.exit_code == 1 and "bad.json" in result.output
    plot = tmp_path / "h.png"
    hist = runner.invoke(app, ["synergy", "history", "--config", cfg, "--plot", str(plot)])
    assert hist.exit_code == 0 and plot.stat().st_size > 1000
    trained = runner.invoke(app, ["synergy", "train", "--config", cfg])
    assert trained.exit_code == 0 and f"run 2 generation {GENERATIONS}" in trained.output
    assert runner.invoke(app, ["synergy", "reset", "--config", cfg]).exit_code == 0
    assert json.loads(runner.invoke(app, ["synergy", "show", "--config", cfg, "--json"]).stdout)["exists"] is False


@pytest.mark.usefixtures("this_checkouts_entry_points")
async def test_synergy_serve_exposes_the_learned_weights_to_a_prometheus_scrape(tmp_path: Path) -> None:
    import subprocess
    import sys

    import httpx

    from convergence.society.learner import state_dir

    loaded = _loaded(tmp_path, "learner: {plugin: synergy}")
    _, log = await _run(loaded)
    where = state_dir(loaded.db_path, loaded.config.study_name)
    proc = subprocess.Popen([sys.executable, "-m", "convergence", "synergy", "serve", "--state-dir", str(where),
                             "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = await anyio.to_thread.run_sync(proc.stdout.readline)
        url = line.split("serving ", 1)[1].split("/metrics", 1)[0]
        assert url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient() as client:
            health = await client.get(url + "/health", timeout=10)
            metrics = (await client.get(url + "/metrics", timeout=10)).text
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert health.text == "ok\n"
    scraped = {line.split('"')[1]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("convergence_synergy_weight{")}
    assert scraped == pytest.approx(log[-1]["shares"], abs=1e-6)
    assert "convergence_synergy_info{algorithm=\"actor_critic\"} 1.0" in metrics
