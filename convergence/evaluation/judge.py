"""LLM-as-judge metric (``function: llm_judge``).

The prompt is completion-style with four worked examples so it also works with
the embedded base model (``local/gemma-3-270m``), which continues text rather
than following chat instructions. The verdict is parsed strictly: a judge
whose answer we cannot read is an error for that case, never a silent 0.5.
"""

from __future__ import annotations

import os
import re
from typing import Any

from convergence.config.models import JudgeConfig
from convergence.core.types import CallResult, TestCase
from convergence.errors import ConvergenceError
from convergence.evaluation.text import to_text
from convergence.tracing import traced
from convergence.tracing.views import judge_inputs, judge_output


class JudgeParseError(ConvergenceError, ValueError):
    """The judge's answer was neither yes/no nor a 0-10 score."""


_DEFAULT_RUBRIC: str = JudgeConfig.model_fields["rubric"].default
_MAX_FIELD_CHARS = 1500
"""Long fields are cut so the prompt fits a small model's context window."""

_EXAMPLES = (
    "Question: What is the capital of France?\n"
    "Student answer: The capital of France is Paris.\n"
    "Correct answer: Paris\n"
    "Right (yes or no): yes\n\n"
    "Question: How many legs does a spider have?\n"
    "Student answer: A spider has six legs.\n"
    "Correct answer: 8\n"
    "Right (yes or no): no\n\n"
    "Question: What gas do plants absorb?\n"
    "Student answer: Plants absorb helium.\n"
    "Correct answer: carbon dioxide\n"
    "Right (yes or no): no\n\n"
    "Question: Who wrote Hamlet?\n"
    "Student answer: Shakespeare wrote Hamlet.\n"
    "Correct answer: William Shakespeare\n"
    "Right (yes or no): yes\n\n"
)
"""Balanced, and not ending on the label we want to detect most: a small base
model leans towards repeating the last example's label. Wording, order and the
student-answer-first layout were picked with gemma-3-270m on the questions in
tests/test_judge.py; its yes/no verdicts remain weak (see that test)."""

_VERDICT = re.compile(
    r"^\W*(?:(?P<word>yes|no|correct|incorrect)\b|(?P<num>10(?:\.0+)?|\d(?:\.\d+)?)\s*(?:/\s*10\b|(?!\d)))",
    re.IGNORECASE,
)
_WORDS = {"yes": 1.0, "correct": 1.0, "no": 0.0, "incorrect": 0.0}


def _clip(value: Any) -> str:
    text = to_text(value).strip()
    if len(text) > _MAX_FIELD_CHARS:
        text = text[:_MAX_FIELD_CHARS] + " ..."
    return text


def build_prompt(rubric: str, output: Any, case: TestCase) -> str:
    """The completion prompt: the task, four worked examples, then the case to judge.

    The default rubric (agreement with the expected answer) is what the
    examples already teach, so it is not repeated: with gemma-3-270m spelling
    it out made verdicts worse. A user's own rubric is added as a requirement.
    """
    expected = "(none given)" if case.expected is None else _clip(case.expected)
    extra = "" if rubric.strip() == _DEFAULT_RUBRIC else f"Also required: {rubric.strip()}\n"
    return (
        "Grading student answers. A student answer is right if it agrees with the correct answer.\n"
        f"{extra}\n"
        f"{_EXAMPLES}"
        f"Question: {_clip(case.input)}\n"
        f"Student answer: {_clip(output)}\n"
        f"Correct answer: {expected}\n"
        "Right (yes or no):"
    )


def parse_verdict(text: str) -> float:
    """yes/correct -> 1.0, no/incorrect -> 0.0, a number n in 0..10 (or n/10) -> n/10.

    Only the start of the answer is read: a base model keeps writing after
    its verdict, and anything before it would be a different answer."""
    m = _VERDICT.match(text.strip())
    if m is None:
        raise JudgeParseError(f"judge answer is not a verdict (yes/no or 0-10): {text.strip()[:80]!r}")
    word = m.group("word")
    if word is not None:
        return _WORDS[word.lower()]
    return float(m.group("num")) / 10.0


class LLMJudge:
    """Scores one output against its test case with an LLM through LiteLLM."""

    def __init__(self, cfg: JudgeConfig) -> None:
        self.cfg = cfg
        self._api_key: str | None = None
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise ValueError(
                    f"llm_judge: environment variable {cfg.api_key_env} (judge.api_key_env) is not set"
                )
            self._api_key = key

    @traced("convergence.judge", inputs=judge_inputs, output=judge_output)
    async def score(self, output: Any, case: TestCase) -> float:
        """The verdict in [0, 1]; raises JudgeParseError when unreadable."""
        from convergence.llm.client import acompletion, response_text

        prompt = build_prompt(self.cfg.rubric, output, case)
        resp = await acompletion(
            self.cfg.model,
            [{"role": "user", "content": prompt}],
            api_base=self.cfg.api_base,
            api_key=self._api_key,
            timeout=self.cfg.timeout_seconds,
            temperature=self.cfg.temperature,
            max_tokens=self.cfg.max_tokens,
            stop=["\n"],
        )
        return parse_verdict(response_text(resp))

    async def metric(self, output: Any, case: TestCase, call: CallResult, args: dict[str, Any]) -> float:
        """The common metric signature, so the evaluator treats the judge like any metric."""
        return await self.score(output, case)
