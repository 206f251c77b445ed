"""The report's plots: data first (:class:`Chart`), then one renderer per format.

Each chart is described once as plain series, so the PNG (matplotlib, Agg,
no pyplot global state) and the interactive HTML (plotly) show the same data.
Both libraries are imported inside the renderers: the CLI must start fast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from convergence.core.types import TrialRecord
from convergence.reporting.model import RunReport
from convergence.reporting.pareto import LOWER, non_dominated
from convergence.reporting.society import SocietyReport
from convergence.storage.atomic import atomic_path, atomic_write_bytes, atomic_write_text

SeriesKind = Literal["dots", "line", "step", "barh"]
PLOTLY_JS = "plotly.min.js"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
"""matplotlib's tab10, as hex so plotly draws the same colours."""


@dataclass(slots=True)
class Series:
    name: str
    x: list[float]
    y: list[float] | list[str]
    kind: SeriesKind = "dots"
    text: list[str] | None = None
    """Hover text per point (HTML) — the trial and its configuration."""
    emphasis: bool = False
    step_where: Literal["post", "pre"] = "post"
    """``post``: horizontal then vertical, so a front's corners are points it attains."""
    color: str | None = None
    """Fixed colour (hex), so one agent looks the same in every panel."""


@dataclass(slots=True)
class Chart:
    title: str
    x_label: str
    y_label: str
    series: list[Series] = field(default_factory=list)
    note: str | None = None
    """Shown under the title, e.g. why latency stands in for cost."""
    integer_x: bool = False
    """Whole-number ticks on the x axis (generations)."""


@dataclass(slots=True)
class Panels:
    """Charts stacked in one file over a shared x axis; a series name shared
    between panels is one legend entry."""

    title: str
    charts: list[Chart]


# --------------------------------------------------------------------------- data


def _short(value: object, limit: int = 40) -> str:
    s = " ".join(str(value).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def trial_label(t: TrialRecord) -> str:
    cfg = ", ".join(f"{k}={_short(v)}" for k, v in t.config.items())
    tid = f"trial {t.trial_id}" if t.trial_id is not None else "trial"
    return f"{tid} (gen {t.generation + 1}, {t.proposer}) score {t.score:.4g}: {cfg}"


def score_over_time(report: RunReport) -> Chart:
    usable = report.usable
    gens = report.generation_summaries()
    xs = [float(g.number + 1) for g in gens]  # people count generations from 1
    best_so_far: list[float] = []
    running = -math.inf
    for g in gens:
        if math.isfinite(g.best_score):
            running = max(running, g.best_score)
        best_so_far.append(running if math.isfinite(running) else math.nan)
    return Chart(
        title=f"Score over generations — {report.study}, run {report.run_id}",
        x_label="generation",
        y_label="score",
        integer_x=True,
        series=[
            Series("trials", [float(t.generation + 1) for t in usable], [t.score for t in usable], "dots",
                   [trial_label(t) for t in usable]),
            Series("generation mean", xs, [g.mean_score for g in gens], "line"),
            Series("best so far", xs, best_so_far, "step", emphasis=True),
        ],
    )


def _front_series(name: str, trials: Sequence[TrialRecord], x: np.ndarray, y: np.ndarray,
                  x_lower: bool, y_lower: bool) -> list[Series]:
    """All trials as dots plus their 2-D Pareto front, highlighted and joined."""
    labels = [trial_label(t) for t in trials]
    out = [Series("trials", x.tolist(), y.tolist(), "dots", labels)]
    if len(trials):
        objectives = np.column_stack([-x if x_lower else x, -y if y_lower else y])
        objectives[~np.isfinite(objectives)] = -np.inf
        idx = [int(i) for i in np.flatnonzero(non_dominated(objectives))]
        idx.sort(key=lambda i: (x[i], y[i]))
        # Ascending x: a lower-is-better x reaches the next point horizontally,
        # a higher-is-better x vertically, so the staircase never overclaims.
        out.append(Series(name, [float(x[i]) for i in idx], [float(y[i]) for i in idx], "step",
                          [labels[i] for i in idx], emphasis=True, step_where="post" if x_lower else "pre"))
    return out


def cost_axis(trials: Sequence[TrialRecord]) -> tuple[str, np.ndarray, str | None]:
    """Cost per trial, or mean latency when no trial cost anything (local
    models, free endpoints) — with a note saying so."""
    cost = np.array([t.cost_usd for t in trials], dtype=float)
    if np.any(cost > 0):
        return "cost per trial (USD)", cost, None
    latency = np.array([t.latency_ms for t in trials], dtype=float)
    return "mean latency (ms)", latency, "every trial cost $0, so latency stands in for cost"


def cost_vs_quality(report: RunReport) -> Chart:
    usable = report.usable
    x_label, x, note = cost_axis(usable)
    y = np.array([t.score for t in usable], dtype=float)
    kind = "latency" if note else "cost"
    return Chart(
        title=f"Score vs {kind} — {report.study}, run {report.run_id}",
        x_label=x_label,
        y_label="score",
        series=_front_series("Pareto front (score vs " + kind + ")", usable, x, y, True, False),
        note=note,
    )


def pareto_chart(report: RunReport) -> Chart:
    """The front over the two heaviest metrics (one metric: against cost or
    latency; none: the score against cost or latency)."""
    usable = report.usable
    present = [m for m in report.metric_directions if any(m in t.metrics for t in usable)]
    heaviest = sorted(present, key=lambda m: -report.metric_weights.get(m, 1.0))[:2]

    def metric(m: str) -> np.ndarray:
        return np.array([t.metrics.get(m, math.nan) for t in usable], dtype=float)

    def lower(m: str) -> bool:
        return report.metric_directions.get(m) == LOWER

    note = None
    if len(heaviest) == 2:
        (xm, ym) = heaviest
        x_label, x, x_lower = xm, metric(xm), lower(xm)
        y_label, y, y_lower = ym, metric(ym), lower(ym)
    else:
        x_label, x, note = cost_axis(usable)
        x_lower = True
        if heaviest:
            y_label, y, y_lower = heaviest[0], metric(heaviest[0]), lower(heaviest[0])
        else:
            y_label, y, y_lower = "score", np.array([t.score for t in usable], dtype=float), False
    arrows = {True: " (lower is better)", False: " (higher is better)"}
    return Chart(
        title=f"Pareto front — {report.study}, run {report.run_id}",
        x_label=x_label + arrows[x_lower],
        y_label=y_label + arrows[y_lower],
        series=_front_series("Pareto front", usable, x, y, x_lower, y_lower),
        note=note,
    )


def importance_chart(importance: dict[str, float], report: RunReport) -> Chart:
    names = list(importance)[::-1]  # most important at the top of a horizontal bar chart
    return Chart(
        title=f"Parameter importance — {report.study}, run {report.run_id}",
        x_label="share of explained score variance",
        y_label="parameter",
        series=[Series("importance", [importance[n] for n in names], names, "barh")],
        note="simple per-parameter estimate (epsilon squared), not fANOVA",
    )


def society_chart(society: SocietyReport, report: RunReport) -> Panels:
    """Each agent's share of the slots per generation, and its proposals'
    scores (dots, spread a little per agent) with their per-generation mean."""
    shares, scores = [], []
    n = len(society.agents)
    for i, agent in enumerate(society.agents):
        color = PALETTE[i % len(PALETTE)]
        gens = agent.generations
        xs = [float(g.generation + 1) for g in gens]
        shares.append(Series(agent.name, xs, [g.share for g in gens], "line", color=color))
        mine = [t for t in report.usable if t.proposer == agent.name]
        offset = 0.08 * (i - (n - 1) / 2)  # side by side, not on top of each other
        scores.append(Series(agent.name, [t.generation + 1 + offset for t in mine], [t.score for t in mine],
                             "dots", [trial_label(t) for t in mine], color=color))
        scored = [g for g in gens if g.n_trials]
        scores.append(Series(agent.name, [float(g.generation + 1) for g in scored],
                             [g.mean_score for g in scored], "line", color=color))
    return Panels(
        title=f"Society — {report.study}, run {report.run_id}",
        charts=[Chart("Share of each generation's slots", "generation", "share of slots", shares, integer_x=True),
                Chart("Scores of each agent's proposals (line: generation mean)", "generation", "score", scores,
                      integer_x=True)],
    )


# --------------------------------------------------------------------------- render


def _draw_png(ax: Any, chart: Chart, x_label: bool = True) -> None:
    labelled: set[str] = set()
    for s in chart.series:
        color = "tab:red" if s.emphasis else s.color
        label = None if s.name in labelled else s.name  # one legend entry per name
        labelled.add(s.name)
        if s.kind == "dots":
            ax.scatter(s.x, s.y, s=16, alpha=0.55, label=label, color=color)
        elif s.kind == "line":
            ax.plot(s.x, s.y, marker="o", label=label, color=color)
        elif s.kind == "step":
            ax.step(s.x, s.y, where=s.step_where, marker="o", label=label, color=color, linewidth=2)
        else:
            ax.barh(s.y, s.x, label=label, color="tab:blue")
    ax.set_title(chart.title + (f"\n({chart.note})" if chart.note else ""), fontsize=11)
    if x_label:
        ax.set_xlabel(chart.x_label)
    ax.set_ylabel(chart.y_label)
    if chart.integer_x:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    if len(labelled) > 1:
        ax.legend(loc="best", fontsize=9)


def render_png(chart: Chart | Panels, path: Path) -> list[Path]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    charts = chart.charts if isinstance(chart, Panels) else [chart]
    fig = Figure(figsize=(9, 5.5 if len(charts) == 1 else 3.6 * len(charts) + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(charts), 1, sharex=True, squeeze=False)[:, 0]
    if isinstance(chart, Panels):
        fig.suptitle(chart.title, fontsize=12)
    for i, (ax, c) in enumerate(zip(axes, charts, strict=True)):
        _draw_png(ax, c, x_label=i == len(charts) - 1)  # a shared x axis: labelled once, at the bottom
    fig.tight_layout()
    with atomic_path(path) as tmp:  # never a half-written PNG at the final path
        fig.savefig(tmp, format="png")
    return [path]


def render_html(chart: Chart | Panels, path: Path) -> list[Path]:
    """Interactive plotly page; plotly.js is written once beside it so the
    page works offline without a 4 MB copy per plot."""
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("plot_format: html needs plotly: pip install plotly") from exc

    charts = chart.charts if isinstance(chart, Panels) else [chart]
    if isinstance(chart, Panels):
        fig = make_subplots(rows=len(charts), cols=1, shared_xaxes=True, vertical_spacing=0.08,
                            subplot_titles=[c.title for c in charts])
        fig.update_layout(height=380 * len(charts) + 80)
    else:
        fig = go.Figure()
    labelled: set[str] = set()
    for row, c in enumerate(charts, 1):
        where = {"row": row, "col": 1} if isinstance(chart, Panels) else {}
        for s in c.series:
            show = s.name not in labelled  # one legend entry per name; it toggles every panel
            labelled.add(s.name)
            if s.kind == "barh":
                fig.add_trace(go.Bar(x=list(s.x), y=list(s.y), orientation="h", name=s.name), **where)
                continue
            mode = "markers" if s.kind == "dots" else "lines+markers"
            if s.emphasis:
                marker: dict[str, Any] = {"size": 11, "color": "crimson"}
            else:
                marker = {"size": 7, "opacity": 0.6, **({"color": s.color} if s.color else {})}
            line: dict[str, Any] = {"color": s.color} if s.color and not s.emphasis else {}
            if s.kind == "step":
                line["shape"] = "hv" if s.step_where == "post" else "vh"
            fig.add_trace(go.Scatter(
                x=list(s.x), y=list(s.y), mode=mode, name=s.name, text=s.text, line=line or None, marker=marker,
                hovertemplate="%{text}<extra></extra>" if s.text else None,
                **({"legendgroup": s.name, "showlegend": show} if where else {}),
            ), **where)
        if isinstance(chart, Panels):
            fig.update_yaxes(title_text=c.y_label, row=row, col=1)
            if row == len(charts):
                fig.update_xaxes(title_text=c.x_label, row=row, col=1)
            if c.integer_x:
                fig.update_xaxes(dtick=1, row=row, col=1)
    if isinstance(chart, Panels):
        fig.update_layout(title=chart.title, template="plotly_white")
    else:
        title = chart.title + (f"<br><sup>{chart.note}</sup>" if chart.note else "")
        fig.update_layout(title=title, xaxis_title=chart.x_label, yaxis_title=chart.y_label, template="plotly_white")
    bundle = write_plotly_js(path.parent)
    # A relative src, as include_plotlyjs="directory" would write, but the
    # bundle is ours to write atomically (plotly skips an existing, maybe
    # truncated, one).
    atomic_write_text(path, fig.to_html(include_plotlyjs=PLOTLY_JS, full_html=True))
    return [path, bundle]


def write_plotly_js(directory: Path) -> Path:
    """plotly.min.js beside the pages, (re)written unless already intact."""
    from plotly.offline import get_plotlyjs

    bundle = directory / PLOTLY_JS
    expected = get_plotlyjs().encode("utf-8")
    try:
        intact = bundle.stat().st_size == len(expected) and bundle.read_bytes() == expected
    except OSError:
        intact = False
    if not intact:
        atomic_write_bytes(bundle, expected)
    return bundle


def render(chart: Chart | Panels, path_without_suffix: Path, fmt: Literal["png", "html"]) -> list[Path]:
    path = path_without_suffix.with_suffix("." + fmt)
    return render_png(chart, path) if fmt == "png" else render_html(chart, path)
