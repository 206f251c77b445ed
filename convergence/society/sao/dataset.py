"""SAO preference pairs as a TRL preference dataset: export, import, statistics.

Written in TRL's preference format so ``DPOTrainer`` (and other preference
trainers) take the file as is, through
``datasets.load_dataset("json", data_files=PATH, split="train")``:

* standard: ``{"prompt": str, "chosen": str, "rejected": str}``;
* conversational (explicit prompt): ``{"prompt": [{"role": "user", ...}],
  "chosen": [{"role": "assistant", ...}], "rejected": [{"role": "assistant", ...}]}``.

Only the three columns by default, so a trainer sees nothing it does not
expect; ``with_metadata`` adds string columns (persona, source, outcome and
the two configurations as JSON text) whose type never changes from row to row.
Import reads both shapes back, and TRL's implicit-prompt shapes too (the
prompt is the start chosen and rejected share). Pure: no store access.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from convergence.core.sao_pair import FILTERS, SAOPair
from convergence.errors import ConvergenceError
from convergence.society.sao.verdict import metric_agreement

EXPECTED = "expected prompt/chosen/rejected"
_OUTCOME_FILTERS = ("unparseable", "inconsistent", "tie")
"""Outcomes that are also filters: such a pair states no preference."""


class SAODatasetError(ConvergenceError):
    """A preference dataset that cannot be read or written; the message names
    the file, the line (JSON Lines) or record (JSON array), and the field."""


# --------------------------------------------------------------------------- export


def skip_reasons(pair: SAOPair, include_all: bool = False) -> list[str]:
    """Why ``export_pairs`` leaves ``pair`` out (empty: it is written).

    By default a pair must be kept (A or B in both orders, every filter passed);
    with ``include_all`` only a pair without a preference (tie, inconsistent,
    unparseable) is left out, since it has no chosen/rejected to write."""
    reasons: list[str] = [o for o in _OUTCOME_FILTERS if pair.outcome == o]
    if pair.prompts is not None and pair.prompts[0] != pair.prompts[1]:
        reasons.append("different_prompts")  # no one prompt both responses answer: not a preference pair
    if include_all:
        return reasons
    return reasons + [f for f in pair.failed_filters if f not in reasons]


def seen_prompt(pair: SAOPair) -> str:
    """The prompt the models answered: the target's rendered prompt when it is known (and the same for
    both sides), else the task input as text (what a Python or HTTP target received)."""
    return pair.prompts[0] if pair.prompts is not None and pair.prompts[0] == pair.prompts[1] else pair.prompt


def to_record(pair: SAOPair, conversational: bool = False, *, with_metadata: bool = False) -> dict[str, Any]:
    """``pair`` as one TRL preference record (standard or conversational with an
    explicit prompt). Raises :class:`SAODatasetError` for a pair without a preference."""
    chosen, rejected = pair.chosen, pair.rejected
    if chosen is None or rejected is None:
        raise SAODatasetError(
            f"pair {pair.id if pair.id is not None else '?'} has outcome {pair.outcome!r}: no chosen/rejected response"
        )
    record: dict[str, Any]
    prompt = seen_prompt(pair)
    if conversational:
        record = {
            "prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        }
    else:
        record = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if with_metadata:
        a_won = pair.outcome == "A"
        record.update({
            "persona": pair.persona,
            "source": pair.source,
            "outcome": pair.outcome,
            # JSON text (null included): a column of dicts whose keys differ per row has no stable schema
            "config_chosen": json.dumps(pair.config_a if a_won else pair.config_b, sort_keys=True, default=str),
            "config_rejected": json.dumps(pair.config_b if a_won else pair.config_a, sort_keys=True, default=str),
            # what each side's model received ("" unknown): with two templates they differ
            "prompt_chosen": (pair.prompts[0] if a_won else pair.prompts[1]) if pair.prompts else "",
            "prompt_rejected": (pair.prompts[1] if a_won else pair.prompts[0]) if pair.prompts else "",
            "reference": pair.reference or "",
        })
    return record


def export_pairs(
    pairs: Iterable[SAOPair], path: str | os.PathLike[str], *, format: Literal["jsonl", "json"] = "jsonl",
    conversational: bool = False, include_all: bool = False, with_metadata: bool = False,
) -> int:
    """Write ``pairs`` to ``path`` as a TRL preference dataset; returns rows written.

    Only kept pairs by default; ``include_all`` also writes pairs that failed a
    quality filter, but never one without a preference (tie, inconsistent,
    unparseable): it has no chosen/rejected. ``jsonl``: one record per line;
    ``json``: one array of records. Written to a temporary file and renamed, so
    a reader never sees half a dataset."""
    from convergence.storage.atomic import atomic_path

    if format not in ("jsonl", "json"):
        raise SAODatasetError(f"unknown format {format!r}; expected jsonl or json")
    records = [
        to_record(p, conversational, with_metadata=with_metadata)
        for p in pairs if not skip_reasons(p, include_all)
    ]
    try:
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            if format == "jsonl":
                for r in records:
                    fh.write(json.dumps(r, ensure_ascii=False) + "\n")
            else:
                json.dump(records, fh, ensure_ascii=False, indent=1)
                fh.write("\n")
    except OSError as exc:
        raise SAODatasetError(f"cannot write {os.fspath(path)}: {exc.strerror or exc}") from exc
    return len(records)


# --------------------------------------------------------------------------- import


class _Bad(Exception):
    """A record's problem, before the file and line are known."""


def import_pairs(path: str | os.PathLike[str]) -> list[SAOPair]:
    """Read a TRL preference dataset (JSON Lines, or a JSON array of records) as
    SAO pairs: ``response_a`` is chosen, ``response_b`` rejected, outcome "A",
    source "import". Standard and conversational shapes, explicit or implicit
    prompt. Raises :class:`SAODatasetError` naming the file, line and field."""
    name = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is not a record
    except UnicodeDecodeError:
        raise SAODatasetError(f"{name}: not UTF-8 text; expected JSON Lines or a JSON array") from None
    except OSError as exc:
        raise SAODatasetError(f"cannot read {name}: {exc.strerror or exc}") from None
    pairs: list[SAOPair] = []
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SAODatasetError(f"{name}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        for i, rec in enumerate(data, 1):
            try:
                pairs.append(_pair(rec))
            except _Bad as exc:
                raise SAODatasetError(f"{name}: record {i}: {exc}") from None
        return pairs
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            whole = _whole_object(text)
            if whole:
                raise SAODatasetError(
                    f"{name}: holds one JSON object; expected JSON Lines (one record per line) or a JSON array "
                    "of records"
                ) from None
            raise SAODatasetError(f"{name}:{lineno}: invalid JSON ({exc.msg}); expected one record per line") from None
        try:
            pairs.append(_pair(rec))
        except _Bad as exc:
            raise SAODatasetError(f"{name}:{lineno}: {exc}") from None
    return pairs


def _whole_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


def _type_name(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number"
    )


def _messages(v: Any, field: str) -> list[dict[str, str]]:
    if not isinstance(v, list):
        raise _Bad(f"field {field!r} must be a list of messages, not {_type_name(v)}")
    for i, m in enumerate(v):
        if not isinstance(m, dict):
            raise _Bad(f"field '{field}[{i}]' must be a message {{role, content}}, not {_type_name(m)}")
        for key in ("role", "content"):
            if key not in m:
                raise _Bad(f"field '{field}[{i}].{key}' is missing; a message has role and content")
            if not isinstance(m[key], str):
                raise _Bad(f"field '{field}[{i}].{key}' must be a string, not {_type_name(m[key])}")
    return v


def _shared_prefix(a: Sequence[Any], b: Sequence[Any]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _roles(msgs: list[dict[str, str]]) -> str:
    return ", ".join(m["role"] for m in msgs) or "none"


def _conversation(rec: dict[str, Any]) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) of a conversational record: a single user turn
    answered by one assistant message each (what an SAO pair is)."""
    chosen = _messages(rec["chosen"], "chosen")
    rejected = _messages(rec["rejected"], "rejected")
    if "prompt" in rec:
        raw = rec["prompt"]
        prompt = [{"role": "user", "content": raw}] if isinstance(raw, str) else _messages(raw, "prompt")
        n = len(prompt)
        if n and chosen[:n] == prompt and rejected[:n] == prompt:  # full conversations repeating the prompt
            chosen, rejected = chosen[n:], rejected[n:]
    else:  # implicit prompt: the messages chosen and rejected start with
        n = _shared_prefix(chosen, rejected)
        if n == 0:
            raise _Bad(f"field 'prompt' is missing and chosen/rejected share no leading user message; {EXPECTED}")
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    if len(prompt) != 1 or prompt[0]["role"] != "user":
        raise _Bad(f"field 'prompt' must be one user message (a single turn), got roles: {_roles(prompt)}")
    answers = []
    for field, msgs in (("chosen", chosen), ("rejected", rejected)):
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
            raise _Bad(f"field {field!r} must be one assistant message after the prompt, got roles: {_roles(msgs)}")
        answers.append(msgs[0]["content"])
    return prompt[0]["content"], answers[0], answers[1]


def _standard(rec: dict[str, Any]) -> tuple[str, str, str]:
    chosen, rejected = rec["chosen"], rec["rejected"]
    if not isinstance(rejected, str):
        raise _Bad(f"field 'rejected' must be a string like 'chosen', not {_type_name(rejected)}")
    if "prompt" in rec:
        prompt = rec["prompt"]
        if not isinstance(prompt, str):
            raise _Bad(f"field 'prompt' must be a string when chosen/rejected are strings, not {_type_name(prompt)}")
        return prompt, chosen, rejected
    # implicit prompt, split as TRL's extract_prompt does: the shared start, without its trailing space
    n = _shared_prefix(chosen, rejected)
    if n and n < min(len(chosen), len(rejected)) and chosen[n - 1] == " ":
        n -= 1
    if n == 0:
        raise _Bad(f"field 'prompt' is missing and chosen/rejected share no prefix to take it from; {EXPECTED}")
    return chosen[:n], chosen[n:], rejected[n:]


def _config(rec: dict[str, Any], field: str) -> dict[str, Any] | None:
    v = rec.get(field)
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            raise _Bad(f"field {field!r} is not valid JSON") from None
    if v is None or isinstance(v, dict):
        return v
    raise _Bad(f"field {field!r} must be a configuration (a JSON object) or null, not {_type_name(v)}")


def _pair(rec: Any) -> SAOPair:
    if not isinstance(rec, dict):
        raise _Bad(f"expected a JSON object with prompt/chosen/rejected, not {_type_name(rec)}")
    for key in ("chosen", "rejected"):
        if key not in rec:
            raise _Bad(f"field {key!r} is missing; {EXPECTED}")
    if isinstance(rec["chosen"], str):
        prompt, chosen, rejected = _standard(rec)
    elif isinstance(rec["chosen"], list):
        prompt, chosen, rejected = _conversation(rec)
    else:
        raise _Bad(f"field 'chosen' must be a string or a list of messages, not {_type_name(rec['chosen'])}")
    if not prompt.strip():
        raise _Bad("field 'prompt' is empty")
    persona = rec.get("persona", "")
    if persona is None:
        persona = ""
    if not isinstance(persona, str):
        raise _Bad(f"field 'persona' must be a string, not {_type_name(persona)}")
    return SAOPair(
        persona=persona, prompt=prompt, response_a=chosen, response_b=rejected, verdict_1="A", verdict_2="A",
        outcome="A", config_a=_config(rec, "config_chosen"), config_b=_config(rec, "config_rejected"),
        source="import",
    )


# --------------------------------------------------------------------------- statistics


def dataset_stats(pairs: Sequence[SAOPair]) -> dict[str, Any]:
    """What a set of pairs is worth as training data: how many are kept, how
    often the judge agreed with itself under swap, which filters removed the
    rest, and how varied the kept prompts are.

    ``filters`` counts each filter of ``sao_pairs.FILTERS`` (the outcome ones -
    unparseable, inconsistent, tie - from the outcome too). ``consistency_rate``:
    A/B/tie over A/B/tie/inconsistent among judged pairs (None: none; an imported
    pair states a preference nobody judged here). ``metric_agreement``: share of
    duels on test cases where the judge's verdict is the metrics' preference
    (None: no such duel; ``metric_agreement_pairs`` of them). ``diversity``
    of the kept prompts (None: none kept)."""
    outcomes = Counter(p.outcome for p in pairs)
    filters: Counter[str] = Counter({f: 0 for f in FILTERS})
    for p in pairs:
        filters.update(skip_reasons(p))
    judged_outcomes = Counter(p.outcome for p in pairs if p.judged)  # an imported pair was never judged here
    judged = sum(judged_outcomes[o] for o in ("A", "B", "tie", "inconsistent"))
    agreed, measured = metric_agreement([(p.outcome, p.reference) for p in pairs])
    kept_prompts = [p.prompt for p in pairs if p.kept]
    diversity: float | None = None
    if kept_prompts:
        from convergence.society.sao.similarity import diversity_score

        diversity = float(diversity_score(kept_prompts))
    return {
        "total": len(pairs),
        "kept": len(kept_prompts),
        "outcomes": {o: outcomes[o] for o in ("A", "B", "tie", "inconsistent", "unparseable")},
        "filters": dict(filters),
        "consistency_rate": (judged - judged_outcomes["inconsistent"]) / judged if judged else None,
        "judged": judged,
        "metric_agreement": agreed / measured if measured else None,
        "metric_agreement_pairs": measured,
        "diversity": diversity,
        "sources": dict(sorted(Counter(p.source for p in pairs).items())),
        "unique_prompts": len({p.prompt for p in pairs}),
    }
