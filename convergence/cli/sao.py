"""``convergence sao``: the self-judge's preference pairs as a training set.

``export`` writes a run's (or a study's) pairs in TRL's preference format,
``import`` stores a TRL preference file under a study, ``stats`` says what the
pairs are worth (kept, consistency under swap, filters, diversity) and how
the run's self-judge rated its configurations.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import typer

from convergence.cli.common import CFG_OPT, DB_OPT, _db_path, _open_store, _run_async, console, err

sao_app = typer.Typer(
    help="Self-alignment optimization (SAO): export, import and inspect the self-judge's preference pairs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SAO_HINT = "enable society.learning.sao_enabled"
RUN_ARG = typer.Argument(None, help="Run id (default: the newest run with SAO pairs).", show_default=False)
STUDY_OPT = typer.Option(None, "--study", "-s", help="Every run's and every imported pair of this study.")


def _fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` (rich markup, user text already escaped) in red; the exit to raise."""
    err.print(f"[red]{message}[/]", highlight=False)
    return typer.Exit(code)


def _count_line(counts: dict[str, int], filters: bool = True) -> str:
    """``name n, ...`` of the non-zero counts; ``filters``: in the order the quality filters are checked."""
    from convergence.core.sao_pair import FILTERS

    items = list(counts.items())
    if filters:
        order = {f: i for i, f in enumerate(FILTERS)}
        items.sort(key=lambda kv: order.get(kv[0], len(order)))
    return ", ".join(f"{k} {v}" for k, v in items if v)


async def _scope(store: Any, path: Path, run: int | None, study: str | None) -> tuple[list[Any], str, int | None]:
    """(pairs, what they are, run id) of RUN, --study, or the newest run with pairs;
    exits 2 with a clear message when the scope is unknown or holds no pair."""
    from rich.markup import escape

    if run is not None and study is not None:
        raise _fail("give a RUN or --study, not both")
    if study is not None:
        counts = dict(await store.sao_studies())
        if study not in counts:
            raise _fail(f"no study '{escape(study)}' in {escape(str(path))}")
        if not counts[study]:
            raise _fail(f"study '{escape(study)}' has no SAO pairs: {SAO_HINT}, or `convergence sao import`")
        return await store.sao_pairs(study=study), f"study '{escape(study)}'", None
    if run is None:
        run = await store.latest_sao_run()
        if run is None:
            with_pairs = [f"{escape(name)} ({n})" for name, n in await store.sao_studies() if n]
            raise _fail(
                f"no run in {escape(str(path))} has SAO pairs: {SAO_HINT}"
                + (f"; imported pairs are in study {', '.join(with_pairs)} (pass --study)" if with_pairs else "")
            )
        console.print(f"run {run} (the newest run with SAO pairs)", highlight=False)
    elif await store.get_run(run) is None:
        raise _fail(f"no run {run} in {escape(str(path))}")
    pairs = await store.sao_pairs(run_id=run)
    if not pairs:
        raise _fail(f"run {run} has no SAO pairs: {escape(await _why_no_pairs(store, run))}")
    return pairs, f"run {run}", run


async def _why_no_pairs(store: Any, run: int) -> str:
    """Why a run made no pair: SAO was off (the hint), or what its step said each time it ran."""
    row = await store.get_run(run)
    society = (row.config if row is not None else {}).get("society") or {}
    agents = society.get("agents") or {}
    on = society.get("enabled", False) and (
        "sao" in agents or (society.get("learning") or {}).get("sao_enabled", False))
    if not on:
        return f"SAO was off in this run; {SAO_HINT} (or list sao in society.agents) and run again"
    notes = [f"generation {r.generation + 1}: {r.detail['sao']['note']}" for r in await store.society_log(run)
             if r.agent == "sao" and isinstance(r.detail, dict) and isinstance(r.detail.get("sao"), dict)
             and r.detail["sao"].get("note")]
    if notes:
        return "SAO was on but made no pair (" + "; ".join(notes[-3:]) + ")"
    every = (society.get("sao") or {}).get("every", 2)
    status = row.status if row is not None else "?"
    return (f"SAO was on but its step never ran: it runs after a generation's evaluation, every {every} "
            f"generation(s), once two configurations have scored (this run ended first: status {status})")


# --------------------------------------------------------------------------- export


@sao_app.command("export")
def export_cmd(
    run: int | None = RUN_ARG,
    study: str | None = STUDY_OPT,
    out: Path = typer.Option(..., "--out", "-o", help="The dataset file to write (replaced atomically)."),
    fmt: str | None = typer.Option(
        None, "--format", "-f", help="jsonl (one record per line) | json (one array); default: from --out's suffix."
    ),
    conversational: bool = typer.Option(
        False, "--conversational", help="Messages ([{role, content}]) instead of plain strings."
    ),
    include_all: bool = typer.Option(
        False, "--all", help="Also pairs that failed a quality filter (never ties or inconsistent ones)."
    ),
    metadata: bool = typer.Option(
        False, "--metadata", help="Add persona, source, outcome, config_chosen, config_rejected columns."
    ),
    db: Path | None = DB_OPT,
    config: Path | None = CFG_OPT,
) -> None:
    """Write the SAO preference pairs of RUN (or --study) as a TRL preference dataset
    (prompt/chosen/rejected), ready for datasets.load_dataset("json", ...) and DPOTrainer."""
    if fmt is None:
        fmt = "json" if out.suffix.lower() == ".json" else "jsonl"
    if fmt not in ("jsonl", "json"):
        raise _fail(f"unknown format {fmt!r}; expected jsonl or json")
    _run_async(_export, _db_path(db, config), run, study, out, fmt, conversational, include_all, metadata)


async def _export(path: Path, run: int | None, study: str | None, out: Path, fmt: str, conversational: bool,
                  include_all: bool, metadata: bool) -> None:
    from rich.markup import escape

    from convergence.society.sao.dataset import SAODatasetError, export_pairs, skip_reasons

    store = await _open_store(path)
    try:
        pairs, what, _ = await _scope(store, path, run, study)
    finally:
        await store.close()
    left_out: Counter[str] = Counter()
    n_left = 0
    for p in pairs:
        reasons = skip_reasons(p, include_all)
        n_left += bool(reasons)
        left_out.update(reasons)
    if n_left == len(pairs):
        hint = "" if include_all else " (--all also writes pairs that failed a quality filter)"
        raise _fail(f"nothing to export: none of the {len(pairs)} pair(s) of {what} is kept - "
                    f"{escape(_count_line(dict(left_out)))}{hint}")
    try:
        rows = export_pairs(pairs, out, format=fmt,  # type: ignore[arg-type]
                            conversational=conversational, include_all=include_all, with_metadata=metadata)
    except SAODatasetError as exc:
        raise _fail(escape(str(exc)), 1) from None
    shape = "conversational" if conversational else "standard"
    console.print(f"wrote {rows} pair(s) of {what} to {escape(str(out))} ({fmt}, {shape})", highlight=False)
    if n_left:
        console.print(f"left out {n_left} pair(s): {escape(_count_line(dict(left_out)))}"
                      + (" (a pair can fail several filters)" if sum(left_out.values()) > n_left else ""),
                      highlight=False)


# --------------------------------------------------------------------------- import


@sao_app.command("import")
def import_cmd(
    file: Path = typer.Argument(..., help="A TRL preference dataset: JSON Lines or a JSON array of records."),
    study: str = typer.Option(..., "--study", "-s", help="The study to store the pairs under (created if missing)."),
    db: Path | None = DB_OPT,
    config: Path | None = CFG_OPT,
) -> None:
    """Store the preference pairs of FILE (prompt/chosen/rejected, standard or
    conversational) under --study, as pairs whose chosen response won."""
    from rich.markup import escape

    from convergence.society.sao.dataset import SAODatasetError, import_pairs

    try:
        pairs = import_pairs(file)
    except SAODatasetError as exc:
        raise _fail(escape(str(exc))) from None
    if not pairs:
        raise _fail(f"{escape(str(file))} holds no records")
    _run_async(_import, _db_path(db, config), study, pairs, file)


async def _import(path: Path, study: str, pairs: list[Any], file: Path) -> None:
    from rich.markup import escape

    from convergence.storage.store import Store

    async with await Store.open(path) as store:  # importing into a new project creates its database
        n = await store.add_sao_pairs(await store.study_id(study), pairs)
    console.print(f"imported {n} pair(s) from {escape(str(file))} into study '{escape(study)}' ({escape(str(path))})",
                  highlight=False)


# --------------------------------------------------------------------------- stats


@sao_app.command("stats")
def stats_cmd(
    run: int | None = RUN_ARG,
    study: str | None = STUDY_OPT,
    db: Path | None = DB_OPT,
    config: Path | None = CFG_OPT,
    top: int = typer.Option(10, "--top", help="How many rated configurations to list."),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON."),
) -> None:
    """What the SAO pairs of RUN (or --study) are worth as training data, and how
    the run's self-judge rated its configurations (Bradley-Terry preference)."""
    _run_async(_stats, _db_path(db, config), run, study, top, as_json)


async def _stats(path: Path, run: int | None, study: str | None, top: int, as_json: bool) -> None:
    from convergence.society.sao.dataset import dataset_stats

    store = await _open_store(path)
    try:
        if as_json:  # stdout stays pure JSON: the "newest run" line goes to the report instead
            with console.capture():
                pairs, what, run_id = await _scope(store, path, run, study)
        else:
            pairs, what, run_id = await _scope(store, path, run, study)
        ratings: dict[str, dict[str, float | int]] = {}
        configs: dict[str, dict[str, Any]] = {}
        if run_id is not None:
            ratings = await store.sao_ratings(run_id)
            configs = {t.config_hash: t.config for t in await store.trials(run_id)}
    finally:
        await store.close()
    for p in pairs:
        for h, c in ((p.hash_a, p.config_a), (p.hash_b, p.config_b)):
            if h and c is not None:
                configs.setdefault(h, c)
    stats = dataset_stats(pairs)
    rated = [{"config_hash": h, **r, "config": configs.get(h)} for h, r in list(ratings.items())[:max(top, 0)]]
    if as_json:
        sys.stdout.write(json.dumps({"scope": {"run": run_id, "study": study}, **stats, "ratings": rated},
                                    indent=2, default=str) + "\n")
        return
    _print_stats(what, stats, rated, len(ratings))


def _print_stats(what: str, stats: dict[str, Any], rated: list[dict[str, Any]], n_rated: int) -> None:
    from rich.markup import escape
    from rich.table import Table

    from convergence.cli.progress import short_config

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.1%}"

    t = Table(title=f"SAO pairs of {what}")
    t.add_column("")
    t.add_column("value", justify="right")
    total = stats["total"]
    t.add_row("pairs", str(total))
    t.add_row("kept", f"{stats['kept']} ({pct(stats['kept'] / total if total else None)})")
    t.add_row("consistent under swap", pct(stats["consistency_rate"]) if stats["judged"]
              else "- (no pair judged here: imported pairs carry no judgment)")
    t.add_row("agrees with the metrics", f"{pct(stats['metric_agreement'])} of {stats['metric_agreement_pairs']} "
              "duels on test cases" if stats["metric_agreement_pairs"]
              else "- (not measured: no duel on a test case with a reference answer)")
    t.add_row("diversity (kept prompts)", "-" if stats["diversity"] is None else f"{stats['diversity']:.3f}")
    t.add_row("unique prompts", str(stats["unique_prompts"]))
    t.add_row("outcomes", escape(_count_line(stats["outcomes"], filters=False)) or "-")
    t.add_row("sources", escape(_count_line(stats["sources"], filters=False)) or "-")
    console.print(t)
    f = Table(title="Quality filters")
    f.add_column("filter")
    f.add_column("pairs failing", justify="right")
    for name, n in stats["filters"].items():
        f.add_row(escape(name), str(n))
    console.print(f)
    if not rated:
        return
    r = Table(title=f"Top {len(rated)} of {n_rated} configurations by preference (self-judge, Bradley-Terry)")
    for col in ("#", "config", "preference", "strength", "duels", "wins", "losses", "ties", "configuration"):
        r.add_column(col, justify="left" if col in ("config", "configuration") else "right")
    for i, row in enumerate(rated, 1):
        conf = row["config"]
        r.add_row(str(i), escape(row["config_hash"][:10]), f"{row['preference']:.3f}", f"{row['strength']:+.3f}",
                  str(row["duels"]), str(row["wins"]), str(row["losses"]), str(row["ties"]),
                  escape(short_config(conf, 70)) if isinstance(conf, dict) else "-")
    console.print(r)
