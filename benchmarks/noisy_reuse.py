"""``search_quality.py --noisy --reuse FILE ...``: runs from earlier ``--json-out`` documents, merged as if run now.

A run is keyed by (problem, method, budget, seed); a job whose key is already in a reused document is not run
again. Optuna TPE and the peers (TPE + WilcoxonPruner, SMAC, irace) do not depend on Convergence's code, so
their runs are always reused. A Convergence row's run is reused only when its document was made by the same
Convergence sources (``meta.code.sources_sha1``, unchanged during that run): a run from other code is refused
with a line saying so, and the job runs again.
"""

from __future__ import annotations

import json
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


def load(paths: list[str], *, code_sha: str, code_free: set[str], known: set[str], problems: list[str],
         n_cases: int) -> Reused:
    """Runs of ``problems`` from the documents at ``paths``: every run of a ``code_free`` method, and runs of
    the other ``known`` methods only from documents made by Convergence sources ``code_sha``."""
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
        sha = meta.get("code", {}).get("sources_sha1")
        same_code = sha == code_sha and not meta.get("code_changed_during_run", False)
        info: dict[str, Any] = {"path": str(path), "code_sha": sha, "taken": 0, "duplicates": 0, "refused": 0,
                                "other_problems": 0, "unknown_methods": sorted(
                                    {r["method"] for r in doc["runs"] if r["method"] not in known})}
        for run in doc["runs"]:
            if run["method"] not in known:
                continue
            if run["objective"] not in problems:
                info["other_problems"] += 1
            elif run["method"] not in code_free and not same_code:
                info["refused"] += 1
            elif key(run) in out.runs:
                info["duplicates"] += 1
            else:
                out.runs[key(run)] = {**run, "reused_from": str(path)}
                info["taken"] += 1
        if info["refused"]:
            out.messages.append(
                f"--reuse {path}: not reusing its {info['refused']} Convergence run(s): they were made by "
                f"Convergence sources {sha}{' (changed during that run)' if sha == code_sha else ''}, and this "
                f"code is {code_sha}; those jobs run again")
        if info["unknown_methods"]:
            out.messages.append(f"--reuse {path}: ignoring runs of methods this benchmark does not know: "
                                f"{', '.join(info['unknown_methods'])}")
        if any(r["method"] in code_free for r in doc["runs"]):
            out.peer_versions.update(meta.get("peer_versions", {}))
        out.files.append(info)
    return out
