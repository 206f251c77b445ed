"""Reports a user reads after a run: files, plots, Pareto front, importance, export.

Reporting is pure, so each test builds a RunReport from TrialRecords it makes
itself — exactly what the storage layer hands over after a real run.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from convergence.config.models import ExportBestConfig, OutputConfig
from convergence.core.types import TrialRecord
from convergence.reporting import plots
from convergence.reporting.export import export_config
from convergence.reporting.files import csv_columns, write_reports
from convergence.reporting.importance import parameter_importance
from convergence.reporting.model import RunReport, summarize_generations
from convergence.reporting.pareto import non_dominated, pareto_front

DIRECTIONS = {"accuracy": "higher_is_better", "latency_ms": "lower_is_better", "cost": "lower_is_better"}
WEIGHTS = {"accuracy": 0.7, "latency_ms": 0.2, "cost": 0.1}
LONG_PROMPT = 'You are careful.\nThink step by step.\n  Answer with "yes" or \'no\' only: \\n | done'
SHORT_PROMPT = "You are careful.\nThink step by step.\nQ: {{ input }}"


def trial(i: int, gen: int, score: float, *, status: str = "complete", cost: float = 0.001,
          latency: float = 300.0, **config: object) -> TrialRecord:
    return TrialRecord(
        config=dict(config), config_hash=f"h{json.dumps(config, sort_keys=True)}", generation=gen,
        proposer="evolution" if gen else "random", score=score,
        metrics={"accuracy": score, "latency_ms": latency, "cost": cost}, cost_usd=cost,
        latency_ms=latency, n_cases=10, n_errors=0 if status == "complete" else 10, status=status,
        trial_id=i,
    )


def make_report(n: int = 30, seed: int = 0, cost: bool = True) -> RunReport:
    """A run where the model drives the score, the temperature nudges it and
    ``noise`` does nothing."""
    rng = np.random.default_rng(seed)
    trials = []
    for i in range(n):
        model = ["small", "medium", "large"][i % 3]
        temp = round(float(rng.uniform(0, 1)), 3)
        noise = str(rng.choice(["a", "b", "c", "d"]))
        score = {"small": 0.2, "medium": 0.5, "large": 0.8}[model] + 0.1 * (1 - temp) + rng.normal(0, 0.02)
        trials.append(trial(i + 1, i // 10, float(score), cost=float(rng.uniform(0.001, 0.01)) if cost else 0.0,
                            latency=float(rng.uniform(100, 900)), model=model, temperature=temp, noise=noise,
                            prompt="long" if i % 2 else "short"))
    trials.append(trial(n + 1, 2, 0.0, status="failed", model="small", temperature=0.5, noise="a", prompt="short"))
    report = RunReport(
        run_id=7, study="qa-bot", status="finished", stop_reason="patience exhausted (3 generations)",
        started_at="2025-01-01T10:00:00", finished_at="2025-01-01T10:05:00", seed=seed, trials=trials,
        generations=summarize_generations(trials), metric_directions=dict(DIRECTIONS),
        metric_weights=dict(WEIGHTS), parameters=["model", "temperature", "noise", "prompt"],
        total_calls=10 * len(trials), total_cost_usd=sum(t.cost_usd for t in trials), elapsed_seconds=300.0,
    )
    best = report.best
    assert best is not None
    report.resolved_best = {**best.config, "prompt": LONG_PROMPT if best.config["prompt"] == "long" else SHORT_PROMPT}
    return report


def is_png(path: Path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- model


def test_best_is_highest_complete_score_and_ties_go_to_the_earlier_trial() -> None:
    trials = [trial(1, 0, 0.5, model="a"), trial(2, 0, 0.9, model="b"), trial(3, 1, 0.9, model="c"),
              trial(4, 1, 5.0, status="failed", model="d"), trial(5, 1, 0.1, model="e")]
    report = RunReport(1, "s", "finished", None, "t0", None, None, trials)
    assert report.best is trials[1]
    assert report.worst is trials[4]
    assert [t.trial_id for t in report.ranked] == [2, 3, 1, 5]
    gens = report.generation_summaries()
    assert [(g.number, g.best_score, g.n_trials, g.n_new) for g in gens] == [(0, 0.9, 2, 2), (1, 0.9, 3, 3)]


# --------------------------------------------------------------------------- pareto


def test_pareto_front_on_a_hand_checked_example_with_mixed_directions() -> None:
    directions = {"accuracy": "higher_is_better", "latency_ms": "lower_is_better"}

    def t(i: int, acc: float, lat: float, status: str = "complete") -> TrialRecord:
        return TrialRecord({"i": i}, str(i), 0, "p", score=acc, metrics={"accuracy": acc, "latency_ms": lat},
                           status=status, trial_id=i)

    trials = [
        t(1, 0.9, 500),  # front: most accurate
        t(2, 0.8, 200),  # front: trade-off
        t(3, 0.8, 300),  # dominated by 2 (same accuracy, slower)
        t(4, 0.5, 100),  # front: fastest
        t(5, 0.4, 150),  # dominated by 4
        t(6, 0.8, 200),  # equal to 2: neither dominates, both on the front
        t(7, 0.99, 50, status="failed"),  # would dominate everything but is not usable
        t(8, 0.7, 600),  # dominated by 1 and 2
    ]
    assert [x.trial_id for x in pareto_front(trials, directions)] == [1, 2, 4, 6]
    # Flipping latency to higher-is-better changes the answer: 8 now wins on latency.
    flipped = {"accuracy": "higher_is_better", "latency_ms": "higher_is_better"}
    assert [x.trial_id for x in pareto_front(trials, flipped)] == [1, 8]


def test_non_dominated_matches_brute_force_and_handles_10k_points() -> None:
    rng = np.random.default_rng(3)
    for m in (2, 3):
        v = rng.integers(0, 6, (80, m)).astype(float)
        brute = [not any(np.all(v[j] >= v[i]) and np.any(v[j] > v[i]) for j in range(len(v))) for i in range(len(v))]
        assert non_dominated(v).tolist() == brute
    x = rng.random(10_000)
    start = time.perf_counter()
    assert non_dominated(np.column_stack([x, -x])).all()  # worst case: every point on the front
    assert non_dominated(rng.random((10_000, 3))).sum() < 10_000
    assert time.perf_counter() - start < 10


# --------------------------------------------------------------------------- importance


def test_importance_ranks_the_parameter_that_drives_the_score_above_noise() -> None:
    report = make_report(n=60)
    imp = parameter_importance(report.trials, report.parameters)
    assert next(iter(imp)) == "model"
    assert imp["model"] > imp["noise"]
    assert imp["model"] > imp["prompt"]
    assert math.isclose(sum(imp.values()), 1.0)


def test_importance_of_a_continuous_parameter_uses_quantile_bins() -> None:
    rng = np.random.default_rng(5)
    trials = []
    for i in range(80):
        temp, seed = float(rng.uniform(0, 2)), int(rng.integers(0, 1000))
        trials.append(trial(i, 0, 1 - temp / 2 + float(rng.normal(0, 0.05)), temperature=temp, seed=seed))
    imp = parameter_importance(trials, ["temperature", "seed"])
    assert imp["temperature"] > 0.8 > imp["seed"]


# --------------------------------------------------------------------------- files


def test_write_reports_writes_parseable_json_csv_markdown_and_png_plots(tmp_path: Path) -> None:
    report = make_report()
    cfg = OutputConfig(visualizations=["score_over_time", "cost_vs_quality", "parameter_importance", "pareto_front"])
    written = write_reports(report, tmp_path, cfg)
    assert sorted(written) == sorted(tmp_path.iterdir())
    best = report.best
    assert best is not None

    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["run"]["stop_reason"] == report.stop_reason
    assert doc["best"]["trial_id"] == best.trial_id and doc["best"]["config"] == best.config
    assert doc["best"]["resolved_config"]["prompt"] == report.resolved_best["prompt"]  # type: ignore[index]
    assert len(doc["trials"]) == len(report.trials)
    assert {t["trial_id"] for t in doc["pareto_front"]} == {
        t.trial_id for t in pareto_front(report.trials, report.metric_directions)}
    assert [g["number"] for g in doc["generations"]] == [0, 1, 2]

    with (tmp_path / "results.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(report.trials)
    for row, t in zip(rows, report.trials, strict=True):
        assert int(row["trial_id"]) == t.trial_id and float(row["score"]) == t.score
        assert row["model"] == t.config["model"] and float(row["temperature"]) == t.config["temperature"]
        assert float(row["latency_ms"]) == t.latency_ms and row["status"] == t.status
    assert rows[-1]["status"] == "failed"

    md = (tmp_path / "report.md").read_text()
    assert report.stop_reason in md  # type: ignore[operator]
    assert f"| model | {best.config['model']} |" in md
    assert f"| temperature | {best.config['temperature']} |" in md
    assert f"{best.score:.4g}" in md and f"{report.worst.score:.4g}" in md  # type: ignore[union-attr]
    assert "You are careful.<br>Think step by step." in md  # resolved multi-line prompt, table-safe
    for name in cfg.visualizations:
        assert f"({name}.png)" in md
        assert is_png(tmp_path / f"{name}.png")

    exported = yaml.safe_load((tmp_path / "best_config.yaml").read_text())
    assert exported == report.resolved_best


def test_html_plots_are_interactive_pages_holding_the_trial_data(tmp_path: Path) -> None:
    report = make_report()
    cfg = OutputConfig(formats=["markdown"], plot_format="html",
                       visualizations=["score_over_time", "cost_vs_quality", "parameter_importance", "pareto_front"],
                       export_best_config=ExportBestConfig(enabled=False))
    written = write_reports(report, tmp_path, cfg)
    assert sorted(written) == sorted(tmp_path.iterdir())
    assert (tmp_path / "plotly.min.js").stat().st_size > 100_000  # works offline
    best = report.best
    assert best is not None
    page = (tmp_path / "score_over_time.html").read_text()
    assert 'src="plotly.min.js"' in page and "best so far" in page
    assert f"trial {best.trial_id} (gen {best.generation + 1}" in page  # hover text of the best trial (1-based)
    assert str(best.score) in page
    assert "noise" in (tmp_path / "parameter_importance.html").read_text()
    assert "[Score over generations](score_over_time.html)" in (tmp_path / "report.md").read_text()


def test_cost_vs_quality_falls_back_to_latency_and_says_so_when_nothing_cost_money() -> None:
    free = plots.cost_vs_quality(make_report(cost=False))
    assert free.x_label == "mean latency (ms)" and free.note and "$0" in free.note
    paid = plots.cost_vs_quality(make_report(cost=True))
    assert paid.x_label == "cost per trial (USD)" and paid.note is None
    front = paid.series[1]
    assert front.emphasis and front.x == sorted(front.x)
    # No point off the front is both cheaper and better than a front point.
    dots = paid.series[0]
    for fx, fy in zip(front.x, front.y, strict=True):
        assert not any(x < fx and y > fy for x, y in zip(dots.x, dots.y, strict=True))


def test_pareto_plot_uses_the_two_heaviest_metrics() -> None:
    chart = plots.pareto_chart(make_report())
    assert chart.x_label == "accuracy (higher is better)"
    assert chart.y_label == "latency_ms (lower is better)"
    # Higher-is-better x: the staircase climbs before it moves right, never past an attained corner.
    assert chart.series[1].step_where == "pre"
    assert plots.cost_vs_quality(make_report()).series[1].step_where == "post"


def test_save_all_experiments_false_keeps_only_best_and_front(tmp_path: Path) -> None:
    report = make_report()
    write_reports(report, tmp_path, OutputConfig(save_all_experiments=False, visualizations=[]))
    doc = json.loads((tmp_path / "results.json").read_text())
    front_ids = {t.trial_id for t in pareto_front(report.trials, report.metric_directions)}
    assert {t["trial_id"] for t in doc["trials"]} == front_ids | {report.best.trial_id}  # type: ignore[union-attr]
    assert len(doc["trials"]) < len(report.trials)


def test_a_run_without_any_complete_trial_still_gets_a_report(tmp_path: Path) -> None:
    trials = [trial(1, 0, 0.0, status="failed", model="x")]
    report = RunReport(3, "s", "failed", "every call failed", "t0", "t1", None, trials,
                       metric_directions=dict(DIRECTIONS), parameters=["model"])
    written = write_reports(report, tmp_path, OutputConfig())
    names = {p.name for p in written}
    assert "best_config.yaml" not in names and {"results.json", "results.csv", "report.md"} <= names
    assert json.loads((tmp_path / "results.json").read_text())["best"] is None
    assert "no best configuration" in (tmp_path / "report.md").read_text()
    with pytest.raises(ValueError, match="no complete trial"):
        export_config(report, "yaml")


def test_parameter_and_target_descriptions_show_in_report_md_and_results_json(tmp_path: Path) -> None:
    report = make_report()
    report.parameter_descriptions = {"model": "which model | size", "temperature": "sampling\ntemperature"}
    report.description = "the support bot"
    write_reports(report, tmp_path, OutputConfig(formats=["json", "markdown"], visualizations=[]))
    md = (tmp_path / "report.md").read_text()
    assert "- **Target:** the support bot" in md
    section = md.split("## Parameter importance")[1]
    assert "| parameter | share | description |" in section
    assert "which model \\| size |" in section and "sampling<br>temperature |" in section  # table-safe
    assert next(line for line in section.splitlines() if line.startswith("| noise |")).endswith("|  |")
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["run"]["description"] == "the support bot"
    assert doc["run"]["parameter_descriptions"] == report.parameter_descriptions

    plain = make_report()  # none given: no empty column, no target line
    write_reports(plain, tmp_path / "plain", OutputConfig(formats=["markdown"], visualizations=[]))
    md = (tmp_path / "plain" / "report.md").read_text()
    assert "| parameter | share |\n" in md and "**Target:**" not in md


@pytest.mark.anyio
async def test_the_report_of_a_stored_run_takes_the_descriptions_from_its_config(tmp_path: Path) -> None:
    from convergence.reporting.outputs import build_report
    from convergence.storage.store import Store

    config = {
        "api": {"name": "bot", "model": "m", "description": "the support bot"},
        "search_space": {"parameters": {"t": {"type": "discrete", "values": [1, 2], "description": "tries"},
                                        "u": {"type": "discrete", "values": [1, 2]}}},
        "evaluation": {"test_cases": {"inline": [{"input": "x"}]}, "metrics": {"acc": {"function": "contains"}}},
    }
    async with await Store.open(tmp_path / "db.sqlite") as store:
        run_id = await store.start_run("bot", config, seed=1, config_path=None)
        report = await build_report(store, run_id)
    assert report.description == "the support bot"
    assert report.parameter_descriptions == {"t": "tries"}


def test_csv_prefixes_a_parameter_whose_name_clashes_with_a_fixed_column() -> None:
    report = RunReport(1, "s", "finished", None, "t0", None, None, [TrialRecord({"score": "x"}, "h", 0, "p", 0.5)],
                       metric_directions={"accuracy": "higher_is_better"}, parameters=["score"])
    columns, _, params = csv_columns(report)
    assert params == {"score": "param.score"} and columns.count("score") == 1


# --------------------------------------------------------------------------- export


TRICKY = {
    "system_prompt": 'Line one\nline "two"\n\t\'three\'  \n"""triple"""\\ end ',
    "stop": ["\n\n", "###"],
    "temperature": 0.7,
    "max_tokens": 256,
    "json_mode": True,
    "top_k": None,
    "nested": {"a": [1, 2.5, "ü"], "b": {}},
}


def test_exported_python_module_imports_and_equals_the_best_config(tmp_path: Path) -> None:
    report = make_report()
    report.resolved_best = dict(TRICKY)
    path = tmp_path / "best_config.py"
    text = export_config(report, "python", path)
    assert path.read_text() == text
    spec = importlib.util.spec_from_file_location("exported_best", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.BEST_CONFIG == TRICKY
    assert module.METADATA["run_id"] == 7 and module.METADATA["score"] == report.best.score  # type: ignore[union-attr]
    sys.modules.pop("exported_best", None)


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_yaml_and_json_exports_round_trip(tmp_path: Path, fmt: str) -> None:
    report = make_report()
    report.resolved_best = dict(TRICKY)
    text = export_config(report, fmt, tmp_path / f"best.{fmt}")  # type: ignore[arg-type]
    if fmt == "yaml":
        assert yaml.safe_load(text) == TRICKY
        assert "run 7" in text.splitlines()[1]
        assert "|" in text  # multi-line prompts stay readable as blocks
    else:
        doc = json.loads(text)
        assert doc["config"] == TRICKY and doc["metadata"]["run_id"] == 7
    assert (tmp_path / f"best.{fmt}").read_text() == text


def test_exporting_a_plain_config_needs_no_run() -> None:
    text = export_config({"model": "gpt-4o-mini", "temperature": 0.2}, "python")
    namespace: dict[str, object] = {}
    exec(compile(text, "<export>", "exec"), namespace)
    assert namespace["BEST_CONFIG"] == {"model": "gpt-4o-mini", "temperature": 0.2}


# --------------------------------------------------------------------------- numbering, columns


def _top_table_header(md: str) -> list[str]:
    lines = md.splitlines()
    start = lines.index("## Top 10 trials")
    header = next(line for line in lines[start:] if line.startswith("| rank"))
    return [c.strip() for c in header.strip("|").split("|")]


def test_exported_header_and_metadata_name_the_generation_the_report_shows(tmp_path: Path) -> None:
    import re

    report = make_report()
    best = report.best
    assert best is not None and best.generation >= 1  # stored 0-based
    write_reports(report, tmp_path, OutputConfig(visualizations=[]))
    md = (tmp_path / "report.md").read_text()
    shown = int(re.search(r"trial \d+, generation (\d+), proposed by", md).group(1))  # type: ignore[union-attr]
    assert shown == best.generation + 1
    header = (tmp_path / "best_config.yaml").read_text().splitlines()[1]
    assert f"| generation {shown} |" in header
    row = next(line for line in md.splitlines() if line.startswith("| 1 |"))  # rank 1 of the top table
    assert row.split("|")[3].strip() == str(shown)
    assert json.loads(export_config(report, "json"))["metadata"]["generation"] == shown
    namespace: dict[str, object] = {}
    exec(compile(export_config(report, "python"), "<export>", "exec"), namespace)
    assert namespace["METADATA"]["generation"] == shown  # type: ignore[index]


def test_top_table_shows_latency_once_when_a_metric_measures_it(tmp_path: Path) -> None:
    report = make_report()  # metrics: accuracy, latency_ms (a latency metric), cost
    write_reports(report, tmp_path, OutputConfig(formats=["markdown"], visualizations=[]))
    header = _top_table_header((tmp_path / "report.md").read_text())
    assert [c for c in header if "latency" in c] == ["latency_ms"]
    assert len(header) == len(set(header))
    best = report.best
    assert best is not None
    row = next(line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("| 1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == len(header) and cells[header.index("latency_ms")] == f"{best.latency_ms:.4g}"

    # A latency metric with another name, known by its function, replaces the built-in column too ...
    renamed = make_report()
    for t in renamed.trials:
        t.metrics["speed"] = t.metrics.pop("latency_ms")
    renamed.metric_directions = {"accuracy": "higher_is_better", "speed": "lower_is_better"}
    renamed.metric_functions = {"accuracy": "exact_match", "speed": "latency"}
    write_reports(renamed, tmp_path, OutputConfig(formats=["markdown"], visualizations=[]))
    header = _top_table_header((tmp_path / "report.md").read_text())
    assert "speed" in header and not [c for c in header if "latency" in c]

    # ... and without any latency metric the built-in column is the only one.
    plain = make_report()
    plain.metric_directions = {"accuracy": "higher_is_better"}
    write_reports(plain, tmp_path, OutputConfig(formats=["markdown"], visualizations=[]))
    header = _top_table_header((tmp_path / "report.md").read_text())
    assert [c for c in header if "latency" in c] == ["latency (ms)"]


# --------------------------------------------------------------------------- atomic writes


ALL_PLOTS = ["score_over_time", "cost_vs_quality", "parameter_importance", "pareto_front"]


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("fail_at", [1, 3, 5, 7])
def test_a_write_that_dies_before_the_rename_leaves_the_previous_files_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: int) -> None:
    """Dying at any file: each final path holds the old complete file or the new one, never a part."""
    import os

    from convergence.storage import atomic

    cfg = OutputConfig(visualizations=ALL_PLOTS)
    old_report = make_report(seed=1)
    write_reports(old_report, tmp_path, cfg)
    old = _snapshot(tmp_path)

    new_report = make_report(seed=2)
    fresh = tmp_path.parent / "fresh"
    write_reports(new_report, fresh, cfg)
    new = _snapshot(fresh)
    # Only results.* and report.md are text that must differ; the PNGs differ too.
    assert old["results.json"] != new["results.json"]

    calls = {"n": 0}
    real_replace = os.replace

    def dying_replace(src: object, dst: object) -> None:
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise KeyboardInterrupt  # the process stops here, temp file written, not moved
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(atomic.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        write_reports(new_report, tmp_path, cfg)
    monkeypatch.undo()

    now = _snapshot(tmp_path)
    assert set(now) == set(old)  # no temp file left behind
    for name, data in now.items():
        assert data in (old[name], new[name]), name
    assert sum(now[n] == new[n] != old[n] for n in now) == fail_at - 1  # files before the failure are new


def test_a_writer_dying_half_way_never_touches_the_final_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from convergence.reporting import files
    from convergence.storage import atomic

    report = make_report()
    cfg = OutputConfig(formats=["json", "markdown"], visualizations=["score_over_time"])
    write_reports(report, tmp_path, cfg)
    before = _snapshot(tmp_path)

    def die_while_rendering(report: RunReport, *args: object) -> str:
        raise MemoryError("killed while rendering")

    monkeypatch.setattr(files, "render_markdown", die_while_rendering)
    with pytest.raises(MemoryError):
        write_reports(make_report(seed=5), tmp_path, cfg)
    assert (tmp_path / "report.md").read_bytes() == before["report.md"]
    assert json.loads((tmp_path / "results.json").read_text())["run"]["seed"] == 5  # written before, whole

    # A kill inside the writer itself: the temp file is half-written, the final path untouched.
    target = tmp_path / "results.json"
    whole = target.read_bytes()
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        tmp.write_bytes(b'{"half": ')
        raise RuntimeError("killed")
    assert target.read_bytes() == whole
    assert not [p for p in tmp_path.iterdir() if atomic.TMP_MARK in p.name]


def test_temp_files_of_a_killed_write_are_cleared_and_keep_the_extension(tmp_path: Path) -> None:
    from convergence.storage import atomic

    tmp = atomic.temp_path_for(tmp_path / "score_over_time.png")
    assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp.name.startswith(".")
    tmp.write_bytes(b"\x89PNG half")  # what SIGKILL mid-savefig leaves
    (tmp_path / "notes.txt").write_text("mine")
    written = write_reports(make_report(), tmp_path, OutputConfig(visualizations=["score_over_time"]))
    assert not tmp.exists() and (tmp_path / "notes.txt").exists()
    assert is_png(tmp_path / "score_over_time.png")
    assert sorted(written) == sorted(p for p in tmp_path.iterdir() if p.name != "notes.txt")


def test_a_truncated_plotly_bundle_is_rewritten(tmp_path: Path) -> None:
    (tmp_path / plots.PLOTLY_JS).write_text("/* cut")
    cfg = OutputConfig(formats=[], plot_format="html", visualizations=["score_over_time"],
                       export_best_config=ExportBestConfig(enabled=False))
    write_reports(make_report(), tmp_path, cfg)
    from plotly.offline import get_plotlyjs

    assert (tmp_path / plots.PLOTLY_JS).read_text(encoding="utf-8") == get_plotlyjs()
