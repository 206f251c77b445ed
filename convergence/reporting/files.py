"""Write a run's report files: results.json, results.csv, report.md, plots and
the exported best configuration, as ``OutputConfig`` asks."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from convergence.config.models import OutputConfig
from convergence.core.types import TrialRecord
from convergence.reporting import plots
from convergence.reporting.export import EXTENSIONS, export_config
from convergence.reporting.importance import parameter_importance, too_few
from convergence.reporting.model import RunReport, shown_score
from convergence.reporting.pareto import pareto_front
from convergence.reporting.sao import SAOReport
from convergence.reporting.society import AgentSummary, SocietyReport
from convergence.storage.atomic import atomic_write_text, remove_stale_temps

TOP_N = 10
FRONT_ROWS = 50
"""The Markdown lists at most this many front trials; results.json has them all."""
THOUGHT_ROWS = 40
"""The Markdown lists a reasoning agent's latest this many thoughts; results.json has them all."""
PLOT_TITLES: dict[str, str] = {
    "score_over_time": "Score over generations",
    "cost_vs_quality": "Cost vs quality",
    "parameter_importance": "Parameter importance",
    "pareto_front": "Pareto front",
    "society": "Society: shares and scores by agent",
}


def _clean(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become null (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def _kept_trials(report: RunReport, front: list[TrialRecord], save_all: bool) -> list[TrialRecord]:
    """Every trial, or (``save_all_experiments: false``) just the best and the Pareto front."""
    if save_all:
        return list(report.trials)
    keep = {id(t) for t in front}
    if report.best is not None:
        keep.add(id(report.best))
    return [t for t in report.trials if id(t) in keep]


# --------------------------------------------------------------------------- json


def results_document(report: RunReport, front: list[TrialRecord], importance: dict[str, float],
                     trials: list[TrialRecord]) -> dict[str, Any]:
    best, worst = report.best, report.worst
    doc: dict[str, Any] = {
        "run": {
            "run_id": report.run_id,
            "study": report.study,
            "status": report.status,
            "stop_reason": report.stop_reason,
            "started_at": report.started_at,
            "finished_at": report.finished_at,
            "seed": report.seed,
            "total_calls": report.total_calls,
            "total_cost_usd": report.total_cost_usd,
            "elapsed_seconds": report.elapsed_seconds,
            "n_trials": len(report.trials),
            "n_usable_trials": len(report.usable),
            "description": report.description,
            "parameters": report.parameters,
            "parameter_descriptions": report.parameter_descriptions,
            "metric_directions": report.metric_directions,
            "metric_weights": report.metric_weights,
        },
        "best": None if best is None else {**asdict(best), "resolved_config": report.resolved_best},
        "worst": None if worst is None else asdict(worst),
        "pareto_front": [asdict(t) for t in front],
        "generations": [asdict(g) for g in report.generation_summaries()],
        "parameter_importance": importance,
        "parameter_importance_note": ("Optuna PED-ANOVA, top 30 % of complete configurations" if importance
                                      else f"not given: {too_few(report.trials) or 'no parameter to rank'}"),
        "society": None if report.society is None else asdict(report.society),
        "sao": None if report.sao is None else asdict(report.sao),
        "selection": report.selection,
        "learner": report.learner,
        "trials": [asdict(t) for t in trials],
    }
    return _clean(doc)


# --------------------------------------------------------------------------- csv


def csv_columns(report: RunReport) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """Fixed columns, then one per metric and one per parameter, each named
    after it; a name that clashes with an earlier column gets a
    ``metric.``/``param.`` prefix. Returns (columns, metric->col, param->col)."""
    columns = ["run_id", "trial_id", "generation", "proposer", "status", "score",
               "cost_usd", "latency_ms", "n_cases", "n_errors", "estimate", "repeats"]
    metrics = list(report.metric_directions)
    for t in report.trials:
        metrics += [m for m in t.metrics if m not in metrics]
    params = list(report.parameters)
    for t in report.trials:
        params += [p for p in t.config if p not in params]
    metric_col: dict[str, str] = {}
    for m in metrics:
        metric_col[m] = m if m not in columns else f"metric.{m}"
        columns.append(metric_col[m])
    param_col: dict[str, str] = {}
    for p in params:
        param_col[p] = p if p not in columns else f"param.{p}"
        columns.append(param_col[p])
    return columns, metric_col, param_col


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def render_csv(report: RunReport, trials: list[TrialRecord]) -> str:
    columns, metric_col, param_col = csv_columns(report)
    fh = io.StringIO(newline="")
    writer = csv.DictWriter(fh, fieldnames=columns)
    writer.writeheader()
    for t in trials:
        row: dict[str, Any] = {
            "run_id": report.run_id, "trial_id": t.trial_id, "generation": t.generation + 1,
            "proposer": t.proposer, "status": t.status, "score": shown_score(t), "estimate": t.estimate,
            "cost_usd": t.cost_usd, "latency_ms": t.latency_ms, "n_cases": t.n_cases, "repeats": t.repeats,
            "n_errors": t.n_errors,
        }
        row.update({metric_col[m]: v for m, v in t.metrics.items()})
        row.update({param_col[p]: _cell(v) for p, v in t.config.items()})
        writer.writerow(row)
    return fh.getvalue()


def write_csv(report: RunReport, trials: list[TrialRecord], path: Path) -> Path:
    return atomic_write_text(path, render_csv(report, trials))


# --------------------------------------------------------------------------- markdown


_DASH = "\u2013"  # an en dash: no value


def _num(x: float | None) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return _DASH
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _md(value: Any, limit: int | None = None) -> str:
    """A table cell: pipes escaped, newlines as <br>, optionally shortened."""
    s = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    if limit is not None and len(s) > limit:
        s = s[: limit - 1] + "…"
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\r\n", "\n").replace("\n", "<br>")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def _measures_latency(report: RunReport, metric: str) -> bool:
    """Whether ``metric`` is the calls' mean latency, i.e. the same number as
    a trial's ``latency_ms`` (by its function, else by its name, as the
    evaluator infers a missing function)."""
    function = report.metric_functions.get(metric)
    return function == "latency" if function else "latency" in metric.lower()


def _trial_table(report: RunReport, trials: Sequence[TrialRecord], ranked: bool) -> list[str]:
    metrics = list(report.metric_directions)
    # A latency metric already shows the trial's mean latency: one column is enough.
    own_latency = not any(_measures_latency(report, m) for m in metrics)
    estimates = any(t.estimate is not None for t in trials)
    header = ((["rank"] if ranked else []) + ["trial", "gen", "proposer", "score"]
              + (["estimate"] if estimates else []) + metrics
              + ["total cost (USD)"] + (["latency (ms)"] if own_latency else []) + report.parameters)
    rows = []
    for i, t in enumerate(trials, 1):
        rows.append(([str(i)] if ranked else []) + [_num(t.trial_id), str(t.generation + 1), _md(t.proposer),
                     _num(shown_score(t))] + ([_num(t.estimate)] if estimates else [])
                     + [_num(t.metrics.get(m)) for m in metrics]
                     + [_num(t.cost_usd)] + ([_num(t.latency_ms)] if own_latency else [])
                     + [_md(t.config.get(p, ""), 40) for p in report.parameters])
    return _table(header, rows)


def _shares(agent: AgentSummary) -> str:
    first, last = agent.generations[0].share, agent.generations[-1].share
    return f"{first:.0%}" if f"{first:.0%}" == f"{last:.0%}" else f"{first:.0%} → {last:.0%}"


def _failures(agent: AgentSummary) -> str:
    parts = ([f"{agent.failures} failed"] if agent.failures else []) + (
        [f"{agent.timeouts} timed out"] if agent.timeouts else [])
    return ", ".join(parts) or "0"


def society_markdown(society: SocietyReport) -> list[str]:
    """The "Society" section: one row per agent, then each reasoning agent's
    parse rate, reward, policy and thoughts in short."""
    k = society.top_k
    out = ["## Society", "",
           ("Who proposed each generation's configurations, and how they did" if society.enabled
            else "The society was off: these are the agents of `optimization.algorithm`")
           + (f"; top-k: how many of the run's best {k} configurations each agent proposed." if k else "."), ""]
    out += _table(
        ["agent", "share", "proposed / asked", "trials", "mean score", "best", "top-k", "failures", "time (s)"],
        [[_md(a.name), _shares(a), f"{a.proposed}/{a.asked}", str(a.n_trials), _num(a.mean_score),
          _num(a.best_score), _DASH if a.in_top_k is None else f"{a.in_top_k}/{a.top_k or k or '?'}",
          _failures(a), f"{a.seconds:.1f}"] for a in society.agents]) + [""]
    errors = [f"- **{_md(a.name)}** last error: {_md(a.last_error, 200)}" for a in society.agents if a.last_error]
    out += errors + ([""] if errors else [])
    for a in society.agents:
        r = a.reasoning
        if r is None:
            continue
        out += [f"### {_md(a.name)}: reasoning", ""]
        if r.parse_rate is not None:
            repaired = f", {r.repaired} after a repair" if r.repaired else ""
            out.append(f"- **Parse rate:** {r.parse_rate:.0%} ({r.answers - r.invalid} of {r.answers} answers "
                       f"parsed{repaired})")
        if r.mean_reward is not None:
            out.append(f"- **Mean reward:** {r.mean_reward:+.3f} ({_md(r.reward_method or 'unknown method')})")
        if r.policy:
            ranked = sorted(r.policy.items(), key=lambda kv: -kv[1])
            out.append("- **Policy:** " + " · ".join(f"{_md(s)} {p:.2f}" for s, p in ranked))
        out.append(f"- **LLM time:** {r.llm_seconds:.1f} s")
        out += [f"- Note: {_md(n, 200)}" for n in r.notes[:5]]
        shown = r.thoughts[-THOUGHT_ROWS:]
        if shown:
            more = len(r.thoughts) - len(shown)
            out += ["", f"Thoughts{f' (latest {len(shown)} of {len(r.thoughts)}; all in results.json)' if more else ''}"
                    " — outcome per proposal: best / high / low (vs the run's median) / failed:", ""]
            out += _table(["gen", "strategy", "thought", "outcomes", "reward"],
                          [[str(t.generation + 1), _md(t.strategy), _md(t.text), _md(", ".join(t.outcomes) or _DASH),
                            _DASH if t.reward is None else f"{t.reward:+.3f}"] for t in shown])
        out.append("")
    return out


def _config_text(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items())


def sao_markdown(sao: SAOReport) -> list[str]:
    """The "Self-judged preference" section: consistency under swap, filters, whom the judge preferred."""
    rate = "n/a" if sao.consistency is None else f"{sao.consistency:.0%}"
    out = ["## Self-judged preference (SAO)", "",
           f"- **Pairs judged:** {sao.pairs} ({sao.kept} kept for export: consistent under swap and past every "
           "filter; `convergence sao export` writes them)",
           f"- **Consistent under swap:** {rate} of parseable pairs gave the same verdict with A and B swapped",
           "- **Outcomes:** " + (" · ".join(f"{_md(k)} {v}" for k, v in sorted(sao.outcomes.items())) or _DASH),
           "- **Filtered:** " + (" · ".join(f"{_md(k)} {v}" for k, v in sorted(sao.filtered.items())) or "none")]
    out.append("- **Agreement with the metrics:** " + (
        f"{sao.metric_agreement:.0%} of {sao.metric_agreement_pairs} duels on test cases gave the response the "
        "metrics score higher (pairs that disagree are not kept)" if sao.metric_agreement is not None else
        "not measured (no duel on a test case with a reference answer): the verdicts on written prompts are "
        "unchecked"))
    if sao.rank_agreement is not None:
        out.append(f"- **Agreement with measured scores:** Spearman {sao.rank_agreement:+.2f} over "
                   f"{sum(p.score is not None for p in sao.preferred)} rated configurations")
    out.append("")
    if sao.preferred:
        out += ["Configurations the self-judge compared, most preferred first (Bradley-Terry win probability "
                "against an average configuration):", ""]
        out += _table(["configuration", "preference", "duels (W/L/T)", "score"],
                      [[_md(_config_text(p.config) if p.config else p.config_hash, 80), f"{p.preference:.2f}",
                        f"{p.duels} ({p.wins}/{p.losses}/{p.ties})", _num(p.score)]
                       for p in sao.preferred[:TOP_N]]) + [""]
    if sao.examples:
        out += ["Kept pairs (first few):", ""]
        out += _table(["prompt", "chosen", "rejected"],
                      [[_md(e["prompt"]), _md(e["chosen"]), _md(e["rejected"])] for e in sao.examples]) + [""]
    return out


def learner_markdown(log: list[dict[str, Any]]) -> list[str]:
    """The society learner's shares after each generation, and what it was given."""
    agents = list(dict.fromkeys(a for row in log for a in row["shares"]))
    name = log[-1]["learner"]
    detail = log[-1].get("detail") or {}
    algo = f" ({_md(detail['algorithm'])})" if detail.get("algorithm") else ""
    out = [f"## Society learner: {_md(name)}{algo}", "",
           "The shares each agent gets in the next generation, as the learner set them from the improvement "
           "each agent's proposals brought per unit of cost:", ""]
    rows = []
    for row in log:
        result = row.get("result") or {}
        gains = result.get("agents") or {}
        rows.append([str(row["generation"] + 1)] + [f"{row['shares'].get(a, 0.0):.0%}" for a in agents]
                    + [", ".join(f"{_md(a)} {_num(g.get('improvement'))}" for a, g in gains.items()
                                 if g.get("improvement"))
                       or "—"])
    out += _table(["after generation", *[_md(a) for a in agents], "improvement credited"], rows) + [""]
    decided = [row for row in log if (row.get("detail") or {}).get("action")]
    if decided:
        heads = list(dict.fromkeys(h for row in decided for h in row["detail"]["action"]))
        out += ["Its decisions for the next generation, and the reward of the decision each generation ran "
                "under:", ""]
        out += _table(["after generation", *[_md(h) for h in heads], "reward"],
                      [[str(row["generation"] + 1), *[_md(str(row["detail"]["action"].get(h, ""))) for h in heads],
                        _num(row["detail"].get("reward"))] for row in decided]) + [""]
    updates = [row for row in log if (row.get("detail") or {}).get("metrics")]
    if updates:
        keys = ["policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "epochs", "grad_norm",
                "explained_variance", "mean_reward"]
        out += ["Learning metrics of each update:", ""]
        out += _table(["after generation", *[k.replace("_", " ") for k in keys]],
                      [[str(row["generation"] + 1), *[_num(row["detail"]["metrics"].get(k)) for k in keys]]
                       for row in updates]) + [""]
    return out


def selection_markdown(sel: dict[str, Any], trials: dict[str, TrialRecord]) -> list[str]:
    """How the best was chosen: estimate, confirmation, intervals, best vs runner-up."""
    how = ("an empirical-Bayes estimate of their true score (means over few cases pulled toward the run's "
           "average, corrected for the difficulty of the cases run)" if sel.get("estimate") == "shrinkage"
           else "its mean score")
    ties = ("equal estimates by mean score, then" if sel.get("estimate") == "shrinkage" else "equal means by")
    out = ["## How the best was chosen", "", f"Configurations are ranked by {how}; {ties} evaluation order "
           "(earlier generation, then the trial stored first). "
           f"Noise of one case score: sd {_num(sel.get('case_sd'))} across cases, sd {_num(sel.get('draw_sd'))} "
           f"between draws of a case; spread of true scores: sd {_num(sel.get('spread_sd'))}.", ""]
    if sel.get("stochastic_how"):  # runs stored before the decision was recorded have none
        out += [f"Target: {'stochastic' if sel.get('stochastic') else 'deterministic'} "
                f"({sel['stochastic_how']}).", ""]
    calls = sel.get("confirm_calls") or 0
    if calls:
        kind = "fresh draws of their cases (stochastic target)" if sel.get("stochastic") else "the cases they skipped"
        out += [f"Confirmation: {calls} call(s) in {sel.get('confirm_rounds')} round(s) on {sel.get('confirmed')} "
                f"top configuration(s), asking {kind}.", ""]
    elif not sel.get("confirm_top"):
        out += ["Confirmation: off (`selection.confirm_top: 0`).", ""]
    elif not sel.get("confirm_allowance"):
        out += ["Confirmation: no calls (the budget had none left).", ""]
    else:
        out += ["Confirmation: no calls (every top configuration ran every case"
                + ("" if sel.get("stochastic") else ", and the target is deterministic: no fresh draws") + ").", ""]
    rows = []
    for i, row in enumerate(sel.get("top") or [], 1):
        t = trials.get(row.get("config_hash", ""))
        ci = row.get("ci95")
        rows.append([str(i), _num(row.get("trial_id")), _num(row.get("mean")), _num(row.get("estimate")),
                     f"[{_num(ci[0])}, {_num(ci[1])}]" if ci else "—",
                     f"{row.get('n_cases')} + {row.get('repeats')}", "yes" if row.get("confirmed") else "no",
                     _md(_config_text(t.config), 60) if t else ""])
    if rows:
        out += _table(["rank", "trial", "mean", "estimate", "95% CI over cases", "cases + repeats", "confirmed",
                       "configuration"], rows) + [""]
        out += ["The 95% CI is a t-interval of the per-case scores, clipped to the range a score can take "
                "(0 to the sum of the metric weights).", ""]
    p = sel.get("runner_up_p")
    if p is not None:
        verdict = ("**distinguishable** from the runner-up" if sel.get("distinguishable")
                   else "**not distinguishable** from the runner-up: they differ by less than the noise")
        out += [f"The best is {verdict} (paired Wilcoxon signed-rank over shared cases, p = {p:.2g}).", ""]
    return out


def render_markdown(report: RunReport, front: list[TrialRecord], importance: dict[str, float],
                    plot_files: Sequence[Path], skipped_plots: Mapping[str, str] | None = None) -> str:
    best, worst = report.best, report.worst
    out = [f"# Convergence report — {_md(report.study)}, run {report.run_id}", ""]
    out += [f"- **Target:** {_md(report.description)}"] if report.description else []
    out += [f"- **Status:** {report.status}", f"- **Stop reason:** {report.stop_reason or '—'}",
            f"- **Started:** {report.started_at}; **finished:** {report.finished_at or '—'}",
            f"- **Seed:** {report.seed if report.seed is not None else '—'}", ""]
    out += ["## Budget used", "", f"- Calls: {report.total_calls}",
            f"- Cost: ${report.total_cost_usd:.4f}", f"- Time: {report.elapsed_seconds:.1f} s",
            f"- Trials: {len(report.trials)} ({len(report.usable)} complete)", ""]
    out += ["## Best configuration", ""]
    if best is None:
        out += ["No trial completed, so there is no best configuration.", ""]
    else:
        resolved = report.resolved_best or {}
        names = list(dict.fromkeys([*report.parameters, *best.config]))
        rows = []
        for p in names:
            label = best.config.get(p, "")
            value = resolved.get(p, label)
            rows.append([_md(p), _md(label), "" if value == label else _md(value)])
        out += _table(["parameter", "value", "resolved value (if different)"], rows) + [""]
        estimate = f", estimated true score **{_num(best.estimate)}**" if best.estimate is not None else ""
        out += [f"Best score **{_num(best.score)}**{estimate} (trial {_num(best.trial_id)}, generation "
                f"{best.generation + 1}, proposed by {_md(best.proposer)}); worst complete trial scored "
                f"**{_num(worst.score if worst else None)}**.", ""]
        if best.metrics:
            out += _table(["metric", "best trial mean", "direction", "weight"],
                          [[_md(m), _num(v), report.metric_directions.get(m, "—"),
                            _num(report.metric_weights.get(m))] for m, v in best.metrics.items()]) + [""]
    out += [f"## Top {TOP_N} trials", ""] + _trial_table(report, report.ranked[:TOP_N], True) + [""]
    if report.selection is not None:
        out += selection_markdown(report.selection, {t.config_hash: t for t in report.trials})
    out += ["## Pareto front", "",
            f"{len(front)} trial(s) no other complete trial beats on every metric at once"
            + (f" (best {FRONT_ROWS} by score shown; all in results.json):" if len(front) > FRONT_ROWS else ":"), ""]
    shown = front if len(front) <= FRONT_ROWS else sorted(front, key=lambda t: -t.score)[:FRONT_ROWS]
    out += _trial_table(report, shown, False) + [""]
    out += ["## Generations", ""] + _table(
        ["generation", "best", "mean", "trials", "new"],
        [[str(g.number + 1), _num(g.best_score), _num(g.mean_score), str(g.n_trials), str(g.n_new)]
         for g in report.generation_summaries()]) + [""]
    if report.society is not None:
        out += society_markdown(report.society)
    if report.sao is not None:
        out += sao_markdown(report.sao)
    if report.learner:
        out += learner_markdown(report.learner)
    out += ["## Parameter importance", ""]
    described = report.parameter_descriptions
    if importance:
        out += ["How much each parameter mattered for reaching the top 30 % of the run's configurations "
                "(Optuna's PED-ANOVA over the complete configurations; shares sum to 100 %). The "
                "configurations come from an optimizer, not a designed experiment: read it as a ranking.", ""]
        out += _table(["parameter", "share", *(["description"] if described else [])],
                      [[_md(p), f"{v:.1%}", *([_md(described.get(p, ""))] if described else [])]
                       for p, v in importance.items()]) + [""]
    else:
        out += [f"Not given: {too_few(report.trials) or 'no parameter to rank'}.", ""]
    if plot_files or skipped_plots:
        out += ["## Plots", ""]
        for f in plot_files:
            title = PLOT_TITLES.get(f.stem, f.stem)
            out.append(f"![{title}]({f.name})" if f.suffix == ".png" else f"- [{title}]({f.name})")
        out += [f"- {PLOT_TITLES.get(name, name)}: not drawn, {why}." for name, why in (skipped_plots or {}).items()]
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- all


def _society_chart(report: RunReport) -> plots.Panels:
    assert report.society is not None, "drawn only for a run with a society log"
    return plots.society_chart(report.society, report)


_CHARTS: dict[str, Callable[[RunReport, dict[str, float]], plots.Chart | plots.Panels]] = {
    "score_over_time": lambda r, imp: plots.score_over_time(r),
    "cost_vs_quality": lambda r, imp: plots.cost_vs_quality(r),
    "parameter_importance": lambda r, imp: plots.importance_chart(imp, r),
    "pareto_front": lambda r, imp: plots.pareto_chart(r),
    "society": lambda r, imp: _society_chart(r),
}


def plot_kinds(report: RunReport, cfg: OutputConfig) -> list[str]:
    """The asked plots this run can draw. ``society`` needs a society log;
    from the default list (``visualizations`` not set) it also needs the
    society switched on, so a plain run keeps its usual plots (a plot with nothing to show is
    not drawn either: :func:`write_reports` says why in the report)."""
    kinds: list[str] = []
    for name in dict.fromkeys(cfg.visualizations):
        if name == "society" and (report.society is None or not (
                report.society.enabled or "visualizations" in cfg.model_fields_set)):
            continue
        kinds.append(name)
    return kinds


def _why_no_plot(report: RunReport, name: str, importance: dict[str, float]) -> str | None:
    """Why plot ``name`` would be empty for this run (None: it has something to show)."""
    if name == "society":
        return None
    if not report.usable:
        return "no trial completed (no successful trial to plot)"
    if name == "parameter_importance" and not importance:
        return too_few(report.trials) or "no parameter to rank"
    return None


def write_reports(report: RunReport, out_dir: Path, cfg: OutputConfig) -> list[Path]:
    """Write every file ``cfg`` asks for into ``out_dir``; return the paths written.

    Each file is replaced atomically (see :mod:`convergence.storage.atomic`):
    a kill part-way leaves every file either complete or as it was before."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir)  # left by a write that was killed
    front = pareto_front(report.trials, report.metric_directions)
    importance = parameter_importance(report.trials, report.parameters)
    trials = _kept_trials(report, front, cfg.save_all_experiments)
    written: list[Path] = []

    plot_files: list[Path] = []
    skipped: dict[str, str] = {}
    for name in plot_kinds(report, cfg):
        why = _why_no_plot(report, name, importance)
        if why is not None:  # an empty plot says nothing: the report says why there is none
            skipped[name] = why
            continue
        files = plots.render(_CHARTS[name](report, importance), out_dir / name, cfg.plot_format)
        plot_files.append(files[0])
        written += [f for f in files if f not in written]

    if "json" in cfg.formats:
        path = out_dir / "results.json"
        doc = results_document(report, front, importance, trials)
        atomic_write_text(path, json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False))
        written.append(path)
    if "csv" in cfg.formats:
        written.append(write_csv(report, trials, out_dir / "results.csv"))
    if "markdown" in cfg.formats:
        path = out_dir / "report.md"
        atomic_write_text(path, render_markdown(report, front, importance, plot_files, skipped))
        written.append(path)

    export = cfg.export_best_config
    if export.enabled and report.best is not None:
        path = Path(export.output_path) if export.output_path else Path(f"best_config.{EXTENSIONS[export.format]}")
        path = path if path.is_absolute() else out_dir / path
        export_config(report, export.format, path)
        written.append(path)
    return written
