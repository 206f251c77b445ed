"""The noisy search benchmark judges Convergence with its default settings, shows one-change ablations, reuses
earlier runs (never Convergence runs made by other code), and sums up against the best peer."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import noisy_default
import search_quality as sq

from convergence.config.loader import parse_config
from convergence.config.models import OptimizationConfig
from convergence.config.society import SocietyConfig


def _yaml(method: str, budget: int = 50, seed: int = 1000) -> str:
    return noisy_default.yaml("llm_noisy", method, budget, seed, sq._param_yaml)


def test_the_default_row_sets_only_seed_and_budget_and_runs_the_library_defaults(tmp_path: Path) -> None:
    """What the user writes: seed and budget under optimization, no society; the rest is the library's default."""
    text = _yaml("default", budget=50, seed=1234)
    doc = yaml.safe_load(text)
    assert set(doc) == {"study", "target", "storage", "search_space", "evaluation", "optimization"}
    assert doc["optimization"] == {"seed": 1234, "budget": {"max_calls": 1500}}
    assert set(doc["target"]) == {"type", "function"}
    loaded = parse_config(text, tmp_path / "optimization.yaml")
    expected = OptimizationConfig(seed=1234, budget={"max_calls": 1500})  # type: ignore[arg-type]
    assert loaded.config.optimization == expected
    assert loaded.config.society == SocietyConfig()


def test_each_ablation_row_is_the_default_with_one_change_and_parses(tmp_path: Path) -> None:
    base = yaml.safe_load(_yaml("default"))
    for method, row in noisy_default.ROWS.items():
        if method == noisy_default.HEAD or noisy_default.unavailable(method):
            continue
        text = _yaml(method)
        doc = yaml.safe_load(text)
        assert doc["optimization"] == {**base["optimization"], **row.optimization}, method
        assert doc.get("society") == row.society, method
        assert {k: v for k, v in doc.items() if k not in ("optimization", "society")} == \
            {k: v for k, v in base.items() if k != "optimization"}, method
        parse_config(text, tmp_path / "optimization.yaml")


def test_a_row_the_measured_convergence_cannot_run_is_skipped_with_what_is_missing(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """An agent that is not in the registry, or a config key the models lack: a line, not a crash."""
    import convergence.config.society as society

    monkeypatch.setattr(society, "AGENT_NAMES", tuple(a for a in society.AGENT_NAMES if a != "tpe"))
    monkeypatch.setattr(society, "agent_names", lambda: ["evolution", "bandit"])
    assert "no society agent 'tpe'" in str(noisy_default.unavailable("only_tpe"))
    assert noisy_default.unavailable("only_evolution") is None
    assert not noisy_default.config_has("selection", "no_such_option")
    assert noisy_default.config_has("selection", "confirm_top")
    monkeypatch.setattr(sys, "argv", ["search_quality.py", "--noisy", "--methods", "only_tpe", "--budgets", "50",
                                      "--seeds", "1", "--objectives", "llm_noisy", "--workers", "1"])
    with pytest.raises(SystemExit, match="nothing to run"):
        sq.main()
    assert "skipping only_tpe: this Convergence has no society agent 'tpe'" in capsys.readouterr().err


def _run(monkeypatch: pytest.MonkeyPatch, *argv: str) -> dict[str, Any]:
    out = Path(argv[argv.index("--json-out") + 1])
    monkeypatch.setattr(sys, "argv", ["search_quality.py", "--noisy", "--objectives", "llm_noisy", "--budgets", "50",
                                      "--first-seed", "1000", "--workers", "1", *argv])
    sq.main()
    return dict(json.loads(out.read_text()))


def test_reuse_merges_earlier_runs_and_skips_their_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer run on fewer seeds is merged: its n is its own, and the paired test uses the seeds both have."""
    first = _run(monkeypatch, "--methods", "tpe", "default", "--seeds", "1", "--json-out", str(tmp_path / "a.json"))
    assert first["meta"]["runs_here"] == 2
    second = _run(monkeypatch, "--methods", "default", "--seeds", "2", "--reuse", str(tmp_path / "a.json"),
                  "--json-out", str(tmp_path / "b.json"))
    assert second["meta"]["runs_here"] == 1  # default at seed 1001; tpe and default at 1000 come from a.json
    assert second["meta"]["reused"][0]["taken"] == 2
    assert second["meta"]["methods"] == ["tpe", "default"]
    reused_tpe = next(r for r in second["runs"] if r["method"] == "tpe")
    assert reused_tpe["returned_true"] == first["runs"][0 if first["runs"][0]["method"] == "tpe" else 1][
        "returned_true"]
    rows = {r["method"]: r for r in second["tables"][0]["rows"]}
    assert (rows["tpe"]["n"], rows["default"]["n"], rows["tpe"]["n_paired"]) == (1, 2, 1)


def test_reuse_refuses_convergence_runs_made_by_other_code_or_another_yaml(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """TPE's run is reused whatever made it; the default row's only from the same sources and the same YAML."""
    first = _run(monkeypatch, "--methods", "tpe", "default", "--seeds", "1", "--json-out", str(tmp_path / "a.json"))
    ours = next(r for r in first["runs"] if r["method"] == "default")
    for what, change in (("other_config", lambda: ours.update(config_sha1="0123456789ab")),
                         ("refused", lambda: first["meta"]["code"].update(sources_sha1="0123456789ab"))):
        change()
        (tmp_path / "a.json").write_text(json.dumps(first))
        second = _run(monkeypatch, "--methods", "tpe", "default", "--seeds", "1", "--reuse", str(tmp_path / "a.json"),
                      "--json-out", str(tmp_path / "b.json"))
        assert second["meta"]["runs_here"] == 1, what  # default again; tpe does not depend on Convergence's code
        assert (second["meta"]["reused"][0]["taken"], second["meta"]["reused"][0][what]) == (1, 1)
        assert [r["method"] for r in second["runs"] if "reused_from" not in r] == ["default"]
    err = capsys.readouterr().err
    assert "not reusing 1 Convergence run(s) whose row now has another YAML" in err
    assert "not reusing its 1 Convergence run(s): they were made by other code" in err


def _row(method: str, regret: float, calls: float = 3000.0, p: float = 0.5) -> dict[str, Any]:
    return {"method": method, "n": 10, "mean_regret": regret, "calls": calls, "p_head_greater": p, "n_paired": 10}


def test_the_summary_compares_default_with_the_best_peer_and_finds_its_reach() -> None:
    """Best peer = lowest mean regret over the problems; relative regret; problems won; smallest budget reaching
    the best peer's regret at 100."""
    tables = [
        {"objective": "a", "budget": 100, "rows": [_row("tpe", 0.20), _row("irace", 0.10, p=0.01),
                                                   _row("default", 0.06, calls=2900)]},
        {"objective": "b", "budget": 100, "rows": [_row("tpe", 0.20), _row("irace", 0.26),
                                                   _row("default", 0.34, calls=2900)]},
        {"objective": "a", "budget": 40, "rows": [_row("default", 0.15, calls=1200)]},
        {"objective": "b", "budget": 40, "rows": [_row("default", 0.25, calls=1200)]},
        {"objective": "a", "budget": 60, "rows": [_row("default", 0.10, calls=1790)]},
        {"objective": "b", "budget": 60, "rows": [_row("default", 0.20, calls=1790)]},
    ]
    summary = sq.peer_summary(tables, "default", [100])
    (item,) = summary["per_budget"]
    assert item["best_peer"] == "irace"  # mean regret 0.18 against TPE's 0.20
    assert item["relative"] == pytest.approx(1 - 0.20 / 0.18)  # default's 0.20: 11 % higher
    assert (item["won"], item["won_significant"]) == (["a"], ["a"])
    reach = summary["reach"]
    assert reach["peer"] == "irace" and reach["peer_mean_regret"] == pytest.approx(0.18)
    assert reach["budget"] == 60 and reach["calls_share"] == pytest.approx(1790 / 3000)  # 0.225 at 40, 0.15 at 60
    assert reach["per_problem"] == {"a": 60, "b": 40}
