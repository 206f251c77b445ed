"""The self-judge's verdict format, its strict parser, and the swap rule.

SAO labels its own preference pairs with the same model that wrote them, and a small model
judging two responses is biased toward whichever it saw first and will happily ramble. So
the judge answers in one fixed, easily checked form (``[[A]]``, ``[[B]]`` or ``[[tie]]``),
anything else counts as no answer rather than a guess, and every pair is judged twice with
the responses swapped: only a verdict that holds in both orders counts.

Parsing rule (``parse_verdict``):

1. If the text holds any ``[[...]]``, the LAST one decides: ``[[A]]``, ``[[B]]`` or ``[[tie]]``
   (case-insensitive, spaces inside the brackets allowed); any other content (``[[C]]``,
   ``[[both]]``) gives None. If the last non-empty line is a bare verdict (rule 2) that
   disagrees with it, the judge contradicted itself: None.
2. Otherwise the last non-empty line must be a bare verdict: ``A``, ``(B)``, ``tie.``,
   ``Verdict: A``, ``Answer = B``, ``Winner - tie`` (case-insensitive).
3. Anything else is None.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from convergence.core.sao_pair import Outcome, Verdict

_BRACKETED = re.compile(r"\[\[([^\[\]]*)\]\]")
_BARE_LINE = re.compile(r"^(?:(?:verdict|answer|winner)\b\s*[:=-]?\s*)?\(?(a|b|tie)\)?\.?$", re.IGNORECASE)
_VERDICTS: dict[str, Verdict] = {"a": "A", "b": "B", "tie": "tie"}

JUDGE_INSTRUCTIONS = (
    "Two responses to the same task follow. Decide which one answers the task better: the better "
    "response is correct, helpful and concise. Give the verdict as [[A]] if Response A is better, "
    "[[B]] if Response B is better, or [[tie]] if they are equally good."
)
PROMPT_END = "Verdict: [["
"""The judge prompt ends here, so a base model's natural continuation is ``A]]``, ``B]]`` or ``tie]]``."""

VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"verdict": {"enum": ["A", "B", "tie"]}},
    "required": ["verdict"],
}
"""JSON schema for providers that enforce a response format; parse with ``parse_json_verdict``."""


def _token(text: str) -> Verdict | None:
    return _VERDICTS.get(text.strip().lower())


def _bare_line(text: str) -> Verdict | None:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    match = _BARE_LINE.match(lines[-1])
    return _VERDICTS[match.group(1).lower()] if match else None


def parse_verdict(text: str) -> Verdict | None:
    """The judge's verdict by the module's strict rule; None when there is none or it is ambiguous."""
    bracketed = list(_BRACKETED.finditer(text))
    if bracketed:
        verdict = _token(bracketed[-1].group(1))
        last_line = _bare_line(text[bracketed[-1].end() :])
        return None if verdict is None or (last_line is not None and last_line != verdict) else verdict
    return _bare_line(text)


def judge_prompt(task: str, first: str, second: str) -> str:
    """A completion-style judge prompt (for a small base model) ending in ``PROMPT_END``."""
    return (
        f"{JUDGE_INSTRUCTIONS}\n\n"
        f"### Task\n{task.strip()}\n\n"
        f"### Response A\n{first.strip()}\n\n"
        f"### Response B\n{second.strip()}\n\n"
        f"### Which response answers the task better?\n{PROMPT_END}"
    )


def parse_continuation(text: str) -> Verdict | None:
    """The verdict in a model's continuation of ``judge_prompt`` (which already ends in ``[[``).

    Only the verdict the continuation opens with counts: the text up to its first ``]]`` (all of
    it if a stop sequence cut the brackets off) is read as ``[[...]]``. A base model often goes on
    to invent further examples with verdicts of their own, and those must not count.
    """
    head = text.split("]]", 1)[0]
    return parse_verdict(f"[[{head}]]")


def parse_json_verdict(text: str) -> Verdict | None:
    """The verdict of a ``VERDICT_SCHEMA`` answer (``{"verdict": "A"}``); None for anything else."""
    try:
        data = json.loads(text)
    except (ValueError, TypeError):
        return None
    value = data.get("verdict") if isinstance(data, dict) else None
    return _token(value) if isinstance(value, str) else None


def swap(verdict: Verdict) -> Verdict:
    """Map a verdict on the swapped order (B shown first) back to the original labels: A<->B, tie stays."""
    return "B" if verdict == "A" else "A" if verdict == "B" else "tie"


def combine(first: Verdict | None, second_mapped: Verdict | None) -> Outcome:
    """The swap rule: a verdict counts only if both orders give it (second already mapped back with ``swap``).

    Either unparseable -> "unparseable"; equal -> that verdict (both tie -> "tie"); else "inconsistent".
    """
    if first is None or second_mapped is None:
        return "unparseable"
    return first if first == second_mapped else "inconsistent"


def consistency_rate(outcomes: Sequence[Outcome]) -> float | None:
    """Share of parseable pairs whose two judgments agreed (A, B or tie); None without parseable pairs."""
    parseable = [o for o in outcomes if o != "unparseable"]
    if not parseable:
        return None
    return sum(o in ("A", "B", "tie") for o in parseable) / len(parseable)


def metric_agreement(pairs: Sequence[tuple[Outcome, Verdict | None]]) -> tuple[int, int]:
    """(agreed, measured) over (outcome, reference) of duels on test cases: ``measured`` counts those
    where the metrics prefer one response and the judge gave a verdict (an inconsistent one included:
    it is not agreement); ``agreed`` those whose consistent verdict is the metrics' preference."""
    measured = [(o, r) for o, r in pairs if r in ("A", "B") and o != "unparseable"]
    return sum(o == r for o, r in measured), len(measured)
