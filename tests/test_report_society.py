"""The report's Society part: what each agent proposed and how it did, RLP's
thoughts in short, and the society plot — read back from a real store."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import anyio
import pytest

from convergence.config.models import OutputConfig
from convergence.core.types import TrialRecord
from convergence.reporting.outputs import build_report, write_run_outputs
from convergence.storage.store import Store

CONFIG: dict[str, Any] = {
    "study": "society-demo",
    "target": {"type": "python", "function": "mod:fn"},
    "search_space": {"parameters": {"x": {"type": "discrete", "min": 0, "max": 100}}},
    "evaluation": {"test_cases": {"inline": [{"input": 1, "expected": 1}]},
                   "metrics": {"accuracy": {"function": "exact_match", "weight": 1.0}}},
    "optimization": {"evolution": {"population_size": 4, "generations": 2, "elite_size": 1}},
    "society": {"enabled": True, "agents": {"evolution": 0.4, "bandit": 0.3, "rlp": 0.3}},
}
LONG_THOUGHT = ("Scores rise with x and the best trials sit near the top of the range, so push x higher still "
                "and keep the rest: " + "padding " * 30)
# Scores by (generation, agent): evolution does best, the RLP agent's proposals are mixed.
TRIALS = [
    (0, "evolution", 10, 0.5), (0, "evolution", 20, 0.6), (0, "bandit", 30, 0.3), (0, "rlp", 40, 0.7),
    (1, "evolution", 50, 0.8), (1, "bandit", 60, 0.4), (1, "rlp", 70, 0.2),
]


def rlp_detail(gen: int) -> dict[str, Any]:
    if gen == 0:
        return {"thoughts": [{"strategy": "exploit", "thought": LONG_THOUGHT, "proposals": 1, "reward": 0.25,
                              "advantage": 0.5, "outcomes": ["best"]}],
                "answers": 2, "invalid": 1, "repaired": 1, "reward_method": "prompt", "mean_reward": 0.25,
                "llm_seconds": 3.5, "notes": [], "policy": {"exploit": 0.6, "explore": 0.4}, "buffer_size": 1,
                "updates": 1, "trend": None, "in_top_k": 1, "top_k": 4}
    return {"thoughts": [{"strategy": "explore", "thought": "Try the untested low end.", "proposals": 1,
                          "reward": -0.5, "advantage": -1.0, "outcomes": ["low"]}],
            "answers": 2, "invalid": 0, "repaired": 0, "reward_method": "prompt", "mean_reward": -0.5,
            "llm_seconds": 2.0, "notes": ["answer outside the strategy's region (kept: it is in the space)"],
            "policy": {"exploit": 0.7, "explore": 0.3}, "buffer_size": 2, "updates": 2, "trend": 0.1,
            "in_top_k": 1, "top_k": 4}


async def make_run(db: Path, *, society: bool = True, config: dict[str, Any] | None = None) -> int:
    """A finished two-generation run stored the way the loop stores it."""
    async with await Store.open(db) as store:
        run_id = await store.start_run("society-demo", config or CONFIG, 1, None)
        for gen in (0, 1):
            rows = [t for t in TRIALS if t[0] == gen]
            store.record_generation_start(run_id, gen, [{"config": {"x": x}, "hash": f"h{x}", "proposer": a}
                                                        for _, a, x, _ in rows])
            for _, agent, x, score in rows:
                store.record_trial(run_id, TrialRecord({"x": x}, f"h{x}", gen, agent, score=score,
                                                       metrics={"accuracy": score}, n_cases=1))
            scores = [s for *_, s in rows]
            store.record_generation_end(run_id, gen, max(scores), sum(scores) / len(scores), len(rows))
            if not society:
                continue
            store.record_society(run_id, gen, "bandit", share=0.3, asked=1, proposed=1, status="ok", seconds=0.01,
                                 detail={"in_top_k": 0, "top_k": 4})
            store.record_society(run_id, gen, "evolution", share=0.4 if gen == 0 else 0.5, asked=2,
                                 proposed=2 if gen == 0 else 1, status="ok", seconds=0.02,
                                 detail={"in_top_k": 2 if gen == 0 else 3, "top_k": 4})
            store.record_society(run_id, gen, "rlp", share=0.3 if gen == 0 else 0.2, asked=1, proposed=1,
                                 status="ok" if gen == 0 else "timeout", seconds=4.0,
                                 detail={**rlp_detail(gen),
                                         **({"error": "no proposals within 300s"} if gen == 1 else {})})
        await store.durable()
        await store.finish_run(run_id, "finished", "completed 2 generation(s)", total_calls=7,
                               total_cost_usd=0.0, elapsed_seconds=12.0)
    return run_id


async def outputs(db: Path, run_id: int, out: Path, cfg: OutputConfig | None = None) -> list[Path]:
    async with await Store.open(db) as store:
        return await write_run_outputs(store, run_id, out, cfg)


def section(md: str, title: str) -> str:
    match = re.search(rf"^## {title}\n(.*?)(?=^## |\Z)", md, re.S | re.M)
    assert match, f"no '## {title}' section"
    return match.group(1)


def test_report_shows_each_agent_and_the_rlp_agents_thoughts(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    run_id = anyio.run(make_run, db)
    written = anyio.run(outputs, db, run_id, tmp_path / "out")  # the run's stored output: the defaults
    out = tmp_path / "out"
    assert out / "society.png" in written and (out / "society.png").read_bytes().startswith(b"\x89PNG")

    soc = section((out / "report.md").read_text(), "Society")
    agents_table = soc.split("###")[0]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in agents_table.splitlines() if line.startswith("| ") and not line.startswith("| agent")}
    assert set(rows) == {"bandit", "evolution", "rlp"}
    # share (first -> last), proposed / asked, trials, mean score, best, top-k, failures, time
    assert rows["evolution"][:7] == ["40% → 50%", "3/4", "3", "0.6333", "0.8", "3/4", "0"]
    assert rows["bandit"][:2] == ["30%", "2/2"]
    assert rows["rlp"][6] == "1 timed out"
    assert "**rlp** last error: no proposals within 300s" in soc
    # RLP: parse rate over the run (1 - 1/4), mean reward of its thoughts and how it was computed, final policy
    assert "**Parse rate:** 75% (3 of 4 answers parsed, 1 after a repair)" in soc
    assert "**Mean reward:** -0.125 (prompt)" in soc
    assert "**Policy:** exploit 0.70 · explore 0.30" in soc
    assert "answer outside the strategy's region" in soc
    thoughts = [line for line in soc.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    assert len(thoughts) == 2
    assert "| 1 | exploit | Scores rise with x" in thoughts[0] and "| best | +0.250 |" in thoughts[0]
    assert "push x higher still and ke… |" in thoughts[0] and "padding" not in thoughts[0]  # its first 100 chars
    assert "| 2 | explore | Try the untested low end. | low | -0.500 |" in thoughts[1]
    assert "![Society: shares and scores by agent](society.png)" in (out / "report.md").read_text()

    doc = json.loads((out / "results.json").read_text())
    agents = {a["name"]: a for a in doc["society"]["agents"]}
    assert doc["society"]["enabled"] is True and doc["society"]["top_k"] == 4
    assert agents["evolution"]["in_top_k"] == 3 and agents["evolution"]["proposed"] == 3
    assert [g["share"] for g in agents["rlp"]["generations"]] == [0.3, 0.2]
    assert [g["mean_score"] for g in agents["evolution"]["generations"]] == pytest.approx([0.55, 0.8])
    assert agents["rlp"]["timeouts"] == 1 and agents["rlp"]["last_error"] == "no proposals within 300s"
    assert agents["rlp"]["reasoning"]["parse_rate"] == 0.75
    assert agents["rlp"]["reasoning"]["policy"] == {"exploit": 0.7, "explore": 0.3}
    assert [t["outcomes"] for t in agents["rlp"]["reasoning"]["thoughts"]] == [["best"], ["low"]]
    assert agents["bandit"]["reasoning"] is None


def test_society_plot_as_an_interactive_page(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    run_id = anyio.run(make_run, db)
    cfg = OutputConfig(formats=["markdown"], plot_format="html", visualizations=["society"])
    written = anyio.run(outputs, db, run_id, tmp_path, cfg)
    page = (tmp_path / "society.html").read_text()
    assert tmp_path / "society.html" in written and 'src="plotly.min.js"' in page
    for text in ("Share of each generation", "Scores of each agent", "evolution", "bandit", "rlp"):
        assert text in page
    assert "- [Society: shares and scores by agent](society.html)" in (tmp_path / "report.md").read_text()


def test_a_run_without_society_rows_has_no_society_section_and_no_plot(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    run_id = anyio.run(lambda: make_run(db, society=False))
    out = tmp_path / "out"
    for fmt in ("png", "html"):
        written = anyio.run(outputs, db, run_id, out,
                            OutputConfig(plot_format=fmt, visualizations=["score_over_time", "society"]))
        assert not (out / f"society.{fmt}").exists() and (out / f"score_over_time.{fmt}").exists()
        assert all(p.stem != "society" for p in written)
    md = (out / "report.md").read_text()
    assert "## Society" not in md and "society" not in md.lower().replace("society-demo", "")
    assert json.loads((out / "results.json").read_text())["society"] is None


def test_with_the_society_off_the_default_plots_stay_the_usual_ones(tmp_path: Path) -> None:
    """Every run logs its proposers (evolution, bandit: optimization.algorithm's
    roster); the table is in the report, the plot only when asked for by name."""
    db = tmp_path / "c.db"
    run_id = anyio.run(lambda: make_run(db, config={**CONFIG, "society": {"enabled": False}}))
    out = tmp_path / "out"
    written = anyio.run(outputs, db, run_id, out)
    assert not (out / "society.png").exists() and all(p.stem != "society" for p in written)
    soc = section((out / "report.md").read_text(), "Society")
    assert "The society was off: these are the agents of `optimization.algorithm`" in soc

    anyio.run(outputs, db, run_id, out, OutputConfig(visualizations=["society"]))
    assert (out / "society.png").read_bytes().startswith(b"\x89PNG")


def test_report_model_reads_the_society_log(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    run_id = anyio.run(make_run, db)

    async def read() -> Any:
        async with await Store.open(db) as store:
            return await build_report(store, run_id)

    society = anyio.run(read).society
    assert [a.name for a in society.agents] == ["bandit", "evolution", "rlp"]
    rlp = society.agents[2]
    assert (rlp.asked, rlp.proposed, rlp.seconds, rlp.in_top_k) == (2, 2, 8.0, 1)
    assert rlp.reasoning.reward_method == "prompt" and rlp.reasoning.llm_seconds == 5.5
    assert [g.status for g in rlp.generations] == ["ok", "timeout"]
