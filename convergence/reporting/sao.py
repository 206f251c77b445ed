"""The SAO part of a report: how consistent the self-judge was and whom it preferred.

Built from the run's stored pairs and preference ratings (``Store.sao_pairs``,
``Store.sao_ratings``) and its trials. Pure, like the rest of reporting.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from convergence.core.sao_pair import SAOPair
from convergence.core.types import Config, TrialRecord
from convergence.society.sao.verdict import consistency_rate, metric_agreement


@dataclass(slots=True, frozen=True)
class PreferredConfig:
    """One configuration the judge compared: its rating and its measured score."""

    config_hash: str
    config: Config | None
    preference: float
    """Bradley-Terry win probability against an average configuration, in [0, 1]."""
    duels: int
    wins: int
    losses: int
    ties: int
    score: float | None


@dataclass(slots=True)
class SAOReport:
    pairs: int
    kept: int
    consistency: float | None
    """Share of parseable pairs whose verdict held when A and B were swapped."""
    outcomes: dict[str, int] = field(default_factory=dict)
    filtered: dict[str, int] = field(default_factory=dict)
    """Filter name -> pairs that failed it (a pair can fail several)."""
    preferred: list[PreferredConfig] = field(default_factory=list)
    """Most preferred first."""
    rank_agreement: float | None = None
    """Spearman correlation of preference ratings with measured scores (None under 3 rated configurations)."""
    examples: list[dict[str, str]] = field(default_factory=list)
    """A few kept pairs: prompt, chosen, rejected (shortened)."""
    metric_agreement: float | None = None
    """Share of duels on test cases (a reference answer) whose verdict was the metrics' preference:
    how far the verdicts on written prompts, which have no reference, can be trusted. None: no such duel."""
    metric_agreement_pairs: int = 0
    """The duels on test cases that measured it."""


def summarize_sao(pairs: Sequence[SAOPair], ratings: Mapping[str, Mapping[str, Any]],
                  trials: Sequence[TrialRecord], *, examples: int = 3) -> SAOReport | None:
    """None when the run made no pairs (SAO off, or it never duelled)."""
    if not pairs and not ratings:
        return None
    by_hash = {t.config_hash: t for t in trials}
    preferred = [
        PreferredConfig(h, by_hash[h].config if h in by_hash else None, float(r["preference"]), int(r["duels"]),
                        int(r["wins"]), int(r["losses"]), int(r["ties"]),
                        by_hash[h].score if h in by_hash and by_hash[h].usable else None)
        for h, r in ratings.items()
    ]
    preferred.sort(key=lambda p: (-p.preference, p.config_hash))
    kept = [p for p in pairs if p.kept]
    agreed, measured = metric_agreement([(p.outcome, p.reference) for p in pairs])
    return SAOReport(
        pairs=len(pairs), kept=len(kept), consistency=consistency_rate([p.outcome for p in pairs if p.judged]),
        metric_agreement=agreed / measured if measured else None, metric_agreement_pairs=measured,
        outcomes=dict(Counter(p.outcome for p in pairs)),
        filtered=dict(Counter(f for p in pairs for f in p.failed_filters)),
        preferred=preferred, rank_agreement=_spearman(preferred),
        examples=[{"prompt": _short(p.prompt), "chosen": _short(p.chosen or ""), "rejected": _short(p.rejected or "")}
                  for p in kept[:examples]],
    )


def _spearman(preferred: Sequence[PreferredConfig]) -> float | None:
    scored = [(p.preference, p.score) for p in preferred if p.score is not None]
    if len(scored) < 3:
        return None
    from scipy.stats import spearmanr

    rho = spearmanr([s[0] for s in scored], [s[1] for s in scored]).statistic
    return None if rho != rho else float(rho)  # NaN when either side is constant


def _short(text: str, n: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"
