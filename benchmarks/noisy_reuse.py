"""``search_quality.py --noisy --reuse FILE ...``: runs from earlier ``--json-out`` documents, merged as if run now.

A run is keyed by (problem, method, budget, seed); a job whose key is already in a reused document is not run
again. Optuna TPE and the peers (TPE + WilcoxonPruner, SMAC, irace) do not depend on Convergence's code, so
their runs are always reused. A Convergence row's run is reused only when its document was made by the same
Convergence and learner plugin sources (``meta.code.sources_sha1`` and ``plugins_sha1``, unchanged during that
run) and the row's YAML is still the one it ran (``config_sha1``): any other run is refused with a line saying
so, and the job runs again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Key = tuple[str, str, int, int]


def key(run: dict[str, Any]) -> Key:
    return run["objective"], run["method"], int(run["budget"]), int(run["seed"])


@dataclass
class Reused:
    runs: dict[Key, dict[str, Any]] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)
    """Per file: path, its code sha, runs taken, duplicates, runs refused and why."""
    peer_versions: dict[str, str] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)


def load(paths: list[str], *, code: dict[str, Any], code_free: set[str], known: set[str], problems: list[str],
         n_cases: int, config_sha1: Callable[[Key], str]) -> Reused:
    """Runs of ``problems`` from the documents at ``paths``: every run of a ``code_free`` method, and runs of
    the other ``known`` methods only from documents made by the same ``code`` (sources_sha1, plugins_sha1)
    and with the YAML the row has now (``config_sha1`` of the run's key)."""
    out = Reused()
    for path in paths:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"--reuse {path}: cannot read it as JSON ({exc})") from exc
        meta = doc.get("meta", {}) if isinstance(doc, dict) else {}
        if meta.get("mode") != "noisy" or not isinstance(doc.get("runs"), list):
            raise SystemExit(f"--reuse {path}: not a search_quality.py --noisy --json-out document")
        if meta.get("n_cases") != n_cases:
            raise SystemExit(f"--reuse {path}: made with {meta.get('n_cases')} cases per configuration, not {n_cases}")
        made_by = {k: meta.get("code", {}).get(k) for k in code}
        sha = made_by.get("sources_sha1")
        same_code = made_by == code and not meta.get("code_changed_during_run", False)
        info: dict[str, Any] = {"path": str(path), "code_sha": sha, "taken": 0, "duplicates": 0, "refused": 0,
                                "other_config": 0, "other_problems": 0, "unknown_methods": sorted(
                                    {r["method"] for r in doc["runs"] if r["method"] not in known})}
        for run in doc["runs"]:
            if run["method"] not in known:
                continue
            if run["objective"] not in problems:
                info["other_problems"] += 1
            elif run["method"] not in code_free and not same_code:
                info["refused"] += 1
            elif run["method"] not in code_free and run.get("config_sha1") != config_sha1(key(run)):
                info["other_config"] += 1
            elif key(run) in out.runs:
                info["duplicates"] += 1
            else:
                out.runs[key(run)] = {**run, "reused_from": str(path)}
                info["taken"] += 1
        if info["refused"]:
            out.messages.append(
                f"--reuse {path}: not reusing its {info['refused']} Convergence run(s): they were made by other "
                f"code (sources {made_by}{', changed during that run' if meta.get('code_changed_during_run') else ''}"
                f"; this code: {code}); those jobs run again")
        if info["other_config"]:
            out.messages.append(f"--reuse {path}: not reusing {info['other_config']} Convergence run(s) whose row "
                                "now has another YAML; those jobs run again")
        if info["unknown_methods"]:
            out.messages.append(f"--reuse {path}: ignoring runs of methods this benchmark does not know: "
                                f"{', '.join(info['unknown_methods'])}")
        if any(r["method"] in code_free for r in doc["runs"]):
            out.peer_versions.update(meta.get("peer_versions", {}))
        out.files.append(info)
    return out
