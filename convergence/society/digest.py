"""A compact text summary of the study for LLM agents: the space, the best
and the most recent configurations with their scores, how much was tried.

Kept short (a few hundred tokens) because the embedded model reads it for
every thought, answer and log-prob measurement.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from convergence.core.space import Dimension, SearchSpace
from convergence.core.types import Config, TrialRecord


def _fmt(v: object) -> str:
    return json.dumps(v) if not isinstance(v, str) else v


def describe_dimension(d: Dimension) -> str:
    if d.kind in ("categorical", "values"):
        return f"{d.name}: one of {', '.join(_fmt(c) for c in d.choices)}"
    step = f" (step {d.step:g})" if d.step else ""
    scale = ", log scale" if d.log else ""
    kind = "integer" if d.kind == "integer" else "number"
    return f"{d.name}: {kind} from {d.low:g} to {d.high:g}{step}{scale}"


def config_text(config: Config) -> str:
    """One-line JSON of a configuration (labels, not resolved templates)."""
    return json.dumps(config, separators=(", ", ": "), default=str)


def _trial_line(t: TrialRecord) -> str:
    metrics = ", ".join(f"{k} {v:.3g}" for k, v in list(t.metrics.items())[:4])
    return f"{config_text(t.config)} -> score {t.score:.3f}" + (f" ({metrics})" if metrics else "")


def study_digest(space: SearchSpace, history: Sequence[TrialRecord], *, top: int = 3, recent: int = 3) -> str:
    """The study so far in words (higher scores are better)."""
    lines = ["Parameters:"]
    lines += [f"- {describe_dimension(d)}" for d in space.dims.values()]
    usable = [t for t in history if t.usable]
    if not usable:
        lines.append("Nothing has been tried yet.")
        return "\n".join(lines)
    scores = [t.score for t in usable]
    lines.append(f"Tried {len(usable)} configurations; scores from {min(scores):.3f} to {max(scores):.3f} "
                 f"(higher is better).")
    best = sorted(usable, key=lambda t: -t.score)[:top]
    lines.append("Best so far:")
    lines += [f"- {_trial_line(t)}" for t in best]
    shown = {t.config_hash for t in best}
    latest = [t for t in reversed(usable) if t.config_hash not in shown][:recent]
    if latest:
        lines.append("Most recent:")
        lines += [f"- {_trial_line(t)}" for t in latest]
    return "\n".join(lines)
