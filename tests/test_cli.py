"""The CLI as a user drives it: optimize, runs, show, export, init, resume errors."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "convergence", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "examples" / "python_function", tmp_path / "proj")
    return tmp_path / "proj"


def test_optimize_then_runs_show_export(project: Path) -> None:
    proc = cli("optimize", "optimization.yaml", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert "Top configurations" in proc.stdout
    assert "best" in proc.stdout and "Written:" in proc.stdout
    # what will run, then the run, then its summary, then the files written from it
    out = proc.stdout
    assert out.index("Convergence study") < out.index("Top configurations") < out.index("Written:")
    run_dir = project / "results" / "run-1"
    for name in ("results.json", "results.csv", "report.md", "score_over_time.png", "best_config.yaml"):
        assert (run_dir / name).stat().st_size > 0, name
    results = json.loads((run_dir / "results.json").read_text())
    rows = list(csv.DictReader((run_dir / "results.csv").open()))
    assert len(rows) == len(results["trials"]) > 8
    best = yaml.safe_load((run_dir / "best_config.yaml").read_text())
    assert set(best) == {"handle_negation", "negation_window", "negative_weight", "threshold"}

    runs = cli("runs", cwd=project)
    assert runs.returncode == 0 and "sentiment-rules" in runs.stdout and "finished" in runs.stdout

    show = cli("show", "1", cwd=project)
    assert show.returncode == 0 and "Generations" in show.stdout and "Top 10 trials" in show.stdout

    exported = cli("export", "1", "--format", "python", "--out", "best.py", cwd=project)
    assert exported.returncode == 0, exported.stderr
    ns: dict[str, object] = {}
    exec((project / "best.py").read_text(), ns)
    assert ns["BEST_CONFIG"] == best

    as_json = cli("export", "1", "--format", "json", cwd=project)
    assert json.loads(as_json.stdout)["config"] == best

    missing = cli("show", "99", cwd=project)
    assert missing.returncode == 2 and "no run 99" in missing.stderr


def test_resume_without_an_unfinished_run_says_so(project: Path) -> None:
    # a study that never ran (e.g. killed before its first write): --resume starts it
    first = cli("optimize", "optimization.yaml", "--resume", "--no-outputs", cwd=project)
    assert first.returncode == 0, first.stderr
    assert "no earlier run of study 'sentiment-rules'" in first.stdout
    # a finished run is not resumed: the message says which run and why
    again = cli("optimize", "optimization.yaml", "--resume", "--no-outputs", cwd=project)
    assert again.returncode == 2
    assert "cannot resume" in again.stderr and "run 1 of study 'sentiment-rules' is finished" in again.stderr


def test_missing_target_env_var_stops_before_any_call(tmp_path: Path) -> None:
    shutil.copy(ROOT / "examples" / "http_endpoint" / "optimization.yaml", tmp_path / "optimization.yaml")
    (tmp_path / "q.jsonl").write_text('{"input": {"question": "hi"}, "expected": "x"}\n')
    text = (tmp_path / "optimization.yaml").read_text().replace("../qa/questions.jsonl", "q.jsonl")
    (tmp_path / "optimization.yaml").write_text(text)
    proc = cli("optimize", "optimization.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "COMPLETIONS_TOKEN" in proc.stderr
    assert not (tmp_path / ".convergence").exists()


def test_init_writes_a_valid_starter(tmp_path: Path) -> None:
    assert cli("init", "new", cwd=tmp_path).returncode == 0
    assert cli("validate", "new/optimization.yaml", cwd=tmp_path).returncode == 0
    again = cli("init", "new", cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr


@pytest.mark.slow
def test_default_optimization_yaml_end_to_end(tmp_path: Path) -> None:
    """The README's main command on the embedded model: finishes within budget
    and its best configuration clearly beats its worst."""
    proj = tmp_path / "default"
    proj.mkdir()
    shutil.copy(ROOT / "optimization.yaml", proj)
    shutil.copytree(ROOT / "examples" / "qa", proj / "examples" / "qa")
    proc = cli("optimize", "optimization.yaml", cwd=proj, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((proj / "results" / "run-1" / "results.json").read_text())
    scores = [t["score"] for t in results["trials"] if t["status"] == "complete"]
    assert len(scores) >= 6
    assert max(scores) - min(scores) >= 0.2, scores
    assert results["best"]["metrics"]["accuracy"] >= 0.5
