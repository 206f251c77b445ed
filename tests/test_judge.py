"""The LLM judge with the real embedded model (gemma-3-270m through LiteLLM).

A 270M base model is a weak judge, so the test asks only what it can honestly
deliver: every verdict parses, and over 18 questions clearly right answers
score higher in total than clearly wrong ones. The prompt layout was chosen
on these same questions (so this is a regression check, not an unbiased
measurement); observed with gemma-3-270m at temperature 0: 13 of 18 right
answers judged yes vs 10 of 18 wrong ones, and on the last 8 questions alone
no signal (5 vs 5). Point ``judge.model`` at a stronger model for real use.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from convergence.config.models import EvaluationConfig, JudgeConfig
from convergence.core.types import CallResult, TestCase
from convergence.evaluation.judge import JudgeParseError, LLMJudge, build_prompt, parse_verdict
from convergence.evaluation.scorer import Evaluator

QUESTIONS = [
    ("What is 2 + 3?", "5", "2 + 3 = 5.", "2 + 3 = 9."),
    ("What color is the sky on a clear day?", "blue", "The sky is blue.", "The sky is green."),
    ("What is the capital of Japan?", "Tokyo", "Tokyo is the capital of Japan.", "The capital of Japan is Madrid."),
    ("How many days are in a week?", "7", "There are 7 days in a week.", "A week has 12 days."),
    ("What is the opposite of hot?", "cold", "Cold.", "Purple."),
    ("What animal says moo?", "a cow", "A cow says moo.", "A cat says moo."),
    ("What is 10 minus 4?", "6", "6", "14"),
    ("Which planet do we live on?", "Earth", "We live on Earth.", "We live on Jupiter."),
    ("What do bees make?", "honey", "Bees make honey.", "Bees make milk."),
    ("What is frozen water called?", "ice", "Ice.", "Steam."),
    ("What is 5 + 5?", "10", "5 + 5 = 10.", "5 + 5 = 3."),
    ("What is the boiling point of water at sea level in Celsius?", "100",
     "100 degrees Celsius.", "It boils at 20 degrees."),
    ("What is the largest planet in the solar system?", "Jupiter",
     "Jupiter is the largest planet.", "Mercury is the largest planet."),
    ("How many hours are in a day?", "24", "A day has 24 hours.", "A day has 5 hours."),
    ("What do cows drink?", "water", "Cows drink water.", "Cows drink gasoline."),
    ("What is the capital of Italy?", "Rome", "Rome.", "Berlin."),
    ("What color are bananas when ripe?", "yellow", "Ripe bananas are yellow.", "Ripe bananas are blue."),
    ("How many wheels does a bicycle have?", "2", "A bicycle has two wheels, 2.", "A bicycle has 9 wheels."),
]


def test_parse_verdict_is_strict() -> None:
    assert parse_verdict(" yes") == 1.0
    assert parse_verdict(" No.\nQuestion: ...") == 0.0
    assert parse_verdict("7/10") == 0.7
    assert parse_verdict(" 10") == 1.0
    for bad in ("", "maybe", "yesterday", "75", "11 out of 10"):
        with pytest.raises(JudgeParseError):
            parse_verdict(bad)


def test_prompt_is_completion_style_and_carries_the_case() -> None:
    case = TestCase("q", "What is 5 + 5?", "10")
    p = build_prompt(JudgeConfig().rubric, "ten", case)
    assert p.endswith("Question: What is 5 + 5?\nStudent answer: ten\nCorrect answer: 10\nRight (yes or no):")
    assert "Also required" not in p
    custom = build_prompt("Answer in French.", "dix", case)
    assert "Also required: Answer in French." in custom


def test_missing_api_key_env_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONVERGENCE_TEST_JUDGE_KEY", raising=False)
    with pytest.raises(ValueError, match="CONVERGENCE_TEST_JUDGE_KEY"):
        LLMJudge(JudgeConfig(model="openai/gpt-4o-mini", api_key_env="CONVERGENCE_TEST_JUDGE_KEY"))


@pytest.mark.slow
@pytest.mark.anyio
async def test_local_judge_prefers_right_answers_over_wrong_ones() -> None:
    judge = LLMJudge(JudgeConfig())
    right: list[float] = []
    wrong: list[float] = []
    for q, expected, good, bad in QUESTIONS:
        case = TestCase(q, q, expected)
        right.append(await judge.score(good, case))  # raises JudgeParseError if unreadable
        wrong.append(await judge.score(bad, case))
    assert all(0.0 <= v <= 1.0 for v in right + wrong)
    print(f"judge right={right} wrong={wrong}")
    assert sum(right) > sum(wrong), (right, wrong)


@pytest.mark.slow
@pytest.mark.anyio
async def test_judge_runs_as_a_metric_in_the_evaluator(tmp_path: Path) -> None:
    cfg = EvaluationConfig.model_validate(
        {
            "test_cases": {"inline": [{"input": "x"}]},
            "metrics": {"judged": {"function": "llm_judge", "weight": 1.0}},
        }
    )
    ev = Evaluator(cfg, tmp_path)
    case = TestCase("c", "What is the capital of Italy?", "Rome")
    values, errors = await ev.evaluate_detailed(case, CallResult(output="Rome.", latency_ms=5.0))
    assert errors == {}
    assert values["judged"] in (0.0, 1.0)
