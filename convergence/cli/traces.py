"""``convergence traces RUN``: the run's call tree from our own store, offline.

The same shape a traced run has in Weave - run -> generations -> trials ->
calls - with timings, scores, costs and errors, plus the Weave URL when the
run was traced. Needs no network and no W&B account.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from convergence.cli.common import CFG_OPT, DB_OPT, _db_path, _open_store, _run_async, console, err


async def build_tree(
    store: Any, run_id: int, *, generation: int | None = None, trial: str | None = None, errors_only: bool = False
) -> dict[str, Any]:
    """The run as nested plain data (what ``--json`` prints). ``generation`` is
    0-based as stored; ``trial`` is a trial id or a config-hash prefix."""

    from convergence.storage.store import RunNotFoundError

    run = await store.get_run(run_id)
    if run is None:
        raise RunNotFoundError(f"no run {run_id} in {store.path}")
    gens = await store.generations(run_id)
    trials = await store.trials(run_id)
    results = await store.case_results(run_id)
    traces = await store.run_traces(run_id)
    society: dict[int, list[dict[str, Any]]] = {}
    for row in await store.society_log(run_id):
        d = row.detail or {}
        society.setdefault(row.generation, []).append({
            "agent": row.agent, "status": row.status, "share": row.share, "asked": row.asked,
            "proposed": row.proposed, "seconds": row.seconds, "error": d.get("error"),
            "in_top_k": d.get("in_top_k"), "thoughts": d.get("thoughts", []), "mean_reward": d.get("mean_reward"),
            "reward_method": d.get("reward_method"), "policy": d.get("policy"), "sao": d.get("sao"),
        })
    out_gens: list[dict[str, Any]] = []
    for g in gens:
        if generation is not None and g.number != generation:
            continue
        out_trials: list[dict[str, Any]] = []
        for t in (t for t in trials if t.generation == g.number):
            if trial is not None and not (str(t.trial_id) == trial or t.config_hash.startswith(trial)):
                continue
            calls = []
            for case_id, r in sorted(results.get(t.config_hash, {}).items()):
                c = r.call
                if errors_only and not c.error:
                    continue
                calls.append({
                    "case_id": case_id, "output": c.output, "error": c.error, "latency_ms": c.latency_ms,
                    "cost_usd": c.cost_usd, "prompt_tokens": c.prompt_tokens,
                    "completion_tokens": c.completion_tokens, "attempts": c.attempts, "metrics": r.metrics,
                })
            if errors_only and not calls:
                continue
            out_trials.append({
                "trial_id": t.trial_id, "config_hash": t.config_hash, "proposer": t.proposer, "status": t.status,
                "score": t.score, "metrics": t.metrics, "cost_usd": t.cost_usd, "latency_ms": t.latency_ms,
                "n_cases": t.n_cases, "n_errors": t.n_errors, "configuration": t.config, "calls": calls,
            })
        if (errors_only or trial is not None) and not out_trials:
            continue
        out_gens.append({
            "generation": g.number, "started_at": g.started_at, "finished_at": g.finished_at,
            "seconds": (g.finished_at - g.started_at) if g.finished_at else None,
            "best_score": g.best_score, "mean_score": g.mean_score, "society": society.get(g.number, []),
            "trials": out_trials,
        })
    return {
        "run": {"id": run.id, "study": run.study, "status": run.status, "stop_reason": run.stop_reason,
                "seed": run.seed, "started_at": run.started_at, "finished_at": run.finished_at,
                "elapsed_seconds": run.elapsed_seconds, "total_calls": run.total_calls,
                "total_cost_usd": run.total_cost_usd},
        "weave": [{"url": tr.url, "call_id": tr.call_id, "project": tr.project} for tr in traces],
        "generations": out_gens,
    }


def _fmt(v: float | None, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def _clip(v: Any, n: int = 60) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=str)
    text = text.replace("\n", "\\n")
    return text if len(text) <= n else text[: n - 3] + "..."


def render_tree(tree: dict[str, Any]) -> Any:
    """A rich Tree of ``build_tree``'s data."""
    from rich.markup import escape
    from rich.tree import Tree

    r = tree["run"]
    root = Tree(
        f"[bold]run {r['id']}[/] study [cyan]{escape(r['study'])}[/] - {r['status']}: {escape(r['stop_reason'] or '')} "
        f"- seed {r['seed']}, {r['total_calls']} calls, ${r['total_cost_usd']:.4f}, {r['elapsed_seconds']:.2f}s"
    )
    for g in tree["generations"]:
        gnode = root.add(
            f"[bold]generation {g['generation'] + 1}[/] - {len(g['trials'])} trial(s), best {_fmt(g['best_score'])}, "
            f"mean {_fmt(g['mean_score'])}, {_fmt(g['seconds'], '.2f')}s"
        )
        if g.get("society"):
            snode = gnode.add("society")
            for a in g["society"]:
                line = (f"{escape(a['agent'])} {a['status']}: {a['proposed']}/{a['asked']} proposed, "
                        f"share {a['share']:.2f}, top-k {a['in_top_k'] if a['in_top_k'] is not None else '-'}, "
                        f"{a['seconds']:.2f}s")
                if a["error"]:
                    line += f" [red]{escape(_clip(a['error'], 100))}[/]"
                if a["mean_reward"] is not None:
                    line += f", mean reward {a['mean_reward']:+.3f} ({escape(str(a['reward_method']))})"
                anode = snode.add(line)
                if a.get("sao"):
                    from convergence.cli.progress import sao_line

                    anode.add(escape(sao_line(a["sao"])))
                for th in a["thoughts"]:
                    reward = th.get("reward")
                    anode.add(f"[{escape(str(th.get('strategy')))}] \"{escape(_clip(th.get('thought') or '', 90))}\""
                              + (f" -> {escape(', '.join(th.get('outcomes') or []))}" if th.get("outcomes") else "")
                              + (f", reward {reward:+.3f}" if reward is not None else ""))
        for t in g["trials"]:
            metrics = " ".join(f"{k}={v:.4g}" for k, v in t["metrics"].items())
            style = "red" if t["n_errors"] else "green"
            tnode = gnode.add(
                f"[{style}]trial {t['trial_id']}[/] {t['config_hash'][:10]} ({escape(t['proposer'])}) {t['status']} "
                f"score {t['score']:.4f} {escape(metrics)} ${t['cost_usd']:.4f} {t['latency_ms']:.1f}ms "
                f"errors {t['n_errors']}/{t['n_cases']} - {escape(_clip(t['configuration'], 80))}"
            )
            for c in t["calls"]:
                head = (f"{escape(c['case_id'])}  {c['latency_ms']:.1f}ms  ${c['cost_usd']:.4f}  "
                        f"tokens {c['prompt_tokens']}/{c['completion_tokens']}  attempts {c['attempts']}")
                if c["error"]:
                    tnode.add(f"[red]{head}  error: {escape(_clip(c['error'], 100))}[/]")
                else:
                    m = " ".join(f"{k}={v:.4g}" for k, v in c["metrics"].items())
                    tnode.add(f"{head}  {escape(m)}  -> {escape(_clip(c['output']))}")
    return root


def traces(
    run: int = typer.Argument(..., help="Run id (see `convergence runs`)."),
    db: Path | None = DB_OPT,
    config: Path | None = CFG_OPT,
    generation: int | None = typer.Option(
        None, "--generation", "-g", help="Only this generation (1-based, as `show` prints)."
    ),
    trial: str | None = typer.Option(None, "--trial", "-t", help="Only this trial: its id or a config-hash prefix."),
    errors_only: bool = typer.Option(False, "--errors-only", help="Only calls that failed (and their trials)."),
    as_json: bool = typer.Option(False, "--json", help="Print the tree as JSON."),
) -> None:
    """Print RUN as a tree (generations -> trials -> calls) from the local store; no network."""
    _run_async(_traces, _db_path(db, config), run, None if generation is None else generation - 1, trial,
               errors_only, as_json)


async def _traces(path: Path, run_id: int, generation: int | None, trial: str | None, errors_only: bool,
                  as_json: bool) -> None:
    store = await _open_store(path)
    try:
        try:
            tree = await build_tree(store, run_id, generation=generation, trial=trial, errors_only=errors_only)
        except KeyError as exc:
            err.print(f"[red]{exc.args[0]}[/]")
            raise typer.Exit(2) from None
    finally:
        await store.close()
    if as_json:
        sys.stdout.write(json.dumps(tree, indent=2, default=str) + "\n")
        return
    console.print(render_tree(tree))
    if not tree["generations"]:
        console.print("[yellow]nothing matches the filters[/]")
    for tr in tree["weave"]:
        console.print(f"Weave: {tr['url']}")
