"""Rich progress display for ``convergence optimize``: a bar per generation,
the live best score, and one line per finished generation."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from convergence.core.types import CaseResult, TrialRecord
from convergence.society.base import Proposal


def short_config(config: dict[str, Any], width: int = 60) -> str:
    text = ", ".join(f"{k}={v!s:.24}" for k, v in config.items())
    return text if len(text) <= width else text[: width - 1] + "…"


class RichEvents:
    def __init__(self, console: Console, quiet: bool = False):
        self.console = console
        self.quiet = quiet
        self.progress = Progress(
            TextColumn("[bold]gen {task.fields[gen]}[/]"),
            BarColumn(),
            TextColumn("calls"),
            MofNCompleteColumn(),
            TextColumn("{task.fields[outcome]}"),
            TextColumn("best [green]{task.fields[best]}[/]"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            disable=quiet,
        )
        self._tasks: dict[int, Any] = {}
        """One bar per generation still evaluating (two at once in async mode)."""
        self._counts: dict[Any, list[int]] = {}
        """Per bar: [successful calls, failed calls] (a full bar of failed calls is no progress)."""
        self._best = "-"

    def __enter__(self) -> RichEvents:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]

    def generation_started(self, generation: int, total: int, n_trials: int, n_cases: int) -> None:
        task = self.progress.add_task(
            "", total=n_trials * n_cases, gen=f"{generation + 1}/{total}", outcome=_outcome(0, 0), best=self._best
        )
        self._tasks[generation] = task
        self._counts[task] = [0, 0]

    def _current(self) -> Any:
        """The oldest generation still evaluating: its calls are served first (FIFO)."""
        by_id = {t.id: t for t in self.progress.tasks}
        for task_id in self._tasks.values():
            task = by_id.get(task_id)
            if task is None or task.total is None or task.completed < task.total:
                return task_id
        return next(reversed(self._tasks.values()), None)

    def case_finished(self, trial: Proposal, result: CaseResult, cached: bool) -> None:
        task = self._current()
        if task is not None:
            counts = self._counts.setdefault(task, [0, 0])
            counts[1 if result.call.error else 0] += 1
            self.progress.update(task, advance=1, outcome=_outcome(*counts))

    def trial_finished(self, trial: TrialRecord, best: TrialRecord | None) -> None:
        if best is not None:
            self._best = f"{best.score:.4f}"
            for task in self._tasks.values():
                self.progress.update(task, best=self._best)

    def generation_finished(self, generation: int, best: TrialRecord | None, new: list[TrialRecord]) -> None:
        task = self._tasks.pop(generation, None)
        ok, failed = self._counts.pop(task, [0, 0]) if task is not None else (0, 0)
        if task is not None:  # calls not made (racing, a budget, a broken target) leave the bar short, and say so
            total = next((t.total for t in self.progress.tasks if t.id == task), None) or 0
            if total > ok + failed:
                self.progress.update(task, outcome=f"{_outcome(ok, failed)}, {total - ok - failed} not run")
        if self.quiet:
            return
        usable = [t for t in new if t.usable]
        gen_best = max(usable, key=lambda t: t.score, default=None)
        line = f"  generation {generation + 1}: {len(new)} new trial(s)"
        if failed and not ok:
            line += f", [red]no successful call[/] ({failed} failed)"
        elif not ok and new:
            line += ", no call made"
        elif failed:
            line += f", {failed} of {ok + failed} call(s) failed"
        abandoned = sum(1 for t in new if t.status == "abandoned")
        if abandoned:
            line += f" ({abandoned} abandoned by racing)"
        if gen_best is not None:
            line += f", best this generation {gen_best.score:.4f} ({short_config(gen_best.config)})"
        if best is not None:
            line += f"; best so far [green]{best.score:.4f}[/]"
        self.progress.console.print(line)

    def society_step(self, generation: int, reports: dict[str, Any], new: list[TrialRecord]) -> None:
        """One line for the society (who proposed, how many reached the top k),
        then RLP's thoughts in short with their outcomes and rewards."""
        if self.quiet or not reports:
            return
        parts = []
        for r in reports.values():
            part = f"{escape(r.agent)} {r.proposed}/{r.asked}"
            if r.status in ("failed", "timeout"):
                part += f" [red]{r.status}[/]"
            part += f" (top-k {r.in_top})"
            parts.append(part)
        self.progress.console.print("  society: " + " · ".join(parts), highlight=False)
        for r in reports.values():
            if r.error:
                self.progress.console.print(f"    [yellow]{escape(r.agent)}: {escape(r.error)}[/]", highlight=False)
            d = r.detail
            for t in d.get("thoughts", []):
                text = t.get("thought") or "(empty thought)"
                text = text if len(text) <= 70 else text[:69] + "…"
                line = f"    {r.agent} [{t.get('strategy')}] \"{text}\""
                if t.get("outcomes"):
                    line += f" -> {', '.join(t['outcomes'])}"
                if t.get("reward") is not None:
                    line += f", reward {t['reward']:+.3f}"
                self.progress.console.print(line, highlight=False, markup=False)
            if d.get("answers"):
                mean = d.get("mean_reward")
                policy = d.get("policy") or {}
                top = max(policy.items(), key=lambda kv: kv[1], default=None)
                self.progress.console.print(
                    f"    {escape(r.agent)}: {d['answers'] - d.get('invalid', 0)}/{d['answers']} answers parsed"
                    + (f", {d['moved']} moved off repeats" if d.get("moved") else "")
                    + (f", mean reward {mean:+.3f} ({d.get('reward_method')})" if mean is not None else "")
                    + (f", policy favours {top[0]} ({top[1]:.2f})" if top else "")
                    + f", LLM {d.get('llm_seconds', 0):.1f}s", highlight=False)
            if d.get("sao"):
                self.progress.console.print(f"    {escape(r.agent)}: " + sao_line(d["sao"]), highlight=False,
                                            markup=False)
            for note in d.get("notes", []):
                self.progress.console.print(f"    [yellow]{escape(r.agent)}: {escape(note)}[/]", highlight=False)

    def message(self, text: str) -> None:
        if not self.quiet:
            self.progress.console.print(f"[cyan]{text}[/]")


def _outcome(ok: int, failed: int) -> str:
    """A bar's calls by result: a generation whose calls all failed says so."""
    if failed and not ok:
        return f"[red]0 ok, {failed} failed[/]"
    return f"{ok} ok" + (f", [yellow]{failed} failed[/]" if failed else "")


def sao_line(step: dict[str, Any]) -> str:
    """The SAO agent's generation in one line: pairs, consistency under swap, whom the judge prefers."""
    if "pairs" not in step:
        return str(step.get("note", ""))
    rate = step.get("consistency")
    line = (f"{step['pairs']} pair(s) judged, {step['kept']} kept; consistent under swap "
            + (f"{rate:.0%}" if rate is not None else "n/a"))
    outcomes = step.get("outcomes") or {}
    if outcomes:
        line += " (" + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) + ")"
    agreement = step.get("metric_agreement")
    if agreement:
        line += f"; agrees with the metrics on {agreement['agreed']}/{agreement['measured']} test case(s)"
    preferred = step.get("preferred") or []
    if preferred and preferred[0].get("config"):
        top = preferred[0]
        line += f"; prefers {short_config(top['config'])} ({top['preference']:.2f}, {top['wins']}W/{top['losses']}L)"
    return line
